"""Aggregation, votes, method names, subsampling and best-of-N over one shared pool."""

from __future__ import annotations

import math

import pytest

from hiprm.policy.prompts import STYLES
from hiprm.policy.protocol import SamplingParams
from hiprm.policy.scripted import ScriptedPolicy
from hiprm.search.aggregate import aggregate, best_index, group_answers, majority_vote, weighted_vote
from hiprm.search.best_of_n import (
    Candidate,
    evaluate,
    parse_method,
    pool_cost,
    problem_seed,
    sample_pool,
    score_pool,
    subsets,
)


class RecordingScorer:
    """Reward 0.9 for a step containing 'good', 0.1 otherwise; records every call."""

    def __init__(self):
        self.calls = []

    def _r(self, step):
        return 0.9 if "good" in step else 0.1

    def score_inputs(self, inputs):
        self.calls.append([(list(prev), cur) for _, prev, cur in inputs])
        return [self._r(cur) for _, _, cur in inputs]


# ---- aggregate ------------------------------------------------------------------------------


def test_aggregations():
    r = [0.9, 0.5, 0.8]
    assert aggregate(r, "min") == 0.5
    assert aggregate(r, "last") == 0.8
    assert math.isclose(aggregate(r, "prod"), 0.36)
    assert math.isclose(aggregate(r, "mean"), 2.2 / 3)
    assert aggregate([], "min") == 0.0
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(r, "max")


def test_best_index_ties_and_nan():
    assert best_index([0.1, 0.5, 0.5]) == 1
    assert best_index([float("nan"), 0.0]) == 1
    with pytest.raises(ValueError):
        best_index([])


def test_votes_group_equivalent_answers_with_the_grader():
    answers = ["3", "1/2", "0.5", "\\frac{1}{2}", "3"]
    assert group_answers(answers) == [[0, 4], [1, 2, 3]]
    assert majority_vote(answers) == 1
    # reward-weighted: two confident "3"s beat three doubtful halves
    assert weighted_vote(answers, [0.9, 0.2, 0.2, 0.2, 0.9]) == 0
    # a missing answer never wins while some answer exists, however heavy
    assert weighted_vote([None, None, "4"], [1.0, 1.0, 0.01]) == 2
    assert majority_vote([None, None]) == 0
    with pytest.raises(ValueError):
        weighted_vote(["1"], [])


# ---- methods and subsets --------------------------------------------------------------------


def test_parse_method():
    assert parse_method("majority").kind == "majority"
    assert (parse_method("orm").kind, parse_method("orm").rm) == ("best", "orm")
    assert (parse_method("hrm-step").kind, parse_method("hrm-step").rm) == ("step", "hrm")
    m = parse_method("prm-prod")
    assert (m.kind, m.rm, m.how) == ("best", "prm", "prod")
    m = parse_method("hrm-vote-mean")
    assert (m.kind, m.rm, m.how) == ("vote", "hrm", "mean")
    for bad in ("prm", "prm-max", "xrm-min", "orm-min", "prm-vote"):
        with pytest.raises(ValueError, match="unknown method"):
            parse_method(bad)


def test_subsets_are_seeded_distinct_and_in_range():
    seed = problem_seed(0, "abc")
    a = subsets(8, 3, 5, seed)
    assert a == subsets(8, 3, 5, seed)
    assert a != subsets(8, 3, 5, problem_seed(0, "abd"))
    assert len(a) == 5 and all(len(s) == 3 == len(set(s)) and all(0 <= i < 8 for i in s) for s in a)
    assert len({tuple(s) for s in a}) > 1
    assert subsets(8, 8, 5, seed) == [list(range(8))]
    with pytest.raises(ValueError):
        subsets(4, 5, 1, seed)


# ---- the whole-solution pool ----------------------------------------------------------------

