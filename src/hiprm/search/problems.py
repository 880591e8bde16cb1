"""The problems `hiprm eval` solves: a named dataset or a JSONL file -> distinct `Problem`s.

Input: `EvalConfig.dataset`, one of gsm8k (`gsm8k/test.jsonl`), math500 (`math500/test.jsonl`)
and prm800k-test (`prm800k/phase1_test.jsonl`, its distinct problems with a reference answer)
under `data_dir`, or the path of any JSONL with `question_field` / `answer_field`. Output: the
problems in file order, duplicates dropped, cut to the first `limit` and then to `shard=i/n`
(every n-th problem from i), with the path they were read from (an input of the run's identity).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from hiprm.artifacts import DataError
from hiprm.config import ConfigError
from hiprm.records import Problem

if TYPE_CHECKING:
    from hiprm.search.run import EvalConfig

log = logging.getLogger(__name__)


def parse_shard(shard: str) -> tuple[int, int] | None:
    """ "2/4" -> (2, 4); "" -> None."""
    if not shard:
        return None
    try:
        i, n = (int(x) for x in shard.split("/"))
    except ValueError:
        raise ConfigError(f"shard: expected 'i/n' (e.g. 0/4), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"shard: need 0 <= i < n, got {shard!r}")
    return i, n


def _prm800k_problems(path: Path) -> list[Problem]:
    """Distinct problems (with a reference answer) of a PRM800K file, in file order."""
    from hiprm.data.prm800k import read_prm800k

    out: dict[str, Problem] = {}
    for sol in read_prm800k(path):
        if sol.reference_answer and sol.problem_id not in out:
            out[sol.problem_id] = Problem(
                sol.problem_id, sol.question, sol.reference_answer, source=sol.source
            )
    return list(out.values())


def load_problems(cfg: EvalConfig) -> tuple[list[Problem], Path]:
    from hiprm.data.problems import read_gsm8k, read_math500, read_problems_jsonl

    datasets = {
        "gsm8k": ("gsm8k/test.jsonl", read_gsm8k),
        "math500": ("math500/test.jsonl", read_math500),
        "prm800k-test": ("prm800k/phase1_test.jsonl", _prm800k_problems),
    }
    if cfg.dataset in datasets:
        rel, reader = datasets[cfg.dataset]
        path = Path(cfg.data_dir) / rel
        if not path.is_file():
            raise ConfigError(f"dataset {cfg.dataset!r}: {path} not found (set data_dir=)")
        problems = reader(path)
    elif Path(cfg.dataset).is_file():
        path = Path(cfg.dataset)
        problems = read_problems_jsonl(path, cfg.question_field, cfg.answer_field)
    else:
        raise ConfigError(f"dataset: {cfg.dataset!r} is neither one of {sorted(datasets)} nor a JSONL file")
    seen: set[str] = set()
    unique = [p for p in problems if not (p.problem_id in seen or seen.add(p.problem_id))]
    if len(unique) < len(problems):
        log.info("%s: %d duplicate problems dropped", path, len(problems) - len(unique))
    if cfg.limit > 0:
        unique = unique[: cfg.limit]
    shard = parse_shard(cfg.shard)
    if shard:
        unique = unique[shard[0] :: shard[1]]
    if not unique:  # an empty report would read as a finished evaluation
        raise DataError(path, f"no problems to evaluate (limit={cfg.limit}, shard={cfg.shard!r})")
    return unique, path
