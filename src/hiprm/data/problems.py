"""Read problem sets with reference answers (MATH500, GSM8K, any JSONL) into `Problem` records.

- MATH500 JSONL: `{problem, answer, unique_id, subject, level, solution}`.
- GSM8K JSONL: `{question, answer}` where `answer` is a worked solution ending in `#### <number>`
  (or, in the HRM paper's `hrm_evaluation.jsonl`, just the number).
- Any other JSONL: name the question and answer fields.
Missing or mistyped fields raise DataError naming file, line and field.
"""

from __future__ import annotations

import re
from pathlib import Path

from hiprm.artifacts import DataError, SkipLog, read_jsonl
from hiprm.records import Problem, problem_id_for

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
