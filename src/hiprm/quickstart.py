"""`hiprm quickstart`: the whole pipeline end to end on the embedded default, in one command.

    hiprm quickstart                                   # ~10 min on 2 CPU cores -> runs/quickstart/
    hiprm quickstart configs/quickstart_gpu.yaml       # the paper-scale experiment on a GPU machine

Stages, each an ordinary hiprm runner writing its own folder under `out_dir`:
1. `data build` PRM and HRM examples from the shared PRM800K phase-1 train file;
2. `rm train` a PRM and an HRM with the *same* budget (steps x batch) from the same backbone;
3. `rm eval` both without a policy (PRM800K step classification and selection, ProcessBench);
4. `eval` both with the policy on a handful of GSM8K problems (step-level search and
   whole-solution best-of-N from one shared pool of candidates);
5. `report.md` gathering the data statistics, training curves and every table.
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

from hiprm.artifacts import atomic_write, write_meta
from hiprm.config import to_dict
from hiprm.data import build as data_build
from hiprm.data.stats import format_stats
from hiprm.rm import evaluate as rm_evaluate
from hiprm.rm import train as rm_train
from hiprm.search import run as search_run

log = logging.getLogger(__name__)


@dataclass
class QuickstartConfig:
    out_dir: str = "runs/quickstart"
    data_input: str = data_build.DEFAULT_INPUT
    data_dir: str = "../shared/data"
    data_max_problems: int | None = 120  # a seeded subset of problems (None = all 808)
    model: str = "smollm2-135m-instruct"  # reward-model backbone and policy
    # Reward-model training: the same budget for PRM and HRM.
    train_steps: int = 10
    batch_size: int = 8
    learning_rate: float = 1.0e-4
    max_length: int = 320
    train_top_layers: int = 4  # -1 = full fine-tuning (the paper); 4 of 30 keeps CPU steps short
    max_val: int = 32
    eval_every: int = 0  # validation + checkpoint every N steps (0 = at the end only)
    precision: str = "fp32"
    # Evaluation without a policy.
    prm800k_limit: int | None = 4  # solutions of phase-1 test (None = all)
    processbench_limit: int | None = 8  # entries per split (None = all)
    processbench_splits: list[str] = field(default_factory=lambda: ["gsm8k", "math"])
    # Evaluation with the policy.
    dataset: str = "gsm8k"
    problems: int = 3
    n_values: list[int] = field(default_factory=lambda: [1, 2, 4])
    max_steps: int = 5
    max_step_tokens: int = 48
    max_solution_tokens: int = 192
    subsamples: int = 2
    prompt_style: str = "paragraph"
    device: str = "cpu"


def _train_config(cfg: QuickstartConfig, kind: str, out: Path) -> rm_train.TrainConfig:
    tc = rm_train.TrainConfig(output_dir=str(out / "rm" / kind))
    tc.model.name = cfg.model
    tc.model.train_top_layers = cfg.train_top_layers
    tc.data.train = str(out / "data" / kind / "train.jsonl")
    tc.data.val = str(out / "data" / kind / "val.jsonl")
    tc.data.max_val = cfg.max_val
    tc.template.max_length = cfg.max_length
    tc.optim.learning_rate = cfg.learning_rate
    tc.optim.batch_size = cfg.batch_size
    tc.optim.max_steps = cfg.train_steps
    tc.optim.precision = cfg.precision  # type: ignore[assignment]
    tc.optim.warmup = 0.1
    # Validation (and so checkpoints, which must line up with it) costs a minute on CPU.
    tc.eval.every_steps = cfg.eval_every if cfg.eval_every > 0 else cfg.train_steps
    tc.checkpoint.every_steps = tc.eval.every_steps
    tc.logging_steps = max(cfg.train_steps // 10, 1)
    return tc


def _stage(name: str) -> float:
    print(f"\n=== quickstart: {name} ===", flush=True)
    return time.perf_counter()


def run(cfg: QuickstartConfig) -> Path:
    out = Path(cfg.out_dir)
    write_meta(out, to_dict(cfg), inputs=[cfg.data_input])
    timings: dict[str, float] = {}

    t = _stage("1/5 build PRM and HRM data from PRM800K phase-1 train")
    data_dirs = {}
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

    t = _stage(f"2/5 train a PRM and an HRM ({cfg.train_steps} steps x batch {cfg.batch_size} each)")
    models = {}
    for kind in ("prm", "hrm"):
        models[kind] = rm_train.run(_train_config(cfg, kind, out)) / "model"
    timings["train"] = time.perf_counter() - t

    t = _stage("3/5 evaluate both without a policy (PRM800K test, ProcessBench)")
    ec = rm_evaluate.EvalConfig(
        models=[str(models["prm"]), str(models["hrm"])],
        out=str(out / "rm_eval"),
        data_dir=cfg.data_dir,
        prm800k_limit=cfg.prm800k_limit,
        processbench_splits=list(cfg.processbench_splits),
        limit=cfg.processbench_limit,
        threshold_split=cfg.processbench_splits[0],
        device=cfg.device,
        bootstrap=200,
    )
    rm_eval_json = rm_evaluate.run(ec)
    timings["rm_eval"] = time.perf_counter() - t

    t = _stage(f"4/5 search with the policy on {cfg.problems} {cfg.dataset} problems, N in {cfg.n_values}")
    sc = search_run.EvalConfig(
        out_dir=str(out / f"eval_{cfg.dataset}"),
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        limit=cfg.problems,
        n_values=list(cfg.n_values),
        subsamples=cfg.subsamples,
        prm=str(models["prm"]),
        hrm=str(models["hrm"]),
        rm_device=cfg.device,
        max_steps=cfg.max_steps,
        max_step_tokens=cfg.max_step_tokens,
        max_solution_tokens=cfg.max_solution_tokens,
    )
    sc.policy.model = cfg.model
    sc.policy.device = cfg.device
    # A 135M policy rarely writes the paper's "# Step X" headers but does end steps with a blank
    # line, so steps are paragraphs here; configs/quickstart_gpu.yaml uses the paper's prompt.
    sc.prompt.style = cfg.prompt_style
    eval_dir = search_run.run(sc)
    timings["eval"] = time.perf_counter() - t

    _stage("5/5 report")
    report = write_report(cfg, out, data_dirs, models, rm_eval_json, eval_dir, timings)
    print(f"\nquickstart done in {sum(timings.values()) / 60:.1f} min; report: {report}")
    return report


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
) -> Path:
    lines = [
        "# hiprm quickstart report",
        "",
        f"Backbone and policy: `{cfg.model}`. PRM and HRM trained with the same budget: "
        f"{cfg.train_steps} steps x batch {cfg.batch_size}, lr {cfg.learning_rate}, max length {cfg.max_length}, "
        f"top {cfg.train_top_layers} layers trained (-1 = all).",
        "",
        "**Scale.** This is a CPU smoke-scale run: a 135M model, tens of training steps, a few",
        f"dozen evaluation items and {cfg.problems} policy problems. Differences between PRM and HRM",
        "at this scale are mostly noise; read the confidence intervals. The same command with",
        "`configs/quickstart_gpu.yaml` runs the paper-scale experiment.",
        "",
        "Stage times: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items()),
        "",
        "## Training data",
    ]
    for kind, d in data_dirs.items():
        meta = _read_json(d / "meta.json")
        lines += ["", "```", format_stats(meta["stats"], title=f"{kind}: {d}"), "```"]
    lines += ["", "## Reward-model training", ""]
    for kind, m in models.items():
        lines.append(f"- **{kind.upper()}** (`{m}`): {_training_summary(m)}; curves: `{m.parent / 'loss.png'}`")
    lines += ["", "## Evaluation without a policy", ""]
    md = rm_eval_json.with_suffix(".md")
    lines.append(md.read_text(encoding="utf-8") if md.exists() else f"(missing {md})")
    lines += ["", f"## Best-of-N and step-level search on {cfg.dataset} ({cfg.problems} problems)", ""]
    table = eval_dir / "report.md"
    lines.append(table.read_text(encoding="utf-8") if table.exists() else f"(missing {table})")
    lines.append(f"\nPlot: `{eval_dir / 'accuracy.png'}`")
    path = out / "report.md"
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    return path
