"""Step-level search with a PRM/HRM (the paper's best-of-N): at each step sample N candidate next
steps, keep the one the reward model scores highest, continue until an answer or `max_steps`.

One pool per *prefix*, shared by every N. Each (reward model, N, subsample s) follows its own
path, because a different choice at step 1 leads to a different prefix at step 2. What is shared:
- candidate pools are cached per (problem, prefix): slot i of the pool at a prefix is one i.i.d.
  sample from the policy given that prefix. At depth d, path (N, s) looks at the first N slots of
  a permutation of range(N_max) drawn from (seed, problem, s, d) alone, never from what the
  candidates say, so those N slots are N i.i.d. samples, exactly what a separate run with that N
  would draw. Slots are generated lazily, only when some path asks for them;
- so paths that coincide share generations: all paths start at the same root (one pool of N_max),
  the PRM and HRM paths of the same (N, s) look at the same slots, and paths that choose the same
  step stay together. Because the subsets are nested (N=2 looks at N=1's slot and one more), the
  paths of different N with the same s often choose the same step and keep sharing;
- rewards are cached per (reward model, prefix, slot).
`SearchResult.cost` counts the tokens of every generated candidate (`pool_tokens`) against what
one independent run per N would generate for each reward model (`one_run_per_n_tokens`: the
tokens of the N candidates on each step of the path, averaged over subsamples) and against
independent runs for every subsample (`independent_runs_tokens`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from hiprm.grading import is_equivalent
from hiprm.policy.prompts import PromptStyle
from hiprm.policy.protocol import Policy, SamplingParams, generated_tokens
from hiprm.policy.steps import final_answer, is_final, step_texts
from hiprm.search.aggregate import best_index
from hiprm.search.best_of_n import nested_subset

Prefix = tuple[str, ...]


@dataclass
class StepCandidate:
    text: str
    tokens: int
    final: bool


@dataclass
class Path:
    rm: str
    n: int
    subsample: int
    prefix: Prefix = ()
    choices: list[int] = field(default_factory=list)
    looked_at: list[list[int]] = field(default_factory=list)
    tokens: int = 0
    done: bool = False


@dataclass
class SearchResult:
    """Everything one problem's step-level search produced (see `to_records`)."""

    pools: dict[Prefix, dict[int, StepCandidate]]
    rewards: dict[tuple[str, Prefix, int], float]
    paths: list[Path]
    answers: dict[tuple[str, int, int], tuple[str | None, bool]]
    cost: dict[str, int]
    generate_calls: int = 0


def step_search(
    policy: Policy,
    style: PromptStyle,
    question: str,
    reference: str,
    scorers: dict[str, Any],
    n_values: list[int],
    n_subsamples: int,
    params: SamplingParams,
    max_steps: int,
    seed: list[int],
) -> SearchResult:
    """Run every (reward model, N, subsample) path for one problem, in lockstep by depth
    (`step_search_many` with one problem)."""
    return step_search_many(policy, style, [(question, reference, seed)], scorers, n_values, n_subsamples, params,
                            max_steps)[0]  # fmt: skip


