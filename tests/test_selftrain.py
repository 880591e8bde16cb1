"""hiprm.selftrain: trajectory selection and text format (round trip through the policy's step
parser), the runner on the tiny causal LM from conftest (train, resume, LoRA, sweep, errors),
and the saved folder loading as an HF policy."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hiprm.artifacts import DataError, write_jsonl
from hiprm.config import ConfigError, load_config
from hiprm.policy.prompts import STYLES
from hiprm.policy.steps import split_solution, step_texts
from hiprm.selftrain.select import (
    completion_steps,
    format_completion,
    select_trajectories,
    split_trajectories,
    training_text,
)
from hiprm.tree import Tree, read_trees, recompute
from tests.killing import checkpoint_saved, hiprm_cmd, kill_when, run_to_end

REPO = Path(__file__).resolve().parents[1]
OPENR = "samples/openr_samples_math-aps-tree.jsonl"


def toy_tree(pid: str, question: str, header: bool = True, merged: bool = False) -> Tree:
    """root -> s1 -> {s2 correct (with # Answer), s2' wrong}; root -> t1 -> t2 correct (bare)."""
    h = (lambda k: f"# Step {k}\n") if header else (lambda k: "")
    t = Tree.new(pid, question, "5")
    a = t.add(t.root.id, f"{h(1)}First, 2 + 3 = 5.")
    t.add(a.id, f"{h(2)}So the sum is 5.\n\n# Answer\n\n5", outcome="correct", answer="5")
    t.add(a.id, f"{h(2)}So the sum is 6.\n\n# Answer\n\n6", outcome="wrong", answer="6")
    b = t.add(t.root.id, f"{h(1)}We count: 2, then 3 more.")
    t.add(b.id, "That makes \\boxed{5}.", outcome="correct", answer="5")
    t.add(b.id, "That makes \\boxed{5}.\n", outcome="correct", answer="5")  # same step again: a count
    recompute(t)
    if merged:
        t.nodes[1].merged_from = ["x", "y"]
    return t


def test_select_rule_dedup_and_split():
    trees = [toy_tree(f"p{i}", f"What is 2 + 3? ({i})") for i in range(4)]
    # mc: s1 = 0.5, t1 = 1.0; leaves 1.0/0.0/1.0
    kept, stats = select_trajectories(trees, min_mc=0.9)
    assert stats["kept"] == 4 and stats["rejected"] == {"low_mc": 4, "wrong_leaf": 4}
    assert all(k.steps[0].endswith("We count: 2, then 3 more.") for k in kept)
    kept_all, _ = select_trajectories(trees, min_mc=0.5, inclusive=True)
    assert len(kept_all) == 8
    kept_mean, _ = select_trajectories(trees, min_mc=0.7, rule="mean")  # (0.5 + 1) / 2 = 0.75
    assert len(kept_mean) == 8
    # two trees of the same problem with the same path: kept once
    again, st = select_trajectories(
        [trees[0], toy_tree("p0", "What is 2 + 3? (0)", header=False)], min_mc=0.9
    )
    assert len(again) == 1 and st["duplicates"] == 1
    train, val = split_trajectories(kept_all, 0.25, seed=0)
    assert len(val) == 2 and not {t.problem_id for t in train} & {t.problem_id for t in val}
    with pytest.raises(ValueError, match="rule"):
        select_trajectories(trees, rule="max")


def test_merged_nodes_are_ordinary_nodes():
    kept, _ = select_trajectories([toy_tree("p", "q", merged=True)], min_mc=0.4)
    assert len(kept) == 2


@pytest.mark.parametrize("header", [True, False])
def test_completion_round_trips_through_the_step_parser(header):
    style = STYLES["step"]
    kept, _ = select_trajectories([toy_tree("p", "q", header=header)], min_mc=0.0)
    for t in kept:
        text = format_completion(t.steps, t.answer)
        assert text.endswith("# Answer\n\n5\n# END!")
        assert text.count("# Answer") == 1 and text.count("# Step 1") == 1 and text.count("# Step 2") == 1
        steps = split_solution(text, style)
        assert steps == completion_steps(t.steps, t.answer)
        assert len(steps) == len(t.steps)
        # the same steps come out of step-level search chunks cut at the next header
        chunks, rest = [], text
        for k in range(2, len(steps) + 1):
            i = rest.index(f"# Step {k}") + len(f"# Step {k}")
            chunks.append(rest[:i])
            rest = rest[i:]
        chunks.append(rest)
        assert step_texts(chunks, style) == steps


def test_completion_on_openr_trees_round_trips(shared_data):
    trees = list(read_trees(shared_data / OPENR))
    kept, stats = select_trajectories(trees, min_mc=0.9)
    assert stats["trees"] == 3 and kept
    for t in kept:
        text = format_completion(t.steps, t.answer)
        assert split_solution(text, STYLES["step"]) == completion_steps(t.steps, t.answer)
        assert text.count("# Answer") == 1 and text.endswith(f"# Answer\n\n{t.answer}\n# END!")


def test_prompt_is_the_policy_prompt(tiny_tokenizer):
    from hiprm.selftrain.model import render_chat_for

    kept, _ = select_trajectories([toy_tree("p", "What is 2 + 3?")], min_mc=0.9)
    render = render_chat_for(tiny_tokenizer)
    prompt, completion = training_text(kept[0], render)
    assert prompt == STYLES["step"].prompt_for("What is 2 + 3?", "", render)
    assert prompt.endswith("<|im_start|>assistant\n") and "Begin each step with '# Step X'" in prompt
    assert completion.startswith("# Step 1\nWe count")


# --- the runner -----------------------------------------------------------------------------


@pytest.fixture
def trees_file(tmp_path) -> Path:
    path = tmp_path / "trees.jsonl"
    write_jsonl(path, [toy_tree(f"p{i}", f"What is 2 + 3? ({i})").to_dict() for i in range(6)])
    return path


def make_cfg(trees: Path, model: Path, out: Path, *overrides: str):
    from hiprm.selftrain.train import SelftrainConfig

    return load_config(SelftrainConfig, None, [
        f"trees={trees}", f"model={model}", f"out_dir={out}", "max_length=2048", "batch_size=2",
        "max_steps=4", "lr=1e-3", "save_every=2", "min_mc=0.4", *overrides,
    ])  # fmt: skip


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_train_writes_a_loadable_policy_and_both_loss_terms(trees_file, tiny_lm_dir, tmp_path):
    from hiprm.policy.hf import HFPolicy
    from hiprm.policy.protocol import SamplingParams
    from hiprm.selftrain.train import run

    out = run(make_cfg(trees_file, tiny_lm_dir, tmp_path / "st", "lam=0.5"))
    train_rows = [r for r in rows(out) if "lm_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(r["lm_loss"] > 0 and r["kl"] >= 0 and "log_kl" in r for r in train_rows)
    assert train_rows[0]["kl"] < 1e-6 < train_rows[-1]["kl"]  # starts at the reference, moves away
    assert train_rows[-1]["lm_loss"] < train_rows[0]["lm_loss"]
    # one micro-batch per step: the optimised loss is exactly L_LM + lam * log(KL + eps)
    for r in train_rows:
        assert r["loss"] == pytest.approx(r["lm_loss"] + 0.5 * math.log(r["kl"] + 1e-6), rel=1e-4, abs=1e-4)
    assert (out / "fig4.png").stat().st_size > 1000
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "done" and meta["selection"]["kept"] == 12
    picked = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    assert len(picked) == 12 and {p["split"] for p in picked} == {"train"}
    policy = HFPolicy(str(out / "model"))
    got = policy.generate(
        [policy.render_chat("What is 2 + 3?")], SamplingParams(n=1, max_tokens=4, temperature=0)
    )
    assert len(got) == 1 and isinstance(got[0][0], str)
    # rerunning a finished run returns it untouched
    mtime = (out / "model" / "model.safetensors").stat().st_mtime
    run(make_cfg(trees_file, tiny_lm_dir, tmp_path / "st", "lam=0.5"))
    assert (out / "model" / "model.safetensors").stat().st_mtime == mtime


def test_lora_sweep_merges_and_plots_one_column_per_lambda(trees_file, tiny_lm_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from hiprm.selftrain.train import run

    out = run(make_cfg(trees_file, tiny_lm_dir, tmp_path / "sweep", "lambdas=[0, 10]", "lora.r=4", "max_steps=2",
                       "lr=1e-2"))  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    for lam in ("0", "10"):
        folder = out / f"lam_{lam}" / "model"
        assert not (folder / "adapter_config.json").exists()
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert not any("lora" in k for k in model.state_dict())
        assert not torch.allclose(
            model.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
        )
        torch.testing.assert_close(
            model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
        )
    assert (out / "fig4.png").is_file()
    lam0 = [r for r in rows(out / "lam_0") if "lm_loss" in r]
    assert lam0[0]["kl_term"] == 0.0


def test_train_top_layers_leaves_the_rest_and_the_tied_head_alone(trees_file, tiny_lm_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from hiprm.selftrain.train import run

    out = run(
        make_cfg(trees_file, tiny_lm_dir, tmp_path / "top", "train_top_layers=1", "max_steps=2", "lr=1e-2")
    )
    base, new = (
        AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
        AutoModelForCausalLM.from_pretrained(out / "model"),
    )
    torch.testing.assert_close(
        new.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    )
    torch.testing.assert_close(new.lm_head.weight, base.lm_head.weight)
    assert not torch.allclose(new.model.layers[1].mlp.up_proj.weight, base.model.layers[1].mlp.up_proj.weight)
    with pytest.raises(ConfigError, match="set one of them"):
        run(make_cfg(trees_file, tiny_lm_dir, tmp_path / "both", "train_top_layers=1", "lora.r=4"))


def test_validation_split_is_evaluated_once(trees_file, tiny_lm_dir, tmp_path):
    from hiprm.selftrain.train import run

    out = run(make_cfg(trees_file, tiny_lm_dir, tmp_path / "val", "val_fraction=0.34", "max_steps=2"))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["examples"] == {"train": 8, "val": 4, "too_long": 0}
    assert meta["validation"]["eval_lm_loss"] > 0 and "eval_kl" in meta["validation"]
    picked = [json.loads(x) for x in (out / "trajectories.jsonl").read_text().splitlines()]
    val_ids = {p["problem_id"] for p in picked if p["split"] == "val"}
    assert len(val_ids) == 2 and not val_ids & {p["problem_id"] for p in picked if p["split"] == "train"}


def test_bad_input_is_named(trees_file, tiny_lm_dir, tmp_path):
    from hiprm.selftrain.train import run

    with pytest.raises(DataError, match="no trajectory passes min_mc=1.0"):
        run(make_cfg(trees_file, tiny_lm_dir, tmp_path / "a", "min_mc=1.0", "rule=mean"))
    with pytest.raises(DataError, match="no such file"):
        run(make_cfg(tmp_path / "missing.jsonl", tiny_lm_dir, tmp_path / "b"))
    with pytest.raises(ConfigError, match="lam: -1.0 is out of range; expected >= 0"):
        make_cfg(trees_file, tiny_lm_dir, tmp_path / "c", "lam=-1")
    with pytest.raises(ConfigError, match="min_mc: 2.0 is out of range; expected >= 0 and <= 1"):
        make_cfg(trees_file, tiny_lm_dir, tmp_path / "d", "min_mc=2")
    with pytest.raises(ConfigError, match="transform"):
        make_cfg(trees_file, tiny_lm_dir, tmp_path / "e", "transform=sqrt")
    with pytest.raises(DataError, match="longer than max_length=64 tokens"):
        run(make_cfg(trees_file, tiny_lm_dir, tmp_path / "g", "max_length=64"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1", "nodes": [{"id": "r", "parent": null, "depth": 0}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'nodes\[0\]\.step'"):
        run(make_cfg(bad, tiny_lm_dir, tmp_path / "f"))


@pytest.mark.slow
def test_resume_after_kill_9(trees_file, tiny_lm_dir, tmp_path):
    """A run killed with SIGKILL after its first checkpoint continues from it when rerun."""
    out = tmp_path / "killed"
    cmd = hiprm_cmd("selftrain", f"trees={trees_file}", f"model={tiny_lm_dir}", f"out_dir={out}", "max_length=2048",
                    "batch_size=2", "max_steps=200", "save_every=4", "min_mc=0.4", "lr=1e-3", "epochs=100")  # fmt: skip
    kill_when(cmd, checkpoint_saved(out / "checkpoints" / "checkpoint-4"), tmp_path / "killed.log")
    assert not (out / "model").exists()
    run_to_end(cmd, timeout=600)
    steps = [r["step"] for r in rows(out) if "lm_loss" in r]
    assert steps == list(range(1, 201))  # one uninterrupted run, no step twice
    assert json.loads((out / "meta.json").read_text())["global_step"] == 200
    assert (out / "model" / "config.json").is_file()


@pytest.mark.slow
def test_two_processes_under_accelerate(trees_file, tiny_lm_dir, tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed")
    out = tmp_path / "ddp"
    cmd = [str(accelerate), "launch", "--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
           "-m", "hiprm.cli", "selftrain", f"trees={trees_file}", f"model={tiny_lm_dir}", f"out_dir={out}",
           "max_length=2048", "batch_size=1", "grad_accum=2", "max_steps=3", "save_every=3", "min_mc=0.4",
           "transform=identity", "lam=2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["global_step"] == 3
    train_rows = [r for r in rows(out) if "lm_loss" in r]
    assert len(train_rows) == 3 and all(4 < r["lm_loss"] < 8 for r in train_rows)  # ~log(vocab 400), not 2x
    # 2 processes x 2 micro-batches: with f = identity the step's loss is exactly the global
    # token-mean LM loss + lam * the global token-mean KL, as logged from the reduced sums
    for r in train_rows:
        assert r["loss"] == pytest.approx(r["lm_loss"] + 2 * r["kl"], rel=1e-4, abs=1e-5)
    assert (out / "model" / "config.json").is_file()


@pytest.mark.parametrize("command", ["selftrain", "eval"])
def test_a_reward_models_folder_is_refused_as_a_policy_before_any_output(
    command, tmp_path, tiny_tokenizer, tmp_path_factory, shared_data, capsys
):
    """A classifier loaded as a causal LM gets a fresh lm_head and loses its score head, with no
    error from transformers: refused by its config.json, as `serve` refuses a causal LM."""
    from hiprm.cli import main
    from tests.rm_fixtures import shared_tiny_rm

    rm = shared_tiny_rm(tmp_path_factory, tiny_tokenizer)
    trees = shared_data / "samples" / "openr_samples_math-aps-tree.jsonl"
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"question": "What is 1 + 1?", "answer": "2"}) + "\n")
    out = tmp_path / "out"
    args = {"selftrain": ["selftrain", f"trees={trees}", f"model={rm}", f"out_dir={out}"],
            "eval": ["eval", f"dataset={data}", f"policy.model={rm}", "methods=[majority]", "n_values=[1]",
                     f"out_dir={out}"]}[command]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ForSequenceClassification is a reward model" in err and "config.json" in err, err
    assert not out.exists() or not any(out.iterdir())
