"""`hiprm annotate`: questions with reference answers (no human labels) -> MCTS trees with MC-scores.

    hiprm annotate configs/annotate_gsm8k_cpu.yaml [key=value ...]
    hiprm annotate dataset=prm800k-train mode=mcts budget=64 policy.backend=openai policy.base_url=http://127.0.0.1:8000/v1

parse -> load problems (`gsm8k-train`, `math-train`, `prm800k-train` = the 808 finished phase-1
train problems as in the paper, or any JSONL with named fields) -> check every problem before
any work (empty question, missing or ungradable reference: an error naming file:line:field, or
skipped and counted with `skip_bad=true`) -> build the policy (`hiprm.policy.build`, the same
block as `hiprm eval`) -> grow trees through the executor (`local`: `hiprm.annotate.grow`, many
problems in flight) -> append each finished tree to `out_dir/trees.jsonl` -> summary in
`meta.json`.

Resume: trees are appended one line per finished problem (`artifacts.read_appended`: a torn last
line is redone). Rerun the same command after any interruption (kill -9 included): finished
problems are skipped, none is written twice, and a run whose config (less throughput keys),
dataset contents or policy weights changed is refused, naming what changed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hiprm.annotate.grow import GrowSettings, grow_trees
from hiprm.artifacts import (
    DataError,
    SkipLog,
    append_jsonl,
    locked,
    read_appended,
    start_or_resume,
    weights_fingerprint,
    write_meta,
)
from hiprm.config import (
    ConfigError,
    NonNegative,
    NonNegativeFloat,
    Positive,
    PositiveFloat,
    Probability,
    check_config_fields,
    to_dict,
)
from hiprm.data.problems import load_problem_set, order_problems
from hiprm.grading import GradingMode, extract_answer, is_equivalent
from hiprm.policy.build import OPERATIONAL_POLICY_KEYS, PolicyConfig, PromptConfig, build_policy, build_style
from hiprm.records import Problem
from hiprm.tree import Tree, tree_stats

log = logging.getLogger(__name__)

@dataclass
class AnnotateConfig:
    """`dataset`: a problem set of `hiprm.data.problems.PROBLEM_SETS` (gsm8k-train, math-train,
    prm800k-train, ...) | path/to/problems.jsonl (with
    `question_field` / `answer_field`). `order`: file | shortest_solution (GSM8K: problems whose
    reference solution is shortest first) | shortest_question. `mode`,
    `children`, `max_depth`, `budget` (+ `budget_unit`), sampling and MCTS settings: see
    `hiprm.annotate.grow`. `executor`: local | ray. `batch_problems`: problems in flight at once (per Ray task)."""

    out_dir: str = "runs/annotate"  # trees.jsonl + meta.json go here
    dataset: str = "gsm8k-train"
    data_dir: str = "../shared/data"  # where the named datasets are
    question_field: str = "question"
    answer_field: str = "answer"
    limit: NonNegative = 0  # first N problems (after `order`); 0 = all
    problem_ids: list[str] = field(default_factory=list)  # only these problems (in `order`); [] = all
    order: Literal["file", "shortest_solution", "shortest_question"] = "file"
    mode: Literal["bfs", "mcts"] = "bfs"
    children: Positive = 5  # samples per node (bfs) / most children of a node (mcts); paper 5-6
    max_depth: Positive = 7  # deepest step; a step there that is not final is a truncated leaf
    budget: NonNegative = 0  # per problem, in budget_unit (mcts: required unless ci_width; bfs: a cap); 0 = none
    budget_unit: Literal["rollouts", "tokens"] = "rollouts"
    temperature: NonNegativeFloat = 0.7  # sampling (reference code: 0.1)
    top_p: Probability = 0.95
    max_step_tokens: Positive = 256  # bfs: tokens per step
    max_solution_tokens: Positive = 1024  # mcts: tokens per rollout
    rollouts_per_round: Positive = 4  # mcts: rollouts per problem per generate round
    c_explore: NonNegativeFloat = 0.1  # mcts: weight of the UCT exploration bonus
    ci_width: Probability = 0.0  # mcts: stop once every 95% Wilson interval is narrower; 0 = off
    truncated_as: Literal["wrong", "drop"] = "wrong"  # how depth-limited leaves count
    score: Literal["leaf_fraction", "child_mean"] = "leaf_fraction"  # MC-score rule (paper: leaf_fraction)
    grade_timeout: PositiveFloat = 3.0  # seconds for the symbolic answer check
    grading: GradingMode = "strict"  # leaf verdicts (labels); strict: in the reference's form, as PRM800K's grader
    batch_problems: Positive = 16  # problems in flight at once (one generate call per round for all)
    executor: str = "local"  # local (this process) | ray (chunks of batch_problems as Ray tasks)
    ray_address: str = ""  # a Ray cluster (ray://HOST:10001 or auto); empty = a local Ray
    ray_workers: Positive = 2  # CPUs of the local Ray (ignored with ray_address)
    seed: int = 0  # request seeds derive from it, the problem and the node
    skip_bad: bool = False  # skip (and count) bad problems instead of stopping
    progress: bool = True  # progress bar
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


OPERATIONAL_KEYS = {
    "limit",
    "problem_ids",
    "progress",
    "batch_problems",
    "executor",
    "ray_address",
    "ray_workers",
    *OPERATIONAL_POLICY_KEYS,
}


def check_config(cfg: AnnotateConfig) -> None:
    """Before any work starts: each field's type and range (`check_config_fields`, as when the
    config is loaded from YAML), then what no single field's type says."""
    check_config_fields(cfg)
    if not 0 < cfg.top_p:
        raise ConfigError("top_p: must be in (0, 1]")
    if cfg.mode == "mcts" and cfg.budget == 0 and cfg.ci_width == 0:
        raise ConfigError("budget: mode=mcts needs budget > 0 or ci_width > 0")
    if cfg.executor not in EXECUTOR_NAMES:
        raise ConfigError(f"executor: {cfg.executor!r} is not one of {list(EXECUTOR_NAMES)}")
    if cfg.mode == "bfs" and cfg.temperature == 0 and cfg.children > 1:
        log.warning("temperature=0 with children=%d: every sibling is the same step (stored once, counted %d times)",
                    cfg.children, cfg.children)  # fmt: skip