def step_search_many(
    policy: Policy,
    style: PromptStyle,
    problems: list[tuple[str, str, list[int]]],
    scorers: dict[str, Any],
    n_values: list[int],
    n_subsamples: int,
    params: SamplingParams,
    max_steps: int,
) -> list[SearchResult]:
    """Step-level search for several problems (question, reference, seed) at once, in lockstep by
    depth: per depth one `generate` call for the missing slots of every problem (a batched
    backend decodes them together) and one `score_inputs` call per reward model.

    `scorers` maps a reward-model name ("prm", "hrm") to a `StepScorer` (`score_inputs`);
    `params` gives temperature/top_p/max_tokens (its `n`, `stop` and `seed` are set per call).
    Every request carries its own seed, from its problem's seed, depth, prefix and slot, so a
    problem's search does not depend on which problems share its calls.
    """
    n_max = max(n_values)
    states = [_State(q, ref, list(seed), [Path(rm, n, s) for rm in scorers for n in n_values
                                          for s in range(1 if n == n_max else n_subsamples)])
              for q, ref, seed in problems]  # fmt: skip
    calls = 0
    for depth in range(max_steps):
        live = [st for st in states if any(not p.done for p in st.paths)]
        if not live:
            break
        # 1. generate the slots some path needs, all problems in one call: one prompt per missing
        # slot (n=1), so a batched backend decodes every prefix's candidates together
        requests: list[tuple[_State, Prefix, int]] = []
        for st in live:
            missing: dict[Prefix, set[int]] = {}
            for p in st.paths:
                if p.done:
                    continue
                p.looked_at.append(nested_subset(n_max, p.n, [*st.seed, p.subsample, depth]))
                have = st.pools.setdefault(p.prefix, {})
                missing.setdefault(p.prefix, set()).update(i for i in p.looked_at[-1] if i not in have)
            requests += [(st, prefix, slot) for prefix in sorted(missing) for slot in sorted(missing[prefix])]
        if requests:
            prompts = [style.prompt_for(st.question, "".join(prefix), policy.render_chat) for st, prefix, _ in requests]
            call_params = SamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_tokens,
                stop=style.stops_at(depth),
                seed=_call_seed(requests[0][0].seed, depth, calls),
                seeds=[_call_seed(st.seed, depth, len(prefix), *prefix, slot) for st, prefix, slot in requests],
                include_stop=True,  # the kept delimiter tells a finished step from a cut one
            )
            calls += 1
            for st in live:
                st.calls += 1
            for (st, prefix, slot), texts in zip(requests, policy.generate(prompts, call_params), strict=True):
                st.pools[prefix][slot] = StepCandidate(
                    text=texts[0],
                    tokens=generated_tokens(policy, texts[0]),
                    final=is_final(texts[0], style) or not texts[0].strip(),
                )
        # 2. score the candidates each reward model needs: one call per model for every problem
        need: dict[str, list[tuple[_State, Prefix, int]]] = {}
        for st in live:
            for p in st.paths:
                if p.done:
                    continue
                for i in p.looked_at[-1]:
                    key = (st, p.prefix, i)
                    if (p.rm, p.prefix, i) not in st.rewards and key not in need.setdefault(p.rm, []):
                        need[p.rm].append(key)
        for rm, keys in need.items():
            if not keys:
                continue
            inputs = []
            for st, prefix, i in keys:
                steps = step_texts([*prefix, st.pools[prefix][i].text], style)
                inputs.append((st.question, steps[:-1], steps[-1]))
            for (st, prefix, i), r in zip(keys, scorers[rm].score_inputs(inputs), strict=True):
                st.rewards[(rm, prefix, i)] = float(r)
        # 3. every path keeps its best candidate
        for st in live:
            for p in st.paths:
                if p.done:
                    continue
                looked = p.looked_at[-1]
                pool = st.pools[p.prefix]
                pick = looked[best_index([st.rewards[(p.rm, p.prefix, i)] for i in looked])]
                p.tokens += sum(pool[i].tokens for i in looked)
                p.choices.append(pick)
                chosen = pool[pick]
                p.prefix = (*p.prefix, chosen.text)
                p.done = chosen.final
    results = []
    for st in states:
        answers: dict[tuple[str, int, int], tuple[str | None, bool]] = {}
        for p in st.paths:
            p.done = True
            answer = final_answer("".join(p.prefix), style)
            answers[(p.rm, p.n, p.subsample)] = (answer, answer is not None and is_equivalent(answer, st.reference))
        results.append(SearchResult(st.pools, st.rewards, st.paths, answers, _cost(st.pools, st.paths, n_values),
                                    st.calls))  # fmt: skip
    return results


@dataclass(eq=False)
class _State:
    """One problem's step search in `step_search_many`."""

    question: str
    reference: str
    seed: list[int]
    paths: list[Path]
    pools: dict[Prefix, dict[int, StepCandidate]] = field(default_factory=dict)
    rewards: dict[tuple[str, Prefix, int], float] = field(default_factory=dict)
    calls: int = 0


def _call_seed(seed: list[int], depth: int, *parts: Any) -> int:
    blob = ",".join(str(x) for x in (*seed, depth, *parts)).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "big") >> 1


def _cost(pools: dict[Prefix, dict[int, StepCandidate]], paths: list[Path], n_values: list[int]) -> dict[str, int]:
    pool_tokens = sum(c.tokens for pool in pools.values() for c in pool.values())
    per_n = 0.0
    for rm in {p.rm for p in paths}:
        for n in n_values:
            mine = [p.tokens for p in paths if p.rm == rm and p.n == n]
            per_n += sum(mine) / len(mine)
    return {
        "pool_tokens": pool_tokens,
        "one_run_per_n_tokens": round(per_n),
        "independent_runs_tokens": sum(p.tokens for p in paths),
        "step_candidates": sum(len(pool) for pool in pools.values()),
        "prefixes": len(pools),
    }


def to_records(result: SearchResult) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(step candidates, paths) as JSON-ready rows.

    Step rows form a tree: `node` numbers a prefix, `parent` is `[node, slot]` of the step that
    led there (None at the root), `slot` the candidate's place in its pool.
    """
    node_of = {prefix: k for k, prefix in enumerate(sorted(result.pools, key=lambda pr: (len(pr), pr)))}
    rms = sorted({rm for rm, _, _ in result.rewards})
    steps = []
    for prefix, pool in sorted(result.pools.items(), key=lambda kv: node_of[kv[0]]):
        parent = None
        if prefix:
            parent_pool = result.pools[prefix[:-1]]
            slot = next(i for i, c in sorted(parent_pool.items()) if c.text == prefix[-1])
            parent = [node_of[prefix[:-1]], slot]
        for i, c in sorted(pool.items()):
            steps.append(
                {
                    "node": node_of[prefix],
                    "parent": parent,
                    "depth": len(prefix),
                    "slot": i,
                    "text": c.text,
                    "tokens": c.tokens,
                    "final": c.final,
                    "rewards": {rm: result.rewards[(rm, prefix, i)] for rm in rms if (rm, prefix, i) in result.rewards},
                }
            )
    paths = []
    for p in result.paths:
        answer, correct = result.answers[(p.rm, p.n, p.subsample)]
        paths.append(
            {
                "method": f"{p.rm}-step",
                "n": p.n,
                "subsample": p.subsample,
                "choices": p.choices,
                "looked_at": p.looked_at,
                "steps": len(p.prefix),
                "tokens": p.tokens,
                "answer": answer,
                "correct": correct,
                "text": "".join(p.prefix),
            }
        )
    return steps, paths
