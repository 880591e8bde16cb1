"""The quickstart end to end on the real shared data with tiny models: every stage runs, the
report gathers every table, and a rerun resumes (returns finished stages instead of redoing them)."""

from __future__ import annotations

import pytest

from hiprm.config import load_config
from hiprm.quickstart import QuickstartConfig, run


@pytest.mark.slow
def test_quickstart_end_to_end_and_rerun(tmp_path, shared_data, tiny_backbone_dir, capsys):
    cfg = load_config(
        QuickstartConfig,
        None,
        [
            f"out_dir={tmp_path / 'qs'}",
            f"data_dir={shared_data}",
            f"data_input={shared_data / 'prm800k' / 'phase1_train.reconstructed.jsonl'}",
            f"model={tiny_backbone_dir}",
            "data_max_problems=6",
            "train_steps=2",
            "batch_size=2",
            "max_length=128",
            "train_top_layers=1",
            "max_val=4",
            "prm800k_limit=1",
            "processbench_limit=3",
            "problems=2",
            "n_values=[1,2]",
            "subsamples=1",
            "max_steps=2",
            "max_step_tokens=8",
            "max_solution_tokens=16",
            "annotate_problems=2",
            "annotate_budget=3",
            "annotate_children=2",
            "annotate_max_depth=2",
            "annotate_max_solution_tokens=12",
            "tree_train_steps=1",
            "selftrain_steps=1",
            "selftrain_top_layers=1",
        ],
    )
    report = run(cfg)
    text = report.read_text()
    for needle in ["## Training data", "hrm_pair", "## Reward-model training", "## Evaluation without a policy",
                   "## Best-of-N and step-level search", "CPU-scale run", "## Auto-annotation",
                   "Share of nodes with 0 < MC < 1", "## PRM and HRM trained on the trees",
                   "## Self-training: base vs tuned policy"]:  # fmt: skip
        assert needle in text, needle
    out = tmp_path / "qs"
    for kind in ("prm", "hrm"):
        assert (out / "rm" / kind / "model" / "config.json").exists()
        assert (out / "data" / kind / "train.jsonl").exists()
    assert (out / "rm_eval" / "rm_eval.json").exists()
    assert (out / "eval_gsm8k" / "metrics.json").exists()
    assert len((out / "annotate" / "trees.jsonl").read_text().splitlines()) == 2
    assert (out / "annotate" / "mc_histogram.png").exists()
    for kind in ("tree_prm", "tree_hrm"):
        assert (out / "rm" / kind / "model" / "config.json").exists()
    # PRM and HRM trained with the same budget from the same problems
    prm_cfg = (out / "rm" / "prm" / "config.yaml").read_text()
    hrm_cfg = (out / "rm" / "hrm" / "config.yaml").read_text()
    assert prm_cfg.replace("/prm", "/hrm") == hrm_cfg
    first = capsys.readouterr().out
    assert "quickstart done" in first and str(report) in first
    # A rerun finds every stage finished and rewrites the same report.
    assert run(cfg) == report
    # Running no stage reports every stage from what is on disk.
    from dataclasses import replace

    again = run(replace(cfg, stages=[])).read_text()
    # (self-training wrote no model here: the tiny policy's trees hold no correct trajectory)
    for needle in ["## Training data", "## Auto-annotation", "## PRM and HRM trained on the trees",
                   "## Best-of-N and step-level search", "## Evaluation without a policy"]:  # fmt: skip
        assert needle in again, needle


@pytest.mark.slow
def test_tree_stages_alone_with_hnc_selftrain_and_tree_eval(tmp_path, shared_data, tiny_backbone_dir):
    """The §4.2 / Table 4 pipeline shape (configs/mcts_cpu.yaml): trees -> PRM/HRM on trees ->
    their evaluation, and self-training from the trees and from the HNC trees."""
    cfg = load_config(QuickstartConfig, None, [
        f"out_dir={tmp_path / 'qs'}", f"data_dir={shared_data}", f"model={tiny_backbone_dir}",
        "stages=[annotate,tree_rms,selftrain]", "tree_rm_eval=true", "selftrain_from_hnc=true", "selftrain_min_mc=0.0",
        "annotate_problems=2", "annotate_budget=3", "annotate_children=2", "annotate_max_depth=2",
        "annotate_max_solution_tokens=12", "tree_train_steps=1", "selftrain_steps=1", "selftrain_top_layers=1",
        "max_length=128", "train_top_layers=1", "batch_size=2", "max_val=4", "prm800k_limit=1", "processbench_limit=3",
        "problems=1", "n_values=[1]", "subsamples=1", "max_steps=1", "max_step_tokens=8", "max_solution_tokens=16",
    ])  # fmt: skip
    text = run(cfg).read_text()
    out = tmp_path / "qs"
    assert "## Auto-annotation" in text and "## PRM and HRM trained on the trees" in text
    assert "## Training data" not in text  # the PRM800K stages did not run
    assert (out / "rm_eval_trees" / "rm_eval.json").exists()
    assert (out / "annotate" / "trees_hnc.jsonl").exists()
    assert "tuned on `trees`" in text and "tuned on `hnc_trees`" in text


def test_unknown_stage_is_an_error(tmp_path):
    from hiprm.config import ConfigError

    with pytest.raises(ConfigError, match="unknown"):
        run(QuickstartConfig(out_dir=str(tmp_path), stages=["annotate", "fly"]))


def test_default_annotation_problems_are_the_three_chosen_ones(tmp_path, shared_data):
    """The quickstart annotates exactly the problems scripts/solve_rates.py chose (they exist in
    the shared MATH train file, in that order, with gradable answers); the paper-scale and
    CPU-scale tree configs clear the list instead of inheriting it."""
    from pathlib import Path

    import yaml

    from hiprm.annotate.run import load_problems
    from hiprm.quickstart import _annotate_config

    cfg = load_config(QuickstartConfig, None, [f"data_dir={shared_data}"])
    problems, _ = load_problems(_annotate_config(cfg, tmp_path))
    assert [p.problem_id for p in problems] == ["b76b0eef993517e0", "5e3416f9403f7ca9", "62a72e84f58e33c6"]
    assert [p.answer for p in problems] == ["625681", "2", "70"]
    configs = Path(__file__).resolve().parents[1] / "configs"
    for name in ("mcts_cpu", "mcts_gpu", "selftrain_table4_cpu", "selftrain_table4_gpu", "quickstart_gpu"):
        assert yaml.safe_load((configs / f"{name}.yaml").read_text())["annotate_problem_ids"] == [], name


def test_solve_rates_script_counts_graded_samples(tmp_path, shared_data, tiny_backbone_dir, capsys):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "solve_rates.py"
    spec = importlib.util.spec_from_file_location("solve_rates", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.answer_in_question("Compute $\\dbinom{1,293}{1}$.", "1293")
    assert not mod.answer_in_question("Factor $t^2-49$.", "(t-7)(t+7)")
    out = tmp_path / "samples.jsonl"
    args = [f"data_dir={shared_data}", f"model={tiny_backbone_dir}", "annotate_max_solution_tokens=8",
            "--answer-in-question", "--max-question-chars", "30", "--limit", "3", "--samples", "2",
            "--out", str(out)]  # fmt: skip
    assert mod.main(args) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["outcome"] for r in rows} <= {"correct", "wrong", "no_answer"}
    assert "3 problems of" in printed and "of 6 (" in printed
    with pytest.raises(SystemExit, match="not problem ids"):
        mod.main([f"data_dir={shared_data}", f"model={tiny_backbone_dir}", "--ids", "nope"])
