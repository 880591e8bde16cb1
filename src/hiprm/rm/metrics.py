"""Pure metric functions for reward models: accuracy / F1 / AUROC and their 95% intervals.

Inputs are plain sequences (labels in {0, 1}, scores in [0, 1]); nothing here touches a model,
so training (validation metrics) and evaluation share one definition.

- `binary_metrics(labels, scores, threshold=0.5)` -> {accuracy, f1, auroc, n, n_pos}
  (a score >= threshold predicts positive; AUROC is the Mann-Whitney statistic with ties
  counted half, NaN when only one class is present).
- `wilson_ci(successes, n)` -> (low, high) for a proportion.
- `bootstrap_ci(stat, *arrays, strata=None)` -> (low, high) percentile interval of `stat` over
  resamples of the rows (optionally resampling within strata, e.g. erroneous / correct).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def auroc(labels: Sequence[float], scores: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2).

    >>> auroc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.4])
    0.875
    """
    y = np.asarray(labels, dtype=float) >= 0.5
    s = np.asarray(scores, dtype=float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=float)
    sorted_s = s[order]
    # Average ranks over ties (1-based).
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def f1_binary(labels: Sequence[float], preds: Sequence[int]) -> float:
    """F1 of the positive class; 0.0 when there are no true positives.

    >>> f1_binary([1, 1, 0, 0], [1, 0, 1, 0])
    0.5
    """
    y = np.asarray(labels, dtype=float) >= 0.5
    p = np.asarray(preds, dtype=bool)
    tp = int((y & p).sum())
    if tp == 0:
        return 0.0
    precision = tp / int(p.sum())
    recall = tp / int(y.sum())
    return 2 * precision * recall / (precision + recall)


def binary_metrics(labels: Sequence[float], scores: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy and F1 at `threshold` (score >= threshold -> positive) and AUROC.

    Labels may be soft (MC scores); they are rounded at 0.5.

    >>> m = binary_metrics([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6])
    >>> m["accuracy"], round(m["f1"], 3), m["auroc"], m["n"], m["n_pos"]
    (0.5, 0.5, 0.75, 4, 2)
    """
    y = np.asarray(labels, dtype=float) >= 0.5
    s = np.asarray(scores, dtype=float)
    if len(y) != len(s):
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    preds = s >= threshold
    return {
        "accuracy": float((preds == y).mean()) if len(y) else float("nan"),
        "f1": f1_binary(y, preds),
        "auroc": auroc(y, s),
        "n": int(len(y)),
        "n_pos": int(y.sum()),
    }


def wilson_ci(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion (well-behaved near 0 and 1, unlike p +- z*se).

    >>> [round(x, 3) for x in wilson_ci(8, 10)]
    [0.49, 0.943]
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_ci(
    stat: Callable[..., float],
    *arrays: Sequence[Any],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    strata: Sequence[Any] | None = None,
) -> tuple[float, float]:
    """Percentile interval of `stat(*arrays)` over `n_boot` resamples of the rows.

    All arrays are resampled with the same row indices. With `strata`, rows are resampled
    within each stratum so every resample keeps the group sizes (ProcessBench: erroneous and
    correct samples). Resamples where `stat` is NaN (e.g. AUROC with one class) are skipped.
    """
    cols = [np.asarray(a) for a in arrays]
    n = len(cols[0]) if cols else 0
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    if strata is None:
        groups = [np.arange(n)]
    else:
        st = np.asarray(strata)
        groups = [np.flatnonzero(st == g) for g in np.unique(st)]
    values = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        v = stat(*(c[idx] for c in cols))
        if not (isinstance(v, float) and math.isnan(v)):
            values.append(v)
    if not values:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))