# --- problems ------------------------------------------------------------------------------------


def load_problems(cfg: AnnotateConfig, skip_log: SkipLog | None = None) -> tuple[list[Problem], Path]:
    problems, path = load_problem_set(cfg.dataset, cfg.data_dir, cfg.question_field, cfg.answer_field, skip_log)
    seen = {p.problem_id for p in problems}
    if cfg.problem_ids:
        missing = sorted(set(cfg.problem_ids) - seen)
        if missing:
            raise ConfigError(f"problem_ids: {missing} are not problem ids of {path}")
        wanted = set(cfg.problem_ids)
        problems = [p for p in problems if p.problem_id in wanted]
    problems = order_problems(problems, cfg.order)
    checked = []
    for p in problems:  # stops at `limit` good ones
        why = ungradable(p.answer, cfg.grade_timeout)
        if why:
            err = DataError(p.source.rsplit(":", 1)[0] if ":" in p.source else p.source,
                            f"reference answer {p.answer[:80]!r} cannot be graded ({why})",
                            _line_of(p.source), cfg.answer_field)  # fmt: skip
            if skip_log is None:
                raise err
            skip_log.add(err)
            continue
        checked.append(p)
        if cfg.limit and len(checked) == cfg.limit:
            break
    if not checked:
        raise DataError(path, "no problems to annotate")
    return checked, path


def ungradable(answer: str, timeout: float = 3.0) -> str:
    r"""Why a reference answer cannot serve as one ("" if it can): a leaf that writes exactly the
    reference in the policy's `# Answer` format must be graded correct, or every leaf of the tree
    would be wrong whatever the policy does.

    >>> ungradable("\\frac{1}{2}"), ungradable("\\frac{"), ungradable("3\n\n4")
    ('', 'unbalanced braces', 'an answer block with it does not grade as correct')
    """
    if answer.count("{") != answer.count("}"):
        return "unbalanced braces"
    if not is_equivalent(extract_answer(f"# Answer\n\n{answer}"), answer, timeout=timeout or 3.0):
        return "an answer block with it does not grade as correct"
    return ""


def _line_of(source: str) -> int | None:
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


# --- identity --------------------------------------------------------------------------------------


def policy_fingerprint(pc: PolicyConfig) -> str:
    """What identifies the policy's weights: for a local model folder, a hash of its config and
    of each weight file's size and first/last MiB (a retrained model at the same path differs);
    otherwise the name (served models are identified by `model` + `base_url`)."""
    if pc.backend == "scripted":
        return (
            hashlib.sha256(Path(pc.script).read_bytes()).hexdigest()[:16] if Path(pc.script).is_file() else ""
        )
    if pc.backend != "hf" or not Path(pc.model).expanduser().is_dir():
        return pc.model
    return weights_fingerprint(pc.model)


# --- executors ---------------------------------------------------------------------------------------
# The seam: problems in, finished trees out, in any order. `local` grows every problem in this
# process, `batch_problems` at a time in one generate call per round; `ray` sends chunks of
# `batch_problems` problems to Ray tasks (`hiprm.executors`), each growing its chunk the same
# way with a policy built in the worker from the same config. Trees do not depend on how
# problems are batched (per-request seeds), so both give the same file.

EXECUTOR_NAMES = ("local", "ray")
_WORKER_POLICIES: dict[str, Any] = {}  # one policy per config per Ray worker process


