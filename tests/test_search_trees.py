"""Beam search, DVTS, particle filtering and `hier` (hiprm.search.beam / dvts / particles / hier,
driven by hiprm.search.rounds) against small references written here from the published
definitions: search-and-learn's `beam_search.py` and `diverse_verifier_tree_search.py`, its_hub's
`ParticleFiltering` (read, not copied). A scripted policy (each (prompt, k-th request) gives a
fixed step) and a fixed scorer make every selection checkable."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from hiprm.policy.prompts import STYLES
from hiprm.policy.protocol import SamplingParams
from hiprm.policy.steps import is_final, step_texts
from hiprm.search.aggregate import aggregate
from hiprm.search.beam import BeamSearch
from hiprm.search.dvts import DVTS
from hiprm.search.hier import hier_search
from hiprm.search.particles import ParticleFilter
from hiprm.search.rounds import Job, hier_inputs, run_rounds

STYLE = STYLES["paragraph"]  # steps end at "\n\n"; "# Answer" ends a solution
Q = "What is 6 times 7?"


def h(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big")


def step_text(prefix: str, k: int) -> str:
    """The k-th sample after `prefix`: a final answer about one time in five."""
    v = h(prefix, k) % 100
    return f"# Answer\n\n{v}\n# END!" if v % 5 == 0 else f"we get {v}.\n\n"


class CountingPolicy:
    """The k-th request of a prompt gets `step_text(prompt, k)`; seeds are ignored."""

    concurrent = False

    def __init__(self):
        self.seen: dict[str, int] = {}
        self.calls = 0

    def render_chat(self, text):
        return text

    def count_tokens(self, text):
        return len(text.split())

    def generate(self, prompts, params: SamplingParams):
        self.calls += 1
        out = []
        for p in prompts:
            k = self.seen.get(p, 0)
            self.seen[p] = k + 1
            out.append([step_text(p, k)])
        return out


class SeededPolicy(CountingPolicy):
    """A request's step depends on its prompt and its own seed only (as vLLM with per-request seeds)."""

    def generate(self, prompts, params: SamplingParams):
        self.calls += 1
        return [[step_text(p, params.seed_for(i))] for i, p in enumerate(prompts)]


class FixedScorer:
    def __init__(self):
        self.calls = 0

    def reward(self, question, prev, step) -> float:
        return (h(question, *prev, step) % 997) / 997

    def score_inputs(self, inputs):
        self.calls += 1
        return [self.reward(q, list(prev), s) for q, prev, s in inputs]


# ---- the references, from the definitions ----------------------------------------------------


def sampler():
    """What the policy gives for a path (list of chunks), in request order, as the driver asks."""
    pol = CountingPolicy()

    def sample(path: list[str]) -> str:
        return pol.generate([STYLE.prompt_for(Q, "".join(path))], SamplingParams())[0][0]

    return sample


def path_score(path: list[str], how: str, view: str = "step") -> float:
    steps = step_texts(path, STYLE)
    sc = FixedScorer()
    if view == "hier":
        rewards = [sc.reward(q, list(prev), s) for q, prev, s in hier_inputs(Q, steps)]
    else:
        rewards = [sc.reward(Q, steps[:i], steps[i]) for i in range(len(steps))]
    return aggregate(rewards, how)


def finished(chunk: str, depth: int, max_steps: int) -> bool:
    return is_final(chunk, STYLE) or not chunk.strip() or depth >= max_steps


