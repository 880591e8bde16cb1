"""`hiprm data export-trl FILE`: RMExample JSONL -> TRL's stepwise-supervision JSONL.

    hiprm data export-trl runs/data/hrm/train.jsonl out=runs/data/hrm/train.trl.jsonl

TRL's stepwise format is one row per solution: `{"prompt": str, "completions": [str], "labels":
[bool]}` with a label for every completion. Our examples label only their *current* step, so
each example becomes one row whose completions are `previous_steps + [current_step]`; the
previous steps are the chosen trajectory and get `true`, and the row carries
`"train_on_last_step_only": true` plus the exact `"label"` (soft labels survive). Train with
TRL's `train_on_last_step_only=True` so only the labelled last step counts. Rows load with
`datasets.load_dataset("json", data_files=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiprm.artifacts import DataError, SkipLog, write_jsonl
from hiprm.data.stats import load_rows


@dataclass
class ExportConfig:
    path: str = ""
    out: str = ""  # default: FILE with .trl.jsonl
    skip_bad: bool = False


def to_trl(row: dict[str, Any]) -> dict[str, Any]:
    """One example dict -> one TRL stepwise row.

    >>> to_trl({"question": "Q", "previous_steps": ["a"], "current_step": "b", "label": 0.0, "kind": "prm"})["labels"]
    [True, False]
    """
    return {
        "prompt": row["question"],
        "completions": [*row["previous_steps"], row["current_step"]],
        "labels": [True] * len(row["previous_steps"]) + [float(row["label"]) >= 0.5],
        "label": float(row["label"]),
        "kind": row["kind"],
        "train_on_last_step_only": True,
    }


def run(cfg: ExportConfig) -> Path:
    if not cfg.path:
        raise DataError("<args>", "give the example JSONL: hiprm data export-trl FILE")
    src = Path(cfg.path)
    out = Path(cfg.out) if cfg.out else src.with_name(src.name.removesuffix(".jsonl") + ".trl.jsonl")
    skip_log = SkipLog() if cfg.skip_bad else None
    rows = load_rows(src, skip_log)  # validated: every row has question, steps, label, kind
    n = write_jsonl(out, (to_trl(r) for r in rows))
    print(f"wrote {n} TRL stepwise rows to {out}")
    if skip_log is not None:
        print(skip_log.summary())
    return out
