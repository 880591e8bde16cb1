"""Read ProcessBench splits (a JSON array) into `StepVerdicts` records.

Each entry: `{id, generator, problem, steps: [str], final_answer_correct: bool, label: int}`
where `label` is the 0-based index of the earliest wrong step, or -1 when every step is right.
A label outside [-1, len(steps)) or a wrong type raises DataError naming the file, the entry
(reported as `line` = 1-based index in the array) and the field.
"""

from __future__ import annotations

from pathlib import Path

from hiprm.artifacts import DataError, SkipLog, read_json
from hiprm.records import StepVerdicts, problem_id_for


def _entry(obj: object, path: Path, n: int) -> StepVerdicts:
    if not isinstance(obj, dict):
        raise DataError(path, f"entry {n}: expected an object, got {type(obj).__name__}")

    def need(key: str, typ: type) -> object:
        if key not in obj:
            raise DataError(path, f"entry {n}: missing", field=key)
        v = obj[key]
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise DataError(path, f"entry {n}: expected {typ.__name__}, got {type(v).__name__}", field=key)
        return v

    problem = need("problem", str)
    steps = need("steps", list)
    for i, s in enumerate(steps):
        if not isinstance(s, str) or not s.strip():
            raise DataError(path, f"entry {n}: expected a non-empty string", field=f"steps[{i}]")
    label = need("label", int)
    if not -1 <= label < len(steps):
        raise DataError(path, f"entry {n}: {label} is not -1 or a step index below {len(steps)}", field="label")
    return StepVerdicts(
        id=str(obj.get("id", n)),
        problem_id=problem_id_for(problem),
        question=problem,
        steps=list(steps),
        first_error=label,
        final_answer_correct=bool(need("final_answer_correct", bool)),
        generator=str(obj.get("generator", "")),
        source=f"{path}#{n}",
    )


def read_processbench(path: str | Path, skip_bad: SkipLog | None = None) -> list[StepVerdicts]:
    p = Path(path)
    data = read_json(p)
    if not isinstance(data, list):
        raise DataError(p, f"expected a JSON array of entries, got {type(data).__name__}")
    out = []
    for n, obj in enumerate(data, start=1):
        try:
            out.append(_entry(obj, p, n))
        except DataError as err:
            if skip_bad is None:
                raise
            skip_bad.add(err)
    return out
