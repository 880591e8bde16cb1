"""Pure selection rules: step rewards -> one score, and N answers -> one chosen answer.

- `aggregate(rewards, how)`: `min`, `last`, `prod` (product) or `mean` of a solution's step
  rewards (each in [0, 1]); an empty list scores 0.
- `best_index(scores)`: best-of-N, ties to the earliest candidate.
- `majority_vote(answers)` / `weighted_vote(answers, weights)`: answers are grouped by
  `hiprm.grading.is_equivalent` (so "0.5" and "\\frac{1}{2}" are one vote), and the group with
  the most votes / the largest summed weight wins; ties go to the group seen first. Missing
  answers (None) never win while any answer exists.
Each returns the index of a representative candidate, so callers read its correctness directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from hiprm.grading import is_equivalent

AGGREGATIONS = ("min", "last", "prod", "mean")


def aggregate(rewards: Sequence[float], how: str) -> float:
    """One score from a solution's step rewards.

    >>> [round(aggregate([0.9, 0.5, 0.8], h), 4) for h in AGGREGATIONS]
    [0.5, 0.8, 0.36, 0.7333]
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; known: {', '.join(AGGREGATIONS)}")
    if not rewards:
        return 0.0
    if how == "min":
        return float(min(rewards))
    if how == "last":
        return float(rewards[-1])
    if how == "prod":
        return float(math.prod(rewards))
    return float(sum(rewards) / len(rewards))


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score; the earliest one on ties (NaN counts as lowest).

    >>> best_index([0.2, 0.7, 0.7])
    1
    """
    if not scores:
        raise ValueError("best_index of no candidates")
    key = [(-math.inf if s != s else s) for s in scores]
    return max(range(len(key)), key=lambda i: (key[i], -i))


def group_answers(
    answers: Sequence[str | None], equivalent: Callable[[str, str], bool] = is_equivalent
) -> list[list[int]]:
    """Indices grouped by equivalent answer, groups in order of first appearance; None alone.

    >>> group_answers(["1/2", None, "0.5", "3"], equivalent=lambda a, b: float(eval(a)) == float(eval(b)))
    [[0, 2], [1], [3]]
    """
    groups: list[list[int]] = []
    reps: list[str | None] = []
    for i, a in enumerate(answers):
        for g, rep in enumerate(reps):
            if a is not None and rep is not None and (a == rep or equivalent(a, rep)):
                groups[g].append(i)
                break
        else:
            groups.append([i])
            reps.append(a)
    return groups


def weighted_vote(
    answers: Sequence[str | None],
    weights: Sequence[float],
    equivalent: Callable[[str, str], bool] = is_equivalent,
) -> int:
    """Index of a member (the first) of the answer group with the largest summed weight.

    >>> weighted_vote(["4", "5", "5"], [0.9, 0.3, 0.4], equivalent=str.__eq__)
    0
    """
    if len(answers) != len(weights):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    groups = group_answers(answers, equivalent)
    totals = [(answers[g[0]] is not None, sum(weights[i] for i in g)) for g in groups]
    best = max(range(len(groups)), key=lambda k: (totals[k], -k))
    return groups[best][0]


def majority_vote(answers: Sequence[str | None], equivalent: Callable[[str, str], bool] = is_equivalent) -> int:
    """Index of a member (the first) of the most common answer group.

    >>> majority_vote(["4", "5", "5", None], equivalent=str.__eq__)
    1
    """
    return weighted_vote(answers, [1.0] * len(answers), equivalent)
