"""`hiprm data build`: PRM800K raw records -> ORM / PRM / HRM example JSONL, split by problem.

    hiprm data build --kind hrm                      # shared phase-1 train -> runs/data/hrm/
    hiprm data build --kind prm input=../shared/data/prm800k/phase1_test.jsonl val_fraction=0
    hiprm data build --kind hrm trees=runs/annotate/x/trees.jsonl   # MCTS trees (hiprm.data.trees)

Writes `<out_dir>/train.jsonl`, `<out_dir>/val.jsonl` (one RMExample per line) and
`<out_dir>/meta.json` (resolved settings, input sha256, package version, counts), each
atomically (the previous build's files are removed first, so a killed build never leaves a mix
of two), then prints the statistics of `hiprm data stats`. No problem is on both sides of
the split; the split is a seeded shuffle of the sorted problem ids, so it is reproducible.

With `trees=FILE` the examples come from annotated trees (hiprm's or OpenR's) instead of PRM800K:
MC-score labels, consecutive-pair and (train only) HNC examples; `hiprm.data.trees` says how.
The trees are split by problem before anything else, so HNC never sees a validation problem.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from hiprm.artifacts import DataError, SkipLog, write_jsonl, write_meta
from hiprm.data.labels import Neutral, build_examples, dedupe
from hiprm.data.prm800k import read_prm800k
from hiprm.data.stats import compute_stats, format_stats
from hiprm.data.trees import forest_examples, read_forest
from hiprm.records import RMExample, Solution

log = logging.getLogger(__name__)

DEFAULT_INPUT = "../shared/data/prm800k/phase1_train.reconstructed.jsonl"


@dataclass
class BuildConfig:
    kind: Literal["orm", "prm", "hrm"] = "hrm"
    input: str = DEFAULT_INPUT
    out_dir: str = ""  # default: runs/data/<kind>
    neutral: Literal["negative", "positive", "drop"] = "negative"
    merge_separator: str = "\n\n"
    val_fraction: float = 0.05
    seed: int = 0
    # The reference code trains only on finished solutions; "unknown_not_solution" is the
    # reconstruction's name for a give_up or bad_problem whose exact reason was lost.
    skip_finish_reasons: list[str] = field(default_factory=lambda: ["give_up", "bad_problem", "unknown_not_solution"])
    max_problems: int | None = None
    skip_bad: bool = False
    quiet: bool = False
    # One example per distinct (question, previous steps, current step); disagreeing copies get
    # the mean label (hiprm.data.labels.dedupe). false = keep every copy.
    dedupe: bool = True
    # Trees instead of PRM800K (`input` is then unused); merge_separator joins pairs and HNC steps.
    trees: str = ""
    label_rule: Literal["soft", "hard"] = "soft"  # soft: label = MC-score; hard: mc >= hard_threshold
    hard_threshold: float = 0.5
    balance: bool = False  # the reference code's per-depth score balancing (subsamples nodes)
    hnc: bool = True  # --kind hrm from trees: add HNC examples on the train split
    hnc_min_children: int = 4
    hnc_p: float = 0.5
    hnc_rule: Literal["reference", "node"] = "reference"


def split_by_problem(problem_ids: list[str], val_fraction: float, seed: int) -> set[str]:
    """The problem ids that go to validation: a seeded shuffle of the sorted unique ids.

    >>> sorted(split_by_problem(["a", "b", "c", "d"], 0.5, 0)) == sorted(split_by_problem(["d", "c", "b", "a"], 0.5, 0))
    True
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = sorted(set(problem_ids))
    random.Random(seed).shuffle(ids)
    n_val = round(len(ids) * val_fraction)
    if val_fraction > 0 and len(ids) > 1:
        n_val = max(n_val, 1)
    return set(ids[:n_val])


def select_solutions(solutions: list[Solution], cfg: BuildConfig) -> list[Solution]:
    kept = [s for s in solutions if s.finish_reason not in cfg.skip_finish_reasons]
    if cfg.max_problems is not None:
        keep_ids = sorted({s.problem_id for s in kept})
        random.Random(cfg.seed).shuffle(keep_ids)
        chosen = set(keep_ids[: cfg.max_problems])
        kept = [s for s in kept if s.problem_id in chosen]
    return kept


def _grader():
    from hiprm.grading import extract_answer, is_equivalent

    def grade(text: str, ref: str) -> bool | None:
        pred = extract_answer(text)
        return None if pred is None else is_equivalent(pred, ref)

    return grade


def make_examples(cfg: BuildConfig, skip_log: SkipLog | None = None) -> tuple[list[RMExample], dict[str, int]]:
    """Read the input and return all examples of `cfg.kind` (no split, no writing), and the
    duplicate counts."""
    solutions = select_solutions(read_prm800k(cfg.input, skip_log), cfg)
    neutral: Neutral = cfg.neutral
    grade = _grader() if cfg.kind == "orm" else None
    examples = build_examples(solutions, cfg.kind, neutral, cfg.merge_separator, grade)
    return dedupe(examples) if cfg.dedupe else (examples, {})


