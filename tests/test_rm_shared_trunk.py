"""Reward models with the same bottom layers: the shared trunk runs once, the rewards do not move."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from hiprm.rm import evaluate
from hiprm.rm.evaluate import RMEvalConfig
from hiprm.rm.scorer import Scorer
from hiprm.rm.shared_trunk import SharedTrunk, shared_layers
from tests.rm_fixtures import make_tiny_rm, make_tuned_copy

Q = "What is 2 + 3? Janet sells 16 duck eggs."
STEPS = ["First, 2 + 3 = 5.", "Janet sells 16 - 3 - 4 = 9 duck eggs a day.", "The answer is 5. # Answer 5"]
INPUTS = [(Q, STEPS[:i], s) for i, s in enumerate(STEPS)] + [(Q, STEPS[:1], "x = 7"), ("What is 1?", [], "1")]


@pytest.fixture(scope="module")
def rms(tmp_path_factory, tiny_tokenizer):
    base = make_tiny_rm(tmp_path_factory.mktemp("rm_base"), tiny_tokenizer, seed=3)
    a = make_tuned_copy(base, tmp_path_factory.mktemp("rm_a"), tiny_tokenizer, seed=1)
    b = make_tuned_copy(base, tmp_path_factory.mktemp("rm_b"), tiny_tokenizer, seed=2)
    other = make_tiny_rm(tmp_path_factory.mktemp("rm_other"), tiny_tokenizer, seed=4)
    return base, a, b, other


def test_shared_layers_are_found_not_assumed(rms):
    base, a, b, other = (Scorer.from_pretrained(p, device="cpu").model for p in rms)
    assert shared_layers([base, a, b]) == 1  # of 2: the top layer was tuned
    assert shared_layers([a, a]) == 2
    assert shared_layers([a, other]) == 0  # another initialisation: not even the embeddings


def test_shared_trunk_gives_each_models_own_rewards(rms):
    scorers = [Scorer.from_pretrained(p, device="cpu") for p in rms[:3]]
    alone = [s.score_inputs(INPUTS) for s in scorers]
    assert len({tuple(r) for r in alone}) == 3  # the tops differ, so the rewards do
    group = SharedTrunk([Scorer.from_pretrained(p, device="cpu") for p in rms[:3]])
    assert group.depth == 1
    first = group.score_inputs(INPUTS)  # checked against the models alone on this call
    again = group.score_inputs(INPUTS)  # the shared path alone
    assert group._ok is True and group.forward_passes == 2
    assert first == alone and again == alone  # exactly: same trie, same kernels, same inputs


def test_models_that_share_nothing_are_scored_one_by_one(rms):
    group = SharedTrunk([Scorer.from_pretrained(p, device="cpu") for p in (rms[1], rms[3])])
    assert group.depth == 0
    got = group.score_inputs(INPUTS)
    assert group.forward_passes == 0
    assert got == [Scorer.from_pretrained(p, device="cpu").score_inputs(INPUTS) for p in (rms[1], rms[3])]


def test_a_shared_path_that_disagrees_falls_back_with_a_warning(rms, monkeypatch, caplog):
    from hiprm.rm import shared_trunk

    real = shared_trunk._top_logits
    monkeypatch.setattr(shared_trunk, "_top_logits", lambda *a: real(*a) + torch.tensor([0.0, 1.0]))  # shifts the reward
    group = SharedTrunk([Scorer.from_pretrained(p, device="cpu") for p in rms[1:3]])
    with caplog.at_level(logging.WARNING):
        got = group.score_inputs(INPUTS)
    assert group._ok is False and "shared-trunk scoring differs" in caplog.text
    assert got == [Scorer.from_pretrained(p, device="cpu").score_inputs(INPUTS) for p in rms[1:3]]
    group.score_inputs(INPUTS)
    assert group.forward_passes == 1  # never again


def test_rm_eval_shares_the_trunk_and_reports_the_same(tmp_path, shared_data, rms):
    models = [str(rms[1]), str(rms[2])]
    reports, caches = [], []
    for share in (True, False):
        out = tmp_path / f"share_{share}"
        cfg = RMEvalConfig(models=models, out=str(out), data_dir=str(shared_data), prm800k_limit=2, limit=3,
                         processbench_splits=["gsm8k"], bootstrap=20, device="cpu", share_trunk=share, prmbench_limit=1)
        reports.append(json.loads(evaluate.run(cfg).read_text())["models"])
        caches.append(sorted((r["model"], r["key"], tuple(r["rewards"]))
                             for r in map(json.loads, (out / "rewards.jsonl").read_text().splitlines())))
    for r in reports:
        for m in r.values():
            m.pop("path"), m.pop("cache_key")
    assert caches[0] == caches[1] and len(caches[0]) > 4
    assert reports[0] == reports[1]


def test_models_whose_inputs_tokenize_differently_are_scored_one_by_one(rms):
    from hiprm.rm.template import TemplateConfig

    scorers = [Scorer.from_pretrained(p, device="cpu") for p in rms[1:3]]
    assert SharedTrunk(scorers)._one_encoding  # same tokenizer, same formatter settings
    scorers[1].template = TemplateConfig(max_length=48)  # cuts the long inputs differently
    group = SharedTrunk(scorers)
    assert not group._one_encoding
    got = group.score_inputs(INPUTS)
    assert group.forward_passes == 0
    cut = Scorer.from_pretrained(rms[2], device="cpu")
    cut.template = TemplateConfig(max_length=48)
    assert got == [Scorer.from_pretrained(rms[1], device="cpu").score_inputs(INPUTS), cut.score_inputs(INPUTS)]
