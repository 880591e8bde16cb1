"""`hiprm data build`: PRM800K raw records -> ORM / PRM / HRM example JSONL, split by problem.

    hiprm data build --kind hrm                      # shared phase-1 train -> runs/data/hrm/
    hiprm data build --kind prm input=../shared/data/prm800k/phase1_test.jsonl val_fraction=0
    hiprm data build --kind hrm trees=runs/annotate/x/trees.jsonl   # MCTS trees (hiprm.data.trees)

Writes `<out_dir>/train.jsonl`, `<out_dir>/val.jsonl` (one RMExample per line) and
`<out_dir>/meta.json` (resolved settings, input sha256, package version, counts), then prints
the statistics of `hiprm data stats`. No problem is on both sides of the split; the split is a
seeded shuffle of the sorted problem ids, so it is reproducible.

The folder is replaced as a whole: the build is written to `<out_dir>.tmp-<pid>` beside it and
renamed into place once every file is on disk, so a kill or a full disk at any moment leaves the
previous build or the new one, never a mix (`replace_folder`). A full disk or a read-only folder
is a one-line error. An `out_dir` holding files the build does not write is refused, not emptied.

With `trees=FILE` the examples come from annotated trees (hiprm's or OpenR's) instead of PRM800K:
MC-score labels, consecutive-pair and (train only) HNC examples; `hiprm.data.trees` says how.
The trees are split by problem before anything else, so HNC never sees a validation problem.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from hiprm.artifacts import DataError, SkipLog, StageError, locked, prepare_out_dir, write_jsonl, write_meta
from hiprm.config import Fraction, Positive, Probability
from hiprm.data.labels import Neutral, build_examples, dedupe
from hiprm.data.prm800k import read_prm800k
from hiprm.data.stats import compute_stats, format_stats
from hiprm.data.trees import forest_examples, read_forest
from hiprm.grading import GradingMode
from hiprm.records import RMExample, Solution

log = logging.getLogger(__name__)

DEFAULT_INPUT = "../shared/data/prm800k/phase1_train.reconstructed.jsonl"
OUTPUTS = ("train.jsonl", "val.jsonl", "meta.json", "config.yaml")  # all a build folder holds


@dataclass
class BuildConfig:
    kind: Literal["orm", "prm", "hrm"] = "hrm"
    input: str = DEFAULT_INPUT
    out_dir: str = ""  # default: runs/data/<kind>
    neutral: Literal["negative", "positive", "drop"] = "negative"
    merge_separator: str = "\n\n"
    val_fraction: Fraction = 0.05
    seed: int = 0
    # The reference code trains only on finished solutions; "unknown_not_solution" is the
    # reconstruction's name for a give_up or bad_problem whose exact reason was lost.
    skip_finish_reasons: list[str] = field(default_factory=lambda: ["give_up", "bad_problem", "unknown_not_solution"])
    max_problems: Positive | None = None
    skip_bad: bool = False
    quiet: bool = False
    # One example per distinct (question, previous steps, current step); disagreeing copies get
    # the mean label (hiprm.data.labels.dedupe). false = keep every copy.
    dedupe: bool = True
    grading: GradingMode = "strict"  # --kind orm labels; strict: in the reference's form, as PRM800K's grader
    # Trees instead of PRM800K (`input` is then unused); merge_separator joins pairs and HNC steps.
    trees: str = ""
    label_rule: Literal["soft", "hard"] = "soft"  # soft: label = MC-score; hard: mc >= hard_threshold
    hard_threshold: Probability = 0.5
    balance: bool = False  # the reference code's per-depth score balancing (subsamples nodes)
    hnc: bool = True  # --kind hrm from trees: add HNC examples on the train split
    hnc_min_children: Positive = 4
    hnc_p: Probability = 0.5
    hnc_rule: Literal["reference", "node"] = "reference"
    # --kind hrm from trees. hnc: the paper's HRM data, the PRM examples + what HNC adds (Sec. 4.2);
    # all: also every (parent, child) pair of the tree as one merged step, in every split.
    pairs: Literal["hnc", "all"] = "hnc"


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


def _grader(mode: GradingMode):
    from hiprm.grading import extract_answer, is_equivalent

    def grade(text: str, ref: str) -> bool | None:
        pred = extract_answer(text)
        return None if pred is None else is_equivalent(pred, ref, mode=mode)

    return grade


def make_examples(cfg: BuildConfig, skip_log: SkipLog | None = None) -> tuple[list[RMExample], dict[str, int]]:
    """Read the input and return all examples of `cfg.kind` (no split, no writing), and the
    duplicate counts."""
    solutions = select_solutions(read_prm800k(cfg.input, skip_log), cfg)
    neutral: Neutral = cfg.neutral
    grade = _grader(cfg.grading) if cfg.kind == "orm" else None
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
        hnc_rule=cfg.hnc_rule, pairs=cfg.pairs,
    )  # fmt: skip
    summary = {"trees": len(forest), "nodes": sum(len(t.nodes) for t, _ in forest)}
    summary.update({split: dict(sorted(c.items())) for split, c in counts.items()})
    return train, val, val_ids, summary


# What a killed build leaves beside `<out_dir>`: its unfinished `NAME.tmp-PID`, or, killed
# between the two renames of `replace_folder`, the previous build as `NAME.old-PID`.
_LEFTOVER = re.compile(r"\.(tmp|old)-(\d+)")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def clear_leftovers(out_dir: Path) -> None:
    """Remove the temporaries of killed builds beside `out_dir`; a previous build renamed aside
    goes back in place if `out_dir` is missing (so a failed rebuild still leaves it). Those of a
    build still running (its pid alive) are left alone."""
    if not out_dir.parent.is_dir():
        return
    for p in sorted(out_dir.parent.iterdir()):
        m = _LEFTOVER.fullmatch(p.name[len(out_dir.name):]) if p.name.startswith(out_dir.name) else None
        if m is None or (int(m.group(2)) != os.getpid() and _running(int(m.group(2)))):
            continue
        if m.group(1) == "old" and not os.path.lexists(out_dir):
            log.warning("%s: restoring the previous build, left aside by a build killed while replacing it", out_dir)
            os.rename(p, out_dir)
        else:
            shutil.rmtree(p)


def check_replaceable(out_dir: Path) -> None:
    """Refuse an `out_dir` holding anything the build does not write: replacing the folder
    deletes what is in it, and that must only ever be an earlier build."""
    for p in sorted(out_dir.iterdir()):
        # `.NAME.*.tmp` are `atomic_write`'s temporaries, left by a killed build of a version
        # that wrote in place.
        ours = p.name in OUTPUTS or any(p.name.startswith(f".{n}.") and p.name.endswith(".tmp") for n in OUTPUTS)
        if not ours or p.is_dir():
            raise StageError(f"{p}: not written by `hiprm data build`, which replaces {out_dir} as a whole; "
                             f"move it away or choose another out_dir")  # fmt: skip


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(folder: Path, write: Callable[[Path], None]) -> None:
    """Replace `folder` (an existing directory) with what `write(tmp)` puts in a new one.

    `write` fills `folder.tmp-PID` beside it (each file fsynced by `atomic_write`); then the old
    folder is renamed to `folder.old-PID`, the new one to `folder`, and the old one removed. A
    failure before the second rename puts the old folder back; a kill leaves either folder whole
    (or, between the renames, none at `folder` and the old one aside: `clear_leftovers` restores it).
    """
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    aside = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    try:
        tmp.mkdir()
        shutil.copymode(folder, tmp)  # the new folder keeps the permissions the old one was given
        write(tmp)
        _fsync_dir(tmp)  # the files' names, not only their bytes
        os.rename(folder, aside)
        os.rename(tmp, folder)
    except BaseException:
        if not os.path.lexists(folder) and aside.is_dir():
            os.rename(aside, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        _fsync_dir(folder.parent)
    except OSError as e:  # the new build is in place; only whether a power cut would keep it is in doubt
        log.warning("%s: could not fsync the folder holding the new build: %s", folder.parent, e)
    shutil.rmtree(aside, ignore_errors=True)  # if this fails, the next build's clear_leftovers does it


def build_out_dir(cfg: BuildConfig) -> Path:
    return Path(cfg.out_dir or f"runs/data/{cfg.kind}")


@locked(build_out_dir)
def run(cfg: BuildConfig) -> Path:
    out_dir = build_out_dir(cfg)
    start = time.perf_counter()
    place = Path(os.path.realpath(out_dir))  # a symlinked out_dir: its target is replaced, not the link
    try:
        clear_leftovers(place)
    except OSError as e:
        raise StageError(f"{e.filename or out_dir}: cannot remove what a killed build left: {e.strerror or e}") from None
    prepare_out_dir(out_dir)
    check_replaceable(place)
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
    stats = compute_stats(rows)
    extra = {"trees": tree_counts} if cfg.trees else {}
    counts = {
        "train": len(train),
        "val": len(val),
        "train_problems": len({r["problem_id"] for r in train}),
        "val_problems": len(val_ids),
        "skipped_bad_lines": skip_log.count if skip_log else 0,
        **dup_counts,
    }

    def write(folder: Path) -> None:
        write_jsonl(folder / "train.jsonl", train)
        write_jsonl(folder / "val.jsonl", val)
        write_meta(folder, asdict(cfg), inputs=[source], counts=counts, stats=stats, **extra)

    try:
        replace_folder(place, write)
    except OSError as e:  # a full disk, a read-only folder: the previous build is still in place
        raise StageError(f"{out_dir}: cannot write the build: {e.strerror or e}; the previous build "
                         f"is left as it was") from None  # fmt: skip
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
