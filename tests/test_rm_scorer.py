"""Scorer: rewards equal a direct HF forward of the formatted text; the cached-prefix path for
candidates matches the plain path; batching never changes a number; `rm score` is resumable."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from hiprm.artifacts import DataError
from hiprm.config import ConfigError
from hiprm.rm.score_file import ScoreConfig, run
from hiprm.rm.scorer import (
    Scorer,
    StepScorer,
    budget_batches,
    score_candidates,
    score_solutions,
)
from hiprm.rm.template import TemplateConfig, render
from tests.rm_fixtures import FakeScorer, shared_tiny_rm


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    return shared_tiny_rm(tmp_path_factory, tiny_tokenizer)

Q = "What is 2 + 3? Janet sells 16 duck eggs."
STEPS = [
    "First, 2 + 3 = 5.",
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day and makes 9 * 2 = $18 every day.",
    "\\frac{1}{2} + \\sqrt{4} = \\boxed{2.5} so x = 7",
    "The answer is 5. # Answer 5",
]
CANDIDATES = [
    "x = 7",
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day and makes 9 * 2 = $18 every day. # Answer 18",
    "(1, 2), 100%.",
    "# Step 1",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789",
    "",
]


@pytest.fixture(scope="module")
def scorer(tiny_rm_dir):
    return Scorer.from_pretrained(tiny_rm_dir, device="cpu")


def direct_reward(model, tokenizer, question, previous, current, cfg):
    """The reference: whole text tokenized at once, batch of one, no padding, softmax[1]."""
    enc = tokenizer(render(question, previous, current, cfg), return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    return torch.softmax(logits, -1)[0, 1].item()


def test_loads_template_and_satisfies_protocol(scorer):
    assert scorer.template == TemplateConfig(max_length=512)
    assert isinstance(scorer, StepScorer)
    assert isinstance(FakeScorer(lambda q, p, s: 0.5), StepScorer)


def test_score_matches_direct_forward(scorer):
    got = score_solutions(scorer, [(Q, STEPS)])[0]
    want = [direct_reward(scorer.model, scorer.tokenizer, Q, STEPS[:i], s, scorer.template) for i, s in enumerate(STEPS)]
    assert got == pytest.approx(want, abs=1e-5)
    # The random head is scaled up so rewards differ; otherwise this test would prove little.
    assert max(want) - min(want) > 0.05


def test_batching_and_budget_do_not_change_results(tiny_rm_dir, scorer):
    items = [(Q, STEPS), ("Short?", ["a"]), (Q, STEPS[:2]), ("Empty", [])]
    batched = score_solutions(scorer, items)
    assert [len(r) for r in batched] == [4, 1, 2, 0]
    one_by_one = [score_solutions(scorer, [(q, s)])[0] for q, s in items]
    small = Scorer.from_pretrained(tiny_rm_dir, device="cpu", batch_size=2, max_tokens_per_batch=64)
    tiny_batches = score_solutions(small, items)
    for a, b, c in zip(batched, one_by_one, tiny_batches, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
        assert a == pytest.approx(c, abs=1e-5)
    assert small.stats.forward_passes > scorer.stats.forward_passes or small.stats.forward_passes >= 4


def test_candidates_cached_prefix_matches_plain_path(tiny_rm_dir, tiny_tokenizer):
    cached = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    plain = Scorer.from_pretrained(tiny_rm_dir, device="cpu", prefix_cache=False)
    got = score_candidates(cached, Q, STEPS[:3], CANDIDATES)
    assert cached._prefix_cache_ok is True
    assert cached.stats.trie_tokens < cached.stats.input_tokens / 2  # the prefix ran once
    ref = score_candidates(plain, Q, STEPS[:3], CANDIDATES)
    assert plain.stats.trie_tokens == 0
    assert torch.allclose(torch.tensor(got), torch.tensor(ref), atol=1e-5)
    direct = [direct_reward(plain.model, tiny_tokenizer, Q, STEPS[:3], c, plain.template) for c in CANDIDATES]
    assert got == pytest.approx(direct, abs=1e-5)
    # Same as scoring each candidate as the last step of a full solution.
    assert got[0] == pytest.approx(score_solutions(cached, [(Q, [*STEPS[:3], CANDIDATES[0]])])[0][-1], abs=1e-5)
    # The self-check ran once; later calls take the trie path only: one forward pass.
    before = cached.stats.forward_passes
    again = score_candidates(cached, Q, STEPS[:3], CANDIDATES)
    assert again == pytest.approx(got, abs=1e-5)
    assert cached.stats.forward_passes - before == 1


def test_solution_steps_share_prefixes_and_match_plain_path(tiny_rm_dir, tiny_tokenizer):
    shared = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    plain = Scorer.from_pretrained(tiny_rm_dir, device="cpu", prefix_cache=False)
    # Steps starting with white space or a newline move token boundaries; shared lengths are
    # found on token ids, so the numbers must not move.
    odd = [" leading space 2 + 3", "\n\nnewlines first", "x = 7\n", "# Answer 5"]
    items = [(Q, STEPS), (Q, odd), ("Short?", ["a"]), ("None", [])]
    got = score_solutions(shared, items)
    assert shared._prefix_cache_ok is True and shared.stats.trie_tokens < shared.stats.input_tokens / 2
    want = score_solutions(plain, items)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-5)
    direct = [direct_reward(plain.model, tiny_tokenizer, Q, odd[:i], s, plain.template) for i, s in enumerate(odd)]
    assert got[1] == pytest.approx(direct, abs=1e-5)
    # One forward pass per solution instead of one row per step.
    before = shared.stats.forward_passes
    score_solutions(shared, [(Q, STEPS)])[0]
    assert shared.stats.forward_passes - before == 1


def test_pairs_of_one_question_share_their_prefixes(tiny_rm_dir, tiny_tokenizer):
    """Every rated completion at every step of one solution (the evaluation's inputs)."""
    shared = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    pairs = [(STEPS[:i], c) for i in range(len(STEPS)) for c in (STEPS[i], CANDIDATES[i])]
    got = shared.score_inputs([(Q, list(p), c) for p, c in pairs])
    assert shared.stats.trie_tokens < shared.stats.input_tokens / 2
    direct = [direct_reward(shared.model, tiny_tokenizer, Q, prev, c, shared.template) for prev, c in pairs]
    assert got == pytest.approx(direct, abs=1e-5)


def test_trie_rows_split_by_budget(tiny_rm_dir):
    """A small token budget splits the trie into several rows, each repeating what it needs."""
    s = Scorer.from_pretrained(tiny_rm_dir, device="cpu", max_tokens_per_batch=60)
    ref = Scorer.from_pretrained(tiny_rm_dir, device="cpu", prefix_cache=False)
    s._prefix_cache_ok = True  # skip the self-check so the pass count below is only the trie path
    got = score_candidates(s, Q, STEPS[:2], CANDIDATES)
    assert s.stats.forward_passes >= 2
    assert got == pytest.approx(score_candidates(ref, Q, STEPS[:2], CANDIDATES), abs=1e-5)


def test_self_check_falls_back_when_cached_path_is_wrong(tiny_rm_dir, monkeypatch, caplog):
    s = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    monkeypatch.setattr(s, "_logits_trie", lambda seqs: [[0.0, 0.0]] * len(seqs))
    with caplog.at_level(logging.WARNING):
        got = score_candidates(s, Q, STEPS[:1], CANDIDATES[:3])
    assert s._prefix_cache_ok is False
    assert "using the plain path" in caplog.text
    ref = Scorer.from_pretrained(tiny_rm_dir, device="cpu", prefix_cache=False)
    assert got == pytest.approx(score_candidates(ref, Q, STEPS[:1], CANDIDATES[:3]), abs=1e-5)


def test_long_inputs_are_fitted_and_counted(tiny_rm_dir, caplog):
    s = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    s.template = TemplateConfig(max_length=48)
    long_steps = [f"Step {i}: 2 + 3 = 5 and x = 7, y = -3." for i in range(6)]
    with caplog.at_level(logging.WARNING):
        rewards = score_solutions(s, [(Q, long_steps)])[0]
        cands = score_candidates(s, Q, long_steps, ["x = 7", "the answer is 5 " * 20])
    assert len(rewards) == 6 and len(cands) == 2
    assert "old steps dropped" in caplog.text and "max_length=48" in caplog.text
    # Every input was cut down to the budget, and sharing the trunk still gives the plain numbers.
    assert len(s.encode_inputs([(Q, long_steps, "the answer is 5 " * 20)])[0]) <= 48
    plain = Scorer.from_pretrained(tiny_rm_dir, device="cpu", prefix_cache=False)
    plain.template = s.template
    assert rewards == pytest.approx(score_solutions(plain, [(Q, long_steps)])[0], abs=1e-5)


def test_budget_batches_cover_every_index_within_budget():
    lengths = [3, 50, 7, 7, 120, 1, 64, 64]
    batches = budget_batches(lengths, batch_size=3, max_tokens=130)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 130


# ---- hiprm rm score -----------------------------------------------------------------------------


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_rm_score_runner_writes_rewards_and_resumes(tmp_path, tiny_rm_dir, scorer):
    src = tmp_path / "in.jsonl"
    rows = [{"question": Q, "steps": STEPS, "id": 1}, {"question": "Short?", "steps": ["a", "b"], "id": 2}]
    _write(src, rows)
    out = tmp_path / "out" / "scored.jsonl"
    cfg = ScoreConfig(model=str(tiny_rm_dir), input=str(src), output=str(out), device="cpu", chunk_size=1)
    assert run(cfg) == out
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [1, 2]
    assert got[0]["step_rewards"] == pytest.approx(score_solutions(scorer, [(Q, STEPS)])[0], abs=1e-5)
    # Provenance beside the output, never over the folder's meta.json (another run's).
    assert json.loads((out.parent / "scored.jsonl.meta.json").read_text())["status"] == "done"
    assert not (out.parent / "meta.json").exists() and not (out.parent / "config.yaml").exists()

    # Grow the input and pretend a previous run died after one record, mid-way through a line.
    rows.append({"question": "New?", "steps": ["c"], "id": 3})
    _write(src, rows)
    partial = out.with_name(out.name + ".partial")
    first = out.read_text().splitlines()[0]
    partial.write_text(first + "\n" + '{"question": "Sho', encoding="utf-8")
    out.unlink()
    run(cfg)
    again = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in again] == [1, 2, 3]
    assert again[1]["step_rewards"] == pytest.approx(got[1]["step_rewards"], abs=1e-6)
    assert not partial.exists()

    # A rerun with nothing new keeps the output as is.
    before = out.read_text()
    run(cfg)
    assert out.read_text() == before


