"""`hiprm data stats FILE`: counts per kind and label, the HRM/PRM ratio, and length percentiles.

    hiprm data stats runs/data/hrm/train.jsonl

Input: an RMExample JSONL file (or a build directory: its train.jsonl and val.jsonl together).
Labels are bucketed as `pos` (1), `neg` (0) or `soft` (strictly between); lengths are in
characters of the current step and in number of previous steps.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiprm.artifacts import DataError, SkipLog, read_jsonl
from hiprm.records import example_from_json

PERCENTILES = (50, 90, 99, 100)


@dataclass
class DataStatsConfig:
    path: str = ""
    skip_bad: bool = False


def _bucket(label: float) -> str:
    return "pos" if label >= 1.0 else "neg" if label <= 0.0 else "soft"


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {f"p{p}": 0 for p in PERCENTILES}
    s = sorted(values)
    return {f"p{p}": s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))] for p in PERCENTILES}


def compute_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and percentiles of example dicts (the fields of RMExample).

    >>> compute_stats([{"kind": "prm", "label": 1.0, "current_step": "ab", "previous_steps": []}])["by_kind"]
    {'prm': {'pos': 1}}
    """
    by_kind: dict[str, Counter] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], Counter())[_bucket(float(r["label"]))] += 1
    n_prm = sum(by_kind.get("prm", Counter()).values())
    n_pair = sum(by_kind.get("hrm_pair", Counter()).values())
    return {
        "examples": len(rows),
        "problems": len({r.get("problem_id") for r in rows}),
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        # HRM data = PRM examples + pairs; the ratio says how much larger HRM training is.
        "hrm_over_prm": round((n_prm + n_pair) / n_prm, 4) if n_prm and n_pair else None,
        "current_step_chars": _percentiles([len(r["current_step"]) for r in rows]),
        "previous_steps": _percentiles([len(r["previous_steps"]) for r in rows]),
        "input_chars": _percentiles(
            [len(r["question"]) + sum(map(len, r["previous_steps"])) + len(r["current_step"]) for r in rows if "question" in r]
        ),
    }


def format_stats(stats: dict[str, Any], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"examples: {stats['examples']}  problems: {stats['problems']}")
    lines.append(f"{'kind':<10}{'pos':>9}{'neg':>9}{'soft':>9}{'total':>9}  pos%")
    for kind, c in stats["by_kind"].items():
        total = sum(c.values())
        lines.append(
            f"{kind:<10}{c.get('pos', 0):>9}{c.get('neg', 0):>9}{c.get('soft', 0):>9}{total:>9}  {100 * c.get('pos', 0) / total:5.1f}"
        )
    if stats.get("hrm_over_prm"):
        lines.append(f"HRM/PRM example ratio: {stats['hrm_over_prm']:.3f}")
    for key in ("current_step_chars", "previous_steps", "input_chars"):
        pct = "  ".join(f"{k}={v}" for k, v in stats[key].items())
        lines.append(f"{key:<20}{pct}")
    return "\n".join(lines)


def load_rows(path: str | Path, skip_bad: SkipLog | None = None) -> list[dict[str, Any]]:
    p = Path(path)
    files = [p / "train.jsonl", p / "val.jsonl"] if p.is_dir() else [p]
    if p.is_dir() and not any(f.exists() for f in files):
        raise DataError(p, "a folder without train.jsonl or val.jsonl; give a `hiprm data build` folder or a JSONL file")
    rows = []
    for f in files:
        if p.is_dir() and not f.exists():
            continue
        for line, obj in read_jsonl(f, skip_bad):
            try:
                example_from_json(obj, f, line)
            except DataError as bad:
                if skip_bad is None:
                    raise
                skip_bad.add(bad)
                continue
            rows.append(obj)
    return rows


def run(cfg: DataStatsConfig) -> None:
    if not cfg.path:
        raise DataError("<args>", "give the JSONL file or build directory: hiprm data stats FILE")
    skip_log = SkipLog() if cfg.skip_bad else None
    rows = load_rows(cfg.path, skip_log)
    if not rows:
        raise DataError(cfg.path, "no examples in it" + (f" ({skip_log.summary()})" if skip_log else ""))
    print(format_stats(compute_stats(rows), title=str(cfg.path)))
    if skip_log is not None:
        print(skip_log.summary())
