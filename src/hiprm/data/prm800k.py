"""Read PRM800K raw records (phase 1, phase 2, and the reconstructed phase 1 train) into Solutions.

Input: a JSONL file with one labelled solution per line (or one pretty-printed JSON object,
as `phase2_test_example.json`). Output: `list[Solution]`, one per record, each step holding
the text the trajectory continued with (`chosen`), its rating, and every model completion
offered at that step with its rating.

The rules, from the PRM800K README and SOURCES.md:
- the trajectory takes `completions[chosen_completion]`, or `human_completion` when
  `chosen_completion` is null; a final step with neither (give_up / found_error) has no chosen
  text but its rated completions are still labels;
- a null rating means "not rated" and stays None, never 0;
- phase 2 labelling stops at the first error, so `label.steps` is a prefix of
  `question.pre_generated_steps`; only labelled steps are kept;
- unknown extra keys (the reconstruction's `error_reason_xhghhh`, `reconstruction`) are ignored.
Every structural problem raises DataError naming file, line and the JSON path of the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiprm.artifacts import DataError, SkipLog, read_json, read_jsonl
from hiprm.records import Completion, LabeledStep, Solution, problem_id_for

# finish_reason values of PRM800K; "unknown_not_solution" is the reconstruction's stand-in for
# a phase-1 give_up or bad_problem whose exact reason was lost.
FINISH_REASONS = ("solution", "found_error", "give_up", "bad_problem", "unknown_not_solution")


def _need(obj: Any, key: str, typ: type | tuple[type, ...], path: Path, line: int, where: str) -> Any:
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object, got {type(obj).__name__}", line, where or "<record>")
    if key not in obj:
        raise DataError(path, "missing", line, f"{where}.{key}" if where else key)
    value = obj[key]
    if not isinstance(value, typ) or (isinstance(value, bool) and bool not in _as_tuple(typ)):
        names = "/".join(t.__name__ for t in _as_tuple(typ))
        raise DataError(
            path, f"expected {names}, got {type(value).__name__}", line, f"{where}.{key}" if where else key
        )
    return value


def _as_tuple(typ: type | tuple[type, ...]) -> tuple[type, ...]:
    return typ if isinstance(typ, tuple) else (typ,)


def _text(value: Any, path: Path, line: int, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(path, f"expected a string, got {type(value).__name__}", line, where)
    if not value.strip():
        raise DataError(path, "empty step text", line, where)
    return value


def _rating(value: Any, path: Path, line: int, where: str) -> int | None:
    if value is None:
        return None
    # Ratings are -1/0/1; the parquet-derived file stores them as floats (1.0).
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (-1, 0, 1):
        raise DataError(path, f"expected -1, 0, 1 or null, got {value!r}", line, where)
    return int(value)


def _parse_step(step: Any, path: Path, line: int, where: str) -> LabeledStep:
    if not isinstance(step, dict):
        raise DataError(path, f"expected an object, got {type(step).__name__}", line, where)
    raw = step.get("completions")
    if raw is not None and not isinstance(raw, list):
        raise DataError(path, f"expected a list or null, got {type(raw).__name__}", line, f"{where}.completions")
    completions = []
    for j, c in enumerate(raw or []):
        cw = f"{where}.completions[{j}]"
        if not isinstance(c, dict):
            raise DataError(path, f"expected an object, got {type(c).__name__}", line, cw)
        completions.append(
            Completion(_text(c.get("text"), path, line, cw + ".text"), _rating(c.get("rating"), path, line, cw + ".rating"))
        )
    chosen_idx = step.get("chosen_completion")
    human = step.get("human_completion")
    if chosen_idx is not None:
        if isinstance(chosen_idx, bool) or not isinstance(chosen_idx, int) or not 0 <= chosen_idx < len(completions):
            raise DataError(
                path, f"index {chosen_idx!r} outside the {len(completions)} completions", line, f"{where}.chosen_completion"
            )
        chosen = completions[chosen_idx]
        return LabeledStep(chosen.text, chosen.rating, completions)
    if human is not None:
        if not isinstance(human, dict):
            raise DataError(path, f"expected an object or null, got {type(human).__name__}", line, f"{where}.human_completion")
        text = _text(human.get("text"), path, line, f"{where}.human_completion.text")
        return LabeledStep(text, _rating(human.get("rating"), path, line, f"{where}.human_completion.rating"), completions, True)
    return LabeledStep(None, None, completions)


def parse_record(obj: Any, path: Path, line: int) -> Solution:
    """One raw PRM800K record -> Solution (phase 1 or phase 2 layout)."""
    question = _need(obj, "question", dict, path, line, "")
    problem = _text(_need(question, "problem", str, path, line, "question"), path, line, "question.problem")
    answer = question.get("ground_truth_answer")
    if answer is not None and not isinstance(answer, str):
        raise DataError(path, f"expected a string, got {type(answer).__name__}", line, "question.ground_truth_answer")
    label = _need(obj, "label", dict, path, line, "")
    raw_steps = _need(label, "steps", list, path, line, "label")
    if not raw_steps:  # nothing to label: an empty list is a broken record, not a solution
        raise DataError(path, "no steps", line, "label.steps")
    finish = label.get("finish_reason")
    if finish is not None and finish not in FINISH_REASONS:
        raise DataError(path, f"unknown value {finish!r}; expected one of {FINISH_REASONS}", line, "label.finish_reason")
    steps = [_parse_step(s, path, line, f"label.steps[{i}]") for i, s in enumerate(raw_steps)]
    for i, s in enumerate(steps[:-1]):
        if s.chosen is None:
            raise DataError(path, "no chosen or human completion before the last step", line, f"label.steps[{i}]")
    extra: dict[str, Any] = {}
    pre = question.get("pre_generated_steps")
    if pre is not None:
        extra["phase"] = 2
        extra["n_pre_generated_steps"] = len(pre)
    return Solution(
        problem_id=problem_id_for(problem),
        question=problem,
        reference_answer=answer,
        steps=steps,
        finish_reason=finish,
        source=f"{path}:{line}",
        extra=extra,
    )


def read_prm800k(path: str | Path, skip_bad: SkipLog | None = None) -> list[Solution]:
    """All records of a PRM800K JSONL file (or a single-record JSON file) as Solutions.

    With `skip_bad`, records that fail to parse are counted there and left out; otherwise the
    first bad record raises DataError("file:line: field '...': ...").
    """
    p = Path(path)
    if p.suffix == ".json":
        return [parse_record(read_json(p), p, 1)]
    out = []
    for line, obj in read_jsonl(p, skip_bad):
        try:
            out.append(parse_record(obj, p, line))
        except DataError as err:
            if skip_bad is None:
                raise
            skip_bad.add(err)
    return out