def tree_split_examples(
    cfg: BuildConfig, skip_log: SkipLog | None = None
) -> tuple[list[dict], list[dict], set[str], dict]:
    """Trees -> (train rows, val rows, validation problem ids, tree counts): split by problem first."""
    if cfg.kind == "orm":
        raise DataError(cfg.trees, "trees give prm or hrm examples (MC-scores label steps), not orm")
    forest = read_forest(cfg.trees, skip_log)
    if cfg.max_problems is not None:
        keep_ids = sorted({t.problem_id for t, _ in forest})
        random.Random(cfg.seed).shuffle(keep_ids)
        chosen = set(keep_ids[: cfg.max_problems])
        forest = [(t, s) for t, s in forest if t.problem_id in chosen]
    val_ids = split_by_problem([t.problem_id for t, _ in forest], cfg.val_fraction, cfg.seed)
    train, val, counts = forest_examples(
        forest, val_ids, cfg.kind, cfg.hnc,  # type: ignore[arg-type]
        label_rule=cfg.label_rule, hard_threshold=cfg.hard_threshold, separator=cfg.merge_separator,
        balance=cfg.balance, seed=cfg.seed, hnc_min_children=cfg.hnc_min_children, hnc_p=cfg.hnc_p,
        hnc_rule=cfg.hnc_rule,
    )  # fmt: skip
    summary = {"trees": len(forest), "nodes": sum(len(t.nodes) for t, _ in forest)}
    summary.update({split: dict(sorted(c.items())) for split, c in counts.items()})
    return train, val, val_ids, summary


def run(cfg: BuildConfig) -> Path:
    start = time.perf_counter()
    out_dir = Path(cfg.out_dir or f"runs/data/{cfg.kind}")
    skip_log = SkipLog() if cfg.skip_bad else None
    source = cfg.trees or cfg.input
    tree_counts: dict = {}
    dup_counts: dict[str, int] = {}
    if cfg.trees:
        train, val, val_ids, tree_counts = tree_split_examples(cfg, skip_log)
        rows = train + val
        if not rows:
            raise DataError(cfg.trees, f"no {cfg.kind} examples could be built (no node has an MC-score)")
    else:
        examples, dup_counts = make_examples(cfg, skip_log)
        if not examples:
            raise DataError(cfg.input, f"no {cfg.kind} examples could be built (check finish reasons and ratings)")
        val_ids = split_by_problem([e.problem_id for e in examples], cfg.val_fraction, cfg.seed)
        rows = [e.to_dict() for e in examples]  # once: for writing and for the statistics
        train = [r for r in rows if r["problem_id"] not in val_ids]
        val = [r for r in rows if r["problem_id"] in val_ids]
    # Each file is written atomically, but a build killed between two of them would leave this
    # build's train.jsonl beside the last build's val.jsonl and meta.json, which a reader would
    # take for one split. So the old outputs go first (with the temporaries a killed build left,
    # `atomic_write`'s `.NAME.*.tmp`): whatever a killed build leaves is whole and its own.
    for name in ("meta.json", "config.yaml", "val.jsonl", "train.jsonl"):
        (out_dir / name).unlink(missing_ok=True)
        for tmp in out_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "val.jsonl", val)
    stats = compute_stats(rows)
    extra = {"trees": tree_counts} if cfg.trees else {}
    write_meta(
        out_dir,
        asdict(cfg),
        inputs=[source],
        counts={
            "train": len(train),
            "val": len(val),
            "train_problems": len({r["problem_id"] for r in train}),
            "val_problems": len(val_ids),
            "skipped_bad_lines": skip_log.count if skip_log else 0,
            **dup_counts,
        },
        stats=stats,
        **extra,
    )
    if skip_log is not None and skip_log.count:
        log.warning("%s: %s", source, skip_log.summary())
    if not cfg.quiet:
        if skip_log is not None:
            print(f"{source}: {skip_log.summary()}")
        print(format_stats(stats, title=f"{cfg.kind} examples from {source}"))
        if cfg.trees:
            _print_tree_counts(tree_counts)
        if dup_counts:
            print(f"duplicates: {dup_counts['duplicates_dropped']} dropped (same question, previous steps and step), "
                  f"{dup_counts['duplicate_conflicts']} with disagreeing labels given their mean")  # fmt: skip
        print(f"train {len(train)} / val {len(val)} examples ({len(val_ids)} validation problems)")
        print(f"built in {time.perf_counter() - start:.2f}s")
    return out_dir


def _print_tree_counts(summary: dict) -> None:
    """Per split: the tree PRM examples, what HRM adds, and their ratio (HNC's re-scored nodes are
    `prm` rows, so the base is `prm - hnc_rescored`)."""
    print(f"trees {summary['trees']}, nodes {summary['nodes']}")
    for split in ("train", "val"):
        c = summary.get(split, {})
        base = c.get("prm", 0) - c.get("hnc_rescored", 0)
        added = c.get("hrm_pair", 0) + c.get("hnc_rescored", 0)
        line = (f"{split}: prm {base}, hrm_pair {c.get('hrm_pair', 0)} (HNC merged {c.get('hnc_merged', 0)}), "
                f"HNC re-scored {c.get('hnc_rescored', 0)}, HNC moves {c.get('hnc_moves', 0)}, "
                f"duplicates dropped {c.get('duplicates', 0)}")  # fmt: skip
        if added and base:
            line += f"; HRM/PRM example ratio {(base + added) / base:.3f}"
        print(line)
