"""`hiprm quickstart`: the whole pipeline end to end on the embedded default, in one command.

    hiprm quickstart                                   # ~15 min on 2 AVX-512 cores (21-24 on AVX2) -> runs/quickstart/
    hiprm quickstart configs/quickstart_gpu.yaml       # the paper-scale experiment on a GPU machine

Stages, each an ordinary hiprm runner writing its own folder under `out_dir`:
1. `data build` PRM and HRM examples from the shared PRM800K phase-1 train file;
2. `rm train` a PRM and an HRM with the *same* budget (steps x batch) from the same backbone;
3. `rm eval` both without a policy (PRM800K step classification and selection, ProcessBench);
4. `eval` both with the policy on a handful of GSM8K problems (step-level search and
   whole-solution best-of-N from one shared pool of candidates);
5. `annotate` MCTS trees with MC-scores on a few MATH train problems with the policy (no human
   labels), with the MC-score histogram;
6. `data build trees=` PRM and HRM (+ HNC) examples from the trees, and a PRM and an HRM trained
   on them with the same budget (soft MC-score labels);
7. `selftrain` the policy on the trees' correct trajectories (L_LM + lambda log KL against the
   frozen original), then the base and the tuned policy side by side on the eval problems;
8. `report.md` gathering the data statistics, training curves and every table.
Each stage resumes or returns its finished result, so rerunning after an interruption continues
where it stopped. Numbers at the CPU scale are small-sample and say so in the report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiprm.annotate import run as annotate_run
from hiprm.annotate.stats import format_tree_stats, write_stats
from hiprm.artifacts import DataError, atomic_write, locked, write_meta
from hiprm.config import ConfigError, Device, Fraction, NonNegative, NonNegativeFloat, Positive, to_dict
from hiprm.data import build as data_build
from hiprm.data.stats import format_stats
from hiprm.rm import evaluate as rm_evaluate
from hiprm.rm import train as rm_train
from hiprm.rm.scorer import ScorerSettings
from hiprm.search import run as search_run
from hiprm.selftrain import train as selftrain
from hiprm.tree import read_trees, tree_stats

log = logging.getLogger(__name__)


STAGES = ("data", "train", "rm_eval", "eval", "annotate", "tree_rms", "selftrain")


@dataclass
class QuickstartConfig:
    out_dir: str = "runs/quickstart"
    data_input: str = data_build.DEFAULT_INPUT
    data_dir: str = "../shared/data"
    data_max_problems: Positive | None = 120  # a seeded subset of problems (None = all 808)
    model: str = "smollm2-135m-instruct"  # reward-model backbone and policy
    # Reward-model training: the same budget for PRM and HRM. Trie batches (`hiprm.rm.trie`)
    # compute each shared token once, so a batch of 64 examples (4 runs of 16 token-order
    # neighbours: 4 problems) costs what a handful of padded rows would. max_length 4096 (the
    # paper's) drops no old steps, so the steps of a solution keep sharing their prefix.
    train_steps: Positive = 16
    batch_size: Positive = 64
    train_trie_run: NonNegative = 16
    learning_rate: NonNegativeFloat = 3.0e-4
    max_length: Positive = 4096
    train_top_layers: int = 4  # -1 = full fine-tuning (the paper); 4 of 30 keeps CPU steps short
    max_val: Positive = 32
    eval_every: NonNegative = 0  # validation + checkpoint every N steps (0 = at the end only)
    precision: str = "fp32"
    # Evaluation without a policy.
    # Enough items that the 95% intervals can tell a reward model from chance.
    prm800k_limit: int | None = 40  # solutions of phase-1 test (None = all)
    processbench_limit: Positive | None = 16  # entries per split (None = all)
    processbench_splits: list[str] = field(default_factory=lambda: ["gsm8k", "math"])
    # Evaluation with the policy.
    dataset: str = "gsm8k"
    problems: Positive = 3
    n_values: list[int] = field(default_factory=lambda: [1, 2, 4])
    max_steps: Positive = 5
    max_step_tokens: Positive = 48
    max_solution_tokens: Positive = 192
    subsamples: Positive = 2
    prompt_style: str = "paragraph"
    device: Device = "cpu"
    # Sequences per forward pass of the hf policy (search, annotation, self-training's eval):
    # decoding a 135M model on CPU reads all its weights per step, so a larger batch is nearly
    # free (bench_policy.py: ~1.25x the tokens/s of 16; finished rows leave the batch).
    policy_batch_size: Positive = 64
    # Annotation. The embedded 135M policy is almost never right: 3 of 375 short MATH train
    # problems whose answer is a number in the question, 1 of the 400 shortest questions and 1 of
    # the 200 shortest GSM8K solutions are solved by its greedy solution, and ~1% of samples at
    # T 0.8 are right on any set tried. The quickstart annotates the three MATH problems it solves
    # greedily, at T 0.5, where 10-16% of its samples are right (25 of 192 measured), so the
    # trees have correct and wrong leaves and MC-scores strictly between 0 and 1. How they were
    # found: scripts/solve_rates.py (docs/results.md, "Quickstart: annotation at this scale"). A short paragraph
    # prompt: the paper's prompt makes this model copy its example's answer.
    annotate_backend: str = "hf"  # or openai: a vLLM / SGLang / llama.cpp server (annotate_base_url)
    annotate_base_url: str = ""
    annotate_served_model: str = ""  # the server's model name (default: `model`)
    annotate_dataset: str = "math-train"
    annotate_order: str = "shortest_question"
    # Only these problems ([] = all, in annotate_order); at most annotate_problems of them.
    annotate_problem_ids: list[str] = field(
        default_factory=lambda: ["b76b0eef993517e0", "5e3416f9403f7ca9", "62a72e84f58e33c6"]
    )
    annotate_problems: Positive = 3
    annotate_mode: str = "mcts"
    annotate_budget: NonNegative = 40  # rollouts per problem
    # 8 a round: twice the rows per generate call of the default 4, for about the time of 24
    # rollouts at 4 (measured); ~2 correct leaves a run at 24 rollouts was too close to none.
    annotate_rollouts_per_round: Positive = 8
    # More than the paper's 5-6: this policy is right mostly from the root (deep rollouts continue
    # its own wrong paths), and a node takes at most `children` rollout starts. Capped so, 4
    # children gave 2, 0 and 2 correct leaves (seeds 0, 1, 3) and 6 gave 2 and 0 (seeds 0, 1);
    # 8 gave 6 and 6.
    annotate_children: Positive = 8
    annotate_max_depth: Positive = 4
    annotate_max_solution_tokens: Positive = 96
    annotate_temperature: NonNegativeFloat = 0.5
    annotate_prompt_style: str = "paragraph"  # step = the paper's A.3 "# Step X" prompt
    annotate_template: str = (
        "{question}\nSolve it step by step. Put a blank line after each step. "
        "End with '# Answer' on its own line, then the final answer.\n{previous_steps}"
    )
    # Which stages run (a stage left out uses what an earlier run left in out_dir).
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    # Reward models from the trees: the same budget for both.
    tree_train_steps: Positive = 6
    tree_val_fraction: Fraction = 0.2
    tree_rm_eval: bool = False  # also evaluate them like stage 3 (adds ~2 min on CPU)
    # Self-training on the trees' trajectories, then the tuned policy on the eval problems.
    selftrain_steps: Positive = 4
    selftrain_min_mc: float = (
        0.0  # paper 0.9; at this scale few paths pass more than "reaches a correct leaf"
    )
    selftrain_top_layers: NonNegative = 4
    selftrain_from_hnc: bool = False  # also tune on the HNC trees (paper Table 4: PRM vs HRM trees)


def _train_config(
    cfg: QuickstartConfig, kind: str, out: Path, data: Path | None = None, name: str = ""
) -> rm_train.TrainConfig:
    tc = rm_train.TrainConfig(output_dir=str(out / "rm" / (name or kind)))
    tc.model.name = cfg.model
    tc.model.train_top_layers = cfg.train_top_layers
    data = data or out / "data" / kind
    tc.data.train = str(data / "train.jsonl")
    tc.data.val = str(data / "val.jsonl")
    tc.data.max_val = cfg.max_val
    tc.template.max_length = cfg.max_length
    tc.optim.learning_rate = cfg.learning_rate
    tc.optim.batch_size = cfg.batch_size
    tc.data.trie_run = cfg.train_trie_run
    tc.optim.max_steps = cfg.train_steps
    tc.optim.precision = cfg.precision  # type: ignore[assignment]
    tc.optim.warmup = 0.1
    # Validation (and so checkpoints, which must line up with it) costs a minute on CPU.
    tc.eval.every_steps = cfg.eval_every if cfg.eval_every > 0 else cfg.train_steps
    tc.checkpoint.every_steps = tc.eval.every_steps
    tc.logging_steps = max(cfg.train_steps // 10, 1)
    return tc


def _eval_config(
    cfg: QuickstartConfig, out_dir: Path, models: dict[str, Path] | None
) -> search_run.EvalConfig:
    sc = search_run.EvalConfig(
        out_dir=str(out_dir),
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        limit=cfg.problems,
        n_values=list(cfg.n_values),
        subsamples=cfg.subsamples,
        prm=str(models["prm"]) if models else "",
        hrm=str(models["hrm"]) if models else "",
        rm=ScorerSettings(device=cfg.device),
        max_steps=cfg.max_steps,
        max_step_tokens=cfg.max_step_tokens,
        max_solution_tokens=cfg.max_solution_tokens,
    )
    sc.policy.model = cfg.model
    sc.policy.device = cfg.device
    sc.policy.batch_size = cfg.policy_batch_size
    # A 135M policy rarely writes the paper's "# Step X" headers but does end steps with a blank
    # line, so steps are paragraphs here; configs/quickstart_gpu.yaml uses the paper's prompt.
    sc.prompt.style = cfg.prompt_style
    return sc


def _annotate_config(cfg: QuickstartConfig, out: Path) -> annotate_run.AnnotateConfig:
    ac = annotate_run.AnnotateConfig(
        out_dir=str(out / "annotate"),
        dataset=cfg.annotate_dataset,
        data_dir=cfg.data_dir,
        limit=cfg.annotate_problems,
        problem_ids=list(cfg.annotate_problem_ids),
        order=cfg.annotate_order,  # type: ignore[arg-type]
        mode=cfg.annotate_mode,  # type: ignore[arg-type]
        children=cfg.annotate_children,
        max_depth=cfg.annotate_max_depth,
        budget=cfg.annotate_budget,
        rollouts_per_round=cfg.annotate_rollouts_per_round,
        max_solution_tokens=cfg.annotate_max_solution_tokens,
        max_step_tokens=cfg.max_step_tokens,
        temperature=cfg.annotate_temperature,
        batch_problems=cfg.annotate_problems,
    )
    ac.policy.model = cfg.annotate_served_model or cfg.model
    ac.policy.device = cfg.device
    ac.policy.batch_size = cfg.policy_batch_size
    ac.policy.backend = cfg.annotate_backend
    if cfg.annotate_base_url:
        ac.policy.base_url = cfg.annotate_base_url
    ac.prompt.style = cfg.annotate_prompt_style
    ac.prompt.template = cfg.annotate_template
    return ac


def _tree_summary(trees_path: Path, out: Path) -> dict[str, Any]:
    s = tree_stats(list(read_trees(trees_path)))
    write_stats(s, out / "annotate" / "trees.stats.json", out / "annotate" / "mc_histogram.png")
    print(format_tree_stats(s, title=str(trees_path)))
    return s


def _selftrain(cfg: QuickstartConfig, out_dir: Path, trees_path: Path) -> Path | None:
    st = selftrain.SelftrainConfig(
        trees=str(trees_path),
        model=cfg.model,
        out_dir=str(out_dir),
        min_mc=cfg.selftrain_min_mc,
        max_steps=cfg.selftrain_steps,
        train_top_layers=cfg.selftrain_top_layers,
        max_length=768,
        save_every=max(cfg.selftrain_steps, 1),
    )
    try:
        return selftrain.run(st) / "model"
    except DataError as e:
        # At smoke scale a tree set can hold no correct trajectory; say so instead of failing
        # the whole quickstart after its other stages finished.
        print(f"selftrain skipped: {e}")
        log.warning("selftrain skipped: %s", e)
        return None


def _stage(name: str) -> float:
    print(f"\n=== quickstart: {name} ===", flush=True)
    return time.perf_counter()


@locked(lambda cfg: cfg.out_dir)
def run(cfg: QuickstartConfig) -> Path:
    """Run the chosen `stages` in order (each resumes or returns its finished result) and write
    the report. A stage left out uses what an earlier run of it left in `out_dir`."""
    unknown = sorted(set(cfg.stages) - set(STAGES))
    if unknown:
        raise ConfigError(f"stages: unknown {unknown}; known: {list(STAGES)}")
    out = Path(cfg.out_dir)
    write_meta(out, to_dict(cfg), inputs=[cfg.data_input])
    timings: dict[str, float] = {}
    on = set(cfg.stages)
    n = len(cfg.stages) + 1
    k = iter(range(1, n + 1))
    data_dirs = {kind: out / "data" / kind for kind in ("prm", "hrm")}
    models = {kind: out / "rm" / kind / "model" for kind in ("prm", "hrm")}
    rm_eval_json = out / "rm_eval" / "rm_eval.json"
    eval_dir = out / f"eval_{cfg.dataset}"
    trees_path = out / "annotate" / "trees.jsonl"

    if "data" in on:
        t = _stage(f"{next(k)}/{n} build PRM and HRM data from PRM800K phase-1 train")
        for kind in ("prm", "hrm"):
            data_dirs[kind] = data_build.run(
                data_build.BuildConfig(
                    kind=kind,  # type: ignore[arg-type]
                    input=cfg.data_input,
                    out_dir=str(out / "data" / kind),
                    max_problems=cfg.data_max_problems,
                )
            )
        timings["data"] = time.perf_counter() - t

    if "train" in on:
        t = _stage(
            f"{next(k)}/{n} train a PRM and an HRM ({cfg.train_steps} steps x batch {cfg.batch_size} each)"
        )
        for kind in ("prm", "hrm"):
            models[kind] = rm_train.run(_train_config(cfg, kind, out)) / "model"
        timings["train"] = time.perf_counter() - t

    if "rm_eval" in on:
        t = _stage(f"{next(k)}/{n} evaluate both without a policy (PRM800K test, ProcessBench)")
        rm_eval_json = rm_evaluate.run(_rm_eval_config(cfg, [models["prm"], models["hrm"]], out / "rm_eval"))
        timings["rm_eval"] = time.perf_counter() - t

    if "eval" in on:
        t = _stage(
            f"{next(k)}/{n} search with the policy on {cfg.problems} {cfg.dataset} problems, N in {cfg.n_values}"
        )
        eval_dir = search_run.run(_eval_config(cfg, eval_dir, models=_existing(models, "train")))
        timings["eval"] = time.perf_counter() - t

    trees_summary = None
    if "annotate" in on:
        t = _stage(f"{next(k)}/{n} annotate {cfg.annotate_problems} {cfg.annotate_dataset} problems "
                   f"({cfg.annotate_mode}, no human labels)")  # fmt: skip
        trees_path = annotate_run.run(_annotate_config(cfg, out))
        trees_summary = _tree_summary(trees_path, out)
        timings["annotate"] = time.perf_counter() - t

    tree_data: dict[str, Path] = {}
    tree_models: dict[str, Path] = {}
    tree_eval = None
    if "tree_rms" in on:
        t = _stage(f"{next(k)}/{n} PRM and HRM (+HNC) data from the trees; train both with the same budget")
        _need(trees_path, "annotate")
        for kind in ("prm", "hrm"):
            tree_data[kind] = data_build.run(
                data_build.BuildConfig(
                    kind=kind,  # type: ignore[arg-type]
                    trees=str(trees_path),
                    out_dir=str(out / "data" / f"tree_{kind}"),
                    val_fraction=cfg.tree_val_fraction,
                    quiet=True,
                )
            )
            tc = _train_config(cfg, kind, out, data=out / "data" / f"tree_{kind}", name=f"tree_{kind}")
            tc.optim.max_steps = cfg.tree_train_steps
            tc.eval.every_steps = tc.checkpoint.every_steps = cfg.tree_train_steps
            tree_models[kind] = rm_train.run(tc) / "model"
        if cfg.tree_rm_eval:
            tree_eval = rm_evaluate.run(
                _rm_eval_config(cfg, [tree_models["prm"], tree_models["hrm"]], out / "rm_eval_trees")
            )
        timings["tree_rms"] = time.perf_counter() - t

    tuned: dict[str, Path | None] = {}
    tuned_evals: dict[str, Path] = {}
    if "selftrain" in on:
        t = _stage(
            f"{next(k)}/{n} self-train the policy on the trees ({cfg.selftrain_steps} steps), then base vs tuned"
        )
        _need(trees_path, "annotate")
        sources = {"trees": trees_path}
        if cfg.selftrain_from_hnc:
            from hiprm.annotate import hnc_run

            hnc_path = out / "annotate" / "trees_hnc.jsonl"
            sources["hnc_trees"] = hnc_run.run(
                hnc_run.HNCConfig(trees=str(trees_path), out=str(hnc_path), quiet=True)
            )
        rms = _existing(models, "train") or _existing(
            {kk: out / "rm" / f"tree_{kk}" / "model" for kk in models}, "tree_rms"
        )
        for name, src in sources.items():
            tuned[name] = _selftrain(
                cfg, out / f"selftrain_{name}" if len(sources) > 1 else out / "selftrain", src
            )
            if tuned[name] is not None:
                sc = _eval_config(cfg, out / f"eval_{cfg.dataset}_tuned_{name}", models=rms)
                sc.methods = ["majority", "pass"] + [f"{rm}-min" for rm in sorted(rms or {})]
                sc.policy.model = str(tuned[name])
                tuned_evals[name] = search_run.run(sc)
        timings["selftrain"] = time.perf_counter() - t

    _stage(f"{n}/{n} report")
    # Stages left out this time are reported from what an earlier run left in out_dir.
    shown = set(on)
    shown |= {"data"} if all((d / "meta.json").is_file() for d in data_dirs.values()) else set()
    shown |= {"train"} if _existing(models, "train") else set()
    shown |= {"rm_eval"} if rm_eval_json.is_file() else set()
    shown |= {"eval"} if (eval_dir / "report.md").is_file() else set()
    if trees_summary is None and trees_path.is_file():
        trees_summary = tree_stats(list(read_trees(trees_path)))
    if not tree_models:
        found = {k: out / "rm" / f"tree_{k}" / "model" for k in ("prm", "hrm")}
        if all((m / "config.json").is_file() for m in found.values()):
            tree_models = found
            tree_data = {k: out / "data" / f"tree_{k}" for k in found}
    if not tuned:
        for name, folder in (("trees", out / "selftrain"), ("trees", out / "selftrain_trees"),
                             ("hnc_trees", out / "selftrain_hnc_trees")):  # fmt: skip
            if (folder / "model" / "config.json").is_file():
                tuned[name] = folder / "model"
                done_eval = out / f"eval_{cfg.dataset}_tuned_{name}"
                if (done_eval / "metrics.json").is_file():
                    tuned_evals[name] = done_eval
    tree_models = tree_models if len(tree_models) == 2 else {}
    if tree_eval is None and (out / "rm_eval_trees" / "rm_eval.json").is_file():
        tree_eval = out / "rm_eval_trees" / "rm_eval.json"
    report = write_report(cfg, out, data_dirs, models, rm_eval_json, eval_dir, timings, shown)
    _append_tree_report(
        report, cfg, trees_summary, tree_data, tree_models, tree_eval, tuned, eval_dir, tuned_evals
    )
    print(f"\nquickstart done in {sum(timings.values()) / 60:.1f} min; report: {report}")
    return report


def _existing(models: dict[str, Path], stage: str) -> dict[str, Path] | None:
    """The models if they all exist (trained now or by an earlier run), else None."""
    return models if all((m / "config.json").is_file() for m in models.values()) else None


def _need(path: Path, stage: str) -> None:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: run the '{stage}' stage first (stages=[{stage}, ...])")


def _rm_eval_config(cfg: QuickstartConfig, models: list[Path], out: Path) -> rm_evaluate.RMEvalConfig:
    return rm_evaluate.RMEvalConfig(
        models=[str(m) for m in models],
        out=str(out),
        data_dir=cfg.data_dir,
        prm800k_limit=cfg.prm800k_limit,
        processbench_splits=list(cfg.processbench_splits),
        limit=cfg.processbench_limit,
        threshold_split=cfg.processbench_splits[0],
        device=cfg.device,
        bootstrap=200,
    )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _training_summary(model_dir: Path) -> str:
    meta = _read_json(model_dir.parent / "meta.json")
    val = meta.get("validation", {})
    keys = [k for k in ("eval_loss", "eval_accuracy", "eval_f1", "eval_auroc") if k in val]
    vals = ", ".join(f"{k.removeprefix('eval_')} {val[k]:.3f}" for k in keys)
    return f"{meta.get('global_step', '?')} steps, train loss {meta.get('train_loss', float('nan')):.3f}; validation: {vals}"


def write_report(
    cfg: QuickstartConfig,
    out: Path,
    data_dirs: dict[str, Path],
    models: dict[str, Path],
    rm_eval_json: Path,
    eval_dir: Path,
    timings: dict[str, float],
    stages: set[str] | None = None,
) -> Path:
    on = set(STAGES) if stages is None else stages
    lines = [
        "# hiprm quickstart report",
        "",
        f"Backbone and policy: `{cfg.model}`. Stages: {', '.join(x for x in STAGES if x in on)}.",
        "",
        "**Scale.** This is a CPU-scale run: a 135M model, tens of training steps, a few hundred",
        f"evaluation items and {cfg.problems} policy problems. Differences between PRM and HRM",
        "at this scale are mostly noise; read the confidence intervals. The same command with",
        "`configs/quickstart_gpu.yaml` runs the paper-scale experiment.",
        "",
        "Stage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()),
    ]
    if "data" in on:
        lines += ["", "## Training data"]
        for kind, d in data_dirs.items():
            meta = _read_json(d / "meta.json")
            lines += ["", "```", format_stats(meta["stats"], title=f"{kind}: {d}"), "```"]
    if "train" in on:
        lines += ["", "## Reward-model training", "",
                  f"PRM and HRM trained with the same budget: {cfg.train_steps} steps x batch {cfg.batch_size}, "
                  f"lr {cfg.learning_rate}, max length {cfg.max_length}, top {cfg.train_top_layers} layers "
                  "trained (-1 = all).", ""]  # fmt: skip
        for kind, m in models.items():
            lines.append(
                f"- **{kind.upper()}** (`{m}`): {_training_summary(m)}; curves: `{m.parent / 'loss.png'}`"
            )
    if "rm_eval" in on:
        lines += ["", "## Evaluation without a policy", ""]
        md = rm_eval_json.with_suffix(".md")
        lines.append(md.read_text(encoding="utf-8") if md.exists() else f"(missing {md})")
    if "eval" in on:
        lines += ["", f"## Best-of-N and step-level search on {cfg.dataset} ({cfg.problems} problems)", ""]
        table = eval_dir / "report.md"
        lines.append(table.read_text(encoding="utf-8") if table.exists() else f"(missing {table})")
        lines.append(f"\nPlot: `{eval_dir / 'accuracy.png'}`")
    path = out / "report.md"
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    return path


def _append_tree_report(
    report: Path,
    cfg: QuickstartConfig,
    trees: dict[str, Any] | None,
    tree_data: dict[str, Path],
    tree_models: dict[str, Path],
    tree_eval: Path | None,
    tuned: dict[str, Path | None],
    base_eval: Path,
    tuned_evals: dict[str, Path],
) -> None:
    lines: list[str] = []
    if trees is not None:
        lines += [
            "",
            f"## Auto-annotation: {cfg.annotate_mode} trees on {cfg.annotate_problems} {cfg.annotate_dataset} problems",
            "",
            "```",
            format_tree_stats(trees),
            "```",
            "",
            f"Share of nodes with 0 < MC < 1: **{trees['share_strictly_between']:.1%}** of {trees['scored_nodes']}. "
            f"Histogram: `{report.parent / 'annotate' / 'mc_histogram.png'}`.",
        ]
    if tree_models:
        lines += [
            "",
            "## PRM and HRM trained on the trees (soft MC-score labels, HNC on the training split)",
            "",
        ]
        for kind, d in tree_data.items():
            meta = _read_json(d / "meta.json")
            lines += ["```", format_stats(meta["stats"], title=f"tree {kind}: {d}"), "```"]
        for kind, m in tree_models.items():
            lines.append(f"- **tree {kind.upper()}** (`{m}`): {_training_summary(m)}")
        if tree_eval is not None:
            md = tree_eval.with_suffix(".md")
            lines += ["", md.read_text(encoding="utf-8") if md.exists() else f"(missing {md})"]
    if tuned:
        lines += ["", "## Self-training: base vs tuned policy", ""]
        base = _accuracy_rows(base_eval)
        done = {k: v for k, v in tuned.items() if v is not None}
        for name, path in tuned.items():
            lines.append(f"- tuned on `{name}`: " + (f"`{path}` ({cfg.selftrain_steps} steps)" if path else
                         "skipped: no trajectory passed the selection (see the log)"))  # fmt: skip
        if done:
            cols = list(done)
            rows = {name: _accuracy_rows(tuned_evals.get(name)) for name in cols}
            lines += ["", f"Accuracy (%) ± 95% CI on {cfg.problems} {cfg.dataset} problems (same prompts and N):", "",
                      "| method | N | base | " + " | ".join(f"tuned ({c})" for c in cols) + " |",
                      "|---|---:|---:|" + "---:|" * len(cols)]  # fmt: skip
            methods = sorted({m for r in rows.values() for m in r})
            for method in methods:
                for n_ in sorted({n for r in rows.values() for n in r.get(method, {})}, key=int):
                    cells = [_pct(rows[c].get(method, {}).get(n_, {})) for c in cols]
                    lines.append(
                        f"| {method} | {n_} | {_pct(base.get(method, {}).get(n_, {}))} | "
                        + " | ".join(cells)
                        + " |"
                    )
    if lines:
        with atomic_write(report) as f:
            f.write(report.read_text(encoding="utf-8") + "\n".join(lines) + "\n")


def _accuracy_rows(eval_dir: Path | None) -> dict[str, dict[str, Any]]:
    if eval_dir is None:
        return {}
    return _read_json(eval_dir / "metrics.json").get("accuracy", {})


def _pct(cell: dict[str, Any]) -> str:
    if not cell or cell.get("accuracy") is None:
        return "-"
    ci = f" ± {100 * cell['ci95']:.1f}" if cell.get("ci95") is not None else ""
    return f"{100 * cell['accuracy']:.1f}{ci}"
