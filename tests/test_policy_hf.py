"""Local transformers policy on the tiny random Llama from conftest (marked slow: real generate)."""

from __future__ import annotations

import pytest
import torch

from hiprm.artifacts import StageError
from hiprm.policy.hf import HFPolicy
from hiprm.policy.protocol import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def policy(tiny_lm_dir):
    return HFPolicy(str(tiny_lm_dir), batch_size=8)


def test_shapes_seed_and_rng_isolation(policy):
    prompts = ["Question: What is 2 + 3?", "Janet sells eggs"]
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=11)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = policy.generate(prompts, params)
    assert torch.equal(torch.rand(1), before)  # generate() did not move the caller's RNG
    assert [len(x) for x in a] == [3, 3] and all(isinstance(t, str) for x in a for t in x)
    assert policy.generate(prompts, params) == a
    assert policy.generate(prompts, SamplingParams(n=3, temperature=1.0, max_tokens=12, seed=12)) != a
    assert 0 < policy.tokens_generated


def test_batch_split_matches_one_batch_for_greedy(policy, tiny_lm_dir):
    """Left padding is right: greedy text of a prompt does not depend on its batch neighbours."""
    prompts = ["Question: What is 2 + 3?", "so x = 7", "abc"]
    params = SamplingParams(n=2, temperature=0.0, max_tokens=10)
    together = policy.generate(prompts, params)
    alone = [policy.generate([p], params)[0] for p in prompts]
    assert together == alone
    assert all(x[0] == x[1] for x in together)  # greedy: n identical samples
    small = HFPolicy(str(tiny_lm_dir), batch_size=2)
    assert small.generate(prompts, params) == together


def test_stop_strings_cut_and_keep_or_drop(policy):
    prompt = ["Question: What is 2 + 3?"]
    free = policy.generate(prompt, SamplingParams(temperature=0.0, max_tokens=40))[0][0]
    assert len(free) > 6, free
    stop = free[3:6]  # a piece of what greedy decoding writes anyway
    first = free.find(stop)
    kept = policy.generate(prompt, SamplingParams(temperature=0.0, max_tokens=40, stop=[stop]))[0][0]
    dropped = policy.generate(
        prompt, SamplingParams(temperature=0.0, max_tokens=40, stop=[stop], include_stop=False)
    )[0][0]
    assert kept == free[: first + len(stop)]
    assert dropped == free[:first]


def test_chat_template_and_token_count(policy, tiny_lm_dir):
    chat = policy.render_chat("hello")
    assert chat.startswith("<|im_start|>user\nhello<|im_end|>") and chat.endswith("<|im_start|>assistant\n")
    plain = HFPolicy(str(tiny_lm_dir), chat_template=False)
    assert plain.render_chat("hello") == "hello"
    assert policy.count_tokens("2 + 3 = 5") == len(policy.tokenizer("2 + 3 = 5", add_special_tokens=False)["input_ids"])


def test_shared_prefill_gives_the_same_greedy_text(tiny_lm_dir):
    """Prefilling each distinct prompt once and copying its cache must not change the text:
    duplicated prompts of different lengths (left padding) and n > 1."""
    shared = HFPolicy(str(tiny_lm_dir), share_prefill=True)
    plain = HFPolicy(str(tiny_lm_dir), share_prefill=False)
    prompts = ["Question: What is 2 + 3?", "so x", "Question: What is 2 + 3?", "so x", "abc def"]
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=12)
    assert shared.generate(prompts, greedy) == plain.generate(prompts, greedy)
    # sampled with a near-zero temperature the argmax dominates: same texts through both paths
    cold = SamplingParams(n=3, temperature=1e-4, max_tokens=12, seed=0)
    assert shared.generate(prompts[:2], cold) == plain.generate(prompts[:2], cold)
    assert shared.tokens_generated == plain.tokens_generated


def test_a_prompt_longer_than_the_context_is_refused_and_generation_stays_inside_it(policy):
    """A prompt past max_position_embeddings is an error naming both sizes, not minutes of noise;
    a prompt near the end of the context gets only the tokens that are left."""
    context = policy.model.config.max_position_embeddings
    with pytest.raises(StageError, match=f"context of {context} tokens"):
        policy.generate(["word " * (context + 10)], SamplingParams(n=1, temperature=0, max_tokens=4))
    def n_tokens(k: int) -> int:
        return len(policy.tokenizer(policy.render_chat("word " * k), add_special_tokens=False)["input_ids"])

    k = max(k for k in range(1, context) if n_tokens(k) < context - 4) if n_tokens(1) < context - 4 else 1
    near, n_prompt = "word " * k, n_tokens(k)
    assert context - 12 < n_prompt < context
    before = policy.tokens_generated
    policy.generate([policy.render_chat(near)], SamplingParams(n=1, temperature=0, max_tokens=500))
    assert 0 < policy.tokens_generated - before <= context - n_prompt
