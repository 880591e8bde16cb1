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
    if any("prmbench" in r for r in models.values()):
        lines += _prmbench_lines(models)
    lines += ["", "## Cost (what this run scored; cached rewards cost nothing)", "",
              "| model | format | inputs | input tokens | tokens through the model | seconds |", "|---|---|---|---|---|---|"]
    for name, c in report.get("cost", {}).items():
        if name == "shared trunk":
            name = f"shared trunk ({len(c['models'])} models: bottom layers once, then each top)"
        lines.append(f"| {name} | {c.get('format', '')} | {c.get('inputs', '')} | {c.get('input_tokens', '')} | "
                     f"{c.get('model_tokens', '')} | {c.get('seconds', '')} |")
    return "\n".join(lines) + "\n"


# PRMBench's category abbreviations (its paper's table columns).
PRMBENCH_COLUMNS = [("redundency", "NR"), ("circular", "NCL"), ("counterfactual", "ES"), ("step_contradiction", "SC"),
                    ("domain_inconsistency", "DC"), ("confidence", "CI"), ("missing_condition", "PS"),
                    ("deception", "DR"), ("multi_solutions", "MS")]  # fmt: skip
SUBSET_TITLES = {"test": "built on PRM800K test problems", "prm800k_train": "built on PRM800K phase-1 TRAIN problems "
                 "(a model trained on that split has seen their original solutions)",
                 "all": "all files (the official benchmark)"}  # fmt: skip


def _prmbench_lines(models: dict[str, Any]) -> list[str]:
    first = next(r["prmbench"] for r in models.values() if "prmbench" in r)
    lines = ["", f"## PRMBench (PRMScore = (F1 of correct steps + F1 of erroneous steps) / 2; {first['rule']}, "
             f"threshold {first['threshold']})"]
    for subset in first["subsets"]:
        cats = [(c, a) for c, a in PRMBENCH_COLUMNS if c in first["subsets"][subset]["categories"]]
        n = first["subsets"][subset]["overall"]["n"]
        lines += ["", f"### {SUBSET_TITLES[subset]}: {n} samples", "",
                  "| model | PRMScore | simplicity | soundness | sensitivity | " + " | ".join(a for _, a in cats) + " |",
                  "|---|---|---|---|---|" + "---|" * len(cats)]
        for name, r in models.items():
            sub = r.get("prmbench", {}).get("subsets", {}).get(subset)
            if sub is None:
                continue
            g = sub["groups"]
            lines.append(f"| {name} | {_fmt(sub['overall']['prm_score'])} | {_num(g.get('simplicity'))} | "
                         f"{_num(g.get('soundness'))} | {_num(g.get('sensitivity'))} | "
                         + " | ".join(_num(sub["categories"][c]["prm_score"]["value"]) for c, _ in cats) + " |")
    lines += ["", "Overall PRMScore pools the steps of every sample except the all-correct ones; a group is the "
              "mean of its categories' PRMScores; multi-solution (MS) scores F1 of correct steps only."]
    return lines


def _bars(ax: Any, names: list[str], groups: list[str], values: dict[str, list[dict[str, Any] | float | None]],
          title: str) -> None:
    """Grouped bars: one group per entry of `groups`, one bar per model; error bars where a
    value has a 95% interval."""
    import numpy as np

    width = 0.8 / max(len(names), 1)
    x = np.arange(len(groups))
    for k, name in enumerate(names):
        vals = values[name]
        mid = [(v["value"] if isinstance(v, dict) else v) for v in vals]
        mid = [np.nan if m is None else m for m in mid]
        lo = [m - v["ci95"][0] if isinstance(v, dict) and v["ci95"][0] is not None else 0 for m, v in zip(mid, vals, strict=True)]
        hi = [v["ci95"][1] - m if isinstance(v, dict) and v["ci95"][1] is not None else 0 for m, v in zip(mid, vals, strict=True)]
        ax.bar(x + k * width - 0.4 + width / 2, mid, width, yerr=[lo, hi], capsize=2, label=name[-40:])
    ax.set_xticks(x, groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)


def plots(report: dict[str, Any]) -> dict[str, bytes]:
    """One PNG per benchmark in the report (file name -> bytes), bars with 95% intervals."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    out: dict[str, bytes] = {}

    def save(name: str, fig: Any) -> None:
        buf = io.BytesIO()
        fig.legend(fontsize=7, loc="upper right")
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        out[name] = buf.getvalue()

    have = [n for n, r in models.items() if "prm800k" in r]
    if have:
        fig, ax = plt.subplots(figsize=(7, 4))
        vals = {n: [models[n]["prm800k"]["classification"]["auroc"], models[n]["prm800k"]["classification"]["f1"],
                    models[n]["prm800k"]["selection"]["mixed"]["top1_positive"]] for n in have}  # fmt: skip
        _bars(ax, have, ["step AUROC", "step F1", "top-1 is +1 (mixed)"], vals, "PRM800K")
        save("prm800k.png", fig)
    have = [n for n, r in models.items() if "processbench" in r]
    if have:
        splits = list(models[have[0]]["processbench"]["splits"])
        fig, ax = plt.subplots(figsize=(7, 4))
        _bars(ax, have, splits, {n: [models[n]["processbench"]["splits"][s]["f1"] for s in splits] for n in have},
              "ProcessBench F1 per split")
        save("processbench.png", fig)
    have = [n for n, r in models.items() if "prmbench" in r]
    if have:
        subset = next(iter(models[have[0]]["prmbench"]["subsets"]))
        cats = [(c, a) for c, a in PRMBENCH_COLUMNS if c in models[have[0]]["prmbench"]["subsets"][subset]["categories"]]
        fig, ax = plt.subplots(figsize=(8, 4))
        vals = {n: [models[n]["prmbench"]["subsets"][subset]["overall"]["prm_score"]]
                + [models[n]["prmbench"]["subsets"][subset]["categories"][c]["prm_score"] for c, _ in cats] for n in have}
        _bars(ax, have, ["overall"] + [a for _, a in cats], vals, f"PRMBench PRMScore ({subset})")
        save("prmbench.png", fig)
    return out
