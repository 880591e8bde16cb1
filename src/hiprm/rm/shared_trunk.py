"""Score the same inputs with several reward models whose bottom layers are the same: those once.

Reward models fine-tuned from one backbone with `train_top_layers=k` (the quickstart's PRM and
HRM, or a sweep over seeds or data) keep the backbone's embeddings and bottom n-k decoder layers
bit for bit. Scoring identical inputs with each model then repeats that trunk, most of every
forward pass (26 of SmolLM2's 30 layers at k=4). `SharedTrunk` runs the first model whole,
keeps the hidden states after the last layer they all share, and runs only the remaining
layers, the final norm and the head of each other model on them:

    group = SharedTrunk([Scorer.from_pretrained(p) for p in ("runs/rm/prm/model", "runs/rm/hrm/model")])
    prm_rewards, hrm_rewards = group.score_inputs(inputs)

What is shared is found, not assumed: `shared_layers` compares the parameters layer by layer,
and the inputs must tokenize the same for every model. The first call compares the shared
path's rewards with each model scoring alone, on its real inputs, within the trie path's own
tolerance; if they differ (a model whose layers need more than hidden states, position ids
and the attention plan) it warns and every call scores the models one by one. Both paths
read each input's reward at its last token of the same token trie (`hiprm.rm.trie`), so the
rewards equal each model's own `Scorer.score_inputs` (the test compares them exactly).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hiprm.rm import trie
from hiprm.rm.scorer import ScoreInput, Scorer, reward_from_logits

log = logging.getLogger(__name__)


def _decoder(model: Any) -> Any:
    """The decoder stack (embed_tokens, layers, norm) of a transformers sequence classifier."""
    m = trie.unwrap(model)
    return getattr(m, m.base_model_prefix)


def shared_layers(models: Sequence[Any]) -> int:
    """How many leading decoder layers every model holds with identical parameters, the
    embeddings identical too; 0 when the embeddings or the classes differ.

    >>> from transformers import LlamaConfig, LlamaForSequenceClassification
    >>> import torch; _ = torch.manual_seed(0)
    >>> cfg = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=3,
    ...                   num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)
    >>> a = LlamaForSequenceClassification(cfg); b = LlamaForSequenceClassification(cfg)
    >>> b.load_state_dict(a.state_dict()); shared_layers([a, b])
    <All keys matched successfully>
    3
    >>> with torch.no_grad(): _ = b.model.layers[2].mlp.up_proj.weight.add_(1.0)
    >>> shared_layers([a, b])
    2
    """
    import torch

    if len({type(trie.unwrap(m)) for m in models}) != 1:
        return 0
    decoders = [_decoder(m) for m in models]

    def same(modules: list[Any]) -> bool:
        params = [dict(m.named_parameters()) for m in modules]
        if any(p.keys() != params[0].keys() for p in params):
            return False
        return all(
            p[name].shape == params[0][name].shape and torch.equal(p[name], params[0][name])
            for p in params[1:] for name in params[0]
        )  # fmt: skip

    if not same([d.embed_tokens for d in decoders]):
        return 0
    depth = 0
    for layers in zip(*(d.layers for d in decoders), strict=False):  # stops at the shallowest model
        if not same(list(layers)):
            break
        depth += 1
    return depth


def _top_logits(model: Any, hidden: Any, batch: dict[str, Any], start: int) -> Any:
    """Logits (n, num_labels) at each sequence's last token, running only layers[start:], the
    final norm and the head of `model` on `hidden` (R, L, d), the output of layer start-1.

    The decoder's own forward runs (masks, rotary embeddings, trie attention) with its layer
    list cut to the top for this call and restored after."""
    dec = _decoder(model)
    layers = dec.layers
    dec.layers = layers[start:]
    try:
        out = dec(
            inputs_embeds=hidden,
            attention_mask=batch["attention_mask"].to(hidden.device),
            position_ids=batch["position_ids"].to(hidden.device),
            trie_plan=batch["trie_plan"].to(hidden.device),
            use_cache=False,
        )
    finally:
        dec.layers = layers
    logits = trie.unwrap(model).score(out.last_hidden_state)  # (R, L, num_labels)
    return logits.reshape(-1, logits.shape[-1])[batch["ends"].to(logits.device)]


def _encoding_identity(scorer: Scorer) -> str:
    """What a scorer's token ids depend on: its tokenizer (serialized) and formatter settings; a
    tokenizer that cannot be serialized is its own identity."""
    import json

    backend = getattr(scorer.tokenizer, "backend_tokenizer", None)
    tok = backend.to_str() if backend is not None else f"object-{id(scorer.tokenizer)}"
    return json.dumps([tok, scorer.template.to_dict()], sort_keys=True)


class SharedTrunk:
    """Several in-process `Scorer`s that score the same inputs; see the module docstring."""

    def __init__(self, scorers: Sequence[Scorer]):
        if len(scorers) < 2:
            raise ValueError("SharedTrunk needs at least two scorers")
        self.scorers = list(scorers)
        devices = {str(s.device) for s in self.scorers}
        self.depth = shared_layers([s.model for s in self.scorers]) if len(devices) == 1 else 0
        # None = not checked yet; the first call compares the shared path with the separate one.
        self._ok: bool | None = None if self.depth > 0 else False
        # The same tokenizer and formatter settings give the same token ids: encode once.
        self._one_encoding = len({_encoding_identity(s) for s in self.scorers}) == 1
        self.forward_passes = 0  # forward passes of the shared path (one trunk + the tops)

    def score_inputs(self, inputs: Sequence[ScoreInput]) -> list[list[float]]:
        """Rewards of the inputs for each scorer: one list per scorer, in the scorers' order."""
        if self._one_encoding:
            seqs = [self.scorers[0].encode_inputs(inputs)] * len(self.scorers)
        else:
            seqs = [s.encode_inputs(inputs) for s in self.scorers]
        # A single input takes each Scorer's plain path (as `Scorer.logits` does), so the rewards
        # stay exactly each model's own.
        if self._ok is False or len(inputs) < 2 or any(q != seqs[0] for q in seqs[1:]) or not all(
            s._prefix_cache_ok is not False for s in self.scorers
        ):
            return [[reward_from_logits(r) for r in s.logits(q)]
                    for s, q in zip(self.scorers, seqs, strict=True)]  # fmt: skip
        rows = self._logits_shared(seqs[0])
        if self._ok is None:
            alone = [s.logits(seqs[0]) for s in self.scorers]  # also runs each Scorer's own first-call check
            worst = max(abs(reward_from_logits(a) - reward_from_logits(b))
                        for m_rows, m_alone in zip(rows, alone, strict=True)
                        for a, b in zip(m_rows, m_alone, strict=True))  # fmt: skip
            self._ok = worst <= trie.tolerance(self.scorers[0].model.dtype) and all(
                s._prefix_cache_ok for s in self.scorers
            )
            if not self._ok:
                log.warning("shared-trunk scoring differs from scoring each model alone by %.2g; "
                            "scoring them one by one", worst)  # fmt: skip
                rows = alone
        return [[reward_from_logits(r) for r in m_rows] for m_rows in rows]

    def _logits_shared(self, seqs: list[list[int]]) -> list[list[list[float]]]:
        """Per scorer, one logits row per input: each trie row runs the first model whole, with
        its hidden states after the shared layers kept, then every other model's top on them."""
        import torch

        first = self.scorers[0]
        keep = _decoder(first.model).layers[self.depth - 1]
        seen: list[Any] = []
        # A decoder layer returns its hidden states (a tuple whose first item they are in older
        # transformers).
        hook = keep.register_forward_hook(
            lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out)
        )
        packed = trie.pack(seqs, first.max_tokens_per_batch)
        out: list[list[list[float]]] = [[[] for _ in seqs] for _ in self.scorers]
        try:
            for r in range(len(packed.ids)):
                batch = trie.tensors(packed, first.pad_id, [r])
                seen.clear()
                with torch.inference_mode():
                    per_model = [trie.classifier_logits(first.model, batch)]
                    hidden = seen[-1]
                    per_model += [_top_logits(s.model, hidden, batch, self.depth) for s in self.scorers[1:]]
                self.forward_passes += 1
                for m, logits in enumerate(per_model):
                    for k, row in zip(batch["sequences"], logits.float().tolist(), strict=True):
                        out[m][k] = row
        finally:
            hook.remove()
        for s in self.scorers:
            s.stats.trie_tokens += packed.tokens
        return out
