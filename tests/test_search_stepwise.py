"""Step-level search: selection, per-prefix pools shared across N and reward models, cost counts."""

from __future__ import annotations

import pytest

from hiprm.policy.prompts import STYLES
from hiprm.policy.protocol import SamplingParams
from hiprm.policy.scripted import ScriptedPolicy
from hiprm.policy.steps import step_texts
from hiprm.search.best_of_n import problem_seed
from hiprm.search.stepwise import step_search, to_records

STYLE = STYLES["step"]
Q = "What is 2+3=?"
# Three solutions; only the first is right, and a reward model that likes "good" steps finds it
# step by step (the second shares its first step and goes wrong at step 2).
TEXTS = [
    "# Step 1\ngood 2+3=5\n\n# Step 2\ngood so 5\n\n# Answer\n\n5\n# END!",
    "# Step 1\ngood 2+3=5\n\n# Step 2\nbad it is 6\n\n# Answer\n\n6\n# END!",
    "# Step 1\nbad 2+3=7\n\n# Step 2\nbad 7\n\n# Answer\n\n7\n# END!",
]


class Scorer:
    def __init__(self, word="good"):
        self.word = word
        self.calls = []

    def score_inputs(self, inputs):
        # Recorded per prefix, in order of first appearance (one call may hold several prefixes).
        by_prefix: dict[tuple, list] = {}
        for _, prev, cur in inputs:
            by_prefix.setdefault(tuple(prev), []).append(cur)
        self.calls += [(list(p), c) for p, c in by_prefix.items()]
        return [0.9 if self.word in cur else 0.1 for _, _, cur in inputs]


class CountingPolicy:
    """ScriptedPolicy + counts of samples asked for per prompt."""

    concurrent = False

    def close(self):
        pass

    def __init__(self, texts=TEXTS):
        self.inner = ScriptedPolicy({"2+3=?": texts})
        self.samples = 0
        self.calls = []

    def render_chat(self, u):
        return u

    def count_tokens(self, t):
        return self.inner.count_tokens(t)

    def generate(self, prompts, params):
        self.samples += params.n * len(prompts)
        self.calls.append((len(prompts), params.n, list(params.stop)))
        return self.inner.generate(prompts, params)


def _search(policy=None, scorers=None, n_values=(1, 2, 4, 8), subsamples=3, max_steps=6, seed=0):
    policy = policy or CountingPolicy()
    scorers = scorers or {"prm": Scorer()}
    return policy, step_search(
        policy, STYLE, Q, "5", scorers, list(n_values), subsamples,
        SamplingParams(temperature=0.7, max_tokens=64), max_steps, problem_seed(seed, "p1"),
    )


def test_largest_n_follows_the_good_steps_to_the_right_answer():
    _, res = _search()
    path = next(p for p in res.paths if p.n == 8)
    assert res.answers[("prm", 8, 0)] == ("5", True)
    text = "".join(path.prefix)
    assert text == TEXTS[0]
    assert len(path.choices) == 2  # step 1 (ends at "# Step 2"), then step 2 with the answer


def test_paths_look_at_n_distinct_slots_and_reward_models_share_them():
    pol, res = _search(scorers={"prm": Scorer(), "hrm": Scorer("bad")})
    for p in res.paths:
        assert all(len(s) == p.n == len(set(s)) for s in p.looked_at)
        assert all(c in s for c, s in zip(p.choices, p.looked_at, strict=True))
    for p in res.paths:
        twin = next(q for q in res.paths if q.rm != p.rm and (q.n, q.subsample) == (p.n, p.subsample))
        assert p.looked_at[0] == twin.looked_at[0]  # same slots of the shared root pool
    # HRM here prefers "bad" steps and so reaches a wrong answer with N=8
    assert res.answers[("hrm", 8, 0)][1] is False
    assert res.answers[("prm", 8, 0)][1] is True
    # one subsample for N = N_max (all slots), `subsamples` for the others
    assert sorted((p.rm, p.n) for p in res.paths).count(("prm", 8)) == 1
    assert sorted((p.rm, p.n) for p in res.paths).count(("prm", 2)) == 3


