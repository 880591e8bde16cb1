"""`hiprm report RUN_DIR`: one markdown report of a quickstart run, from what its stages wrote.

    hiprm report runs/quickstart          # -> runs/quickstart/report.md

Input: `RUN_DIR/quickstart.json` (each stage's command, resolved config, output, status and
seconds, written by `hiprm quickstart`) and each stage's own outputs: a data build's `meta.json`
statistics, a reward model's training summary (`meta.json`) and curves, `rm_eval.md`, an eval's
`report.md` and `metrics.json`, the tree statistics of `annotate stats`. An eval whose policy is
a self-trained model is set beside the eval of the base policy on the same problems.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiprm.annotate.stats import format_tree_stats
from hiprm.artifacts import DataError, atomic_write, locked, read_json
from hiprm.data.stats import format_stats


@dataclass
class ReportConfig:
    """`run_dir`: a folder `hiprm quickstart` ran in (it holds quickstart.json)."""

    run_dir: str = "runs/quickstart"


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip() if path.is_file() else f"(missing: {path})"


def training_summary(run_dir: Path) -> str:
    """`N steps, train loss L; validation: loss .., f1 ..` from a training run's meta.json."""
    meta = _json(run_dir / "meta.json")
    val = meta.get("validation", {})
    keys = [k for k in ("eval_loss", "eval_accuracy", "eval_f1", "eval_auroc") if k in val]
    vals = ", ".join(f"{k.removeprefix('eval_')} {val[k]:.3f}" for k in keys)
    loss = meta.get("train_loss")
    return f"{meta.get('global_step', '?')} steps, train loss {loss:.3f}; validation: {vals or '-'}" if loss is not None \
        else f"{meta.get('global_step', '?')} steps"  # fmt: skip


def _pct(cell: dict[str, Any]) -> str:
    if not cell or cell.get("accuracy") is None:
        return "-"
    ci = f" ± {100 * cell['ci95']:.1f}" if cell.get("ci95") is not None else ""
    return f"{100 * cell['accuracy']:.1f}{ci}"


def base_vs_tuned(base: Path, tuned: dict[str, Path]) -> list[str]:
    """A table of accuracy per method and N: the base policy's eval beside each tuned one's."""
    rows = {name: _json(p / "metrics.json").get("accuracy", {}) for name, p in tuned.items()}
    base_rows = _json(base / "metrics.json").get("accuracy", {})
    lines = ["| method | N | base | " + " | ".join(f"tuned ({n})" for n in rows) + " |",
             "|---|---:|---:|" + "---:|" * len(rows)]  # fmt: skip
    for method in sorted({m for r in rows.values() for m in r}):
        for n in sorted({n for r in rows.values() for n in r.get(method, {})}, key=int):
            cells = [_pct(r.get(method, {}).get(n, {})) for r in rows.values()]
            lines.append(f"| {method} | {n} | {_pct(base_rows.get(method, {}).get(n, {}))} | " + " | ".join(cells) + " |")
    return lines


def search_reading(metrics: dict[str, Any]) -> str:
    """One paragraph on what the search table shows at the largest N: the oracle, majority vote,
    the best reward-model method, and which differences the 95% intervals cannot tell apart.

    >>> acc = {"pass": {"4": {"accuracy": 0.8, "ci95": 0.1}}, "majority": {"4": {"accuracy": 0.4, "ci95": 0.2}},
    ...        "prm-min": {"4": {"accuracy": 0.5, "ci95": 0.2}}}
    >>> text = search_reading({"accuracy": acc, "n_values": [1, 4], "problems": 6})
    >>> "pass@4 is 80.0 ± 10.0%" in text and "prm-min, gets 50.0 ± 20.0%" in text and "inside noise" in text
    True
    """
    acc, ns = metrics.get("accuracy", {}), metrics.get("n_values") or []
    if not acc or not ns:
        return ""
    n = str(max(ns))

    def cell(m: str) -> tuple[float, float] | None:
        c = acc.get(m, {}).get(n, {})
        return None if c.get("accuracy") is None else (c["accuracy"], c.get("ci95") or 0.0)

    def pct(v: tuple[float, float]) -> str:
        return f"{100 * v[0]:.1f} ± {100 * v[1]:.1f}%"

    oracle, majority = cell("pass"), cell("majority")
    rm = {m: cell(m) for m in acc if m not in ("pass", "majority") and cell(m) is not None}
    parts = [f"What to look for (N={n}, {metrics.get('problems', '?')} problems):"]
    if oracle:
        parts.append(f"the oracle pass@{n} is {pct(oracle)}, the most any selection can reach;")
        if oracle[0] == 0:
            parts.append("the policy wrote no right answer, so no reward model can select one.")
            return " ".join(parts)
    if majority:
        parts.append(f"majority vote gets {pct(majority)};")
    if rm:
        best = max(rm, key=lambda m: rm[m][0])
        b = rm[best]
        parts.append(f"the best reward-model method, {best}, gets {pct(b)}.")
        if majority:
            apart = abs(b[0] - majority[0]) > b[1] + majority[1]
            parts.append("Its difference from majority vote is larger than both intervals together, so it is not noise."
                         if apart else "Its 95% interval overlaps majority vote's: at this size the difference is "
                         "inside noise, and so are the differences between reward models.")  # fmt: skip
    return " ".join(parts)


