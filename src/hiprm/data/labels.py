"""Pure labelling transforms: rated Solutions -> ORM / PRM / HRM reward-model examples.

Implements the HRM paper's Eq. 1 and Table 6 on PRM800K human ratings.

- PRM (`kind="prm"`): at step i of a trajectory, one example per *rated* completion c of step i,
  conditioned on the trajectory's chosen steps 0..i-1. +1 -> 1.0, -1 -> 0.0, 0 -> per `neutral`.
- HRM = the PRM examples plus one `hrm_pair` per consecutive pair (s_i, s_{i+1}): s_i is the
  chosen step i, s_{i+1} ranges over the rated completions of step i+1; the current step is
  `s_i + separator + s_{i+1}`, conditioned on the chosen steps before s_i, labelled by Table 6.
- ORM (`kind="orm"`): whole solutions (the trajectory, and the trajectory with its last step
  swapped for each alternative final completion) labelled by whether the final answer is right.

Why `neutral="negative"` is the default: the paper's Table 6 groups neutral with negative in
every merged row (pos+neu -> neg, neu+neu -> neg), so a neutral step is "not progress" and the
single-step label follows the same grouping. The reference code drops neutral completions from
PRM data; `neutral="drop"` reproduces that (and then also drops pairs whose second step is
neutral, since their label is decided by that step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Literal

from hiprm.records import RMExample, Solution

Neutral = Literal["negative", "positive", "drop"]

# Table 6 of the paper. Keys: (class of s_i, class of s_{i+1}) with "neu/neg" as one class.
TABLE6: dict[tuple[str, str], float] = {
    ("pos", "pos"): 1.0,
    ("pos", "neu/neg"): 0.0,
    ("neu/neg", "pos"): 1.0,
    ("neu/neg", "neu/neg"): 0.0,
}


def _cls(rating: int | None) -> str:
    # An unrated first step (a human-written chosen step) is placed with "pos": PRM800K labelers
    # write one when no model step was good. Either placement yields the same Table 6 label.
    return "neu/neg" if rating in (0, -1) else "pos"


def step_label(rating: int, neutral: Neutral = "negative") -> float | None:
    """Label of one rated step; None means "drop this example".

    >>> step_label(1), step_label(-1), step_label(0), step_label(0, "positive"), step_label(0, "drop")
    (1.0, 0.0, 0.0, 1.0, None)
    """
    if rating == 1:
        return 1.0
    if rating == -1:
        return 0.0
    return {"negative": 0.0, "positive": 1.0, "drop": None}[neutral]


def merged_label(first: int | None, second: int) -> float:
    """Table 6 label of the merged step s_i + s_{i+1} from their ratings.

    >>> [merged_label(a, b) for a, b in [(1, 1), (1, 0), (1, -1), (0, 1), (-1, 1), (0, 0), (-1, -1), (0, -1)]]
    [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    """
    return TABLE6[(_cls(first), "pos" if second == 1 else "neu/neg")]


def chosen_label(rating: int | None, neutral: Neutral = "negative") -> float:
    """Label of a chosen (previous) step: its rating as `step_label` reads it, and 1.0 for a
    human-written step (PRM800K labelers write one when no model step was good). A neutral step
    is not dropped here (it is context, not an example): "drop" counts it as negative.

    >>> chosen_label(1), chosen_label(None), chosen_label(0), chosen_label(0, "positive"), chosen_label(-1)
    (1.0, 1.0, 0.0, 1.0, 0.0)
    """
    if rating is None:
        return 1.0
    return step_label(rating, "negative" if neutral == "drop" else neutral)  # type: ignore[return-value]


def prm_examples(sol: Solution, neutral: Neutral = "negative") -> Iterator[RMExample]:
    """Eq. 1: every rated completion of step i given the chosen steps before it.

    A 2-step trajectory whose step 1 offered ratings [1, -1] gives 1 + 2 examples:
    ([], s0) -> rating of s0; ([s0], c) for each rated completion c of step 1.
    """
    prefix: list[str] = []
    prefix_labels: list[float | None] = []
    for step in sol.steps:
        for c in step.rated():
            label = step_label(c.rating, neutral)
            if label is not None:
                yield RMExample(sol.problem_id, sol.question, list(prefix), c.text, label, "prm", [c.rating], sol.source,
                                list(prefix_labels))  # fmt: skip
        if step.chosen is None:
            break
        prefix.append(step.chosen)
        prefix_labels.append(chosen_label(step.chosen_rating, neutral))


def hrm_pair_examples(sol: Solution, neutral: Neutral = "negative", separator: str = "\n\n") -> Iterator[RMExample]:
    """Table 6 merges of (chosen s_i, each rated completion of step i+1), given steps before s_i.

    Steps "a" (chosen, +1) then ["b" (+1), "c" (-1)] give
    ([], "a\\n\\nb") -> 1.0 with ratings [1, 1] and ([], "a\\n\\nc") -> 0.0 with ratings [1, -1].
    """
    for i in range(len(sol.steps) - 1):
        first = sol.steps[i]
        if first.chosen is None:
            break
        prefix = [s.chosen for s in sol.steps[:i]]
        prefix_labels: list[float | None] = [chosen_label(s.chosen_rating, neutral) for s in sol.steps[:i]]
        for c in sol.steps[i + 1].rated():
            if neutral == "drop" and c.rating == 0:
                continue
            yield RMExample(
                sol.problem_id,
                sol.question,
                prefix,  # type: ignore[arg-type]  # chosen is not None before step i
                first.chosen + separator + c.text,
                merged_label(first.chosen_rating, c.rating),
                "hrm_pair",
                [first.chosen_rating, c.rating],
                sol.source,
                prefix_labels,
            )


def orm_examples(sol: Solution, grade: Callable[[str, str], bool | None]) -> Iterator[RMExample]:
    """Whole solutions: the trajectory and its variants with each alternative last step.

    `grade(text, reference)` returns True/False, or None when `text` states no final answer;
    unanswered candidates are not complete solutions and are left out.
    """
    if not sol.steps or sol.reference_answer is None:
        return
    head = [s.chosen for s in sol.steps[:-1]]
    if any(h is None for h in head):
        return
    last = sol.steps[-1]
    finals: list[str] = []
    for text in ([last.chosen] if last.chosen else []) + [c.text for c in last.completions]:
        if text not in finals:
            finals.append(text)
    for text in finals:
        ok = grade(text, sol.reference_answer)
        if ok is None:
            continue
        yield RMExample(sol.problem_id, sol.question, list(head), text, 1.0 if ok else 0.0, "orm", [], sol.source,  # type: ignore[arg-type]
                        [chosen_label(s.chosen_rating) for s in sol.steps[:-1]])  # fmt: skip


def dedupe(examples: Iterable[RMExample]) -> tuple[list[RMExample], dict[str, int]]:
    """One example per distinct input (question, previous steps, current step), first kept.

    PRM800K has several trajectories per problem that share a prefix, so the same rated step
    comes back as the same example (4.1% of phase-1 train HRM examples); training on copies
    weights them twice, and the reference code drops them. Copies whose labels disagree (two
    labelers, or a pair labelled through different first-step ratings) become one example
    labelled with the mean of their labels: the soft-label loss then fits the share of positive
    verdicts, rather than one of them picked by file order.

    >>> a = RMExample("p", "q", [], "s", 1.0, "prm")
    >>> kept, counts = dedupe([a, a, RMExample("p", "q", [], "s", 0.0, "prm"), RMExample("p", "q", [], "t", 1.0, "prm")])
    >>> [(e.current_step, e.label) for e in kept], counts
    ([('s', 0.6666666666666666), ('t', 1.0)], {'duplicates_dropped': 2, 'duplicate_conflicts': 1})
    """
    first: dict[tuple, int] = {}
    labels: dict[int, list[float]] = {}
    kept: list[RMExample] = []
    for e in examples:
        key = (e.question, tuple(e.previous_steps), e.current_step)
        k = first.get(key)
        if k is None:
            first[key] = len(kept)
            kept.append(e)
        else:
            labels.setdefault(k, [kept[k].label]).append(e.label)
    conflicts = 0
    for k, ls in labels.items():
        if len(set(ls)) > 1:
            conflicts += 1
            kept[k] = replace(kept[k], label=sum(ls) / len(ls))
    dropped = sum(len(ls) - 1 for ls in labels.values())
    return kept, {"duplicates_dropped": dropped, "duplicate_conflicts": conflicts}


def build_examples(
    solutions: Iterable[Solution],
    kind: Literal["orm", "prm", "hrm"],
    neutral: Neutral = "negative",
    separator: str = "\n\n",
    grade: Callable[[str, str], bool | None] | None = None,
) -> list[RMExample]:
    """All examples of one kind; `hrm` = PRM examples + pairs, kept together per solution."""
    out: list[RMExample] = []
    for sol in solutions:
        if kind == "orm":
            if grade is None:
                raise ValueError("ORM examples need a grading function")
            out.extend(orm_examples(sol, grade))
            continue
        out.extend(prm_examples(sol, neutral))
        if kind == "hrm":
            out.extend(hrm_pair_examples(sol, neutral, separator))
    return out
