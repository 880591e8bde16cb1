"""Best-of-N over complete solutions, from ONE pool of N_max samples per problem.

For a problem the policy writes N_max whole solutions once (`sample_pool`); every reward model
scores each of them once (`score_pool`); then, for every N <= N_max and every method, `evaluate`
picks among several seeded subsets of N of the pool (`subsets`) instead of sampling again for
each N. A subset of i.i.d. samples is itself an i.i.d. sample, so accuracy at N is estimated
without bias, and averaging over subsets lowers its variance for free.

Methods (names as written in a config; `parse_method`):
- `majority`: most common answer (answers grouped by `is_equivalent`); `pass`: oracle, correct if
  any of the N is (an upper bound, not a method);
- `orm`: highest ORM reward, the reward of the whole solution as one step (the ORM was trained on
  exactly that input); `orm-vote`: answers weighted by ORM reward;
- `prm-min|last|prod|mean` (and `hrm-...`): highest aggregated step reward;
- `prm-vote-min|last|prod|mean`: reward-weighted vote with that aggregation;
- `prm-step` / `hrm-step`: step-level search, see `hiprm.search.stepwise`;
- `prm-beam`, `prm-dvts`, `prm-particles` (`-min|last|prod|mean`: the aggregation, default last):
  beam search, DVTS and particle filtering (`hiprm.search.beam`, `dvts`, `particles`);
- `prm-hier` / `hrm-hier`: step search with each candidate scored merged with its predecessor
  (`hiprm.search.hier`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hiprm.grading import is_equivalent
from hiprm.policy.prompts import PromptStyle
from hiprm.policy.protocol import Policy, SamplingParams, generated_tokens
from hiprm.policy.steps import final_answer, split_solution
from hiprm.rm.scorer import score_solutions
from hiprm.search.aggregate import AGGREGATIONS, aggregate, best_index, majority_vote, weighted_vote

REWARD_MODELS = ("orm", "prm", "hrm")
TREE_SEARCHES = ("beam", "dvts", "particles")  # hiprm.search.beam / dvts / particles; `hier`: hiprm.search.hier


@dataclass(frozen=True)
class Method:
    """A parsed method name: `kind` in majority|pass|best|vote|step, the reward model it needs
    (None for majority/pass) and the step-reward aggregation (best/vote)."""

    name: str
    kind: str
    rm: str | None = None
    how: str | None = None


def parse_method(name: str) -> Method:
    """
    >>> parse_method("hrm-vote-min")
    Method(name='hrm-vote-min', kind='vote', rm='hrm', how='min')
    >>> parse_method("orm")
    Method(name='orm', kind='best', rm='orm', how='last')
    """
    if name in ("majority", "pass"):
        return Method(name, name)
    if name == "orm":
        return Method(name, "best", "orm", "last")
    if name == "orm-vote":
        return Method(name, "vote", "orm", "last")
    parts = name.split("-")
    if len(parts) >= 2 and parts[0] in ("prm", "hrm"):
        rm, rest = parts[0], parts[1:]
        if rest == ["step"]:
            return Method(name, "step", rm)
        if rest == ["hier"]:
            return Method(name, "hier", rm, "last")
        if rest[0] in TREE_SEARCHES and (len(rest) == 1 or (len(rest) == 2 and rest[1] in AGGREGATIONS)):
            return Method(name, rest[0], rm, rest[1] if len(rest) == 2 else "last")
        if len(rest) == 1 and rest[0] in AGGREGATIONS:
            return Method(name, "best", rm, rest[0])
        if len(rest) == 2 and rest[0] == "vote" and rest[1] in AGGREGATIONS:
            return Method(name, "vote", rm, rest[1])
    known = ["majority", "pass", "orm", "orm-vote", "prm-step", "hrm-step", "prm-hier"]
    known += [f"prm-{t}[-{'|'.join(AGGREGATIONS)}]" for t in TREE_SEARCHES]
    known += [f"prm-{h}" for h in AGGREGATIONS] + [f"prm-vote-{h}" for h in AGGREGATIONS] + ["(and hrm-...)"]
    raise ValueError(f"unknown method {name!r}; known: {', '.join(known)}")


def problem_seed(seed: int, problem_id: str, *parts: int) -> list[int]:
    """Seed material for one problem: the same numbers on every run, resume and shard."""
    h = int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:4], "big")
    return [seed, h, *parts]


def subsets(n_max: int, n: int, count: int, seed: list[int]) -> list[list[int]]:
    """`count` random size-`n` subsets of range(n_max) (sorted); one subset when n == n_max.

    >>> subsets(4, 4, 3, [0])
    [[0, 1, 2, 3]]
    >>> [len(s) for s in subsets(8, 2, 3, [0])]
    [2, 2, 2]
    """
    if not 1 <= n <= n_max:
        raise ValueError(f"N={n} outside 1..N_max={n_max}")
    if n == n_max:
        return [list(range(n_max))]
    rng = np.random.default_rng([*seed, n])
    return [sorted(int(i) for i in rng.choice(n_max, size=n, replace=False)) for _ in range(count)]


def nested_subset(n_max: int, n: int, seed: list[int]) -> list[int]:
    """The first `n` of a seeded permutation of range(n_max), sorted: for a fixed seed the subsets
    of growing n are nested, and for each n alone it is a uniform random size-n subset.

    >>> a, b = nested_subset(8, 2, [1]), nested_subset(8, 5, [1])
    >>> set(a) <= set(b), nested_subset(4, 4, [1])
    (True, [0, 1, 2, 3])
    """
    if not 1 <= n <= n_max:
        raise ValueError(f"N={n} outside 1..N_max={n_max}")
    perm = np.random.default_rng(seed).permutation(n_max)
    return sorted(int(i) for i in perm[:n])


@dataclass
class Candidate:
    """One complete solution in the pool, with its steps, answer and rewards per reward model."""

    index: int
    text: str
    steps: list[str]
    answer: str | None
    correct: bool
    tokens: int
    rewards: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "text": self.text,
            "steps": self.steps,
            "answer": self.answer,
            "correct": self.correct,
            "tokens": self.tokens,
            "rewards": self.rewards,
        }


def sample_pool(
    policy: Policy,
    style: PromptStyle,
    question: str,
    reference: str,
    n_max: int,
    params: SamplingParams,
) -> list[Candidate]:
    """N_max complete solutions (stopping at the end marker), split into steps and graded."""
    return sample_pools(policy, style, [(question, reference)], n_max, params)[0]


def sample_pools(
    policy: Policy,
    style: PromptStyle,
    problems: list[tuple[str, str]],
    n_max: int,
    params: SamplingParams,
) -> list[list[Candidate]]:
    """`sample_pool` for several (question, reference) problems in one `generate` call (give
    `params.seeds`, one per problem, for pools that do not depend on the batch)."""
    prompts = [style.prompt_for(q, "", policy.render_chat) for q, _ in problems]
    pools = []
    for (_, reference), texts in zip(problems, policy.generate(prompts, params), strict=True):
        out = []
        for i, text in enumerate(texts):
            answer = final_answer(text, style)
            out.append(
                Candidate(
                    index=i,
                    text=text,
                    steps=split_solution(text, style) or [text.strip()],
                    answer=answer,
                    correct=answer is not None and is_equivalent(answer, reference),
                    tokens=generated_tokens(policy, text),
                )
            )
        pools.append(out)
    return pools


def score_pool(candidates: list[Candidate], question: str, scorers: dict[str, Any]) -> None:
    """Fill `candidate.rewards[rm]` for each reward model given (one scoring pass per model).

    PRM/HRM: one reward per step prefix. ORM: one reward, for the last step given all earlier
    ones, which is how ORM examples are built, i.e. the whole solution as one input.
    """
    score_pools([(question, candidates)], scorers)


def score_pools(pools: list[tuple[str, list[Candidate]]], scorers: dict[str, Any]) -> None:
    """`score_pool` for the pools of several problems: one scoring call per model for all."""
    every = [(q, c) for q, cands in pools for c in cands]
    for rm, scorer in scorers.items():
        if rm == "orm":
            whole = scorer.score_inputs([(q, c.steps[:-1], c.steps[-1]) for q, c in every])
            for (_, c), r in zip(every, whole, strict=True):
                c.rewards[rm] = [float(r)]
        else:
            rewards = score_solutions(scorer, [(q, c.steps) for q, c in every])
            for (_, c), r in zip(every, rewards, strict=True):
                c.rewards[rm] = r


def choose(method: Method, candidates: list[Candidate], subset: list[int]) -> int | None:
    """The pool index `method` selects among `subset` (None for `pass`, which selects nothing)."""
    pool = [candidates[i] for i in subset]
    if method.kind == "pass":
        return None
    if method.kind == "majority":
        return subset[majority_vote([c.answer for c in pool])]
    scores = [aggregate(c.rewards[method.rm], method.how) for c in pool]
    if method.kind == "best":
        return subset[best_index(scores)]
    if method.kind == "vote":
        return subset[weighted_vote([c.answer for c in pool], scores)]
    raise ValueError(f"method {method.name!r} does not select among whole solutions")


def evaluate(
    methods: list[Method],
    candidates: list[Candidate],
    n_values: list[int],
    n_subsamples: int,
    seed: list[int],
) -> dict[str, dict[str, dict[str, list]]]:
    """Per method, per N: the correctness (0/1) and chosen index of each subsample.

    Returns `{method: {str(N): {"correct": [...], "chosen": [...], "tokens": [...]}}}`, `tokens`
    being the generated tokens of each subsample's N solutions (the compute axis).
    """
    n_max = len(candidates)
    out: dict[str, dict[str, dict[str, list]]] = {m.name: {} for m in methods}
    for n in n_values:
        for subset in subsets(n_max, n, n_subsamples, seed):
            for m in methods:
                slot = out[m.name].setdefault(str(n), {"correct": [], "chosen": [], "tokens": []})
                slot["tokens"].append(sum(candidates[i].tokens for i in subset))  # what this N cost alone
                if m.kind == "pass":
                    slot["correct"].append(int(any(candidates[i].correct for i in subset)))
                    slot["chosen"].append(None)
                    continue
                k = choose(m, candidates, subset)
                slot["correct"].append(int(candidates[k].correct))
                slot["chosen"].append(k)
    return out


def pool_cost(candidates: list[Candidate], n_values: list[int], n_subsamples: int, seed: list[int]) -> dict[str, int]:
    """Tokens generated for the pool vs. one run per N (estimated from the same subsets)."""
    n_max = len(candidates)
    per_n = 0.0
    for n in n_values:
        subs = subsets(n_max, n, n_subsamples, seed)
        per_n += sum(sum(candidates[i].tokens for i in s) for s in subs) / len(subs)
    return {"pool_tokens": sum(c.tokens for c in candidates), "one_run_per_n_tokens": round(per_n)}

