"""The one driver of the step-level tree searches (`beam`, `dvts`, `particles`, `hier`), batched
across problems.

A search (`TreeSearch`) only decides: which prefixes to continue by one sampled step (`expand`),
which paths to score once the steps are back (`receive`), and what to keep given their
aggregated rewards (`judge`). `run_rounds` does the rest for any number of searches at once, of
any problems, methods and N: each round it gathers every open search's requests into one
`generate` call per step depth (a batched backend decodes them together; a server gets them
concurrently), extends candidates greedily by `lookahead` steps where asked, scores every path's
uncached steps in one `score_inputs` call per reward model, and hands each search its rewards.

Rewards are cached per (reward model, view, question, steps). Views:
- `step`: the reward of step i is the model's reward for step i given steps 0..i-1;
- `hier` (HRM's view at inference): step i >= 1 is scored merged with its predecessor, as one step
  `steps[i-1] + "\\n\\n" + steps[i]` after steps 0..i-2, the way HRM was trained on consecutive
  pairs; a step that repairs its predecessor is judged as the pair (`hier_inputs`).
Every search counts what it cost as if it ran alone: generated tokens (lookahead included) and
reward-model inputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from hiprm.policy.prompts import PromptStyle
from hiprm.policy.protocol import Policy, SamplingParams, generated_tokens
from hiprm.policy.steps import is_final, step_texts
from hiprm.search.aggregate import aggregate

Prefix = tuple[str, ...]  # the step chunks of a partial solution, as the policy wrote them
VIEWS = ("step", "hier")
MERGE = "\n\n"  # how HRM data joins a merged pair (`data build` merge_separator)


@dataclass
class Chunk:
    """One generated step: its text (with the delimiter that ended it), tokens, and whether it
    ends the solution (an answer, the end marker, or nothing)."""

    text: str
    tokens: int
    final: bool


class TreeSearch:
    """One search (a method at one N on one problem). Subclasses: `BeamSearch`, `DVTS`,
    `ParticleFilter`."""

    def __init__(self, n: int, how: str, max_steps: int):
        self.n, self.how, self.max_steps = n, how, max_steps
        self.done = False
        self.tokens = 0  # generated tokens, lookahead included
        self.rm_inputs = 0  # (question, previous steps, step) inputs scored for it
        self.rounds: list[list[float]] = []  # the scores judged each round
        self.kept: list[list[int]] = []  # what each round kept (method-specific indices)

    def ends(self, chunk: Chunk, depth: int) -> bool:
        return chunk.final or depth >= self.max_steps

    def expand(self) -> list[Prefix]:
        raise NotImplementedError

    def receive(self, chunks: list[Chunk]) -> list[Prefix]:
        raise NotImplementedError

    def judge(self, scores: list[float]) -> None:
        raise NotImplementedError

    def outcome(self) -> tuple[Prefix, float]:
        """The chosen path and its score."""
        raise NotImplementedError


@dataclass
class Job:
    """A search on one problem with one reward model, its view and lookahead."""

    question: str
    rm: str
    search: TreeSearch
    view: str = "step"
    lookahead: int = 0
    key: Any = None  # the caller's label (method, N)


def hier_inputs(question: str, steps: list[str]) -> list[tuple[str, tuple[str, ...], str]]:
    """The reward-model inputs of a path's steps under the `hier` view.

    >>> hier_inputs("q", ["a", "b", "c"])
    [('q', (), 'a'), ('q', (), 'a\\n\\nb'), ('q', ('a',), 'b\\n\\nc')]
    """
    return [(question, (), steps[0])] + [
        (question, tuple(steps[: i - 1]), steps[i - 1] + MERGE + steps[i]) for i in range(1, len(steps))
    ]


def step_inputs(question: str, steps: list[str], view: str) -> list[tuple[str, tuple[str, ...], str]]:
    if view == "hier":
        return hier_inputs(question, steps) if steps else []
    return [(question, tuple(steps[:i]), steps[i]) for i in range(len(steps))]


def _seed(seed: list[int], *parts: Any) -> int:
    blob = ",".join(str(x) for x in (*seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") >> 1


@dataclass
class RoundStats:
    rounds: int = 0
    generate_calls: int = 0
    rm_calls: int = 0
    rm_inputs: int = 0
    tokens: int = 0
    prompts: list[int] = field(default_factory=list)  # prompts per round (how much each call batched)


def run_rounds(jobs: list[Job], policy: Policy, style: PromptStyle, scorers: dict[str, Any], *, temperature: float,
               top_p: float, max_tokens: int, seed: list[int]) -> RoundStats:  # fmt: skip
    """Run every job to the end, all in lockstep (see the module docstring)."""
    stats = RoundStats()
    cache: dict[tuple[str, str, str, tuple[str, ...], str], float] = {}
    while True:
        active = [j for j in jobs if not j.search.done]
        if not active:
            return stats
        stats.rounds += 1
        requests = [(j, prefix) for j in active for prefix in j.search.expand()]
        copies: dict[tuple, int] = {}
        tags = []  # what a request's seed derives from: its job, prefix and copy, never its batch
        for j, prefix in requests:
            tag = (j.question, j.rm, str(j.key), *prefix)
            copies[tag] = copies.get(tag, -1) + 1
            tags.append((*tag, copies[tag]))
        chunks = _generate(policy, style, [(j.question, p) for j, p in requests], temperature, top_p, max_tokens,
                           [*seed, stats.rounds], stats, tags)  # fmt: skip
        stats.prompts.append(len(requests))
        to_score: list[tuple[Job, Prefix]] = []
        at = 0
        for j in active:
            k = sum(1 for r in requests if r[0] is j)
            mine = chunks[at : at + k]
            at += k
            j.search.tokens += sum(c.tokens for c in mine)
            to_score += [(j, p) for p in j.search.receive(mine)]
        if any(j.lookahead for j, _ in to_score):
            to_score = _lookahead(policy, style, to_score, top_p, max_tokens, [*seed, stats.rounds], stats)
        scores = _score(scorers, style, to_score, cache, stats)
        at = 0
        for j in active:
            k = sum(1 for job, _ in to_score if job is j)
            j.search.judge(scores[at : at + k])
            at += k


def _generate(policy: Policy, style: PromptStyle, requests: list[tuple[str, Prefix]], temperature: float,
              top_p: float, max_tokens: int, seed: list[int], stats: RoundStats,
              tags: list[tuple] | None = None) -> list[Chunk]:  # fmt: skip
    """One sampled step for each (question, prefix): one call per step depth (the stop strings
    depend on it), one seed per request from its `tags` entry, so that on backends that honour
    per-prompt seeds a request's draw does not depend on its batch."""
    tags = tags if tags is not None else [(q, *p, i) for i, (q, p) in enumerate(requests)]
    out: list[Chunk | None] = [None] * len(requests)
    by_depth: dict[int, list[int]] = {}
    for i, (_, prefix) in enumerate(requests):
        by_depth.setdefault(len(prefix), []).append(i)
    for depth, idx in sorted(by_depth.items()):
        prompts = [style.prompt_for(requests[i][0], "".join(requests[i][1]), policy.render_chat) for i in idx]
        params = SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                stop=style.stops_at(depth), include_stop=True,
                                seed=_seed(seed, depth, stats.generate_calls),
                                seeds=[_seed(seed, *tags[i]) for i in idx])  # fmt: skip
        stats.generate_calls += 1
        for i, texts in zip(idx, policy.generate(prompts, params), strict=True):
            text = texts[0]
            tokens = generated_tokens(policy, text)
            stats.tokens += tokens
            out[i] = Chunk(str(text), tokens, is_final(text, style) or not text.strip())
    return [c for c in out if c is not None]


