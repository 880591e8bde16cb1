"""The quickstart as a plan of staged runner configs: every plan's stage files load as their
runner's config and open with their command; a plan runs end to end on tiny models (the default
plan and the tree plan), resumes, runs a subset, reports from what is on disk, runs a stage
through a launcher, and refuses bad plans with one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from hiprm.commands import COMMANDS
from hiprm.config import ConfigError
from hiprm.quickstart import QuickstartConfig, load_plan, run, stage_config

ROOT = Path(__file__).resolve().parents[1]
PLANS = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("stages.yaml"))


def test_the_plans_are_the_quickstart_and_the_paper_experiments():
    assert PLANS == ["configs/experiments/prm_vs_hrm", "configs/experiments/rl_cpu", "configs/mcts_cpu",
                     "configs/paper/mcts", "configs/paper/quickstart", "configs/paper/selftrain_table4",
                     "configs/quickstart", "configs/selftrain_table4_cpu"]  # fmt: skip


@pytest.mark.parametrize("plan", PLANS)
def test_every_stage_file_is_its_runners_config_and_opens_with_its_command(plan):
    run_dir, stages = load_plan(str(ROOT / plan))
    for s in stages:
        first = s.config.read_text().splitlines()[0]
        assert first == f"# hiprm {s.command} {plan}/{s.config.name}", first
        _, cfg = stage_config(s, run_dir, run_dir, [])
        assert type(cfg).__name__ == COMMANDS[s.command][1]
    if plan.startswith("configs/paper"):  # paper-scale training goes through accelerate launch
        trainers = [s for s in stages if s.command in ("rm train", "selftrain")]
        assert trainers and all(s.launcher.startswith("accelerate launch --config_file configs/accelerate/")
                                for s in trainers)  # fmt: skip


def test_default_annotation_problems_are_the_easiest_gsm8k_ones(shared_data):
    """The quickstart annotates the 4 GSM8K train problems with the shortest reference solutions
    (ones the quickstart policy solves some of the time), all with gradable answers; no plan's
    annotate stage pins problem ids."""
    from hiprm.annotate.run import load_problems

    run_dir, stages = load_plan("configs/quickstart")
    (annotate,) = [s for s in stages if s.command == "annotate"]
    _, cfg = stage_config(annotate, run_dir, run_dir, [f"data_dir={shared_data}"])
    problems, _ = load_problems(cfg)
    assert [p.problem_id for p in problems] == ["bba8b7ee5ed059cb", "cdde24438fddce86", "53600215b4f3b79e",
                                                "ac13c85f3b3da6be"]  # fmt: skip
    assert [p.answer for p in problems] == ["11", "57", "19", "42000"]
    for plan in PLANS:
        for s in load_plan(plan)[1]:
            if s.command == "annotate":
                    assert not yaml.safe_load(s.config.read_text()).get("problem_ids"), plan


def _tiny(stages, shared_data: Path, model: Path) -> list[str]:
    """`set=` items that shrink every stage of a plan to a few seconds on the tiny models."""
    out = []
    for s in stages:
        n = s.name
        if s.command == "data build":
            out += [f"{n}.max_problems=6"] if "tree" not in n else []
        elif s.command == "rm train":
            out += [f"{n}.model.name={model}", f"{n}.optim.max_steps=2", f"{n}.optim.batch_size=2",
                    f"{n}.template.max_length=128", f"{n}.model.train_top_layers=1", f"{n}.data.max_val=4",
                    f"{n}.eval.every_steps=2", f"{n}.checkpoint.every_steps=2"]  # fmt: skip
        elif s.command == "rm eval":
            out += [f"{n}.prm800k_limit=1", f"{n}.limit=3", f"{n}.prmbench_limit=1", f"{n}.data_dir={shared_data}"]
        elif s.command == "eval":
            out += [f"{n}.limit=2", f"{n}.n_values=[1,2]", f"{n}.subsamples=1", f"{n}.max_steps=2",
                    f"{n}.max_step_tokens=8", f"{n}.max_solution_tokens=16", f"{n}.data_dir={shared_data}"]  # fmt: skip
            out += [] if "tuned" in n else [f"{n}.policy.model={model}"]
        elif s.command == "annotate":
            out += [f"{n}.limit=2", f"{n}.budget=3", f"{n}.children=2", f"{n}.max_depth=2",
                    f"{n}.max_solution_tokens=12", f"{n}.policy.model={model}", f"{n}.data_dir={shared_data}"]  # fmt: skip
        elif s.command == "selftrain":
            out += [f"{n}.model={model}", f"{n}.max_steps=1", f"{n}.train_top_layers=1", f"{n}.save_every=1",
                    f"{n}.min_mc=0.0"]  # fmt: skip
    return out


@pytest.mark.slow
def test_the_default_plan_end_to_end_resumes_runs_a_subset_and_reports(tmp_path, shared_data, tiny_backbone_dir,
                                                                       capsys):  # fmt: skip
    _, stages = load_plan("configs/quickstart")
    out = tmp_path / "qs"
    data = ["data_prm", "data_hrm"]
    cfg = QuickstartConfig(out_dir=str(out), set=_tiny(stages, shared_data, tiny_backbone_dir)
                           + [f"{n}.input={shared_data / 'prm800k' / 'phase1_train.reconstructed.jsonl'}" for n in data])  # fmt: skip
    report = run(cfg)
    text = report.read_text()
    for needle in ["## Training data from PRM800K", "hrm_pair", "## Reward-model training", "## Evaluation without a policy",
                   "## Search with the policy (eval)", "## Auto-annotation", "Share of nodes with 0 < MC < 1",
                   "## Training data from the trees", "**tree_rm_hrm**", "## Self-training: base vs tuned policy"]:  # fmt: skip
        assert needle in text, needle
    for kind in ("prm", "hrm"):
        assert (out / "rm" / kind / "model" / "config.json").exists()
        assert (out / "rm" / f"tree_{kind}" / "model" / "config.json").exists()
    assert len((out / "annotate" / "trees.jsonl").read_text().splitlines()) == 2
    assert (out / "annotate" / "trees.mc.png").exists()
    # every output under out_dir, none under the plan's run_dir
    manifest = json.loads((out / "quickstart.json").read_text())
    assert all(s["output"].startswith(str(out)) for s in manifest["stages"].values())
    # PRM and HRM trained with the same budget from the same problems
    prm_cfg = (out / "rm" / "prm" / "config.yaml").read_text()
    assert prm_cfg.replace("/prm", "/hrm") == (out / "rm" / "hrm" / "config.yaml").read_text()
    first = capsys.readouterr().out
    assert "quickstart done" in first and str(report) in first
    # A rerun finds every stage finished (each returns at once) and writes the same report.
    before = {p: p.stat().st_mtime_ns for p in (out / "rm").rglob("model.safetensors")}
    assert run(cfg) == report
    assert {p: p.stat().st_mtime_ns for p in (out / "rm").rglob("model.safetensors")} == before
    # A subset runs only those stages; the report still shows everything on disk.
    again = run(QuickstartConfig(out_dir=str(out), stages=["annotate_stats"], set=cfg.set)).read_text()
    for needle in ["## Training data from PRM800K", "## Auto-annotation", "## Evaluation without a policy"]:
        assert needle in again, needle
    from hiprm.cli import main

    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").read_text() == again


@pytest.mark.slow
def test_the_tree_plan_with_a_stage_through_a_launcher(tmp_path, shared_data, tiny_backbone_dir):
    """configs/mcts_cpu (Sec. 4.2: trees -> PRM / HRM on them -> their evaluation), with one
    training stage run the way the paper plans run theirs: through `accelerate launch` (here the
    shipped 2-process CPU config, data-parallel over gloo), in processes of its own."""
    plan = tmp_path / "plan"
    plan.mkdir()
    for f in (ROOT / "configs" / "mcts_cpu").iterdir():
        (plan / f.name).write_text(f.read_text())
    spec = yaml.safe_load((plan / "stages.yaml").read_text())
    for s in spec["stages"]:
        if s["name"] == "tree_rm_hrm":
            s["launcher"] = f"{Path(sys.executable).parent / 'accelerate'} launch --config_file " \
                            f"{ROOT / 'configs' / 'accelerate' / 'cpu_2proc.yaml'}"  # fmt: skip
    (plan / "stages.yaml").write_text(yaml.safe_dump(spec))
    _, stages = load_plan(str(plan))
    out = tmp_path / "qs"
    report = run(QuickstartConfig(plan=str(plan), out_dir=str(out), set=_tiny(stages, shared_data, tiny_backbone_dir)))
    text = report.read_text()
    assert "## Auto-annotation" in text and "## Training data from the trees" in text
    assert "## Training data from PRM800K" not in text  # the plan has no PRM800K stage
    assert (out / "rm_eval_trees" / "rm_eval.json").exists()
    assert (out / ".quickstart" / "tree_rm_hrm.yaml").is_file()  # what the launched process read
    assert (out / "rm" / "tree_hrm" / "model" / "config.json").is_file()
    assert json.loads((out / "rm" / "tree_hrm" / "meta.json").read_text())["world_size"] == 2


def test_a_skipped_stage_and_the_stage_that_needs_it(tmp_path, shared_data):
    """selftrain on trees without a correct trajectory is skipped (its skip_if), and the eval of
    the tuned policy, which needs its model, is skipped too; both are in the report."""
    from hiprm.tree import Tree, recompute

    t = Tree.new("p", "What is 1 + 1?", "2")
    t.add(t.root.id, "# Answer\n\n3", outcome="wrong", answer="3")
    recompute(t)
    trees = tmp_path / "trees.jsonl"
    trees.write_text(json.dumps(t.to_dict()) + "\n")
    _, stages = load_plan("configs/quickstart")
    out = tmp_path / "qs"
    report = run(QuickstartConfig(out_dir=str(out), stages=["selftrain", "eval_tuned"],
                                  set=[f"selftrain.trees={trees}"]))  # fmt: skip
    manifest = json.loads((out / "quickstart.json").read_text())["stages"]
    assert manifest["selftrain"]["status"] == "skipped" and "no trajectory passes" in manifest["selftrain"]["why"]
    assert manifest["eval_tuned"]["status"] == "skipped" and "selftrain/model" in manifest["eval_tuned"]["why"]
    assert "Skipped: selftrain" in report.read_text()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stages": ["annotate", "fly"]}, "unknown ['fly']"),
        ({"set": ["nope.x=1"]}, "is not NAME.key=value"),
        ({"set": ["rm_prm.optim.nope=1"]}, "unknown key(s) optim.nope"),
        ({"set": ["rm_prm.optim.batch_size=0"]}, "optim.batch_size"),
        ({"plan": "configs/nowhere"}, "neither a folder holding stages.yaml"),
    ],
)
def test_bad_plans_and_overrides_are_one_line_before_any_stage_runs(kwargs, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        run(QuickstartConfig(out_dir=str(tmp_path / "qs"), **kwargs))
    assert not (tmp_path / "qs" / "quickstart.json").exists()


def test_solve_rates_script_counts_graded_samples(tmp_path, shared_data, tiny_backbone_dir, capsys):
    import importlib.util

    path = ROOT / "scripts" / "solve_rates.py"
    spec = importlib.util.spec_from_file_location("solve_rates", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.answer_in_question("Compute $\\dbinom{1,293}{1}$.", "1293")
    assert not mod.answer_in_question("Factor $t^2-49$.", "(t-7)(t+7)")
    out = tmp_path / "samples.jsonl"
    args = [f"data_dir={shared_data}", f"policy.model={tiny_backbone_dir}", "max_solution_tokens=8",
            "dataset=math-train", "order=shortest_question",
            "--answer-in-question", "--max-question-chars", "30", "--limit", "3", "--samples", "2",
            "--out", str(out)]  # fmt: skip
    assert mod.main(args) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["outcome"] for r in rows} <= {"correct", "wrong", "no_answer"}
    assert "3 problems of" in printed and "of 6 (" in printed
    with pytest.raises(SystemExit, match="not problem ids"):
        mod.main([f"data_dir={shared_data}", f"policy.model={tiny_backbone_dir}", "--ids", "nope"])


@pytest.mark.slow
def test_a_plan_killed_mid_run_resumes_to_the_outputs_of_an_uninterrupted_run(tmp_path, shared_data,
                                                                               tiny_backbone_dir):  # fmt: skip
    """`hiprm quickstart` is killed with SIGKILL once a stage after the annotation has started;
    the same command again finishes every stage, with the trees and tree data of a run that was
    never killed and a manifest that records each stage once."""
    from tests.killing import hiprm_cmd, kill_when, run_to_end

    _, stages = load_plan("configs/mcts_cpu")
    tiny = [f"set=[{','.join(_tiny(stages, shared_data, tiny_backbone_dir))}]"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    run_to_end(hiprm_cmd("quickstart", "configs/mcts_cpu", f"out_dir={ref}", *tiny))
    cmd = hiprm_cmd("quickstart", "configs/mcts_cpu", f"out_dir={out}", *tiny)

    def training_started() -> bool:
        return (out / "rm" / "tree_prm" / "meta.json").is_file()

    kill_when(cmd, training_started, tmp_path / "killed.log")
    assert not (out / "report.md").exists()
    run_to_end(cmd)

    def trees(d: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "cost"} for x in (d / "annotate" / "trees.jsonl").read_text().splitlines()]  # fmt: skip

    assert trees(out) == trees(ref)
    for kind in ("prm", "hrm"):
        for split in ("train", "val"):
            name = f"data/tree_{kind}/{split}.jsonl"  # (each example's `source` names its run folder)
            assert (out / name).read_text().replace(str(out), str(ref)) == (ref / name).read_text(), name
    manifest = json.loads((out / "quickstart.json").read_text())["stages"]
    assert list(manifest) == [s.name for s in stages] and all(s["status"] == "done" for s in manifest.values())
    assert (out / "rm_eval_trees" / "rm_eval.json").is_file() and (out / "report.md").is_file()
