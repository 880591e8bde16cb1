"""HNC (hiprm.hnc): the paper's Fig. 3 by hand, invariants on random trees, seeds, the
two score rules, OpenR's given scores, sibling collisions, the runner, and a statistical check of
the paper's variance claim."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter

import numpy as np
import pytest

from hiprm.annotate.hnc_run import HNCConfig, run
from hiprm.config import ConfigError
from hiprm.hnc import hnc
from hiprm.tree import Tree, node_id, path_to, read_trees, recompute, validate

OPENR = "/work/shared/data/samples/openr_samples_math-aps-tree.jsonl"
SEP = "\n\n"


def test_normalize_step_split_matches_regex_on_every_code_point():
    # tree.normalize_step uses str.split, which must split exactly where \s matches.
    space = re.compile(r"\s")
    bad = [hex(c) for c in range(0x110000) if bool(space.match(chr(c))) != chr(c).isspace()]
    assert bad == []


def fig3_tree() -> Tree:
    """root -> N0 -> N1 (count 2) -> {N2 -> {x correct, y wrong}, a correct, b wrong, c wrong}."""
    t = Tree.new("fig3", "q", "2")
    n0 = t.add(t.root.id, "N0")
    n1 = t.add(n0.id, "N1")
    t.add(n0.id, "N1")  # a second copy of N1: count 2
    n2 = t.add(n1.id, "N2")
    t.add(n2.id, "x", outcome="correct")
    t.add(n2.id, "y", outcome="wrong")
    for s, o in [("a", "correct"), ("b", "wrong"), ("c", "wrong")]:
        t.add(n1.id, s, outcome=o)
    recompute(t)
    return t


def test_fig3_before_and_after():
    t = fig3_tree()
    before = [(n.step, n.count, n.leaves, n.correct) for n in t.nodes]
    r = hnc(t, seed=0, p=1.0)  # p=1: N1's first child, N2, moves
    new = r.tree
    validate(new)
    assert [(n.step, n.count, n.leaves, n.correct) for n in t.nodes] == before  # input untouched
    by_step = {n.step: n for n in new.nodes}
    m = by_step["N1\n\nN2"]
    assert m.parent == by_step["N0"].id and m.depth == 2
    assert m.id == node_id(["N0", "N1\n\nN2"]) and m.merged_from == [t.nodes[2].id, t.nodes[3].id]
    assert m.count == 2 * 1 and (m.leaves, m.correct, m.mc) == (2, 1, 0.5)
    assert by_step["x"].parent == m.id and by_step["x"].id == node_id(["N0", "N1\n\nN2", "x"])
    assert by_step["x"].depth == 3
    n1 = by_step["N1"]
    assert (n1.leaves, n1.correct) == (3, 1) and math.isclose(n1.mc, 1 / 3)
    assert sorted(c.step for c in new.nodes if c.parent == n1.id) == ["a", "b", "c"]
    # N0 keeps its leaves: N1 (x2) now holds 3 leaves, the merged node (x2) holds 2.
    assert (by_step["N0"].leaves, by_step["N0"].correct) == (2 * 3 + 2 * 2, 2 * 1 + 2 * 1)
    assert (new.root.leaves, new.root.correct) == (t.root.leaves, t.root.correct)
    assert r.merged == [3] and r.changed == [2]


def random_tree(rng: random.Random, pid: str) -> Tree:
    t = Tree.new(pid, f"question {pid}", "1")
    frontier = [t.root.id]
    while frontier and len(t.nodes) < 120:
        nid = frontier.pop(rng.randrange(len(frontier)))
        depth = t.node(nid).depth
        if depth >= 5 or (depth >= 2 and rng.random() < 0.3):
            continue
        for _ in range(rng.choice([1, 2, 4, 5, 6]) if depth else 3):
            step = rng.choice(["a", "b", "c", "d", "e", "f", "g", "h"]) + " " * rng.randint(
                0, 1
            )  # duplicates
            child = t.add(nid, step)
            if child.count == 1:
                frontier.append(child.id)
    kids = {n.parent for n in t.nodes[1:]}
    for n in t.nodes[1:]:
        if n.id not in kids:
            n.outcome = rng.choice(["correct", "wrong", "truncated"])
    recompute(t, truncated_counts=rng.random() < 0.5)  # False: truncated leaves stored with leaves 0
    return t


def leaf_weights(t: Tree) -> list[tuple[int, str | None, int]]:
    """(index, outcome, product of counts on the path) for every leaf."""
    kids = {n.parent for n in t.nodes[1:]}
    out = []
    for i, n in enumerate(t.nodes):
        if n.id not in kids and i:
            out.append((i, n.outcome, math.prod(x.count for x in path_to(t, n.id)[1:])))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_invariants_on_random_trees(seed):
    rng = random.Random(seed)
    t = random_tree(rng, f"p{seed}")
    validate(t)
    r = hnc(t, seed=seed, min_children=3, p=0.7, rule="reference" if seed % 2 else "node")
    new = r.tree
    validate(new)
    assert r.merged, "the random trees are built so that something moves"
    # The whole tree's weighted leaf multiset is unchanged, leaf by leaf.
    assert leaf_weights(new) == leaf_weights(t)
    assert (new.root.leaves, new.root.correct) == (t.root.leaves, t.root.correct)
    merged = set(r.merged)
    moved_below = set()
    for i, n in enumerate(new.nodes):
        par = new._index[n.parent] if n.parent else None
        if par is not None and (par in merged or par in moved_below):
            moved_below.add(i)
        # No node lost: each original node is still there, or replaced by exactly one merged node
        # (with its subtree, under new ids).
        if i in merged:
            n1, n2 = (t._index[x] for x in n.merged_from)
            assert n2 == i
            assert new.nodes[n1].id == t.nodes[n1].id or n1 in moved_below
            assert (
                n.step == t.nodes[n1].step + SEP + t.nodes[n2].step
                and n.count == t.nodes[n1].count * t.nodes[n2].count
            )
            assert n.mc == t.nodes[i].mc  # the merged node keeps its subtree's score
        elif i not in moved_below:
            assert n.id == t.nodes[i].id
        assert n.step == t.nodes[i].step or i in merged
        # Rendered paths are unchanged: a merged step renders as the two steps it joins.
        assert SEP.join(x.step for x in path_to(new, n.id)[1:]) == SEP.join(
            x.step for x in path_to(t, t.nodes[i].id)[1:]
        )
    assert len({n.id for n in new.nodes}) == len(new.nodes) == len(t.nodes)
    # Each N1 gave exactly one child; scores changed only at N1s (leaf_fraction).
    n1s = Counter(t._index[new.nodes[j].merged_from[0]] for j in merged)
    assert set(n1s.values()) == {1}
    assert set(r.changed) <= set(n1s)


def test_seed_reproducible_and_independent_of_other_trees():
    trees = [random_tree(random.Random(s), f"p{s}") for s in range(5)]
    a = [json.dumps(hnc(t, seed=3).tree.to_dict()) for t in trees]
    b = [json.dumps(hnc(t, seed=3).tree.to_dict()) for t in reversed(trees)][::-1]
    assert a == b
    c = [json.dumps(hnc(t, seed=4).tree.to_dict()) for t in trees]
    assert a != c


def test_child_mean_score_rule():
    t = fig3_tree()
    r = hnc(t, seed=0, p=1.0, score="child_mean")
    assert r.tree.mc_from == "child_mean"
    validate(r.tree)
    Tree.from_dict(json.loads(json.dumps(r.tree.to_dict())))  # reads back (and validates)
    by = {n.step: n for n in r.tree.nodes}
    assert math.isclose(by["N1"].mc, 1 / 3) and by["N1\n\nN2"].mc == 0.5
    # N0 averages N1 (x2) and the merged node (x2): (1/3 + 1/2) / 2, not leaf_fraction's 4/10.
    assert math.isclose(by["N0"].mc, (1 / 3 + 1 / 2) / 2)


def test_given_scores_kept_except_n1():
    for t in read_trees(OPENR):
        r = hnc(t, seed=0)
        validate(r.tree)
        assert r.tree.mc_from == "given"
        n1s = {t._index[r.tree.nodes[j].merged_from[0]] for j in r.merged}
        for i, (a, b) in enumerate(zip(t.nodes, r.tree.nodes, strict=True)):
            if i not in n1s:
                assert a.mc == b.mc
        assert set(r.changed) <= n1s


def test_sibling_collision_is_skipped():
    t = Tree.new("col", "q", "1")
    n0 = t.add(t.root.id, "N0")
    n1 = t.add(n0.id, "N1")
    t.add(n0.id, "N1 N2", outcome="correct")  # already N0's child: the merged text, normalised
    for s in ["N2", "a", "b", "c"]:
        t.add(n1.id, s, outcome="wrong")
    recompute(t)
    r = hnc(t, seed=0, p=1.0)
    validate(r.tree)
    assert r.skipped == 1
    assert [r.tree.nodes[j].step for j in r.merged] == ["N1\n\na"]  # the next child moved instead


def test_runner_writes_trees_and_meta_beside_them(tmp_path, capsys):
    out = tmp_path / "hnc.jsonl"
    assert run(HNCConfig(trees=OPENR, out=str(out), seed=0)) == out
    trees = list(read_trees(out))
    assert len(trees) == 3 and sum(n.merged_from is not None for t in trees for n in t.nodes) > 0
    meta = json.loads((tmp_path / "hnc.jsonl.meta" / "meta.json").read_text())
    assert meta["counts"]["merged"] == sum(n.merged_from is not None for t in trees for n in t.nodes)
    assert "merged" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="training trees only"):
        run(HNCConfig(trees=OPENR, out=str(tmp_path / "v.jsonl"), split="val"))


def test_variance_grows_from_n_to_n_minus_1():
    """The paper: with N i.i.d. child scores of variance s^2, the parent's child_mean score keeps
    its expectation after HNC moves one child away, and its variance grows from s^2/N to
    s^2/(N-1). Each tree: root -> N1 -> N children, each with 2 leaves correct w.p. 0.3."""
    n_children, trees, q = 4, 6000, 0.3
    rng = np.random.default_rng(0)
    outcomes = rng.random((trees, n_children, 2)) < q
    before, after = np.empty(trees), np.empty(trees)
    for k in range(trees):
        t = Tree.new(f"v{k}", "q", "1")
        n1 = t.add(t.root.id, "N1")
        for c in range(n_children):
            child = t.add(n1.id, f"c{c}")
            for leaf in range(2):
                t.add(child.id, f"l{leaf}", outcome="correct" if outcomes[k, c, leaf] else "wrong")
        t.mc_from = "child_mean"
        recompute(t)
        before[k] = t.nodes[1].mc
        r = hnc(t, seed=k, p=1.0, score="child_mean")
        assert len(r.merged) == 1
        after[k] = r.tree.nodes[1].mc
    z = 4.0
    diff = after - before
    assert abs(diff.mean()) <= z * diff.std(ddof=1) / math.sqrt(trees)

    def var_and_se(x: np.ndarray) -> tuple[float, float]:
        v = x.var(ddof=1)
        m4 = ((x - x.mean()) ** 4).mean()
        return v, math.sqrt((m4 - v * v) / len(x))

    (vb, seb), (va, sea) = var_and_se(before), var_and_se(after)
    ratio = va / vb
    # Delta method, treating the two variances as independent: they are positively correlated
    # (same trees), which would only narrow the interval, so this bound is conservative.
    tol = z * ratio * math.sqrt((seb / vb) ** 2 + (sea / va) ** 2)
    want = n_children / (n_children - 1)
    assert abs(ratio - want) <= tol, (ratio, want, tol)  # seed 0: ratio 1.367, tol 0.135
    # ...and it is tight enough to reject the wrong rules: no change, or two children removed.
    assert abs(1.0 - want) > 2 * tol and abs(n_children / (n_children - 2) - want) > 2 * tol
    # Each child's score has variance q(1-q)/2; before HNC the parent's is that over N.
    assert abs(vb - q * (1 - q) / 2 / n_children) <= z * seb
