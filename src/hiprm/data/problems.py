"""THE problem registry: named problem sets with reference answers, and any JSONL, as `Problem`s.

`PROBLEM_SETS` maps each name that `hiprm eval` and `hiprm annotate` accept to its file under
`data_dir` and its reader; `load_problem_set` is the one loader (a name or a JSONL path ->
distinct problems in file order, and the path read). The runners choose from what it returns
(`limit`, `shard`, `order`, `problem_ids`).

- MATH500 JSONL: `{problem, answer, unique_id, subject, level, solution}`.
- GSM8K JSONL: `{question, answer}` where `answer` is a worked solution ending in `#### <number>`
  (or, in the HRM paper's `hrm_evaluation.jsonl`, just the number).
- MATH train: a JSON array of `{problem, final_answer}`.
- PRM800K: the distinct problems (with a reference answer) of its rated solutions; for the train
  split only those of finished solutions, the problems the paper annotates.
- Any other JSONL: name the question and answer fields.
Missing or mistyped fields raise DataError naming file, line and field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from hiprm.artifacts import DataError, SkipLog, read_json, read_jsonl
from hiprm.config import ConfigError
from hiprm.records import Problem, problem_id_for

log = logging.getLogger(__name__)

_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


def _field(obj: object, key: str, path: Path, line: int) -> str:
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object, got {type(obj).__name__}", line)
    if key not in obj:
        raise DataError(path, "missing", line, key)
    value = obj[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(path, f"expected a string, got {type(value).__name__}", line, key)
    if not value.strip():
        raise DataError(path, "empty", line, key)
    return value


def gsm8k_final_answer(answer: str) -> str:
    """The number after `####` (commas dropped), or the text itself if there is no `####`.

    >>> gsm8k_final_answer("Janet sells 9 eggs.\\n#### 1,800")
    '1800'
    """
    m = _GSM8K_FINAL.search(answer)
    final = m.group(1) if m else answer.strip()
    return final.replace(",", "").strip()


def read_problems_jsonl(
    path: str | Path,
    question_field: str = "problem",
    answer_field: str = "answer",
    id_field: str | None = None,
    skip_bad: SkipLog | None = None,
    gsm8k_answers: bool = False,
) -> list[Problem]:
    """Problems from any JSONL; `gsm8k_answers` takes the final answer after `####`."""
    p = Path(path)
    out = []
    for line, obj in read_jsonl(p, skip_bad):
        try:
            question = _field(obj, question_field, p, line)
            answer = _field(obj, answer_field, p, line)
            pid = _field(obj, id_field, p, line) if id_field else problem_id_for(question)
        except DataError as err:
            if skip_bad is None:
                raise
            skip_bad.add(err)
            continue
        if gsm8k_answers:
            extra = {"solution": answer} if "####" in answer else {}
            answer = gsm8k_final_answer(answer)
        else:
            extra = {k: v for k, v in obj.items() if k not in (question_field, answer_field)}
        out.append(Problem(pid, question, answer, source=f"{p}:{line}", extra=extra))
    return out


def read_math500(path: str | Path, skip_bad: SkipLog | None = None) -> list[Problem]:
    return read_problems_jsonl(path, "problem", "answer", skip_bad=skip_bad)


def read_gsm8k(path: str | Path, skip_bad: SkipLog | None = None) -> list[Problem]:
    return read_problems_jsonl(path, "question", "answer", skip_bad=skip_bad, gsm8k_answers=True)


def read_math_train(path: str | Path, skip_bad: SkipLog | None = None) -> list[Problem]:
    """MATH train (a JSON array of {problem, final_answer}). Entries without a final answer (2 of
    the 7,500 in the shared file) cannot be used: they are left out and counted in the log."""
    rows = read_json(path)
    if not isinstance(rows, list):
        raise DataError(path, "expected a JSON array of {problem, final_answer}")
    out, skipped = [], []
    for i, row in enumerate(rows):
        where = f"[{i}]"
        if not isinstance(row, dict):
            raise DataError(path, f"expected an object, got {type(row).__name__}", field=where)
        q, a = row.get("problem"), row.get("final_answer")
        bad = [key for key, v in (("problem", q), ("final_answer", a))
               if not isinstance(v, str | int | float) or isinstance(v, bool) or not str(v).strip()]  # fmt: skip
        if bad:
            skipped.append(f"{where}.{bad[0]}")
            continue
        out.append(Problem(problem_id_for(str(q)), str(q), str(a), source=f"{path}{where}"))
    if skipped:
        log.warning("%s: %d entries without a question or answer left out (%s)", path, len(skipped),
                    ", ".join(skipped[:5]))  # fmt: skip
    return out


def read_prm800k_problems(path: str | Path, finished_only: bool = False) -> list[Problem]:
    """Distinct problems (with a reference answer) of a PRM800K file, in file order;
    `finished_only`: only those of solutions whose finish reason is `solution`."""
    from hiprm.data.prm800k import read_prm800k

    out: dict[str, Problem] = {}
    for sol in read_prm800k(path):
        if finished_only and sol.finish_reason != "solution":
            continue
        if sol.reference_answer and sol.problem_id not in out:
            out[sol.problem_id] = Problem(sol.problem_id, sol.question, sol.reference_answer, source=sol.source)
    return list(out.values())


# name -> (file under data_dir, reader(path, skip_bad))
PROBLEM_SETS: dict[str, tuple[str, Callable[[Path, SkipLog | None], list[Problem]]]] = {
    "gsm8k": ("gsm8k/test.jsonl", read_gsm8k),
    "gsm8k-train": ("gsm8k/train.jsonl", read_gsm8k),
    "math500": ("math500/test.jsonl", read_math500),
    "math-train": ("math/math_train7500_problems_answers.json", read_math_train),
    "prm800k-test": ("prm800k/phase1_test.jsonl", lambda p, _: read_prm800k_problems(p)),
    "prm800k-train": ("prm800k/phase1_train.reconstructed.jsonl",
                      lambda p, _: read_prm800k_problems(p, finished_only=True)),
}  # fmt: skip


def load_problem_set(
    dataset: str,
    data_dir: str | Path,
    question_field: str = "question",
    answer_field: str = "answer",
    skip_bad: SkipLog | None = None,
) -> tuple[list[Problem], Path]:
    """`dataset` (a PROBLEM_SETS name, or the path of a JSONL with `question_field` /
    `answer_field`) -> its distinct problems in file order, and the file read."""
    if dataset in PROBLEM_SETS:
        rel, reader = PROBLEM_SETS[dataset]
        path = Path(data_dir) / rel
        if not path.is_file():
            raise ConfigError(f"dataset {dataset!r}: {path} not found (set data_dir=)")
        problems = reader(path, skip_bad)
    elif Path(dataset).is_file():
        path = Path(dataset)
        problems = read_problems_jsonl(path, question_field, answer_field, skip_bad=skip_bad)
    else:
        raise ConfigError(f"dataset: {dataset!r} is neither one of {sorted(PROBLEM_SETS)} nor a JSONL file")
    seen: set[str] = set()
    unique = [p for p in problems if not (p.problem_id in seen or seen.add(p.problem_id))]
    if len(unique) < len(problems):
        log.info("%s: %d duplicate problems dropped", path, len(problems) - len(unique))
    return unique, path


ORDERS = ("file", "shortest_solution", "shortest_question")


def order_problems(problems: list[Problem], order: str) -> list[Problem]:
    """`problems` in `order`: file (as read), shortest_solution (shortest reference solution
    first, e.g. GSM8K's worked answers: the easiest problems; the question's length where there
    is none), shortest_question. The one ordering of `annotate`, `eval` and `rl`.

    >>> ps = [Problem("a", "long question", "1", extra={"solution": "xx"}), Problem("b", "q", "2")]
    >>> [p.problem_id for p in order_problems(ps, "shortest_solution")], [p.problem_id for p in order_problems(ps, "shortest_question")]
    (['b', 'a'], ['b', 'a'])
    """
    if order == "shortest_solution":
        return sorted(problems, key=lambda p: (len(str(p.extra.get("solution", ""))) or len(p.question), p.problem_id))
    if order == "shortest_question":
        return sorted(problems, key=lambda p: (len(p.question), p.problem_id))
    if order != "file":
        raise ValueError(f"order: {order!r} is not one of {', '.join(ORDERS)}")
    return list(problems)