def report_lines(manifest: dict[str, Any]) -> list[str]:
    stages: dict[str, dict[str, Any]] = manifest.get("stages", {})
    times = ", ".join(f"{name} {s['seconds'] / 60:.1f}" for name, s in stages.items() if "seconds" in s)
    lines = ["# hiprm quickstart report", "", f"Plan: `{manifest.get('plan', '?')}`. Stage minutes: {times}."]
    skipped = [f"{name} ({s.get('why', '')})" for name, s in stages.items() if s.get("status") == "skipped"]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped)]

    def done(command: str, trees: bool | None = None) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for name, s in stages.items():
            if s.get("command") != command or s.get("status") != "done":
                continue
            if trees is not None and bool(s["config"].get("trees")) != trees:
                continue
            out.append((name, s))
        return out

    for title, trees in (("Training data from PRM800K", False), ("Training data from the trees", True)):
        builds = done("data build", trees)
        if builds:
            lines += ["", f"## {title}"]
            for name, s in builds:
                meta = _json(Path(s["output"]) / "meta.json")
                if "stats" in meta:
                    lines += ["", "```", format_stats(meta["stats"], title=f"{name}: {s['output']}"), "```"]
    trained = done("rm train")
    if trained:
        lines += ["", "## Reward-model training", ""]
        for name, s in trained:
            o = s["config"]["optim"]
            lines.append(f"- **{name}** (`{s['output']}/model`): {training_summary(Path(s['output']))}; "
                         f"{o['max_steps']} steps x batch {o['batch_size']}, lr {o['learning_rate']}; "
                         f"curves: `{s['output']}/loss.png`")  # fmt: skip
    for name, s in done("rm eval"):
        lines += ["", f"## Evaluation without a policy ({name})", "", _text(Path(s["output"]) / "rm_eval.md")]
    selftrained = {str(Path(s["output"]) / "model"): name for name, s in done("selftrain")}
    evals = done("eval")
    base = [(n, s) for n, s in evals if s["config"]["policy"]["model"] not in selftrained]
    for name, s in base:
        lines += ["", f"## Search with the policy ({name})", "", _text(Path(s["output"]) / "report.md"),
                  "", search_reading(_json(Path(s["output"]) / "metrics.json")),
                  "", f"Plots: `{s['output']}/accuracy.png`, `{s['output']}/accuracy_tokens.png`"]  # fmt: skip
    for _, s in done("annotate stats"):
        stats = _json(Path(s["output"]))
        if stats:
            lines += ["", f"## Auto-annotation ({s['config']['path']})", "", "```", format_tree_stats(stats), "```", "",
                      f"Share of nodes with 0 < MC < 1: **{stats['share_strictly_between']:.1%}** of "
                      f"{stats['scored_nodes']}. Histogram: `{Path(s['output']).with_name(Path(s['config']['path']).stem + '.mc.png')}`."]  # fmt: skip
    tuned = {selftrained[s["config"]["policy"]["model"]]: Path(s["output"])
             for n, s in evals if s["config"]["policy"]["model"] in selftrained}  # fmt: skip
    st_stages = [(n, s) for n, s in stages.items() if s.get("command") == "selftrain"]
    if st_stages:
        lines += ["", "## Self-training: base vs tuned policy", ""]
        for name, s in st_stages:
            what = f"`{s['output']}/model` ({s['config']['max_steps']} steps)" if s.get("status") == "done" else \
                f"skipped: {s.get('why', 'not run')}"  # fmt: skip
            lines.append(f"- {name}: {what}")
        if tuned and base:
            lines += ["", f"Accuracy (%) ± 95% CI ({base[0][0]} problems, same prompts and N):", "",
                      *base_vs_tuned(Path(base[0][1]["output"]), tuned)]  # fmt: skip
    return lines


def write_report(run_dir: str | Path) -> Path:
    d = Path(run_dir)
    manifest_path = d / "quickstart.json"
    if not manifest_path.is_file():
        raise DataError(manifest_path, "not found: give a folder `hiprm quickstart` ran in")
    path = d / "report.md"
    with atomic_write(path) as f:
        f.write("\n".join(report_lines(read_json(manifest_path))) + "\n")
    return path


@locked(lambda cfg: Path(cfg.run_dir) / "report.md")
def run(cfg: ReportConfig) -> Path:
    return write_report(cfg.run_dir)
