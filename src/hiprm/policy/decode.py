"""Batched sampling from a transformers causal LM: the decode loop of the `hf` policy.

    rows = decode(model, ids, mask, rows, max_new=48, temperature=0.7, top_p=0.95,
                  stopped=lambda toks: ..., eos={tokenizer.eos_token_id})

`model.generate` is the baseline, and on CPU it wastes a large share of the time on things that
are not the model. Profiled on the quickstart's step search (SmolLM2-135M, 2 cores), 37 of its
206 s went to three of them:
- the dynamic KV cache concatenates every layer's whole cache at every step (14 s);
- top-p sorts the 49k-token vocabulary of every row at every step (14 s), and `multinomial`
  draws an exponential variate for every vocabulary entry (9 s);
- a row that has finished (a step that hit its stop string) keeps being computed until the
  batch's longest row ends.
This loop avoids all three:
- a static cache (transformers' `StaticCache`), allocated once for prompt + `max_new` tokens
  and written in place;
- `sample_tokens`: exact nucleus sampling by inverse CDF over the `top_k` most likely tokens.
  It sorts the whole vocabulary only for a row whose top `top_k` hold less than `top_p`;
- finished rows leave the batch (`Cache.reorder_cache` with the survivors), once they are an
  eighth of it. A batch of steps that stop at different lengths then costs about the sum of
  their lengths, not rows x the longest.
Each distinct prompt is prefilled once (left-padded, all but its last token) and its cache is
copied to its sample rows: n samples of a 400-token prompt cost one prefill.
`benchmarks/bench_policy.py` measures it against `model.generate` on the same prompts.

The samples are the same distribution as `generate`'s (temperature, then top-p), not the same
draws: the random numbers are used differently. Greedy decoding (temperature 0) gives
`generate`'s tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

# The hf policy's decoders: this loop, or transformers' `model.generate` (policy.decoder).
DECODERS = ("hiprm", "generate")


def cache_kwarg(model: Any) -> str:
    """The name of the model's KV-cache argument: `cache` (transformers >= 5.2x) or
    `past_key_values` (earlier, and deprecated since)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def last_logits_only(model: Any) -> dict[str, int]:
    """`logits_to_keep=1` where the model takes it: a prefill's logits are not used, and all of
    them cost a (prompt tokens x vocabulary) product, ~90 GFLOP for four 400-token prompts of
    SmolLM2."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def sample_tokens(logits: Any, temperature: float, top_p: float, top_k: int = 256,
                  generators: list[Any] | None = None) -> Any:  # fmt: skip
    """One token per row of `logits` (rows, vocab): argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to its nucleus: the most likely tokens whose mass
    before them is < top_p (so at least one token is kept, as in transformers' top-p).

    Uses the current torch generator of the logits' device (`torch.manual_seed` reproduces it),
    or one generator per row (`generators`): each row then draws one uniform number per call from
    its own stream, so what a row samples does not depend on the other rows of the batch.
    """
    import torch

    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        cum = probs.cumsum(-1)
        idx = None
    else:
        vals, idx = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        if bool((vals.sum(-1) < top_p).any()):  # a flat row: its nucleus is wider than top_k
            vals, idx = probs.sort(dim=-1, descending=True)
        cum = vals.cumsum(-1)
        vals = vals * ((cum - vals) < top_p)
        cum = vals.cumsum(-1)
    if generators is None:
        u = torch.rand((probs.shape[0], 1), device=probs.device, dtype=cum.dtype)
    else:
        u = torch.cat([torch.rand((1, 1), generator=g, device=probs.device, dtype=cum.dtype) for g in generators])
    u = u * cum[:, -1:]
    pick = torch.searchsorted(cum, u, right=True).clamp_max(cum.shape[-1] - 1)
    return (pick if idx is None else idx.gather(1, pick)).squeeze(1)


def decode(
    model: Any,
    ids: Any,
    mask: Any,
    rows: Any,
    max_new: int,
    temperature: float,
    top_p: float,
    stopped: Callable[[list[int]], bool] | None,
    eos: set[int],
    pad_id: int,
    compact_at: float = 0.125,
    generators: list[Any] | None = None,
) -> list[list[int]]:
    """Sample up to `max_new` tokens for each row; returns each row's new tokens, up to and
    including the token that ended it (an `eos` token, or the one after which `stopped(tokens)`
    first returned true).

    ids, mask: (prompts, P) left-padded; rows: (R,) long, the prompt of each sample row.
    `compact_at`: finished rows are dropped from the batch once they are this share of it.
    `generators`: one torch generator per sample row (`sample_tokens`), for draws that do not
    depend on the batch a row is decoded in.
    """
    import torch
    from transformers import StaticCache

    device = ids.device
    n_rows, prompt_len = len(rows), ids.shape[1]
    length = prompt_len - 1 + max_new  # the last prompt token is the first decode input
    cache = StaticCache(config=model.config, max_cache_len=length)
    kw = cache_kwarg(model)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    attend = torch.zeros((len(ids), length), dtype=mask.dtype, device=device)
    attend[:, :prompt_len] = mask
    if prompt_len > 1:
        model(input_ids=ids[:, :-1], attention_mask=attend, position_ids=position[:, :-1], use_cache=True,
              **last_logits_only(model), **{kw: cache})  # fmt: skip
        cache.reorder_cache(rows.to(device))
    attend = attend[rows.to(device)]
    current = ids[rows.to(device), -1:]
    pos = position[rows.to(device), -1:]
    live = list(range(n_rows))  # sample row of each batch row
    done = [False] * n_rows  # by batch row
    out: list[list[int]] = [[] for _ in range(n_rows)]
    filled = prompt_len
    for step in range(max_new):
        logits = model(input_ids=current, attention_mask=attend, position_ids=pos,
                       use_cache=True, **{kw: cache}).logits[:, -1]  # fmt: skip
        new = sample_tokens(logits, temperature, top_p,
                            generators=None if generators is None else [generators[r] for r in live]).tolist()
        for j, r in enumerate(live):
            if done[j]:
                continue
            out[r].append(new[j])
            if new[j] in eos or (stopped is not None and stopped(out[r])):
                done[j] = True
        if all(done) or step == max_new - 1:
            break
        if filled < length:
            attend[:, filled] = 1
        filled += 1
        current = torch.tensor([[t if not d else pad_id] for t, d in zip(new, done, strict=True)], device=device)
        pos = pos + 1
        if sum(done) >= max(1.0, compact_at * len(live)):
            keep = [j for j, d in enumerate(done) if not d]
            index = torch.tensor(keep, device=device)
            cache.reorder_cache(index)
            attend, current, pos = attend[index], current[index], pos[index]
            live = [live[j] for j in keep]
            done = [False] * len(keep)
    return out