GOOD = "# Step 1\ngood 2+3=5\n\n# Step 2\ngood so 5\n\n# Answer\n\n5\n# END!"
HALF = "# Step 1\ngood 2+3=6\n\n# Step 2\nthen 6\n\n# Answer\n\n6\n# END!"
BAD = "# Step 1\n2+3=7\n\n# Answer\n\n7\n# END!"


def _cand(i, answer, correct, prm, tokens=10):
    return Candidate(i, f"t{i}", ["s"] * len(prm), answer, correct, tokens, {"prm": prm, "orm": [prm[-1]]})


def test_evaluate_selects_per_method_and_subset():
    cands = [
        _cand(0, "6", False, [0.9, 0.2]),  # high last... no: low last, high first
        _cand(1, "5", True, [0.6, 0.7]),  # best min and best last
        _cand(2, "6", False, [0.1, 0.65]),
        _cand(3, None, False, [0.95, 0.95]),  # no answer, high reward
    ]
    methods = [parse_method(m) for m in ("majority", "pass", "orm", "prm-min", "prm-last", "prm-vote-last")]
    out = evaluate(methods, cands, [1, 2, 4], 3, problem_seed(0, "p"))
    full = {m: out[m]["4"] for m in out}
    assert full["pass"]["correct"] == [1]
    assert full["majority"] == {"correct": [0], "chosen": [0], "tokens": [40]}  # "6" twice; 4 x 10 tokens
    assert full["prm-min"]["chosen"] == [3] and full["prm-last"]["chosen"] == [3]
    # weighted vote: "6" has 0.2 + 0.65 = 0.85 < None's 0.95, but None cannot win -> "6"
    assert full["prm-vote-last"]["chosen"] == [0]
    for m in out:
        assert len(out[m]["1"]["correct"]) == 3 and len(out[m]["2"]["correct"]) == 3
    # N=1: every method picks the single candidate of the subset
    picks = out["orm"]["1"]["chosen"]
    assert out["majority"]["1"]["chosen"] == picks == out["prm-min"]["1"]["chosen"]


def test_sample_pool_and_score_pool_with_scripted_policy():
    pol = ScriptedPolicy({"2+3=?": [GOOD, HALF, BAD]})
    style = STYLES["step"]
    params = SamplingParams(n=12, stop=[style.end_stop], seed=4)
    cands = sample_pool(pol, style, "What is 2+3=?", "5", 12, params)
    assert len(cands) == 12
    by_answer = {c.answer: c for c in cands}
    assert set(by_answer) == {"5", "6", "7"}
    assert by_answer["5"].correct and not by_answer["6"].correct
    assert by_answer["5"].steps == ["# Step 1\ngood 2+3=5", "# Step 2\ngood so 5\n\n# Answer\n\n5"]
    assert by_answer["5"].tokens == pol.count_tokens(GOOD)
    prm, orm = RecordingScorer(), RecordingScorer()
    score_pool(cands, "What is 2+3=?", {"prm": prm, "orm": orm})
    assert by_answer["5"].rewards["prm"] == [0.9, 0.9]
    assert by_answer["6"].rewards["prm"] == [0.9, 0.1]
    assert by_answer["5"].rewards["orm"] == [0.9]
    assert len(prm.calls) == 1 and len(prm.calls[0]) == sum(len(c.steps) for c in cands)  # one call
    # ORM: one input per solution, the last step given all the earlier ones, in one call
    c5 = by_answer["5"]
    assert len(orm.calls) == 1 and len(orm.calls[0]) == len(cands) == 12
    assert (c5.steps[:-1], c5.steps[-1]) in orm.calls[0]


def test_pool_cost_counts_the_pool_once_and_estimates_runs_per_n():
    cands = [_cand(i, "1", True, [0.5], tokens=t) for i, t in enumerate([10, 20, 30, 40])]
    cost = pool_cost(cands, [1, 2, 4], 50, problem_seed(0, "p"))
    assert cost["pool_tokens"] == 100
    # one run per N generates ~N * 25 tokens: 25 + 50 + 100
    assert 160 <= cost["one_run_per_n_tokens"] <= 190
