"""`hiprm annotate`: the tree record, BFS and MCTS growth with a scripted policy, resume after a
real kill -9, bad input, a failing server, and the OpenAI backend's greedy / stop-reason fixes."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import httpx
import pytest

from hiprm.annotate.grow import GrowSettings, classify_step, grow_trees, split_rollout
from hiprm.annotate.run import AnnotateConfig, load_problems, run
from hiprm.annotate.stats import format_tree_stats
from hiprm.artifacts import DataError, StageError, read_appended
from hiprm.cli import main
from hiprm.config import ConfigError
from hiprm.policy.openai_http import OpenAIPolicy
from hiprm.policy.prompts import STYLES
from hiprm.policy.protocol import SamplingParams
from hiprm.policy.scripted import ScriptedPolicy
from hiprm.records import Problem
from hiprm.tree import (
    Tree,
    iter_paths,
    path_to,
    read_trees,
    recompute,
    tree_from_json,
    tree_stats,
    validate,
    wilson,
)
from tests.killing import complete_lines, hiprm_cmd, kill_when

# Keys must not occur in the paper prompt's own example ("1+2+3 = ?").
TEXTS = {
    "4+5": [
        "# Step 1\nWe add 4 and 5.\n\n# Step 2\n4+5=9.\n\n# Answer\n\n9\n# END!",
        "# Step 1\nWe add 4 and 5.\n\n# Step 2\n4+5=8.\n\n# Answer\n\n8\n# END!",
        "# Step 1\nFour plus five.\n\n# Step 2\nThat is nine.\n\n# Step 3\nSo 9.\n\n# Answer\n\n9\n# END!",
        "# Step 1\nFour plus five.\n\n# Step 2\nThat is ten.\n\n# Answer\n\n10\n# END!",
        "# Step 1\nHmm.\n\n# Step 2\nNot sure.\n# END!",
    ],
    "7*6": [
        "# Step 1\n7*6=42.\n\n# Answer\n\n42\n# END!",
        "# Step 1\n7*6=48.\n\n# Answer\n\n48\n# END!",
        "# Step 1\nSeven sixes.\n\n# Step 2\nThat makes 42.\n\n# Answer\n\n42\n# END!",
    ],
    "9-2": [
        "# Step 1\n9-2=7.\n\n# Answer\n\n7\n# END!",
        "# Step 1\nNine minus two.\n\n# Step 2\nIt is 6.\n\n# Answer\n\n6\n# END!",
    ],
}
QUESTIONS = [("What is 4+5?", "9"), ("What is 7*6?", "42"), ("What is 9-2?", "7")]


def _problems() -> list[Problem]:
    return [Problem(f"p{i}", q, a, source=f"t:{i + 1}") for i, (q, a) in enumerate(QUESTIONS)]


def _files(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": TEXTS}))
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    return script, data


def _cfg(tmp_path: Path, **kw) -> AnnotateConfig:
    script, data = _files(tmp_path)
    cfg = AnnotateConfig(
        dataset=str(data), out_dir=str(tmp_path / "out"), children=3, max_depth=4, progress=False
    )
    cfg.policy.backend, cfg.policy.script = "scripted", str(script)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


# --- the tree record ------------------------------------------------------------------------------


def test_tree_round_trip_and_counts():
    t = Tree.new("p", "q", "1")
    a = t.add(t.root.id, "a")
    t.add(a.id, "b", outcome="correct", answer="1")
    t.add(a.id, "b", outcome="correct", answer="1")  # an identical sibling: counted, not stored twice
    t.add(a.id, "c", outcome="wrong", answer="2")
    t.add(t.root.id, "d", outcome="truncated")
    recompute(t)
    assert len(t.nodes) == 5 and t.node(t.nodes[2].id).count == 2
    assert (a.leaves, a.correct) == (3, 2) and t.root.leaves == 4 and t.root.mc == 0.5
    back = Tree.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.to_dict() == t.to_dict()
    assert [n.step for n in iter_paths(back).__next__()] == ["", "a", "b"]
    recompute(t, truncated_counts=False)
    assert t.root.leaves == 3 and t.root.mc == 2 / 3
    lo, hi = wilson(2, 3)
    assert 0 < lo < 2 / 3 < hi < 1


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["nodes"][2].update(parent="nope"), "missing parent"),
        (lambda d: d["nodes"][1].update(parent=d["nodes"][2]["id"]), "cycle or bad order"),
        (lambda d: d["nodes"][0].update(leaves=7), "counts do not add up"),
        (lambda d: d["nodes"][1].update(mc=0.9), "mc 0.9 but"),
        (lambda d: d["nodes"][1].update(outcome="correct"), "children but an outcome"),
        (lambda d: d["nodes"][2].update(outcome="maybe"), "is not one of"),
        (lambda d: d["nodes"][2].update(depth=5), "depth 5"),
    ],
)
def test_validate_names_file_line_and_node(edit, message):
    t = Tree.new("p", "q", "1")
    a = t.add(t.root.id, "a")
    t.add(a.id, "b", outcome="correct", answer="1")
    recompute(t)
    d = json.loads(json.dumps(t.to_dict()))
    edit(d)
    with pytest.raises(DataError, match=message) as e:
        Tree.from_dict(d, "trees.jsonl", 12)
    assert str(e.value).startswith("trees.jsonl:12:") and "nodes[" in str(e.value)


def test_openr_trees_read_and_keep_their_scores(shared_data):
    path = shared_data / "samples" / "openr_samples_math-aps-tree.jsonl"
    trees = list(read_trees(path))
    assert len(trees) == 3
    raw = json.loads(path.read_text().splitlines()[0])
    t = trees[0]
    assert t.mc_from == "given" and t.root.mc == raw["reasoning_steps"]["mc_value"]
    assert t.answer == str(raw["final_answer"]) and t.question == raw["question"]
    for tree in trees:
        validate(tree)
        assert tree.root.leaves > 0 and all(n.mc is not None for n in tree.nodes)
    # through the hiprm format and back, still telling the formats apart by shape
    again = tree_from_json(json.loads(json.dumps(t.to_dict())), "x")
    assert again.to_dict() == t.to_dict()
    # no cost block: what they cost is unknown, not zero
    s = tree_stats(trees)
    assert s["generated_tokens"] is None and s["tokens_per_node"] is None
    assert "generated tokens: not recorded" in format_tree_stats(s)


# --- growth -----------------------------------------------------------------------------------------


def test_classify_and_split_rollout_agree_with_step_search():
    s = STYLES["step"]
    text = "# Step 1\na\n\n# Step 2\nb\n\n# Answer\n\n3\n# END!"
    pieces = split_rollout(text, s)
    assert "".join(pieces) + "# END!" == text
    assert [classify_step(p, s) for p in pieces] == ["cut", "final"]
    assert classify_step("# Step 1\na\n\n# Step 2", s) == "step"


@pytest.mark.parametrize("mode", ["bfs", "mcts"])
def test_grow_labels_match_the_scripted_texts(mode):
    settings = GrowSettings(mode=mode, children=3, max_depth=4, budget=20 if mode == "mcts" else 0)
    trees = {
        t.problem_id: t for t in grow_trees(_problems(), ScriptedPolicy(TEXTS), STYLES["step"], settings)
    }
    assert sorted(trees) == ["p0", "p1", "p2"]
    for t in trees.values():
        validate(t)
        for path in iter_paths(t):
            leaf = path[-1]
            assert leaf.outcome in ("correct", "wrong", "no_answer", "truncated")
            if leaf.outcome == "correct":
                assert leaf.answer == t.answer
        # every scored node's MC-score is its subtree's correct fraction
        assert all(n.mc == (n.correct / n.leaves if n.leaves else None) for n in t.nodes)
    p0 = trees["p0"]
    by_step = {n.step: n for n in p0.nodes}
    # "We add 4 and 5." continues to 9 (right) or 8 (wrong): strictly between 0 and 1
    assert 0 < by_step["# Step 1\nWe add 4 and 5."].mc < 1
    assert by_step["# Step 1\nHmm."].mc in (0.0, None)
    if mode == "mcts":
        assert p0.cost["rollouts"] <= 20
    else:
        assert all(n.depth <= 4 for n in p0.nodes)


@pytest.mark.parametrize("score", ["child_mean", "leaf_fraction"])
def test_mcts_never_grows_more_than_children_children(score):
    """A round of 8 rollouts must not give one node more than `children` (2) children: picks of
    the round count as children (4+5 and 7*6 have three distinct first steps each; below a first
    step the script has at most two continuations, so a rollout through one cannot add a third)."""
    widest = 0
    for seed in range(10):
        settings = GrowSettings(mode="mcts", children=2, budget=24, rollouts_per_round=8, score=score, seed=seed)
        for t in grow_trees(_problems(), ScriptedPolicy(TEXTS), STYLES["step"], settings):
            validate(t)
            kids = t.children()
            assert all(len(v) <= 2 for v in kids.values()), (seed, t.problem_id, {k: len(v) for k, v in kids.items()})
            widest = max(widest, len(kids[t.root.id]))
    assert widest == 2


def test_trees_do_not_depend_on_the_batch():
    settings = GrowSettings(mode="mcts", children=3, budget=12, batch_problems=3)
    together = {
        t.problem_id: t.to_dict()
        for t in grow_trees(_problems(), ScriptedPolicy(TEXTS), STYLES["step"], settings)
    }
    alone = {}
    for p in _problems():
        for t in grow_trees([p], ScriptedPolicy(TEXTS), STYLES["step"], settings):
            alone[t.problem_id] = t.to_dict()
    for d in (*together.values(), *alone.values()):
        d["cost"].pop("seconds")
    assert together == alone


class _ServerLike(ScriptedPolicy):
    """A scripted policy that behaves like a server: callable from many threads at once, each
    call taking `delay[problem]` seconds, recording when calls start and end."""

    concurrent = True
    _lock = threading.Lock()  # the scripted policy's call log is not thread-safe

    def __init__(self, delays: dict[str, float] | None = None):
        super().__init__(TEXTS)
        self.delays = delays or {}
        self.spans: list[tuple[str, float, float]] = []

    def generate(self, prompts, params):
        key = next((k for k in self.delays if k in prompts[0]), "")
        t0 = time.perf_counter()
        time.sleep(self.delays.get(key, 0.0))
        with self._lock:
            out = super().generate(prompts, params)
            self.spans.append((key, t0, time.perf_counter()))
        return out


@pytest.mark.parametrize("mode", ["bfs", "mcts"])
def test_overlapped_rounds_give_the_lockstep_trees(mode):
    settings = GrowSettings(mode=mode, children=3, max_depth=4, budget=12 if mode == "mcts" else 0,
                            rollouts_per_round=2, batch_problems=3)  # fmt: skip

    def grown(policy):
        out = {t.problem_id: t.to_dict() for t in grow_trees(_problems(), policy, STYLES["step"], settings)}
        for d in out.values():
            d["cost"].pop("seconds")
        return out

    lockstep = grown(ScriptedPolicy(TEXTS))
    overlapped = grown(_ServerLike({"4+5": 0.02, "9-2": 0.001}))
    assert overlapped == lockstep


def test_overlapped_rounds_do_not_wait_for_the_slowest_problem():
    # Problem p0's calls take 0.3 s each; in lockstep the others would wait for every one of
    # them. Overlapped, the fast problems finish while p0's first call is still running.
    policy = _ServerLike({"4+5": 0.3})
    settings = GrowSettings(mode="mcts", children=3, budget=8, rollouts_per_round=2, batch_problems=3)
    order = [t.problem_id for t in grow_trees(_problems(), policy, STYLES["step"], settings)]
    assert order[-1] == "p0"
    first_slow_end = min(end for key, _, end in policy.spans if key == "4+5")
    fast = [(start, end) for key, start, end in policy.spans if key != "4+5"]
    assert len(fast) >= 4  # several rounds each for p1 and p2
    assert sum(end < first_slow_end for _, end in fast) >= 4


def test_overlapped_rounds_raise_the_failing_problem():
    class Failing(_ServerLike):
        def generate(self, prompts, params):
            if "7*6" in prompts[0]:
                raise StageError("http://x/v1/completions: HTTP 500")
            return super().generate(prompts, params)

    settings = GrowSettings(mode="mcts", children=3, budget=8, batch_problems=3)
    with pytest.raises(StageError, match=r"HTTP 500 -- while growing problems p1 "):
        list(grow_trees(_problems(), Failing(), STYLES["step"], settings))


def test_mcts_spends_less_than_bfs_on_the_same_problems():
    bfs = list(
        grow_trees(_problems(), ScriptedPolicy(TEXTS), STYLES["step"], GrowSettings(mode="bfs", children=5))
    )
    mcts = list(
        grow_trees(
            _problems(),
            ScriptedPolicy(TEXTS),
            STYLES["step"],
            GrowSettings(mode="mcts", children=5, budget=6),
        )
    )
    assert sum(t.cost["rollouts"] for t in mcts) <= 18 < sum(t.cost["rollouts"] for t in bfs)


# --- the runner --------------------------------------------------------------------------------------


def test_run_writes_trees_meta_and_resumes(tmp_path):
    cfg = _cfg(tmp_path, mode="mcts", budget=10)
    out = run(cfg)
    lines = out.read_text().splitlines()
    assert len(lines) == 3
    meta = json.loads((out.parent / "meta.json").read_text())
    assert meta["status"] == "done" and meta["summary"]["problems"] == 3
    assert meta["summary"]["cost"]["generated_tokens"] > 0
    # the stats' generated tokens are the cost blocks' (what the policy produced), the step
    # tokens those the nodes hold; stop strings make the first larger
    trees = list(read_trees(out))
    summary = meta["summary"]
    assert summary["generated_tokens"] == summary["cost"]["generated_tokens"] == sum(
        t.cost["generated_tokens"] for t in trees
    )
    assert summary["step_tokens"] == sum(n.tokens for t in trees for n in t.nodes) < summary["generated_tokens"]
    # a rerun adds nothing and rewrites nothing
    run(cfg)
    assert out.read_text().splitlines() == lines
    # another config is refused, naming the key
    with pytest.raises(ConfigError, match="budget"):
        run(_cfg(tmp_path, mode="mcts", budget=11))
    # throughput keys may change
    run(_cfg(tmp_path, mode="mcts", budget=10, batch_problems=1))


def test_torn_last_line_is_redone(tmp_path):
    cfg = _cfg(tmp_path, mode="bfs")
    out = run(cfg)
    full = out.read_bytes()
    out.write_bytes(full[: len(full) - 40])  # the last tree cut mid-write
    run(cfg)

    def no_time(data: bytes) -> list[dict]:
        rows = [json.loads(x) for x in data.splitlines()]
        for r in rows:
            r["cost"].pop("seconds")
        return rows

    assert no_time(out.read_bytes()) == no_time(full)


def test_kill_9_then_resume_gives_the_uninterrupted_trees(tmp_path):
    """A real `hiprm annotate` process is killed mid-run; the rerun completes the same file."""
    script, data = _files(tmp_path)
    many = tmp_path / "many.jsonl"
    qs = [(f"What is {i}+{i}? (4+5 style)", "9") for i in range(400)]
    many.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in qs))
    args = [f"dataset={many}", "mode=mcts", "budget=30", "children=3", "batch_problems=1", "policy.backend=scripted",
            f"policy.script={script}", "progress=false"]  # fmt: skip
    ref = tmp_path / "ref"
    assert main(["annotate", *args, f"out_dir={ref}"]) == 0
    out = tmp_path / "killed"
    kill_when(hiprm_cmd("annotate", *args, f"out_dir={out}"), lambda: complete_lines(out / "trees.jsonl") >= 5,
              tmp_path / "killed.log")  # fmt: skip
    partial = len(read_appended(out / "trees.jsonl"))
    assert 0 < partial < 400
    assert main(["annotate", *args, f"out_dir={out}"]) == 0

    def trees_of(path: Path) -> dict[str, dict]:
        got = {}
        for d in read_appended(path / "trees.jsonl"):
            d["cost"].pop("seconds")
            assert d["problem_id"] not in got, "a problem written twice"
            got[d["problem_id"]] = d
        return got

    assert trees_of(out) == trees_of(ref)


# --- bad input and failing servers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, field",
    [
        ({"question": "", "answer": "3"}, "question"),
        ({"question": "What?"}, "answer"),
        ({"question": "Q?", "answer": "  "}, "answer"),
    ],
)
def test_bad_problems_name_file_line_and_field(tmp_path, line, field):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"question": "fine?", "answer": "1"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(DataError, match=rf"p.jsonl:2: field '{field}'"):
        load_problems(AnnotateConfig(dataset=str(data)))
    problems, _ = load_problems(
        AnnotateConfig(dataset=str(data), skip_bad=True),
        skip_log=__import__("hiprm.artifacts").artifacts.SkipLog(),
    )
    assert [p.question for p in problems] == ["fine?"]


def test_problem_ids_pick_problems_and_unknown_ids_are_refused(tmp_path, shared_data):
    cfg = AnnotateConfig(dataset="math-train", data_dir=str(shared_data), order="shortest_question", limit=5)
    first, _ = load_problems(cfg)
    pick = [first[3].problem_id, first[1].problem_id]
    chosen, _ = load_problems(AnnotateConfig(**{**cfg.__dict__, "problem_ids": pick, "limit": 0}))
    assert [p.problem_id for p in chosen] == [first[1].problem_id, first[3].problem_id]  # in `order`
    with pytest.raises(ConfigError, match=r"problem_ids: \['nope'\] are not problem ids of .*math"):
        load_problems(AnnotateConfig(**{**cfg.__dict__, "problem_ids": [*pick, "nope"]}))


def test_ungradable_reference_is_refused(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"question": "Q?", "answer": "\\frac{"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:1: field .answer..*cannot be graded \(unbalanced braces\)"):
        load_problems(AnnotateConfig(dataset=str(data)))


@pytest.mark.parametrize(
    "bad", [["children=0"], ["mode=mcts"], ["executor=spark"], ["top_p=0"], ["budget=-1"]]
)
def test_bad_settings_fail_before_work(tmp_path, bad):
    _, data = _files(tmp_path)
    assert main(["annotate", f"dataset={data}", f"out_dir={tmp_path / 'o'}", *bad]) == 2
    assert not (tmp_path / "o" / "trees.jsonl").exists()


def test_server_errors_are_retried_then_named(tmp_path):
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(503, text="overloaded")

    policy = OpenAIPolicy(base_url="http://policy.test/v1", model="m", max_retries=2, backoff=0.0,
                          transport=httpx.MockTransport(handler))  # fmt: skip
    cfg = _cfg(tmp_path, mode="bfs")
    with pytest.raises(StageError, match=r"policy.test/v1.*503.*while growing problems p?") as e:
        run(cfg, policy=policy)
    assert len(calls) >= 3 and "rerun to resume" in str(e.value)
    assert (
        not (tmp_path / "out" / "trees.jsonl").exists() or not (tmp_path / "out" / "trees.jsonl").read_text()
    )


def test_openai_greedy_n_and_stop_reason(caplog):
    seen = []

    def handler(request):
        body = json.loads(request.content)
        seen.append(body)
        if body["temperature"] == 0 and body["n"] > 1:
            return httpx.Response(400, json={"error": "n must be 1 when using greedy sampling"})
        choice = {"index": 0, "text": "x = 1", "finish_reason": "stop", "stop_reason": None}
        return httpx.Response(200, json={"choices": [choice] * body["n"]})

    p = OpenAIPolicy(
        base_url="http://policy.test/v1", model="m", transport=httpx.MockTransport(handler), backoff=0.0
    )
    out = p.generate(["q"], SamplingParams(n=4, temperature=0.0, stop=["\n\n"]))
    assert out == [["x = 1"] * 4] and [b["n"] for b in seen] == [1]
    with caplog.at_level("WARNING"):
        p.generate(["q"], SamplingParams(n=2, temperature=0.7, stop=["\n\n"]))
    assert "dropped the stop string" not in caplog.text  # ended at end-of-sequence: nothing to warn about


def test_child_mean_score_and_repeats_count_in_mcts():
    settings = GrowSettings(mode="mcts", children=3, budget=20, score="child_mean")
    trees = list(grow_trees(_problems(), ScriptedPolicy(TEXTS), STYLES["step"], settings))
    for t in trees:
        assert t.mc_from == "child_mean"
        validate(t)
        kids = t.children()
        for n in t.nodes:
            below = [c for c in kids.get(n.id, []) if c.mc is not None]
            if below:
                want = sum(c.count * c.mc for c in below) / sum(c.count for c in below)
                assert abs(n.mc - want) < 1e-12
    # with only two distinct first steps for 9-2 and 20 rollouts, repeats are counted on them
    p2 = next(t for t in trees if t.problem_id == "p2")
    assert sum(c.count for c in p2.children()[p2.root.id]) > len(p2.children()[p2.root.id])


# --- MC estimates against the truth -------------------------------------------------------------------


def _true_value(question: str, steps: list[str]) -> float:
    """The exact MC-score of the node reached by `steps`: the scripted policy continues a prefix
    with a uniformly chosen text among those that start with it, so the value is the share of
    those texts that end in the reference answer."""
    key = next(k for k in TEXTS if k in question)
    ref = dict(QUESTIONS)[question]
    norm = [" ".join(s.split()) for s in steps]
    matching = [
        t
        for t in TEXTS[key]
        if [" ".join(p.split()) for p in split_rollout(t, STYLES["step"])][: len(norm)] == norm
    ]
    return sum(f"# Answer\n\n{ref}\n" in t for t in matching) / len(matching)


def test_mcts_child_mean_is_unbiased_and_the_leaf_fraction_is_not():
    """Over 200 seeds, the mean MC-score of every inner node seen at least 30 times is within 3
    standard errors of its exact value with child_mean; the leaf fraction is far off at the
    roots, whose leaves come mostly from rollouts started below them."""
    z = {}
    for score in ("child_mean", "leaf_fraction"):
        seen: dict[tuple[str, tuple[str, ...]], list[float]] = {}
        for seed in range(200):
            settings = GrowSettings(mode="mcts", children=5, budget=12, score=score, seed=seed)
            for t in grow_trees(_problems(), ScriptedPolicy(TEXTS), STYLES["step"], settings):
                kids = t.children()
                for n in t.nodes:
                    if n.id in kids:
                        steps = tuple(x.step for x in path_to(t, n.id)[1:])
                        seen.setdefault((t.question, steps), []).append(n.mc)
        z[score] = {}
        for (question, steps), mcs in seen.items():
            if len(mcs) >= 30:
                mean = sum(mcs) / len(mcs)
                sd = math.sqrt(sum((m - mean) ** 2 for m in mcs) / (len(mcs) - 1))
                truth = _true_value(question, list(steps))
                z[score][(question, steps)] = (mean - truth) / max(sd / math.sqrt(len(mcs)), 1e-9)
    assert len(z["child_mean"]) >= 6
    assert all(abs(v) < 3 for v in z["child_mean"].values()), z["child_mean"]
    roots = [v for (q, steps), v in z["leaf_fraction"].items() if not steps]
    assert len(roots) == 3 and all(abs(v) > 5 for v in roots), roots


def test_mcts_child_mean_keeps_sampling_shallow_nodes():
    """With child_mean a node's uncertainty is that of its own sampled next steps, so the root
    keeps getting rollouts as the budget grows (counting every rollout through it, as the leaf
    fraction does, would call it certain after the first round and leave it at 4 samples)."""

    def root_samples(budget: int) -> list[int]:
        settings = GrowSettings(mode="mcts", children=5, budget=budget, score="child_mean")
        trees = sorted(
            grow_trees(_problems(), ScriptedPolicy(TEXTS), STYLES["step"], settings),
            key=lambda t: t.problem_id,
        )
        return [sum(c.count for c in t.children()[t.root.id]) for t in trees]

    small, large = root_samples(12), root_samples(100)
    assert all(b >= 2 * a for a, b in zip(small, large, strict=True)) and min(large) >= 20, (small, large)


def test_child_mean_interval_is_centred_on_the_score_and_the_ci_stop_reads_it():
    pol = ScriptedPolicy(TEXTS)
    settings = GrowSettings(mode="mcts", children=5, budget=300, score="child_mean", ci_width=0.6)
    trees = list(grow_trees(_problems(), pol, STYLES["step"], settings))
    stopped = 0
    for t in trees:
        d = t.to_dict()
        kids = t.children()
        for n, nd in zip(t.nodes, d["nodes"], strict=True):
            if n.id in kids:
                lo, hi = nd["ci"]
                n_next = sum(c.count for c in kids[n.id])
                assert lo <= n.mc <= hi and (lo, hi) == tuple(
                    round(x, 4) for x in wilson(n.mc * n_next, n_next)
                )
        if t.cost["rollouts"] < 300:  # stopped by the interval rule: every inner interval is narrow
            stopped += 1
            assert all(
                nd["ci"][1] - nd["ci"][0] <= 0.6
                for n, nd in zip(t.nodes, d["nodes"], strict=True)
                if n.id in kids
            )
    assert stopped == 3


@pytest.mark.parametrize("mode", ["bfs", "mcts"])
def test_cost_counts_every_generated_token(mode):
    """Stop strings (BFS's next-step header, the end marker) are generated, so they are cost,
    though no step holds them: the cost equals what the policy returned."""
    pol = ScriptedPolicy(TEXTS)
    settings = GrowSettings(mode=mode, children=3, max_depth=4, budget=20 if mode == "mcts" else 0)
    trees = list(grow_trees(_problems(), pol, STYLES["step"], settings))
    assert sum(t.cost["generated_tokens"] for t in trees) == pol.tokens_generated
    assert sum(n.tokens for t in trees for n in t.nodes) < pol.tokens_generated
