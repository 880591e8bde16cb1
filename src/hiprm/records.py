"""The shared nouns of hiprm: problems, rated solutions, reward-model examples.

Every reader in `hiprm.data` turns its source into these records, and every later stage
(reward-model training, scoring, search, annotation) consumes them. They are plain
dataclasses with `to_dict` / `from_dict` so they round-trip through JSONL; this module
imports nothing heavy (no torch) so it can be used anywhere.

Rating convention (PRM800K): +1 good, 0 neutral (fine but no progress), -1 bad, None = not
rated. None is never treated as 0.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiprm.artifacts import DataError

RATINGS = (-1, 0, 1)
EXAMPLE_KINDS = ("orm", "prm", "hrm_pair")


def problem_id_for(question: str) -> str:
    """A stable id for a problem text: the first 16 hex digits of its sha256.

    Used to split train/validation by problem and to join sources that share problems;
    surrounding white space does not change it.
    """
    return hashlib.sha256(question.strip().encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Completion:
    """One candidate text for a step, with its human rating (None = unrated)."""

    text: str
    rating: int | None


@dataclass
class LabeledStep:
    """One step of a labelled trajectory.

    `chosen` is the text the trajectory continues with; `chosen_rating` its rating (None for a
    human-written completion or an unrated one). `completions` are all model completions that
    were offered at this step, rated or not (the chosen one included when it is a model
    completion). A final step where nothing was chosen (give_up / found_error) has
    `chosen=None`.
    """

    chosen: str | None
    chosen_rating: int | None
    completions: list[Completion] = field(default_factory=list)
    chosen_is_human: bool = False

    def rated(self) -> list[Completion]:
        return [c for c in self.completions if c.rating is not None]


@dataclass
class Solution:
    """A problem with one labelled trajectory (PRM800K record, ProcessBench entry, ...).

    `source` is `file:line` of the record it came from, so errors downstream can point back.
    """

    problem_id: str
    question: str
    reference_answer: str | None
    steps: list[LabeledStep]
    finish_reason: str | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def trajectory(self) -> list[str]:
        """The chosen step texts in order (a final unchosen step is left out)."""
        return [s.chosen for s in self.steps if s.chosen is not None]


@dataclass
class Problem:
    """A problem to solve with its reference final answer (MATH500, GSM8K, any JSONL)."""

    problem_id: str
    question: str
    answer: str
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepVerdicts:
    """A solution split into steps with a process label (ProcessBench).

    `first_error` is the 0-based index of the earliest wrong step, or -1 if all are correct.
    """

    id: str
    problem_id: str
    question: str
    steps: list[str]
    first_error: int
    final_answer_correct: bool
    generator: str = ""
    source: str = ""


@dataclass
class RMExample:
    """One reward-model training example: score `current_step` given `previous_steps`.

    `label` is in [0, 1] (1 = positive); soft labels carry MC-scores. `ratings` are the human
    ratings that produced it (one for `prm`, two for `hrm_pair`, empty for `orm`).
    For `orm`, `previous_steps` holds all steps but the last and `current_step` the last, so
    the same formatter serves every kind.
    """

    problem_id: str
    question: str
    previous_steps: list[str]
    current_step: str
    label: float
    kind: str
    ratings: list[int | None] = field(default_factory=list)
    source: str = ""
    # One label per previous step, as the current step's label would be (PRM800K ratings, tree
    # MC-scores); what `data export-trl` writes for them. Empty in files built before it existed.
    previous_labels: list[float | None] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        # Written by hand: dataclasses.asdict deep-copies every step string, which made
        # writing the 74k-example HRM set take tens of seconds.
        return {
            "problem_id": self.problem_id,
            "question": self.question,
            "previous_steps": self.previous_steps,
            "current_step": self.current_step,
            "label": self.label,
            "kind": self.kind,
            "ratings": self.ratings,
            "source": self.source,
            "previous_labels": self.previous_labels,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RMExample:
        return cls(
            problem_id=str(d["problem_id"]),
            question=d["question"],
            previous_steps=list(d["previous_steps"]),
            current_step=d["current_step"],
            label=float(d["label"]),
            kind=d["kind"],
            ratings=list(d.get("ratings", [])),
            source=d.get("source", ""),
            previous_labels=list(d.get("previous_labels", [])),
        )


def example_from_json(obj: Any, path: str | Path, line: int) -> RMExample:
    """Check one parsed JSONL line against the RMExample fields; DataError names file:line:field.

    The one validator of example files, shared by `hiprm data stats` / `export-trl` and the
    reward-model trainer.
    """
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object, got {type(obj).__name__}", line)
    for key, kind in (("question", str), ("current_step", str), ("previous_steps", list)):
        if not isinstance(obj.get(key), kind):
            raise DataError(path, f"expected {kind.__name__}, got {type(obj.get(key)).__name__}", line, key)
    for i, step in enumerate(obj["previous_steps"]):
        if not isinstance(step, str):
            raise DataError(path, f"expected a string, got {type(step).__name__}", line, f"previous_steps[{i}]")
    label = obj.get("label")
    if isinstance(label, bool) or not isinstance(label, int | float) or not 0.0 <= label <= 1.0:
        raise DataError(path, f"expected a number in [0, 1], got {label!r}", line, "label")
    if obj.get("kind") not in EXAMPLE_KINDS:
        raise DataError(path, f"expected one of {list(EXAMPLE_KINDS)}, got {obj.get('kind')!r}", line, "kind")
    ratings = obj.get("ratings", [])
    if not isinstance(ratings, list):
        raise DataError(path, f"expected a list, got {type(ratings).__name__}", line, "ratings")
    for i, r in enumerate(ratings):
        if r is not None and (isinstance(r, bool) or r not in (-1, 0, 1)):
            raise DataError(path, f"expected -1, 0, 1 or null, got {r!r}", line, f"ratings[{i}]")
    prev_labels = obj.get("previous_labels", [])
    if not isinstance(prev_labels, list) or (prev_labels and len(prev_labels) != len(obj["previous_steps"])):
        raise DataError(path, f"expected one label per previous step ({len(obj['previous_steps'])}), got {prev_labels!r}",
                        line, "previous_labels")  # fmt: skip
    for i, v in enumerate(prev_labels):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0):
            raise DataError(path, f"expected a number in [0, 1] or null, got {v!r}", line, f"previous_labels[{i}]")
    try:
        return RMExample.from_dict(obj)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"not an RMExample: {e}", line) from None
