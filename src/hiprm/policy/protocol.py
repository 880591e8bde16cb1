"""The policy interface: prompts in, `n` sampled continuations per prompt out.

    policy.generate(["Question: 1+1?\\n"], SamplingParams(n=4, stop=["# END!"])) -> [[c1, c2, c3, c4]]

Every backend (`hf`, `openai`, `scripted`) is a plain class with the members of `Policy`; nothing
inherits from anything, and callers never probe for a member. `concurrent` says whether
`generate` can be called from several threads at once and gains from it (a server, which batches
whatever is in flight), so callers overlap their calls instead of waiting for each
(`hiprm.annotate.grow`); in-process backends say False: they batch within one call. `close()`
releases what the backend holds (connections); callers that built a policy close it.
`cut_at_stop` is the one place stop strings are applied to a text, so all backends agree on what
"keep the stop string" means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class SamplingParams:
    """How to sample. `temperature == 0` means greedy (all `n` samples are then identical).

    `stop`: generation ends at the first occurrence of any of these strings; the returned text
    keeps that stop string when `include_stop` is true (so a caller can tell *which* stop ended
    the text, e.g. a step delimiter versus `# END!`) and drops it otherwise.
    `seed`: same prompts + same params + same seed -> same samples (per backend and machine).
    `seeds`: optionally one seed per prompt, so what a prompt gets does not depend on which
    other prompts share the call (annotation batches many problems together and must give the
    same tree when resumed in another batch). Every backend honours it: the hf backend's own
    decoder draws each row from a generator of its own (its `decoder=generate` uses `seed`).
    """

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = 0
    include_stop: bool = True
    seeds: list[int] | None = None

    def seed_for(self, index: int) -> int | None:
        """The seed of prompt `index` in the call."""
        return self.seeds[index] if self.seeds is not None else self.seed

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")


class Sample(str):
    """A generated text that carries the number of tokens the backend generated for it: `tokens`
    (None where the backend cannot tell: a server that batches several samples in one request
    reports one total). A `str`, so every caller that wants the text is unchanged; operations on
    it return plain strings.

    >>> s = Sample("x = 1", tokens=4)
    >>> s == "x = 1", s.tokens, type(s.strip()).__name__
    (True, 4, 'str')
    """

    tokens: int | None

    def __new__(cls, text: str, tokens: int | None = None) -> Sample:
        obj = super().__new__(cls, text)
        obj.tokens = tokens
        return obj


def generated_tokens(policy: Policy, text: str) -> int:
    """What generating `text` cost in tokens: the backend's own count where it reported one
    (`Sample.tokens`), else the policy's count of the text (re-tokenized, or estimated)."""
    tokens = getattr(text, "tokens", None)  # a Sample's attribute; a plain str has none
    return tokens if tokens is not None else policy.count_tokens(text)


class Policy(Protocol):
    """A text generator. Implementations: HFPolicy, OpenAIPolicy, ScriptedPolicy."""

    concurrent: bool  # generate() may be called from several threads at once, and gains from it

    def close(self) -> None:
        """Release connections or other resources; the policy is not used afterwards."""
        ...

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        """Return, for each prompt, `params.n` continuations (the prompt itself not included), as
        `Sample`s carrying the tokens the backend generated for each where it knows them."""
        ...

    def render_chat(self, user_text: str) -> str:
        """Wrap `user_text` as a user turn + assistant header (or return it unchanged).

        Step-level search puts the previous steps *after* this, i.e. inside the assistant turn,
        so an instruction-tuned model continues its own answer instead of starting over.
        """
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` (exact for local models; an estimate where the backend cannot know)."""
        ...


def cut_at_stop(text: str, stop: list[str], include_stop: bool) -> tuple[str, str | None]:
    """Cut `text` at the earliest stop string; return (text, the stop that matched or None).

    Models often overshoot a stop string by a few characters (a token can span it), so the cut is
    made on the text, not on tokens. When two stops match at the same place the longer wins.

    >>> cut_at_stop("x = 1 \\\\]\\n\\nnext", ["\\\\]\\n\\n", "# END!"], True)
    ('x = 1 \\\\]\\n\\n', '\\\\]\\n\\n')
    >>> cut_at_stop("6\\n# END! trailing", ["# END!"], False)
    ('6\\n', '# END!')
    >>> cut_at_stop("no stop here", ["# END!"], True)
    ('no stop here', None)
    """
    best: tuple[int, int, str] | None = None
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i >= 0 and (best is None or (i, -len(s)) < (best[0], -best[1])):
            best = (i, len(s), s)
    if best is None:
        return text, None
    i, n, s = best
    return (text[: i + n] if include_stop else text[:i]), s
