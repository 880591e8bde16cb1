"""`hiprm data export-trl FILE`: RMExample JSONL -> TRL's stepwise-supervision JSONL.

    hiprm data export-trl runs/data/hrm/train.jsonl out=runs/data/hrm/train.trl.jsonl

TRL's stepwise format is one row per solution: `{"prompt": str, "completions": [str], "labels":
[bool]}` with a label for every completion. Each example becomes one row whose completions are
`previous_steps + [current_step]`. The previous steps get their own labels, kept in the example
record by `hiprm data build` (`previous_labels`: from PRM800K ratings, +1 or human-written ->
true, as TRL's own PRM800K converter reads `rating == 1`; from trees, MC-score >= 0.5): phase-2
trajectories go through neutral steps, and tree paths through doubtful ones, so "every previous
step is correct" would be wrong. The row also carries the exact soft values (`"label"`,
`"previous_labels"`) and `"train_on_last_step_only": true`: with TRL's option of that name only
the example's own step counts, as in hiprm's training. A file built before `previous_labels`
existed is refused (rebuild it) rather than exported with guessed labels. Rows load with
`datasets.load_dataset("json", data_files=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiprm.artifacts import DataError, SkipLog, check_output_file, locked, write_jsonl
from hiprm.data.stats import load_rows


@dataclass
class ExportConfig:
    path: str = ""
    out: str = ""  # default: FILE with .trl.jsonl
    skip_bad: bool = False


def to_trl(row: dict[str, Any]) -> dict[str, Any]:
    """One example dict -> one TRL stepwise row.

    >>> to_trl({"question": "Q", "previous_steps": ["a", "b"], "current_step": "c", "label": 0.0, "kind": "prm",
    ...         "previous_labels": [1.0, 0.0]})["labels"]
    [True, False, False]
    """
    prev = row.get("previous_labels") or []
    if len(prev) != len(row["previous_steps"]) or any(v is None for v in prev):
        raise ValueError("previous_labels: missing or unknown for some previous step")
    return {
        "prompt": row["question"],
        "completions": [*row["previous_steps"], row["current_step"]],
        "labels": [float(v) >= 0.5 for v in prev] + [float(row["label"]) >= 0.5],
        "label": float(row["label"]),
        "previous_labels": [float(v) for v in prev],
        "kind": row["kind"],
        "train_on_last_step_only": True,
    }


def export_path(cfg: ExportConfig) -> Path | None:
    """The output file: `out`, or FILE with `.trl.jsonl` (None without FILE)."""
    if not cfg.path:
        return None
    src = Path(cfg.path)
    return Path(cfg.out) if cfg.out else src.with_name(src.name.removesuffix(".jsonl") + ".trl.jsonl")


@locked(export_path)
def run(cfg: ExportConfig) -> Path:
    if not cfg.path:
        raise DataError("<args>", "give the example JSONL: hiprm data export-trl FILE")
    src = Path(cfg.path)
    out = check_output_file(export_path(cfg), "out")
    skip_log = SkipLog() if cfg.skip_bad else None
    rows = load_rows(src, skip_log)  # validated: every row has question, steps, label, kind
    if not rows:  # an empty export would read as a finished one
        raise DataError(src, "no examples to export" + (f" ({skip_log.summary()})" if skip_log else ""))
    converted = []
    for k, r in enumerate(rows, 1):
        try:
            converted.append(to_trl(r))
        except ValueError:
            # load_rows keeps no line numbers (a folder is two files, skipped lines drop out),
            # so the record is named by its place and source.
            raise DataError(src, f"record {k} ({r.get('source') or r['problem_id']}) has no label for some previous "
                            "step (a file built before `previous_labels`, or a tree node without an MC-score); "
                            "rebuild it with `hiprm data build`", None, "previous_labels") from None  # fmt: skip
    n = write_jsonl(out, converted)
    print(f"wrote {n} TRL stepwise rows to {out}")
    if skip_log is not None:
        print(skip_log.summary())
    return out
