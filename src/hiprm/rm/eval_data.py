"""What `hiprm rm eval` scores: PRM800K rated steps as `StepGroup`s and ProcessBench entries.

Input: `EvalConfig.prm800k` (phase 1 test; solutions whose `finish_reason` is in
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
from typing import TYPE_CHECKING

from hiprm.data.labels import prm_examples
from hiprm.records import Solution, StepVerdicts

if TYPE_CHECKING:
    from hiprm.rm.evaluate import EvalConfig


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


def _data_path(cfg: EvalConfig, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else Path(cfg.data_dir) / p


def sample(entries: list[StepVerdicts], limit: int | None, seed: int) -> list[StepVerdicts]:
    """`limit` entries drawn at random (seeded, file order kept): ProcessBench files are sorted
    so that the first entries are all erroneous, and a head would have no correct samples."""
    if limit is None or limit >= len(entries):
        return entries
    import random

    keep = sorted(random.Random(seed).sample(range(len(entries)), limit))
    return [entries[i] for i in keep]


def load_data(cfg: EvalConfig) -> tuple[list[StepGroup], dict[str, list[StepVerdicts]], list[Path]]:
    inputs: list[Path] = []
    groups: list[StepGroup] = []
    if cfg.prm800k:
        from hiprm.data.prm800k import read_prm800k

        path = _data_path(cfg, cfg.prm800k)
        sols = [s for s in read_prm800k(path) if s.finish_reason not in cfg.skip_finish_reasons]
        sols = sols[: cfg.prm800k_limit]
        groups = step_groups(sols)
        inputs.append(path)
    splits: dict[str, list[StepVerdicts]] = {}
    if cfg.processbench_splits:
        from hiprm.data.processbench import read_processbench

        for name in cfg.processbench_splits:
            path = _data_path(cfg, f"{cfg.processbench_dir}/{name}.json")
            splits[name] = sample(read_processbench(path), cfg.limit, cfg.seed)
            inputs.append(path)
    return groups, splits, inputs
