"""A scripted policy for tests: fixed texts per question, continued from any prefix, deterministic.

    policy = ScriptedPolicy({"2+3": ["# Step 1\\n2+3=5\\n\\n# Answer\\n\\n5\\n# END!", "...wrong..."]})

For a prompt, the first rule whose key occurs in it supplies the candidate texts. The policy acts
like a model that only knows those texts: if the prompt already ends with the start of some of
them (step-level search feeds the previous steps back), it continues those; otherwise it starts
one afresh. Which text a sample uses is a hash of (seed, the prompt, how many times the same prompt came
earlier in the call, sample index), so results do not depend on call order, and a prompt repeated in one call (n=1
per copy) gets different samples, as from a real sampler. Stop strings are applied exactly as the real backends do. `queue` instead
hands out texts in order, ignoring the prompt. `calls` records every (prompt, params) received.
"""

from __future__ import annotations

import hashlib
import math

from hiprm.policy.protocol import Sample, SamplingParams, cut_at_stop


class ScriptedPolicy:
    def __init__(
        self,
        rules: dict[str, list[str]] | list[tuple[str, list[str]]] | None = None,
        queue: list[str] | None = None,
        default: list[str] | None = None,
    ):
        items = rules.items() if isinstance(rules, dict) else (rules or [])
        self.rules = [(key, list(texts)) for key, texts in items]
        for key, texts in self.rules:
            if not texts:
                raise ValueError(f"scripted policy: rule {key!r} has no texts")
        self.queue = list(queue) if queue is not None else None
        self.default = list(default) if default else None
        self.calls: list[tuple[str, SamplingParams]] = []
        self.tokens_generated = 0

    concurrent = False

    def close(self) -> None:
        """Nothing to release."""

    def render_chat(self, user_text: str) -> str:
        return user_text

    def count_tokens(self, text: str) -> int:
        """Whitespace-separated words, a stand-in for tokens that tests can count by hand."""
        return len(text.split())

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        out = []
        seen: dict[str, int] = {}
        for i, prompt in enumerate(prompts):
            self.calls.append((prompt, params))
            # Keyed by the prompt's occurrence in this call, not its position, so what a prompt
            # gets does not depend on which other prompts share the call (cross-problem batching).
            occ = seen[prompt] = seen.get(prompt, -1) + 1
            samples = [self._sample(prompt, params, f"{occ}.{j}", params.seed_for(i)) for j in range(params.n)]
            samples = [Sample(s, self.count_tokens(s)) for s in samples]
            self.tokens_generated += sum(self.count_tokens(s) for s in samples)
            out.append(samples)
        return out

    def _sample(self, prompt: str, params: SamplingParams, j: str, seed: int | None) -> str:
        if self.queue is not None:
            if not self.queue:
                raise RuntimeError("scripted policy: queue is empty")
            text = self.queue.pop(0)
        else:
            texts = self._texts_for(prompt)
            overlaps = [_overlap(prompt, t) for t in texts]
            best = max(overlaps)
            # Continue the texts that agree with the prefix already in the prompt.
            pool = [(t, k) for t, k in zip(texts, overlaps, strict=True) if k == best]
            h = hashlib.sha256(f"{seed}|{prompt}|{j}".encode()).digest()
            t, k = pool[int.from_bytes(h[:8], "big") % len(pool)]
            text = t[k:]
        text = _cap_words(text, params.max_tokens)
        return cut_at_stop(text, params.stop, params.include_stop)[0]

    def _texts_for(self, prompt: str) -> list[str]:
        for key, texts in self.rules:
            if key in prompt:
                return texts
        if self.default is not None:
            return self.default
        raise KeyError(f"scripted policy: no rule matches prompt {prompt[:120]!r}")


def _overlap(prompt: str, text: str) -> int:
    """Length of the longest prefix of `text` that the prompt ends with (0 if none).

    >>> _overlap("...\\nstep one\\n\\n", "step one\\n\\nstep two")
    10
    """
    for k in range(len(text), 0, -1):
        if prompt.endswith(text[:k]):
            return k
    return 0


def _cap_words(text: str, max_tokens: int) -> str:
    """Keep at most `max_tokens` whitespace-separated words (with the spacing between them)."""
    if max_tokens >= math.inf or len(text.split()) <= max_tokens:
        return text
    count, i, in_word = 0, 0, False
    for i, ch in enumerate(text):
        if not ch.isspace() and not in_word:
            count += 1
            if count > max_tokens:
                return text[:i].rstrip()
        in_word = not ch.isspace()
    return text
