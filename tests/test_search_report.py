"""Accuracy with CIs over problems and subsamples, the paper-style table, the plot, the cost summary."""

from __future__ import annotations

import math

from hiprm.search.report import accuracy, cost_markdown, cost_summary, markdown_table, mean_ci, plot_accuracy


def _rec(results, **cost):
    return {"results": results, "cost": cost}


RECORDS = [
    _rec({"orm": {"1": {"correct": [1, 0, 0, 1]}, "4": {"correct": [1]}}}, solution_pool_tokens=40,
         solution_one_run_per_n_tokens=50, seconds=2.0),
    _rec({"orm": {"1": {"correct": [0, 0, 0, 0]}, "4": {"correct": [1]}}}, solution_pool_tokens=60,
         solution_one_run_per_n_tokens=70, step_pool_tokens=100, step_one_run_per_n_tokens=80,
         step_independent_runs_tokens=300, rm_calls=3, rm_inputs=9, seconds=4.0),
    _rec({"orm": {"1": {"correct": [1, 1, 1, 1]}, "4": {"correct": [0]}}}, seconds=3.0),
]


def test_mean_ci():
    m, ci = mean_ci([0.5, 0.0, 1.0])
    assert m == 0.5 and math.isclose(ci, 1.96 * 0.5 / math.sqrt(3))
    assert mean_ci([0.3]) == (0.3, None)
    assert math.isnan(mean_ci([])[0])


def test_accuracy_averages_subsamples_within_a_problem_first():
    acc = accuracy(RECORDS, ["orm", "prm-step"], [1, 4])
    one = acc["orm"]["1"]
    # per-problem means 0.5, 0.0, 1.0 -> 0.5; subsamples are not counted as independent problems
    assert one["accuracy"] == 0.5 and one["problems"] == 3 and one["subsamples"] == 12
    assert math.isclose(one["ci95"], 1.96 * 0.5 / math.sqrt(3))
    assert math.isclose(acc["orm"]["4"]["accuracy"], 2 / 3)
    assert acc["prm-step"]["1"] == {"accuracy": None, "ci95": None, "problems": 0, "subsamples": 0, "tokens": None}


def test_markdown_table_has_methods_as_rows_and_n_as_columns():
    acc = accuracy(RECORDS, ["orm", "prm-step"], [1, 4])
    table = markdown_table(acc, [1, 4], title="GSM8K")
    lines = table.strip().splitlines()
    assert lines[0] == "**GSM8K**"
    assert lines[2] == "| method | N=1 | N=4 |"
    assert lines[4] == "| ORM best-of-N | 50.0 ± 56.6 | 66.7 ± 65.3 |"
    assert lines[5] == "| PRM step search | - | - |"


def test_plot_has_one_panel_per_family_with_references(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    methods = ["pass", "majority", "orm", "orm-vote", "prm-step", "hrm-step"]
    recs = [_rec({m: {"1": {"correct": [k % 2]}, "4": {"correct": [1]}} for m in methods}) for k in range(3)]
    acc = accuracy(recs, methods, [1, 4])
    made = []
    real = plt.subplots
    monkeypatch.setattr(plt, "subplots", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    p = plot_accuracy(acc, [1, 4], tmp_path / "acc.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = made[0][1][0]
    assert [ax.get_title() for ax in axes] == ["Best-of-N (whole solutions)", "Weighted vote", "Step-level search"]
    step_labels = axes[2].get_legend_handles_labels()[1]
    assert step_labels == ["pass@N (oracle)", "Majority vote", "PRM step search", "HRM step search"]


def test_cost_summary_and_saving():
    cost = cost_summary(RECORDS)
    assert cost["problems"] == 3
    assert cost["tokens_generated"] == 40 + 60 + 100
    assert cost["one_run_per_n_tokens"] == 50 + 70 + 80
    assert cost["saving_vs_one_run_per_n"] == 0.0
    assert cost["independent_runs_tokens"] == 120 + 300
    assert math.isclose(cost["saving_vs_independent_runs"], round(1 - 200 / 420, 4))
    assert cost["seconds_per_problem"] == 3.0
    assert cost["rm_inputs"] == 9
    md = cost_markdown(cost)
    assert "| saving of the pool vs one run per N | 0.0% |" in md
    assert cost_summary([])["seconds_per_problem"] is None
