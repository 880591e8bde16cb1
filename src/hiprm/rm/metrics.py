"""Pure metric functions for reward models: accuracy / F1 / AUROC and their 95% intervals.

Inputs are plain sequences (labels in {0, 1}, scores in [0, 1]); nothing here touches a model,
so training (validation metrics) and evaluation share one definition.

- `binary_metrics(labels, scores, threshold=0.5)` -> {accuracy, f1, auroc, n, n_pos}
  (a score >= threshold predicts positive; AUROC is the Mann-Whitney statistic with ties
  counted half, NaN when only one class is present).
- `wilson_ci(successes, n)` -> (low, high) for a proportion.
- `bootstrap_ci(stat, *arrays, strata=None)` -> (low, high) percentile interval of `stat` over
  resamples of the rows (optionally resampling within strata, e.g. erroneous / correct).
- ProcessBench: `first_error(rewards, threshold)`, `processbench_scores(labels, preds)` (the
  official F1) and `choose_threshold(rewards, labels, grid)`.
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


# ---- ProcessBench: earliest-error identification ----------------------------------------------


def first_error(rewards: Sequence[float], threshold: float) -> int:
    """Index of the first step with reward < threshold, or -1.

    >>> first_error([0.9, 0.6, 0.2, 0.1], 0.5), first_error([0.9, 0.6], 0.5)
    (2, -1)
    """
    for i, r in enumerate(rewards):
        if r < threshold:
            return i
    return -1


def processbench_scores(labels: Sequence[int], preds: Sequence[int]) -> dict[str, float]:
    """ProcessBench's official F1: harmonic mean of the accuracy on erroneous samples
    (pred == label) and on correct samples (pred == -1).

    >>> processbench_scores([2, 0, -1, -1], [2, 1, -1, 0])
    {'acc_erroneous': 0.5, 'acc_correct': 0.5, 'f1': 0.5, 'n_erroneous': 2, 'n_correct': 2}
    """
    y = np.asarray(labels)
    p = np.asarray(preds)
    err, cor = y != -1, y == -1
    acc_e = float((p[err] == y[err]).mean()) if err.any() else float("nan")
    acc_c = float((p[cor] == -1).mean()) if cor.any() else float("nan")
    if np.isnan(acc_e) or np.isnan(acc_c):
        f1 = float("nan")
    else:
        f1 = 0.0 if acc_e + acc_c == 0 else 2 * acc_e * acc_c / (acc_e + acc_c)
    return {"acc_erroneous": acc_e, "acc_correct": acc_c, "f1": f1,
            "n_erroneous": int(err.sum()), "n_correct": int(cor.sum())}


def choose_threshold(rewards: Sequence[Sequence[float]], labels: Sequence[int],
                     grid: Sequence[float]) -> tuple[float, float]:
    """The grid value with the highest ProcessBench F1 (the lowest one on ties) and that F1.

    >>> choose_threshold([[0.9, 0.3], [0.8, 0.7]], [1, -1], [0.2, 0.5, 0.75])
    (0.5, 1.0)
    """
    best_t, best_f1 = float(grid[0]), -1.0
    for t in grid:
        f1 = processbench_scores(labels, [first_error(r, t) for r in rewards])["f1"]
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return best_t, best_f1


# ---- PRMBench (the official `mr_eval` evaluation, ssmisya/PRMBench) ---------------------------

PRMBENCH_GROUPS = {
    "simplicity": ("redundency", "circular"),
    "soundness": ("counterfactual", "step_contradiction", "domain_inconsistency", "confidence"),
    "sensitivity": ("missing_condition", "deception", "multi_solutions"),
}


def prmbench_counts(labels: Sequence[int], rewards: Sequence[float], threshold: float = 0.5) -> list[int]:
    """[TP, FP, TN, FN] of one sample's steps, the positive class being a correct step: a step
    is predicted correct when its reward is strictly above `threshold` (the official rule).
    Steps without a reward are not counted.

    >>> prmbench_counts([1, 1, 0, 1], [0.9, 0.6, 0.7, 0.2])
    [2, 1, 0, 1]
    """
    tp = fp = tn = fn = 0
    for y, r in zip(labels, rewards, strict=False):
        pred = r > threshold
        if y == 1:
            tp, fn = tp + pred, fn + (not pred)
        else:
            fp, tn = fp + pred, tn + (not pred)
    return [int(tp), int(fp), int(tn), int(fn)]


def _official_ratio(a: float, b: float) -> float:
    return a / b if b else -1.0  # mr_eval's sentinel for an empty denominator


def _official_f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else -1.0


def prmbench_scores(counts: Sequence[float], f1_only: bool = False) -> dict[str, float]:
    """PRMBench's metrics of pooled [TP, FP, TN, FN]: F1 of correct steps, F1 of erroneous steps
    (`negative_f1`) and PRMScore = (f1 + negative_f1) / 2, clamped at 0 (`f1_only`: the
    multi-solution category's PRMScore is its f1). As in `mr_eval`, a ratio with an empty
    denominator is -1 and enters the arithmetic as such.

    >>> s = prmbench_scores([2, 1, 0, 1])   # negative P = R = 0 -> negative_f1 = -1
    >>> round(s["f1"], 4), s["negative_f1"], s["prm_score"]
    (0.6667, -1.0, 0.0)
    >>> prmbench_scores([2, 1, 0, 0])["prm_score"]   # every step called correct
    0.4
    """
    tp, fp, tn, fn = (float(x) for x in counts)
    f1 = _official_f1(_official_ratio(tp, tp + fp), _official_ratio(tp, tp + fn))
    nf1 = _official_f1(_official_ratio(tn, tn + fn), _official_ratio(tn, tn + fp))
    score = f1 if f1_only else 0.5 * f1 + 0.5 * nf1
    pos, neg = tp + fn, tn + fp
    return {"f1": f1, "negative_f1": nf1, "prm_score": score if score > 0 else 0.0,
            "correct_step_acc": tp / pos if pos else float("nan"),
            "wrong_step_acc": tn / neg if neg else float("nan")}  # fmt: skip
