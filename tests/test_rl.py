"""`hiprm rl`: GRPO through TRL with rewards from any scorer (hiprm.rl)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hiprm.artifacts import DataError, write_jsonl
from hiprm.config import ConfigError, load_config
from hiprm.policy.prompts import STYLES
from hiprm.policy.steps import split_solution
from hiprm.rl.rewards import StepRewards, completion_text

from .killing import checkpoint_saved, hiprm_cmd, kill_when, run_to_end
from .rm_fixtures import FakeScorer, shared_tiny_rm

pytest.importorskip("trl")

GOOD = "# Step 1\n2 + 3 = 5.\n\n# Step 2\nSo it is 5.\n\n# Answer\n\n5\n# END!"
WRONG = "# Step 1\n2 + 3 = 6.\n\n# Answer\n\n6\n# END!"
NO_STEPS = ""


def fake() -> FakeScorer:
    """Reward of a step: 0.9 if it says 5, else 0.2 (hand-checkable)."""
    return FakeScorer(lambda q, prev, step: 0.9 if "5" in step else 0.2)


@pytest.mark.parametrize("how, want_good, want_wrong", [
    ("min", 0.9, 0.2), ("last", 0.9, 0.2), ("prod", 0.9 ** 3, 0.2 * 0.2), ("mean", 0.9, 0.2),
])  # fmt: skip
def test_aggregation_by_hand(how, want_good, want_wrong):
    # GOOD splits into 2 steps (the answer block stays with step 2): all three rewards 0.9.
    assert split_solution(GOOD, STYLES["step"]) == ["# Step 1\n2 + 3 = 5.", "# Step 2\nSo it is 5.\n\n# Answer\n\n5"]
    scorer = fake()
    reward = StepRewards(scorer, how)
    got = reward(prompts=["p"] * 3, completions=[GOOD, WRONG, NO_STEPS], question=["What is 2 + 3?"] * 3)
    good = {"min": 0.9, "last": 0.9, "prod": 0.81, "mean": 0.9}[how]
    wrong = {"min": 0.2, "last": 0.2, "prod": 0.2, "mean": 0.2}[how]  # one step: "# Step 1\n2 + 3 = 6.\n\n# Answer\n\n6"
    assert got == pytest.approx([good, wrong, 0.0])
    assert scorer.calls == 1  # one batched call for every completion of a GRPO step
    del want_good, want_wrong


def test_outcome_term_and_weights_by_hand():
    reward = StepRewards(fake(), "min", rm_weight=0.5, outcome_weight=2.0)
    logged: dict[str, float] = {}
    got = reward(prompts=["p", "p"], completions=[GOOD, [{"role": "assistant", "content": WRONG}]],
                 question=["What is 2 + 3?"] * 2, answer=["5", "5"], log_metric=logged.__setitem__)  # fmt: skip
    assert got == pytest.approx([0.5 * 0.9 + 2.0, 0.5 * 0.2])
    assert logged["accuracy"] == 0.5 and logged["reward/rm"] == pytest.approx((0.9 + 0.2) / 2)
    assert logged["reward_model_seconds"] >= 0
    only_outcome = StepRewards(None, outcome_weight=1.0)
    assert only_outcome(prompts=["p"] * 2, completions=[GOOD, WRONG], question=["q"] * 2, answer=["5", "5"]) == [1.0, 0.0]


def test_reward_function_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="aggregation"):
        StepRewards(fake(), "median")
    with pytest.raises(ValueError, match="scorer or outcome_weight"):
        StepRewards(None)
    with pytest.raises(ValueError, match="answer"):
        StepRewards(fake(), outcome_weight=1.0)(prompts=["p"], completions=[GOOD], question=["q"])
    with pytest.raises(ValueError, match="question"):
        StepRewards(fake())(prompts=["p"], completions=[GOOD])
    with pytest.raises(TypeError, match="completion"):
        completion_text(3)


@pytest.fixture
def problems(tmp_path) -> Path:
    path = tmp_path / "problems.jsonl"
    write_jsonl(path, [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a, b in
                       [(2, 3), (4, 4), (1, 6), (9, 2)]])  # fmt: skip
    return path


def rl_args(problems: Path, policy: Path, out: Path, *extra: str) -> list[str]:
    return [f"model={policy}", f"dataset={problems}", f"out_dir={out}", "num_generations=2", "batch_size=4",
            "max_completion_tokens=12", "temperature=1.0", "lr=1e-3", "max_steps=2", "save_every=1",
            "rm.device=cpu", *extra]  # fmt: skip


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_grpo_steps_with_a_tiny_scorer_and_the_rewards_recomputed(problems, tiny_lm_dir, tmp_path_factory,
                                                                      tiny_tokenizer, tmp_path):  # fmt: skip
    """Two GRPO steps of a tiny random policy with a tiny reward model, on CPU; every reward TRL
    got is recomputed here from the completion text with a fresh scorer."""
    from hiprm.rl.train import RLConfig, run
    from hiprm.rm.scorer import Scorer, score_solutions
    from hiprm.search.aggregate import aggregate

    rm_dir = shared_tiny_rm(tmp_path_factory, tiny_tokenizer)
    out = run(load_config(RLConfig, None, rl_args(problems, tiny_lm_dir, tmp_path / "rl", f"scorer={rm_dir}",
                                                  "aggregation=prod", "outcome_weight=1.0")))  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "done" and meta["global_step"] == 2
    assert (out / "model" / "config.json").is_file()
    done = rows(out / "completions.jsonl")
    assert len(done) == 2 * 4 and {r["step"] for r in done} == {1, 2}
    scorer = Scorer.from_pretrained(rm_dir, device="cpu")
    for r in done:
        steps = split_solution(r["completion"], STYLES["step"])
        assert steps == r["steps"]
        rm = aggregate(score_solutions(scorer, [(r["question"], steps)])[0], "prod") if steps else 0.0
        correct = r["correct"]
        assert r["reward"] == pytest.approx(rm + correct, abs=1e-5)
    metrics = [m for m in rows(out / "metrics.jsonl") if "rewards/hiprm/mean" in m]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        step_rewards = [r["reward"] for r in done if r["step"] == m["step"]]
        assert m["rewards/hiprm/mean"] == pytest.approx(sum(step_rewards) / len(step_rewards), abs=1e-5)
        assert m["reward_model_seconds"] >= 0 and m["generation_seconds"] > 0
        assert 0 <= m["accuracy"] <= 1 and math.isfinite(m["loss"])


def test_bad_input_is_named(problems, tiny_lm_dir, tmp_path_factory, tiny_tokenizer, tmp_path):
    from hiprm.rl.train import RLConfig, run

    def go(*extra: str) -> None:
        run(load_config(RLConfig, None, rl_args(problems, tiny_lm_dir, tmp_path / "bad", *extra)))

    with pytest.raises(ConfigError, match="no reward"):
        go("scorer=")
    with pytest.raises(ConfigError, match="aggregation"):
        go(f"scorer={shared_tiny_rm(tmp_path_factory, tiny_tokenizer)}", "aggregation=median")
    with pytest.raises(ConfigError, match="answer_field"):
        go("outcome_weight=1", "answer_field=")
    with pytest.raises(DataError, match="not a reward model"):  # a policy (causal LM)
        go(f"scorer={tiny_lm_dir}")
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        go("outcome_weight=1", "batch_size=3")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_kill_9_and_rerun_continues_from_the_last_checkpoint(problems, tiny_lm_dir, tmp_path):
    """A real `hiprm rl` killed after its first checkpoint, rerun: it ends like an uninterrupted run."""
    args = rl_args(problems, tiny_lm_dir, tmp_path / "whole", "outcome_weight=1", "max_steps=3")
    run_to_end(hiprm_cmd("rl", *args))
    cut = tmp_path / "cut"
    args_cut = rl_args(problems, tiny_lm_dir, cut, "outcome_weight=1", "max_steps=3")
    kill_when(hiprm_cmd("rl", *args_cut), checkpoint_saved(cut / "checkpoints" / "checkpoint-1"), tmp_path / "kill.log")
    assert not (cut / "model").exists()
    run_to_end(hiprm_cmd("rl", *args_cut))
    from safetensors.torch import load_file

    whole, again = load_file(tmp_path / "whole" / "model" / "model.safetensors"), load_file(cut / "model" / "model.safetensors")
    for name in whole:
        assert (whole[name] == again[name]).all(), name
    steps = [m["step"] for m in rows(cut / "metrics.jsonl") if "loss" in m]
    assert steps == [1, 2, 3]  # no step logged twice, none lost
    assert sorted({r["step"] for r in rows(cut / "completions.jsonl")}) == [1, 2, 3]
    assert len(rows(cut / "completions.jsonl")) == 3 * 4
