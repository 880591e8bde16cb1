"""Per-problem results -> accuracy vs N with 95% CIs, a paper-style table, a plot, a cost summary.

Input: the per-problem records `hiprm eval` appends to `problems.jsonl`; each holds, per method
and N, the 0/1 correctness of every subsample (`results[method][N] = {"correct": [...]}`) and
the problem's cost counters. Output (pure functions plus writers):
- `accuracy(records, methods, n_values)`: `{method: {N: {accuracy, ci95, problems, subsamples}}}`.
  A problem's accuracy at N is the mean over its subsamples; the reported accuracy is the mean
  over problems, and the CI is mean +- 1.96 * sd / sqrt(#problems) of those per-problem means,
  i.e. problems are the unit of sampling (subsamples of one problem are not independent);
- `markdown_table`: rows = methods, columns = N, like the paper's Tables 2-5;
- `plot_accuracy`: accuracy vs N (log2 axis) with CI bands (clipped to 0-100%), one line per method;
- `cost_summary`: tokens generated with the shared pools vs. one run per N, reward-model inputs
  and calls, seconds per problem;
- `write_report`: the files of a run folder from its `problems.jsonl` files (`read_done`;
  `all_results`: the run's own and every shard's): samples.jsonl, metrics.json, table.md,
  report.md, accuracy.png.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiprm.artifacts import atomic_write, read_appended, write_json, write_jsonl

if TYPE_CHECKING:
    from hiprm.records import Problem
    from hiprm.search.best_of_n import Method

log = logging.getLogger(__name__)

Z95 = 1.96


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of a normal 95% interval); no interval from fewer than 2 values.

    >>> [round(x, 4) for x in mean_ci([1.0, 0.0, 1.0, 0.0])]
    [0.5, 0.5658]
    """
    if not values:
        return math.nan, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, Z95 * math.sqrt(var / len(values))


