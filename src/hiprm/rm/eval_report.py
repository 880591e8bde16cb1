"""`rm_eval.json` -> `rm_eval.md`: the tables of a `hiprm rm eval` report, one row per model.

Input: the report `hiprm.rm.evaluate.run` writes (per model: PRM800K classification and
selection, ProcessBench F1 per split, each value as `{"value", "ci95": [lo, hi]}`; NaN already
None). Output: markdown, every value printed as `0.812 [0.790, 0.833]` (`n/a` when undefined).
"""

from __future__ import annotations

from typing import Any


def _num(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{x:.3f}"


def _fmt(v: dict[str, Any]) -> str:
    if v["value"] is None or v["value"] != v["value"]:
        return "n/a"
    lo, hi = v["ci95"]
    return f"{_num(v['value'])} [{_num(lo)}, {_num(hi)}]"


def markdown_report(report: dict[str, Any]) -> str:
    """Tables of rm_eval.json: one row per model, values with [95% interval]."""
    models = report["models"]
    lines = ["# Reward-model evaluation", ""]
    if any("prm800k" in r for r in models.values()):
        first = next(r["prm800k"] for r in models.values() if "prm800k" in r)
        c, s = first["classification"], first["selection"]
        lines += [
            f"## PRM800K step classification ({c['n']} rated completions, {c['n_positive']} positive, "
            f"neutral = {c['neutral']}, threshold {c['threshold']})", "",
            "| model | accuracy | F1 | AUROC |", "|---|---|---|---|",
        ]
        for name, r in models.items():
            if "prm800k" in r:
                c = r["prm800k"]["classification"]
                lines.append(f"| {name} | {_fmt(c['accuracy'])} | {_fmt(c['f1'])} | {_fmt(c['auroc'])} |")
        lines += [
            "", f"## PRM800K step selection ({s['n_steps_2plus']} steps with >= 2 rated alternatives, "
            f"{s['n_steps_mixed']} of them mixing +1 and non-+1)", "",
            "Rate at which the RM's top-ranked alternative is rated +1, against picking at random.", "",
            "| model | top-1 is +1 (mixed) | random (mixed) | top-1 is +1 (all >= 2) | random (all >= 2) |",
            "|---|---|---|---|---|",
        ]
        for name, r in models.items():
            if "prm800k" in r:
                s = r["prm800k"]["selection"]
                lines.append(f"| {name} | {_fmt(s['mixed']['top1_positive'])} | {_fmt(s['mixed']['random'])} | "
                             f"{_fmt(s['all']['top1_positive'])} | {_fmt(s['all']['random'])} |")
    if any("processbench" in r for r in models.values()):
        lines += ["", "## ProcessBench (F1 of earliest-error identification)", ""]
        split_names = list(next(r["processbench"] for r in models.values() if "processbench" in r)["splits"])
        lines += ["| model | threshold | " + " | ".join(split_names) + " | average |",
                  "|---|---|" + "---|" * len(split_names) + "---|"]
        for name, r in models.items():
            if "processbench" in r:
                pb = r["processbench"]
                tuned = f" (on {pb['threshold_split']})" if pb["threshold_split"] else " (fixed)"
                cells = " | ".join(_fmt(pb["splits"][k]["f1"]) for k in split_names)
                lines.append(f"| {name} | {pb['threshold']:.2f}{tuned} | {cells} | {_num(pb['average_f1'])} |")
        lines += ["", "The threshold is tuned on one split (F1 there is optimistic) and applied unchanged to the others.",
                  "", "Per split (accuracy on erroneous / correct samples):", ""]
        for name, r in models.items():
            for k, v in r.get("processbench", {}).get("splits", {}).items():
                lines.append(f"- {name} / {k}: n={v['n']} ({v['n_erroneous']} erroneous, {v['n_correct']} correct); "
                             f"erroneous {_fmt(v['acc_erroneous'])}, correct {_fmt(v['acc_correct'])}")
    return "\n".join(lines) + "\n"