def _lookahead(policy: Policy, style: PromptStyle, to_score: list[tuple[Job, Prefix]], top_p: float,
               max_tokens: int, seed: list[int], stats: RoundStats) -> list[tuple[Job, Prefix]]:  # fmt: skip
    """Each candidate path extended by up to its job's `lookahead` greedy steps (for scoring only;
    the search keeps the candidate itself), stopping at a final step or `max_steps`."""
    paths = [list(p) for _, p in to_score]
    for s in range(max(j.lookahead for j, _ in to_score)):
        grow = [i for i, (j, p) in enumerate(to_score)
                if s < j.lookahead and len(paths[i]) < j.search.max_steps
                and not (is_final(paths[i][-1], style) or not paths[i][-1].strip())]  # fmt: skip
        if not grow:
            break
        chunks = _generate(policy, style, [(to_score[i][0].question, tuple(paths[i])) for i in grow], 0.0, top_p,
                           max_tokens, [*seed, "lookahead", s], stats)  # fmt: skip
        for i, c in zip(grow, chunks, strict=True):
            paths[i].append(c.text)
            to_score[i][0].search.tokens += c.tokens
    return [(j, tuple(p)) for (j, _), p in zip(to_score, paths, strict=True)]


def _score(scorers: dict[str, Any], style: PromptStyle, to_score: list[tuple[Job, Prefix]],
           cache: dict, stats: RoundStats) -> list[float]:  # fmt: skip
    """The aggregated reward of each path: its steps' rewards (cached; the missing ones in one
    `score_inputs` call per reward model), aggregated by its search's `how`."""
    per_path = []
    missing: dict[str, dict[tuple, tuple[str, tuple[str, ...], str]]] = {}
    for j, path in to_score:
        steps = step_texts(list(path), style)
        inputs = step_inputs(j.question, steps, j.view)
        keys = [(j.rm, j.view, *x) for x in inputs]
        j.search.rm_inputs += len(keys)
        per_path.append(keys)
        for key, x in zip(keys, inputs, strict=True):
            if key not in cache:
                missing.setdefault(j.rm, {})[key] = x
    for rm, todo in missing.items():
        keys = list(todo)
        rewards = scorers[rm].score_inputs([(q, list(prev), step) for q, prev, step in todo.values()])
        stats.rm_calls += 1
        stats.rm_inputs += len(keys)
        for key, r in zip(keys, rewards, strict=True):
            cache[key] = float(r)
    return [aggregate([cache[k] for k in keys], j.search.how) for (j, _), keys in zip(to_score, per_path, strict=True)]
