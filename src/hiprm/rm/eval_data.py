"""What `hiprm rm eval` scores: PRM800K rated steps as `StepGroup`s and ProcessBench entries.

Input: `RMEvalConfig.prm800k` (phase 1 test; solutions whose `finish_reason` is in
`skip_finish_reasons` left out, the first `prm800k_limit` kept) and
`processbench_dir/<split>.json` for each of `processbench_splits`, paths relative to `data_dir`.
Output: one `StepGroup` per rated PRM800K step (the alternatives sharing a question and the
chosen steps before them), `limit` ProcessBench entries per split drawn at random with `seed`,
and the files read (inputs of the run's meta.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hiprm.data.labels import prm_examples
from hiprm.records import Solution, StepVerdicts


@dataclass
class StepGroup:
    """The rated alternatives at one PRM800K step, sharing the question and previous steps."""

    question: str
    prefix: list[str]
    texts: list[str]
    ratings: list[int]
    solution: int = 0  # index of the solution it belongs to (groups of one solution share their prefixes)


def step_groups(solutions: Sequence[Solution]) -> list[StepGroup]:
    """One group per step that has rated completions; prefix = chosen steps before it.

    Built from `hiprm.data.labels.prm_examples`, the one definition of a PRM example (the
    training data's conditioning), with `neutral="positive"` so that no rated completion is
    dropped here; labels are applied per `neutral` by `hiprm.rm.evaluate.classification_rows`,
    again with the training data's `step_label`.
    """
    groups: list[StepGroup] = []
    for n, sol in enumerate(solutions):
        cur: StepGroup | None = None
        for ex in prm_examples(sol, neutral="positive"):
            if cur is None or len(ex.previous_steps) != len(cur.prefix):  # the next step
                cur = StepGroup(sol.question, ex.previous_steps, [], [], n)
                groups.append(cur)
            cur.texts.append(ex.current_step)
            cur.ratings.append(int(ex.ratings[0]))  # type: ignore[arg-type]
    return groups


def data_path(data_dir: str, rel: str) -> Path:
    """`rel` under `data_dir`, unless it is absolute."""
    p = Path(rel)
    return p if p.is_absolute() else Path(data_dir) / p


def sample(entries: list[StepVerdicts], limit: int | None, seed: int) -> list[StepVerdicts]:
    """`limit` entries drawn at random (seeded, file order kept): ProcessBench files are sorted
    so that the first entries are all erroneous, and a head would have no correct samples."""
    if limit is None or limit >= len(entries):
        return entries
    import random

    keep = sorted(random.Random(seed).sample(range(len(entries)), limit))
    return [entries[i] for i in keep]


def load_prm800k_groups(path: Path, skip_finish_reasons: list[str], limit: int | None) -> list[StepGroup]:
    """The rated step groups of the first `limit` PRM800K solutions whose finish reason is kept."""
    from hiprm.data.prm800k import read_prm800k

    sols = [s for s in read_prm800k(path) if s.finish_reason not in skip_finish_reasons]
    return step_groups(sols[:limit])


def load_processbench(folder: Path, splits: list[str], limit: int | None, seed: int) -> dict[str, list[StepVerdicts]]:
    """Each ProcessBench split (`folder/NAME.json`), `limit` entries drawn with `seed`."""
    from hiprm.data.processbench import read_processbench

    return {name: sample(read_processbench(folder / f"{name}.json"), limit, seed) for name in splits}


def load_prmbench(folder: Path, limit: int | None, seed: int) -> list:
    """PRMBench samples (`hiprm.data.prmbench`), `limit` per (source, category) drawn with `seed`."""
    from hiprm.data.prmbench import read_prmbench

    samples = read_prmbench(folder)
    if limit is None:
        return samples
    by: dict[tuple[str, str], list] = {}
    for s in samples:
        by.setdefault((s.source, s.classification), []).append(s)
    return [s for key in sorted(by) for s in sample(by[key], limit, seed)]