def test_pools_are_generated_lazily_and_shared():
    pol, res = _search(scorers={"prm": Scorer(), "hrm": Scorer("bad")})
    root = res.pools[()]
    assert sorted(root) == list(range(8))  # N_max path needs all root slots, generated once
    generated = sum(len(pool) for pool in res.pools.values())
    assert pol.samples == generated  # nothing generated twice
    # one batched generate call per depth, one prompt per missing slot
    assert res.generate_calls == len(pol.calls) == max(len(p.choices) for p in res.paths)
    assert all(n == 1 for _, n, _ in pol.calls)
    # every slot in a pool was looked at by some path at that prefix
    looked = {}
    for p in res.paths:
        prefix = ()
        for slots, choice in zip(p.looked_at, p.choices, strict=True):
            looked.setdefault(prefix, set()).update(slots)
            prefix = (*prefix, res.pools[prefix][choice].text)
    assert {k: set(v) for k, v in res.pools.items()} == {k: v for k, v in looked.items()}
    # stop strings of step k name the header of step k+1
    assert {tuple(stop) for _, _, stop in pol.calls} <= {("# Step 2", "# END!"), ("# Step 3", "# END!")}


def test_cost_counts_pool_tokens_against_one_run_per_n():
    pol, res = _search(scorers={"prm": Scorer(), "hrm": Scorer("bad")})
    cost = res.cost
    tokens = sum(c.tokens for pool in res.pools.values() for c in pool.values())
    assert cost["pool_tokens"] == tokens
    by_hand = 0.0
    for rm in ("prm", "hrm"):
        for n in (1, 2, 4, 8):
            mine = [p.tokens for p in res.paths if p.rm == rm and p.n == n]
            by_hand += sum(mine) / len(mine)
    assert cost["one_run_per_n_tokens"] == round(by_hand)
    assert cost["independent_runs_tokens"] == sum(p.tokens for p in res.paths)
    # a path's tokens are those of every candidate it looked at
    p = res.paths[0]
    prefix, expect = (), 0
    for slots, choice in zip(p.looked_at, p.choices, strict=True):
        expect += sum(res.pools[prefix][i].tokens for i in slots)
        prefix = (*prefix, res.pools[prefix][choice].text)
    assert p.tokens == expect
    assert cost["pool_tokens"] < cost["independent_runs_tokens"]


def test_scorer_sees_the_step_texts_of_the_prefix_and_candidates():
    scorer = Scorer()
    _search(scorers={"prm": scorer}, n_values=(2,), subsamples=1)
    root_prefix, root_cands = scorer.calls[0]
    assert root_prefix == []
    assert all(c.startswith("# Step 1\n") and not c.endswith("# Step 2") for c in root_cands)
    prefix, cands = scorer.calls[1]
    assert len(prefix) == 1 and prefix[0].startswith("# Step 1\n")
    assert all(c.startswith("# Step 2\n") for c in cands)  # the carried header
    firsts = {step_texts([t.split("# Step 2")[0] + "# Step 2"], STYLE)[0] for t in TEXTS}
    assert firsts == {"# Step 1\ngood 2+3=5", "# Step 1\nbad 2+3=7"}
    assert prefix[0] in firsts


def test_depth_limit_and_determinism():
    endless = ["# Step 1\ngood a\n\n# Step 2\ngood b\n\n# Step 3\ngood c\n\n# Step 4\ngood d\n\n# Step 5\ne"]
    _, res = _search(policy=CountingPolicy(endless), n_values=(1, 2), max_steps=3)
    assert all(len(p.choices) == 3 for p in res.paths)
    assert all(a == (None, False) for a in res.answers.values())
    _, again = _search(policy=CountingPolicy(endless), n_values=(1, 2), max_steps=3)
    assert [p.choices for p in again.paths] == [p.choices for p in res.paths]


def test_records_form_a_tree_and_paths_carry_answers():
    _, res = _search(scorers={"prm": Scorer(), "hrm": Scorer("bad")})
    steps, paths = to_records(res)
    nodes = {}
    for row in steps:
        nodes.setdefault(row["node"], []).append(row)
    assert all(row["parent"] is None for row in nodes[0])
    for row in steps:
        if row["parent"] is not None:
            pnode, pslot = row["parent"]
            assert any(r["slot"] == pslot for r in nodes[pnode])
            assert row["depth"] == next(r["depth"] for r in nodes[pnode]) + 1
    assert {p["method"] for p in paths} == {"prm-step", "hrm-step"}
    good = next(p for p in paths if p["method"] == "prm-step" and p["n"] == 8)
    assert good["answer"] == "5" and good["correct"] is True and good["text"] == TEXTS[0]
    assert all(set(r["rewards"]) <= {"prm", "hrm"} for r in steps)


@pytest.mark.parametrize("n_values", [(1,), (3,)])
def test_single_n(n_values):
    _, res = _search(n_values=n_values)
    assert {p.n for p in res.paths} == set(n_values)
