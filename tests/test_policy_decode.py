"""The hf policy's own decode loop (`hiprm.policy.decode`) against transformers' `generate`,
and its sampler against the exact nucleus distribution."""

from __future__ import annotations

import pytest
import torch

from hiprm.policy.decode import decode, sample_tokens
from hiprm.policy.hf import HFPolicy
from hiprm.policy.protocol import SamplingParams


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Reference: the top-p distribution of one row, written the plain way (full sort)."""
    vals, idx = probs.sort(descending=True)
    keep = (vals.cumsum(0) - vals) < top_p
    out = torch.zeros_like(probs)
    out[idx[keep]] = vals[keep]
    return out / out.sum()


@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5])
def test_sampler_draws_the_nucleus_distribution(top_p):
    torch.manual_seed(0)
    logits = torch.randn(3, 40) * 2
    draws = 20_000
    want = torch.stack([nucleus(torch.softmax(row / 0.7, -1), top_p) for row in logits])
    torch.manual_seed(1)
    got = sample_tokens(logits.repeat_interleave(draws, 0), 0.7, top_p, top_k=8).view(3, draws)
    freq = torch.stack([torch.bincount(r, minlength=40) for r in got]).float() / draws
    # A frequency's standard deviation is at most sqrt(0.25 / 20000) = 0.0035.
    assert (freq - want).abs().max() < 0.02
    assert bool((freq[want == 0] == 0).all())  # nothing outside the nucleus, ever


def test_sampler_top_k_shortcut_gives_the_full_sort_draws():
    """The top-k candidates are only a shortcut: the same seed gives the same tokens as sorting
    the whole vocabulary, both when every row's nucleus fits in top_k and when one row's does
    not (a nearly flat row: the whole batch is then sorted)."""
    torch.manual_seed(0)
    peaked = torch.randn(6, 100) * 8
    wide = torch.randn(2, 100) * 0.01
    for logits in (peaked, torch.cat([peaked, wide])):
        torch.manual_seed(5)
        short = sample_tokens(logits, 1.0, 0.8, top_k=10)
        torch.manual_seed(5)
        full = sample_tokens(logits, 1.0, 0.8, top_k=100)
        assert torch.equal(short, full)
    assert torch.equal(sample_tokens(peaked, 0.0, 0.8), peaked.argmax(-1))


@pytest.fixture(scope="module")
def pair(tiny_lm_dir):
    return HFPolicy(str(tiny_lm_dir), batch_size=8), HFPolicy(str(tiny_lm_dir), batch_size=8, decoder="generate")


@pytest.mark.slow
def test_greedy_text_and_token_counts_equal_generate(pair):
    """Left padding, a shared prefill, stop strings and eos: token for token what `generate`
    writes, and the same generated-token count."""
    ours, theirs = pair
    prompts = ["Question: What is 2 + 3?", "so x", "Question: What is 2 + 3?", "abc def ghi jkl"]
    free = theirs.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=30))[0][0]
    stop = free[8:11]
    for params in (
        SamplingParams(n=2, temperature=0.0, max_tokens=20),
        SamplingParams(n=1, temperature=0.0, max_tokens=30, stop=[stop]),
        SamplingParams(n=1, temperature=0.0, max_tokens=30, stop=[stop], include_stop=False),
    ):
        a0, b0 = ours.tokens_generated, theirs.tokens_generated
        assert ours.generate(prompts, params) == theirs.generate(prompts, params)
        assert ours.tokens_generated - a0 == theirs.tokens_generated - b0 > 0


@pytest.mark.slow
def test_finished_rows_leave_the_batch_without_changing_the_others(pair):
    """Rows that stop at different lengths: dropping them at once, late or never gives each
    remaining row the same greedy tokens."""
    policy = pair[0]
    enc = policy.tokenizer(["Question: What is 2 + 3?", "so x", "abc def"], return_tensors="pt", padding=True)
    rows = torch.tensor([0, 1, 2, 0, 1, 2])

    def stopped(tokens: list[int]) -> bool:
        return len(tokens) >= 3 and tokens[-1] % 4 == 0

    runs = [
        decode(policy.model, enc["input_ids"], enc["attention_mask"], rows, 16, 0.0, 1.0, stopped, set(),
               policy.tokenizer.pad_token_id, compact_at=share)  # fmt: skip
        for share in (0.0, 0.5, 2.0)
    ]
    assert runs[0] == runs[1] == runs[2]
    lengths = {len(t) for t in runs[0]}
    assert len(lengths) > 1 and max(lengths) < 16  # rows did end at different steps
    assert runs[0][0] == runs[0][3]  # the copies of one prompt's prefill agree


@pytest.mark.slow
def test_sampled_decoding_is_seeded(pair):
    ours = pair[0]
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_tokens=12, seed=4)
    a = ours.generate(["Janet sells eggs", "so x"], params)
    assert ours.generate(["Janet sells eggs", "so x"], params) == a
    assert len({t for x in a for t in x}) > 1


def test_an_unknown_decoder_is_refused(tiny_lm_dir):
    with pytest.raises(ValueError, match="decoder must be one of"):
        HFPolicy(str(tiny_lm_dir), decoder="vllm")


@pytest.mark.slow
def test_per_prompt_seeds_make_samples_independent_of_the_batch(pair):
    """With `seeds`, a prompt's samples are the same alone, in a batch of others, and in another
    order: what batching eval and annotation across problems relies on."""
    ours, _ = pair
    prompts = ["Question: What is 2 + 3?", "so x", "abc def ghi jkl"]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seeds=[11, 22, 33])
    together = ours.generate(prompts, params)
    for i, p in enumerate(prompts):
        assert ours.generate([p], SamplingParams(n=2, temperature=1.0, max_tokens=12, seeds=[params.seeds[i]])) == [
            together[i]]  # fmt: skip
    backwards = ours.generate(prompts[::-1], SamplingParams(n=2, temperature=1.0, max_tokens=12, seeds=[33, 22, 11]))
    assert backwards[::-1] == together
    assert together[0][0] != together[0][1] or together[1][0] != together[1][1]  # the two samples differ