def annotate_chunk(job: dict[str, Any]) -> list[dict[str, Any]]:
    """One Ray task: a chunk of problems -> their tree dicts (module level, so Ray can ship it)."""
    from hiprm.config import from_dict

    cfg = from_dict(AnnotateConfig, job["config"])
    key = repr(sorted(job["config"]["policy"].items()))
    if key not in _WORKER_POLICIES:
        _WORKER_POLICIES[key] = build_policy(cfg.policy)
    problems = [Problem(**p) for p in job["problems"]]
    return [
        t.to_dict()
        for t in grow_trees(problems, _WORKER_POLICIES[key], build_style(cfg.prompt), grow_settings(cfg))
    ]


def _trees_of(
    cfg: AnnotateConfig, todo: list[Problem], policy: Any, on_round: Callable | None
) -> Iterator[dict[str, Any]]:
    if cfg.executor == "local":
        for tree in grow_trees(todo, policy, build_style(cfg.prompt), grow_settings(cfg), on_round):
            yield tree.to_dict()
        return
    from dataclasses import asdict

    from hiprm.executors import map_unordered

    config = to_dict(cfg)
    k = cfg.batch_problems
    jobs = [
        {"config": config, "problems": [asdict(p) for p in todo[i : i + k]]} for i in range(0, len(todo), k)
    ]
    for trees in map_unordered(annotate_chunk, jobs, executor="ray", ray_address=cfg.ray_address,
                               workers=cfg.ray_workers):  # fmt: skip
        yield from trees


def grow_settings(cfg: AnnotateConfig) -> GrowSettings:
    keys = GrowSettings.__dataclass_fields__
    return GrowSettings(**{k: getattr(cfg, k) for k in keys})


# --- runner ------------------------------------------------------------------------------------------


@locked(lambda cfg: cfg.out_dir)
def run(cfg: AnnotateConfig, *, policy: Any = None) -> Path:
    """Annotate; returns the path of `trees.jsonl`. `policy` overrides the configured one (tests)."""
    check_config(cfg)
    build_style(cfg.prompt)
    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir: {out_dir} exists and is not a folder")
    skip_log = SkipLog() if cfg.skip_bad else None
    problems, data_path = load_problems(cfg, skip_log)
    if not problems:
        raise DataError(data_path, "no problems to annotate (check limit, dataset and skip_bad)")
    if skip_log is not None and skip_log.count:
        log.warning("%s: %s", data_path, skip_log.summary())
    config = {**to_dict(cfg), "policy_fingerprint": policy_fingerprint(cfg.policy)}
    trees_path = out_dir / "trees.jsonl"
    done = start_or_resume(out_dir, "trees.jsonl", config, [p.problem_id for p in problems], operational=OPERATIONAL_KEYS,
                           inputs=[data_path], dataset_path=str(data_path), problems=len(problems), status="running")  # fmt: skip
    todo = [p for p in problems if p.problem_id not in done]
    if todo:
        _annotate(cfg, todo, len(problems), trees_path, policy)
    trees = [Tree.from_dict(d, str(trees_path), i + 1) for i, d in enumerate(read_appended(trees_path))]
    wanted = {p.problem_id for p in problems}
    trees = [t for t in trees if t.problem_id in wanted]
    write_meta(out_dir, config, inputs=[data_path], dataset_path=str(data_path), problems=len(problems),
               status="done" if len(trees) == len(problems) else "partial", summary=summarize(trees),
               skipped_bad=skip_log.count if skip_log else 0)  # fmt: skip
    return trees_path


def _annotate(cfg: AnnotateConfig, todo: list[Problem], total: int, trees_path: Path, policy: Any) -> None:
    from tqdm import tqdm

    own = policy is None and cfg.executor == "local"  # Ray workers build their own
    policy = build_policy(cfg.policy) if own else policy
    t0 = time.perf_counter()
    totals = {"rollouts": 0, "tokens": 0}
    bar = tqdm(
        total=total,
        initial=total - len(todo),
        desc=f"annotate ({cfg.mode})",
        unit="problem",
        disable=not cfg.progress,
    )

    def on_round(stats: dict[str, Any]) -> None:
        totals["tokens"] += stats["tokens"]
        elapsed = max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(
            round=stats["round"],
            tokens=totals["tokens"],
            tok_s=f"{totals['tokens'] / elapsed:.0f}",
            refresh=False,
        )
        bar.refresh()

    try:
        for tree in _trees_of(cfg, todo, policy, on_round):
            append_jsonl(trees_path, tree)
            bar.update(1)
    finally:
        bar.close()
        if own:
            policy.close()


def summarize(trees: list[Tree]) -> dict[str, Any]:
    """meta.json's summary: tree statistics plus the summed cost blocks."""
    stats = tree_stats(trees)
    cost: dict[str, float] = {}
    for t in trees:
        for k, v in t.cost.items():
            if isinstance(v, int | float) and k != "tokens_per_labelled_node":
                cost[k] = cost.get(k, 0) + v
    labelled = cost.get("labelled_nodes", 0)
    cost["tokens_per_labelled_node"] = (
        round(cost.get("generated_tokens", 0) / labelled, 2) if labelled else None
    )
    return {**stats, "cost": cost}