def ref_beam(n, m, how, max_steps, filter_duplicates=False):
    """search-and-learn beam_search: n empty beams; each round tile the survivors to n, one sample
    each; finished beams go to `completed` in order; of the rest keep argsort(scores)[-(n//m):]
    (stable); at the end the first n completed, argmax of their scores."""
    sample = sampler()
    active, completed, kept = [[] for _ in range(n)], [], []
    for _ in range(max_steps):
        if len(active) != n:
            active = (active * (n // len(active) + 1))[:n]
        new = []
        for b in active:
            c = sample(b)
            path = [*b, c]
            new.append((path, path_score(path, how), finished(c, len(path), max_steps)))
        completed += [(p, s) for p, s, f in new if f]
        open_ = [(p, s) for p, s, f in new if not f]
        if filter_duplicates:
            seen, unique = [], []
            for p, s in open_:
                if p not in seen:
                    seen.append(p)
                    unique.append((p, s))
            open_ = unique
        top = np.argsort(np.array([s for _, s in open_]), kind="stable")[-(n // m):] if open_ and n // m else \
            range(len(open_))  # fmt: skip
        kept.append(sorted(int(i) for i in top))
        active = [open_[i][0] for i in sorted(int(i) for i in top)]
        if not active or len(completed) >= n:
            break
    first = completed[:n]
    best = int(np.argmax([s for _, s in first]))
    return first[best], kept


def ref_dvts(n, m, how, max_steps):
    """search-and-learn DVTS: n // m subtrees; each round every open subtree samples m candidates
    and keeps argmax (first); done on a finished step; the answer is argmax over subtrees."""
    sample = sampler()
    trees = [[] for _ in range(n // m)]
    open_, last, kept = [True] * len(trees), [0.0] * len(trees), []
    while any(open_):
        picks = []
        for t in range(len(trees)):
            if not open_[t]:
                continue
            cands = [[*trees[t], sample(trees[t])] for _ in range(m)]
            scores = [path_score(c, how) for c in cands]
            k = int(np.argmax(scores))
            picks.append(k)
            trees[t], last[t] = cands[k], scores[k]
            open_[t] = not finished(cands[k][-1], len(cands[k]), max_steps)
        kept.append(picks)
    k = int(np.argmax(last))
    return (trees[k], last[k]), kept


def ref_particles(n, how, max_steps, temperature, seed):
    """its_hub ParticleFiltering: n empty particles; each round every unstopped one takes a step and
    gets log-weight logit(r)/temperature; then all n are resampled with replacement with
    probabilities softmax(log-weights); the answer is the argmax log-weight at the end."""
    sample = sampler()
    rng = np.random.default_rng(list(seed))
    parts, stopped, logw, kept = [[] for _ in range(n)], [False] * n, [0.0] * n, []
    while not all(stopped):
        for i in range(n):
            if stopped[i]:
                continue
            parts[i] = [*parts[i], sample(parts[i])]
            r = min(max(path_score(parts[i], how), 1e-7), 1 - 1e-7)
            logw[i] = math.log(r / (1 - r)) / temperature
            stopped[i] = finished(parts[i][-1], len(parts[i]), max_steps)
        w = np.exp(np.array(logw) - max(logw))
        picks = [int(i) for i in rng.choice(n, size=n, replace=True, p=w / w.sum())]
        kept.append(picks)
        parts, stopped, logw = [list(parts[i]) for i in picks], [stopped[i] for i in picks], [logw[i] for i in picks]
    k = int(np.argmax(logw))
    return (parts[k], 1 / (1 + math.exp(-logw[k] * temperature))), kept


def run_one(search, view="step"):
    pol, scorer = CountingPolicy(), FixedScorer()
    job = Job(Q, "prm", search, view=view)
    run_rounds([job], pol, STYLE, {"prm": scorer}, temperature=0.7, top_p=1.0, max_tokens=32, seed=[0])
    return search.outcome(), search.kept, pol, scorer


# ---- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("n, m", [(4, 2), (8, 4), (4, 4), (2, 4)])
@pytest.mark.parametrize("how", ["last", "min", "prod"])
@pytest.mark.parametrize("dedupe", [False, True])
def test_beam_search_makes_search_and_learns_selections(n, m, how, dedupe):
    (path, score), kept, pol, scorer = run_one(BeamSearch(n, m, how, max_steps=6, filter_duplicates=dedupe))
    (want_path, want_score), want_kept = ref_beam(n, m, how, 6, dedupe)
    assert kept == want_kept
    assert list(path) == want_path and score == pytest.approx(want_score)
    assert scorer.calls == len(kept)  # one reward-model call per round


@pytest.mark.parametrize("n, m", [(4, 2), (8, 4), (4, 4), (6, 3)])
@pytest.mark.parametrize("how", ["last", "min"])
def test_dvts_makes_search_and_learns_selections(n, m, how):
    (path, score), kept, _, _ = run_one(DVTS(n, m, how, max_steps=6))
    (want_path, want_score), want_kept = ref_dvts(n, m, how, 6)
    assert kept == want_kept and list(path) == want_path and score == pytest.approx(want_score)


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_particle_filtering_makes_its_hubs_selections(n, temperature):
    (path, score), kept, _, _ = run_one(ParticleFilter(n, "prod", 6, temperature, [3, n]))
    (want_path, want_score), want_kept = ref_particles(n, "prod", 6, temperature, [3, n])
    assert kept == want_kept and list(path) == want_path and score == pytest.approx(want_score)


def test_hier_scores_each_candidate_merged_with_its_predecessor():
    """`hier` is greedy step search (one subtree of width N) whose step rewards are the pairs'."""
    (path, _), kept, _, _ = run_one(hier_search(4, 6), view="hier")
    sample = sampler()
    prefix, want = [], []
    while True:
        cands = [[*prefix, sample(prefix)] for _ in range(4)]
        scores = [path_score(c, "last", "hier") for c in cands]
        k = int(np.argmax(scores))
        want.append([k])
        prefix = cands[k]
        if finished(prefix[-1], len(prefix), 6):
            break
    assert kept == want and list(path) == prefix
    # and it is not the per-step choice: somewhere the two views rank candidates differently
    steps = ["a", "b"]
    assert hier_inputs(Q, steps)[1] == (Q, (), "a\n\nb")


def test_many_problems_in_lockstep_equal_each_alone():
    """Batched across problems (one generate call per round for all) the searches make the same
    choices as run one at a time, with per-request seeds (as a server honours them)."""
    questions = [f"What is {a} + {b}?" for a, b in [(1, 2), (3, 4), (5, 6)]]

    def jobs():
        return [Job(q, "prm", s, key=(q, name)) for q in questions for name, s in
                [("beam", BeamSearch(4, 2, "last", 5)), ("dvts", DVTS(4, 2, "min", 5)),
                 ("pf", ParticleFilter(4, "last", 5, 1.0, [h(q)]))]]  # fmt: skip

    together, pol = jobs(), SeededPolicy()
    stats = run_rounds(together, pol, STYLE, {"prm": FixedScorer()}, temperature=0.7, top_p=1.0, max_tokens=32,
                       seed=[0])  # fmt: skip
    alone = jobs()
    calls = 0
    for j in alone:
        p = SeededPolicy()
        run_rounds([j], p, STYLE, {"prm": FixedScorer()}, temperature=0.7, top_p=1.0, max_tokens=32, seed=[0])
        calls += p.calls
    for a, b in zip(together, alone, strict=True):
        assert a.search.outcome() == b.search.outcome() and a.search.kept == b.search.kept
        assert a.search.tokens == b.search.tokens > 0
    assert pol.calls == stats.generate_calls < calls  # fewer, larger generate calls
    assert max(stats.prompts) > 4


def test_lookahead_scores_greedy_continuations_and_costs_their_tokens():
    plain = BeamSearch(4, 2, "last", 6)
    ahead = BeamSearch(4, 2, "last", 6)
    run_rounds([Job(Q, "prm", plain)], CountingPolicy(), STYLE, {"prm": FixedScorer()}, temperature=0.7, top_p=1.0,
               max_tokens=32, seed=[0])  # fmt: skip
    run_rounds([Job(Q, "prm", ahead, lookahead=1)], CountingPolicy(), STYLE, {"prm": FixedScorer()},
               temperature=0.7, top_p=1.0, max_tokens=32, seed=[0])  # fmt: skip
    assert ahead.tokens > plain.tokens
    assert ahead.rounds[0] != plain.rounds[0]  # the first round's scores include the lookahead steps


# ---- in `hiprm eval` -----------------------------------------------------------------------------


def test_eval_runs_every_tree_search_batched_and_reports_tokens(tmp_path, tiny_lm_dir, tiny_tokenizer):
    """`hiprm eval` with the tiny hf policy and a real Scorer: beam, DVTS, particles and hier next to
    best-of-N, step search and majority; the tree searches of `batch_problems` problems in lockstep;
    every method's tokens per problem in the table, accuracy against tokens plotted."""
    import json

    from hiprm.config import load_config
    from hiprm.search.report import read_done
    from hiprm.search.run import EvalConfig, run

    from .rm_fixtures import make_tiny_rm

    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {a}+{b}?", "answer": str(a + b)}) + "\n"
                            for a, b in [(2, 3), (4, 4), (1, 6)]))  # fmt: skip
    rm = make_tiny_rm(tmp_path / "rm", tiny_tokenizer)
    methods = "[majority,prm-min,prm-step,prm-beam,prm-dvts-min,prm-particles-prod,hrm-hier]"
    out = tmp_path / "eval"
    cfg = load_config(EvalConfig, None, [
        f"dataset={data}", f"out_dir={out}", f"methods={methods}", "n_values=[2,4]", "subsamples=2", f"prm={rm}",
        f"hrm={rm}", "rm.device=cpu", f"policy.model={tiny_lm_dir}", "max_solution_tokens=24", "max_step_tokens=8",
        "max_steps=3", "progress=false", "prompt.style=paragraph", "beam_width=2", "batch_problems=2",
    ])  # fmt: skip
    run(cfg)
    recs = read_done(out / "problems.jsonl")
    assert len(recs) == 3
    for rec in recs:
        for m in ("prm-beam", "prm-dvts-min", "prm-particles-prod", "hrm-hier"):
            for n in ("2", "4"):
                slot = rec["results"][m][n]
                assert len(slot["correct"]) == 1 and slot["tokens"][0] > 0
        searches = {(s["method"], s["n"]) for s in rec["searches"]}
        assert len(searches) == 8
        assert rec["cost"]["tree_batch_problems"] in (2, 1)  # problems 1-2 together, then 3
    metrics = json.loads((out / "metrics.json").read_text())
    acc = metrics["accuracy"]
    assert all(acc[m]["4"]["tokens"] > 0 for m in acc)
    assert acc["prm-beam"]["4"]["tokens"] > acc["prm-beam"]["2"]["tokens"]
    assert "Generated tokens per problem" in (out / "table.md").read_text()
    assert (out / "accuracy_tokens.png").stat().st_size > 1000
    kinds = {json.loads(x)["kind"] for x in (out / "samples.jsonl").read_text().splitlines()}
    assert {"solution", "step", "path", "search"} <= kinds