def accuracy(records: list[dict[str, Any]], methods: list[str], n_values: list[int]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        out[m] = {}
        for n in n_values:
            per_problem, tokens = [], []
            subsamples = 0
            for r in records:
                slot = r.get("results", {}).get(m, {}).get(str(n))
                if slot and slot["correct"]:
                    per_problem.append(sum(slot["correct"]) / len(slot["correct"]))
                    subsamples += len(slot["correct"])
                    if slot.get("tokens"):
                        tokens.append(sum(slot["tokens"]) / len(slot["tokens"]))
            acc, ci = mean_ci(per_problem)
            out[m][str(n)] = {
                "accuracy": None if math.isnan(acc) else acc,
                "ci95": ci,
                "problems": len(per_problem),
                "subsamples": subsamples,
                # generated tokens per problem that this method at this N costs run alone
                "tokens": sum(tokens) / len(tokens) if tokens else None,
            }
    return out


def _cell(entry: dict[str, Any]) -> str:
    if entry["accuracy"] is None:
        return "-"
    text = f"{100 * entry['accuracy']:.1f}"
    if entry["ci95"] is not None:
        text += f" ± {100 * entry['ci95']:.1f}"
    return text


METHOD_LABELS = {
    "majority": "Majority vote",
    "pass": "pass@N (oracle)",
    "orm": "ORM best-of-N",
    "orm-vote": "ORM weighted vote",
    "prm-step": "PRM step search",
    "hrm-step": "HRM step search",
}


TREE_LABELS = {"beam": "beam search", "dvts": "DVTS", "particles": "particle filtering"}


def method_label(name: str) -> str:
    """
    >>> [method_label(m) for m in ("hrm-beam", "prm-particles-prod", "hrm-hier", "prm-vote-min")]
    ['HRM beam search (last)', 'PRM particle filtering (prod)', 'HRM hier step search', 'PRM weighted vote (min)']
    """
    if name in METHOD_LABELS:
        return METHOD_LABELS[name]
    rm, _, rest = name.partition("-")
    kind, _, how = rest.partition("-")
    if kind in TREE_LABELS:
        return f"{rm.upper()} {TREE_LABELS[kind]} ({how or 'last'})"
    if kind == "hier":
        return f"{rm.upper()} hier step search"
    if rest.startswith("vote-"):
        return f"{rm.upper()} weighted vote ({rest[5:]})"
    return f"{rm.upper()} best-of-N ({rest})"


def _tokens(entry: dict[str, Any]) -> str:
    t = entry.get("tokens")
    return "-" if t is None else f"{t:,.0f}"


def markdown_table(acc: dict[str, dict[str, Any]], n_values: list[int], title: str = "") -> str:
    """Accuracy (%) ± 95% CI half-width; rows = methods, columns = N; then the generated tokens
    per problem of each cell (the compute axis: compare methods at equal tokens, not equal N)."""
    lines = [f"**{title}**", ""] if title else []
    lines.append("| method | " + " | ".join(f"N={n}" for n in n_values) + " |")
    lines.append("|---|" + "---:|" * len(n_values))
    for m, row in acc.items():
        lines.append(f"| {method_label(m)} | " + " | ".join(_cell(row[str(n)]) for n in n_values) + " |")
    lines += ["", "Generated tokens per problem (each method at each N run alone):", ""]
    lines.append("| method | " + " | ".join(f"N={n}" for n in n_values) + " |")
    lines.append("|---|" + "---:|" * len(n_values))
    for m, row in acc.items():
        lines.append(f"| {method_label(m)} | " + " | ".join(_tokens(row[str(n)]) for n in n_values) + " |")
    return "\n".join(lines) + "\n"


def method_family(name: str) -> str:
    """Which panel of `plot_accuracy` a method goes in ("reference" = oracle and majority).

    >>> [method_family(m) for m in ("pass", "orm", "orm-vote", "hrm-step", "prm-min")]
    ['reference', 'Best-of-N (whole solutions)', 'Weighted vote', 'Step-level search', 'Best-of-N (whole solutions)']
    """
    if name in ("pass", "majority"):
        return "reference"
    if name.endswith(("-step", "-hier")):
        return "Step-level search"
    if name.split("-")[1:2] and name.split("-")[1] in TREE_LABELS:
        return "Tree search"
    if "vote" in name:
        return "Weighted vote"
    return "Best-of-N (whole solutions)"


MARKERS = "osD^vP*X<>"


def plot_accuracy(acc: dict[str, dict[str, Any]], n_values: list[int], path: str | Path, title: str = "",
                  x: str = "n") -> Path:  # fmt: skip
    """One panel per method family, each with the oracle (pass@N) and majority vote drawn as
    gray references; distinct markers; 95% intervals as error bars (a band covering the plot
    hides the lines at small sample sizes). `x="tokens"`: against generated tokens per problem
    instead of N, so methods are compared at equal compute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def points(row: dict[str, Any]) -> tuple[list[float], list[float], list[float]]:
        pts = [(n, row[str(n)]) for n in n_values if row[str(n)]["accuracy"] is not None
               and (x == "n" or row[str(n)].get("tokens"))]  # fmt: skip
        xs = [float(n) if x == "n" else float(e["tokens"]) for n, e in pts]
        return (xs, [100 * e["accuracy"] for _, e in pts], [100 * (e["ci95"] or 0) for _, e in pts])

    families: dict[str, list[str]] = {}
    for m in acc:
        families.setdefault(method_family(m), []).append(m)
    panels = [f for f in families if f != "reference"] or ["reference"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), dpi=120, sharey=True, squeeze=False)
    for ax, family in zip(axes[0], panels, strict=True):
        for ref, style in (("pass", "--"), ("majority", ":")):
            if ref in acc and family != "reference":
                xs, ys, _ = points(acc[ref])
                ax.plot(xs, ys, style, color="0.45", linewidth=1.2, label=method_label(ref))
        members = families[family]
        for i, m in enumerate(members):
            xs, ys, err = points(acc[m])
            # Dodge: methods with equal numbers would hide each other; shift each a little in x.
            xs = [v * 2 ** (0.05 * (i - (len(members) - 1) / 2)) for v in xs]
            if xs:
                ax.errorbar(xs, ys, yerr=err, marker=MARKERS[i % len(MARKERS)], capsize=3, linewidth=1.4,
                            elinewidth=0.8, alpha=0.9, label=method_label(m))  # fmt: skip
        ax.set_xscale("log", base=2)
        if x == "n":
            ax.set_xticks(n_values, [str(n) for n in n_values])
        ax.set_ylim(-2, 102)
        ax.set_xlabel("N (candidates per problem / per step)" if x == "n" else "generated tokens per problem")
        ax.set_title(family, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("accuracy (%)")
    fig.suptitle(title or ("accuracy vs N" if x == "n" else "accuracy vs generated tokens"), fontsize=11)
    fig.tight_layout()
    p = Path(path)
    with atomic_write(p, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return p


COST_KEYS = (
    "solution_pool_tokens",
    "solution_one_run_per_n_tokens",
    "step_pool_tokens",
    "step_one_run_per_n_tokens",
    "step_independent_runs_tokens",
    "tree_tokens",
    "tree_rm_inputs",
    "rm_inputs",
    "rm_calls",
    "generate_calls",
    "policy_seconds",
    "rm_seconds",
    "seconds",
)


def cost_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of the per-problem cost counters, the pool's token saving, and means per problem."""
    total = {k: sum(r.get("cost", {}).get(k, 0) for r in records) for k in COST_KEYS}
    n = len(records)
    # Tree searches (beam, dvts, particles, hier) share nothing between runs: each counts as is.
    pool = total["solution_pool_tokens"] + total["step_pool_tokens"] + total["tree_tokens"]
    per_n = total["solution_one_run_per_n_tokens"] + total["step_one_run_per_n_tokens"] + total["tree_tokens"]
    out: dict[str, Any] = {"problems": n, **{k: round(v, 3) if isinstance(v, float) else v for k, v in total.items()}}
    out["tokens_generated"] = pool
    out["one_run_per_n_tokens"] = per_n
    out["saving_vs_one_run_per_n"] = None if not per_n else round(1 - pool / per_n, 4)
    indep = total["solution_one_run_per_n_tokens"] + total["step_independent_runs_tokens"] + total["tree_tokens"]
    out["independent_runs_tokens"] = indep
    out["saving_vs_independent_runs"] = None if not indep else round(1 - pool / indep, 4)
    out["seconds_per_problem"] = round(total["seconds"] / n, 3) if n else None
    out["tokens_per_problem"] = round(pool / n, 1) if n else None
    return out


def cost_markdown(cost: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    rows = [
        ("problems", cost["problems"]),
        ("tokens generated (shared pools)", cost["tokens_generated"]),
        ("  of which whole solutions", cost["solution_pool_tokens"]),
        ("  of which step candidates", cost["step_pool_tokens"]),
        ("  of which tree searches (beam, DVTS, particles, hier)", cost["tree_tokens"]),
        ("tokens one run per N would generate", cost["one_run_per_n_tokens"]),
        ("saving of the pool vs one run per N", pct(cost["saving_vs_one_run_per_n"])),
        ("tokens independent runs per (N, subsample) would generate", cost["independent_runs_tokens"]),
        ("saving of the pool vs independent runs", pct(cost["saving_vs_independent_runs"])),
        ("reward-model inputs scored", cost["rm_inputs"]),
        ("reward-model calls", cost["rm_calls"]),
        ("policy generate calls", cost["generate_calls"]),
        ("seconds per problem", cost["seconds_per_problem"]),
        ("  policy / reward model seconds (total)", f"{cost['policy_seconds']:.1f} / {cost['rm_seconds']:.1f}"),
    ]
    return "| cost | value |\n|---|---:|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def read_done(path: Path) -> list[dict[str, Any]]:
    """Finished problem records (`artifacts.read_appended`: a torn last line is redone)."""
    return read_appended(path)


def all_results(out_dir: Path) -> list[Path]:
    """The `problems.jsonl` files a run without `shard` reports: its own and every shard's."""
    return [out_dir / "problems.jsonl", *sorted(out_dir.glob("shards/*/problems.jsonl"))]


def write_report(
    dataset: str,
    policy_model: str,
    n_values: list[int],
    subsamples: int,
    methods: list[Method],
    problems: list[Problem],
    run_dir: Path,
    sources: list[Path],
) -> None:
    """samples.jsonl, metrics.json, table.md, report.md and accuracy.png for `problems`."""
    by_id: dict[str, dict[str, Any]] = {}
    for src in sources:
        for rec in read_done(src):
            by_id.setdefault(rec["problem_id"], rec)
    records = [by_id[p.problem_id] for p in problems if p.problem_id in by_id]
    names = [m.name for m in methods]
    n_values = sorted(set(n_values))
    acc = accuracy(records, names, n_values)
    cost = cost_summary(records)
    title = f"{dataset}: accuracy (%) vs N, {len(records)}/{len(problems)} problems, policy {policy_model}"
    metrics = {
        "dataset": dataset,
        "problems": len(records),
        "problems_planned": len(problems),
        "n_values": n_values,
        "subsamples": subsamples,
        "accuracy": acc,
        "cost": cost,
        "ci": "mean over problems of per-problem accuracy (averaged over subsamples) +- 1.96 sd/sqrt(problems)",
    }
    write_json(run_dir / "metrics.json", metrics)
    table = markdown_table(acc, n_values, title)
    with atomic_write(run_dir / "table.md") as f:
        f.write(table)
    with atomic_write(run_dir / "report.md") as f:
        f.write(
            f"# hiprm eval: {dataset}\n\n{table}\n{cost_markdown(cost)}\n"
            f"CI: {metrics['ci']}. Subsamples per N < N_max: {subsamples}.\n"
        )
    write_jsonl(run_dir / "samples.jsonl", _sample_rows(records))
    if records:
        plot_accuracy(
            acc, n_values, run_dir / "accuracy.png", title=f"{dataset} ({len(records)} problems)"
        )
        plot_accuracy(acc, n_values, run_dir / "accuracy_tokens.png", x="tokens",
                      title=f"{dataset} ({len(records)} problems): accuracy vs generated tokens")  # fmt: skip
    log.info("report: %s (%d problems)", run_dir / "report.md", len(records))


def _sample_rows(records: list[dict[str, Any]]):
    for rec in records:
        pid = rec["problem_id"]
        for c in rec.get("candidates", []):
            yield {"problem_id": pid, "kind": "solution", **c}
        for s in rec.get("step_candidates", []):
            yield {"problem_id": pid, "kind": "step", **s}
        for p in rec.get("paths", []):
            yield {"problem_id": pid, "kind": "path", **p}
        for t in rec.get("searches", []):
            yield {"problem_id": pid, "kind": "search", **t}