def test_rm_score_never_mixes_two_models(tmp_path, tiny_rm_dir):
    """Killed with another model= (or a retrained one at the same path) it refuses to resume,
    naming the field; overwrite=true starts over with the new model only."""
    import shutil

    src = tmp_path / "in.jsonl"
    _write(src, [{"question": Q, "steps": STEPS[:2], "id": i} for i in range(3)])
    out = tmp_path / "scored.jsonl"
    cfg = ScoreConfig(model=str(tiny_rm_dir), input=str(src), output=str(out), device="cpu", chunk_size=1)
    run(cfg)
    other = tmp_path / "other_rm"
    shutil.copytree(tiny_rm_dir, other)
    with pytest.raises(ConfigError, match="model: .* -> "):
        run(ScoreConfig(**{**cfg.__dict__, "model": str(other)}))
    # overwrite=true starts over with the other model only.
    with_other = ScoreConfig(**{**cfg.__dict__, "model": str(other)})
    run(ScoreConfig(**{**with_other.__dict__, "overwrite": True}))
    assert run(with_other) == out  # same identity: returned as is
    # Same path, retrained weights: the fingerprint differs.
    from safetensors.torch import load_file, save_file

    w = load_file(str(other / "model.safetensors"))
    save_file({k: v + 0.01 for k, v in w.items()}, str(other / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="weights: "):
        run(with_other)
    run(ScoreConfig(**{**with_other.__dict__, "overwrite": True}))
    fresh = [json.loads(x)["step_rewards"] for x in out.read_text().splitlines()]
    ref = score_solutions(Scorer.from_pretrained(other, device="cpu"), [(Q, STEPS[:2])])[0]
    assert len(fresh) == 3 and all(r == pytest.approx(ref, abs=1e-5) for r in fresh)


@pytest.mark.parametrize("bad, message", [
    ("chunk_size=0", "chunk_size: must be >= 1"), ("chunk_size=-3", "chunk_size: must be >= 1"),
    ("batch_size=0", "batch_size: must be >= 1"), ("output=DIR", "is a folder"),
])  # fmt: skip
def test_rm_score_bad_settings_fail_before_scoring(tmp_path, tiny_rm_dir, bad, message):
    src = tmp_path / "in.jsonl"
    _write(src, [{"question": Q, "steps": ["a"]}])
    key, value = bad.split("=")
    kw = {"model": str(tiny_rm_dir), "input": str(src), "output": str(tmp_path / "o.jsonl"), "device": "cpu"}
    kw[key] = str(tmp_path) if value == "DIR" else int(value)
    with pytest.raises(ConfigError, match=message):
        run(ScoreConfig(**kw))
    assert not (tmp_path / "o.jsonl").exists()


def test_rm_score_errors_name_file_line_field(tmp_path, tiny_rm_dir):
    src = tmp_path / "bad.jsonl"
    _write(src, [{"question": "q", "steps": ["a"]}, {"question": "q", "steps": ["a", 3]}])
    cfg = ScoreConfig(model=str(tiny_rm_dir), input=str(src), output=str(tmp_path / "o.jsonl"))
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'steps\[1\]'"):
        run(cfg)


def test_fitting_a_long_solution_is_linear_in_its_steps_and_unchanged(tiny_rm_dir, monkeypatch):
    """Scoring N steps tokenizes O(N x max_length) characters, not O(N^2) (issue 13 §3: 1,000
    steps took 87 s), and each fitted input is what render_fitted gives without step costs."""
    from hiprm.rm import template as tmpl

    s = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    s.template = TemplateConfig(max_length=64)
    monkeypatch.setattr(s, "logits", lambda seqs: [[0.0, 0.0] for _ in seqs])  # fitting only
    seen = {"chars": 0}
    real = s.tokenizer.__class__.__call__

    def counting(self, text, *a, **kw):
        seen["chars"] += sum(map(len, text)) if isinstance(text, list) else len(text)
        return real(self, text, *a, **kw)

    monkeypatch.setattr(s.tokenizer.__class__, "__call__", counting)
    chars = {}
    for n in (100, 400):
        seen["chars"] = 0
        steps = [f"Step {i}: 2 + 3 = 5 and x = {i}." for i in range(n)]
        score_solutions(s, [(Q, steps)])[0]
        chars[n] = seen["chars"]
    assert chars[400] / chars[100] < 5, chars  # quadratic would be ~16x
    steps = [f"Step {i}: 2 + 3 = 5 and x = {i}." for i in range(40)]
    costs = s.count_tokens([x + "\n\n" for x in steps])
    for i in (0, 1, 5, 39):
        with_costs = tmpl.render_fitted(s.tokenizer, Q, steps[:i], steps[i], s.template, step_costs=costs[:i])
        assert with_costs == tmpl.render_fitted(s.tokenizer, Q, steps[:i], steps[i], s.template)
