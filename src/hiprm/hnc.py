"""Hierarchical node compression (HNC, the paper's Fig. 3): merge two consecutive steps of a tree.

Input: a `Tree` (hiprm.tree); output: a new `Tree` (the input is not modified) plus
which nodes were merged and which changed score. Pure and seeded: the random choices come from a
`random.Random` seeded by `(seed, problem_id)`, so a tree's result does not depend on which other
trees are processed or in what order.

One move: pick a node N2 whose parent N1 is not the root (N0 = N1's parent). A new node with step
`N1.step + separator + N2.step` takes N2's place, with N2's whole subtree, as a child of N0; N2 is
detached from N1. The new node records `merged_from = [N1.id, N2.id]`; it and its moved subtree
get new ids (ids hash the path's step texts, `tree.node_id`). Its `count` is
`N1.count * N2.count`: N2's leaves entered the root's total through both counts, so the whole
tree's weighted leaf multiset is unchanged. Only N1 loses leaves; N0 and everything above keep
theirs (N2's subtree is still below N0).

    before                      after
    N0 ─ N1 ─┬─ a               N0 ─┬─ N1 ─┬─ a
             ├─ b                   │      ├─ b
             ├─ c                   │      └─ c
             └─ N2 ─ x              └─ "N1\\n\\nN2" ─ x

Sampling (`rule="reference"`, the reference code's `split_node`): nodes are visited parents
first; a non-root node with at least `min_children` children that was not itself moved offers
its children in order, each moved with probability `p`, and stops after the first move (so at
most one child moves; the chance that one does is `1 - (1 - p)^k` for k children).
`rule="node"`: with probability `p` the node gives up one child chosen uniformly.
A move whose merged step equals (after white-space normalisation) the step of another child of
N0 would give two siblings one id; it is skipped (counted in `HNCResult.skipped`) rather than
merged, because merging would mix two subtrees that the annotation grew independently.

Scores (`score=`), two definitions of a parent's MC-score:

- `leaf_fraction`: correct leaves / leaves of the subtree, each child weighing
  `count * leaves(child)` (the reference code; = `tree.recompute` with `mc_from="leaves"`).
- `child_mean`: the mean of the children's scores, each child weighing `count / N` where N is
  the sum of the counts (the paper's text; `tree.child_mean_scores`, `mc_from="child_mean"`).

They agree on leaves and on every node whose children's subtrees hold equally many counted
leaves. They differ (1) when subtree sizes differ: a child with 9 leaves weighs 9 times a child
with 1 leaf under leaf_fraction, the same under child_mean; (2) with duplicates (count > 1) below
the children: under leaf_fraction a grandchild with count 3 triples its share of its parent's
weight in the grandparent, under child_mean it only triples its share of its parent's score;
(3) when truncated leaves are dropped (`leaves` 0): under leaf_fraction the child loses their
weight, under child_mean it keeps a full share as long as one leaf counts. After HNC under
leaf_fraction only N1's score changes; under child_mean N1's, N0's (one more child) and their
ancestors' do.

Trees with `mc_from="given"` (OpenR) keep every given score except N1's: a score estimates the
value of the state its path reaches, and HNC changes no state except that N1 loses N2's samples;
N1's new score is the mean of its remaining children's given scores, weighted as the rule says.

A tiny example (root -> n1 -> {n2, a, b, c}; with p=1 the first child, n2, moves up):

>>> from hiprm.tree import Tree, recompute
>>> t = Tree.new("p", "q", "2")
>>> n1 = t.add(t.root.id, "n1")
>>> _ = [t.add(n1.id, s, outcome=o) for s, o in [("n2", "correct"), ("a", "correct"), ("b", "wrong"), ("c", "wrong")]]
>>> recompute(t)
>>> r = hnc(t, seed=0, p=1.0)
>>> [(n.depth, n.step, n.leaves, round(n.mc, 3)) for n in r.tree.nodes]
[(0, '', 4, 0.5), (1, 'n1', 3, 0.333), (1, 'n1\\n\\nn2', 1, 1.0), (2, 'a', 1, 1.0), (2, 'b', 1, 0.0), (2, 'c', 1, 0.0)]
>>> r.tree.nodes[2].merged_from == [n1.id, t.nodes[2].id], r.merged, r.changed
(True, [2], [1])
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Literal

from hiprm.tree import Tree, TreeNode, _truncated_counts, child_mean_scores, normalize_step

Score = Literal["leaf_fraction", "child_mean"]
Rule = Literal["reference", "node"]
SCORES = ("leaf_fraction", "child_mean")
RULES = ("reference", "node")


@dataclass
class HNCResult:
    """`tree`: the compressed tree; its node i comes from the input's node i (a merged node sits
    where its N2 was). `merged`: indices of merged nodes. `changed`: indices whose `mc` differs
    from the input's. `skipped`: moves left out because of a sibling collision."""

    tree: Tree
    merged: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    skipped: int = 0


def tree_rng(seed: int, problem_id: str) -> random.Random:
    """The per-tree generator: seeded by a string, which Python hashes with sha512 (stable
    across processes, unlike `hash`).

    >>> tree_rng(0, "p").random() == tree_rng(0, "p").random() != tree_rng(1, "p").random()
    True
    """
    return random.Random(f"hnc:{seed}:{problem_id}")


def parent_indices(tree: Tree) -> list[int]:
    """parent index per node (-1 for the root)."""
    idx = tree._index
    return [-1] + [idx[n.parent] for n in tree.nodes[1:]]  # type: ignore[index]


def plan_moves(
    tree: Tree,
    rng: random.Random,
    min_children: int = 4,
    p: float = 0.5,
    rule: Rule = "reference",
    separator: str = "\n\n",
    pidx: list[int] | None = None,
) -> tuple[list[tuple[int, int]], int]:
    """The moves `(N1 index, N2 index)` the sampling rule picks, and how many were skipped.

    See the module docstring for the rule. Decisions use the input tree's structure: a node's
    children are all there when it is visited (a move only adds children to N0, visited earlier).
    """  # fmt: skip
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    nodes = tree.nodes
    n = len(nodes)
    pidx = parent_indices(tree) if pidx is None else pidx
    n_kids = [0] * n
    for i in range(1, n):
        n_kids[pidx[i]] += 1
    # Candidates N1: not the root, enough children. Their parents are needed for the collision check.
    cands = [i for i in range(1, n) if n_kids[i] >= min_children]
    if not cands:
        return [], 0
    need = {i: [] for i in cands}  # type: dict[int, list[int]]
    for i in cands:
        need.setdefault(pidx[i], [])
    for i in range(1, n):
        lst = need.get(pidx[i])
        if lst is not None:
            lst.append(i)
    moved: set[int] = set()
    attached: dict[int, list[str]] = {}  # N0 -> normalized steps of the merged nodes it received
    moves: list[tuple[int, int]] = []
    skipped = 0

    def collides(n1: int, n2: int) -> bool:
        n0 = pidx[n1]
        merged = normalize_step(nodes[n1].step + separator + nodes[n2].step)
        for s in need[n0]:
            # Normalising never lengthens a step, so shorter siblings cannot match.
            if (
                s not in moved
                and len(nodes[s].step) >= len(merged)
                and normalize_step(nodes[s].step) == merged
            ):
                return True
        if merged in attached.get(n0, ()):
            return True
        attached.setdefault(n0, []).append(merged)
        return False

    for x in cands:
        if x in moved:
            continue
        kids = need[x]
        if rule == "reference":
            for c in kids:
                if rng.random() < p:
                    if collides(x, c):
                        skipped += 1
                        continue
                    moves.append((x, c))
                    moved.add(c)
                    break
        elif rng.random() < p:
            c = kids[rng.randrange(len(kids))]
            if collides(x, c):
                skipped += 1
            else:
                moves.append((x, c))
                moved.add(c)
    return moves, skipped


def _path_hasher(nodes: list[TreeNode], pidx: list[int], i: int) -> hashlib._Hash:
    """sha256 state after the step texts on the path to node i (as `tree.node_id` hashes them)."""
    steps = []
    while i > 0:
        steps.append(nodes[i].step)
        i = pidx[i]
    h = hashlib.sha256()
    for s in reversed(steps):
        h.update(normalize_step(s).encode("utf-8"))
        h.update(b"\x1f")
    return h


def apply_moves(
    tree: Tree,
    moves: list[tuple[int, int]],
    separator: str = "\n\n",
    score: Score = "leaf_fraction",
    pidx: list[int] | None = None,
    skipped: int = 0,
) -> HNCResult:
    """Build the compressed tree: new parents, depths, steps, ids, counts, leaves and scores.

    Node order is kept (N0 comes before N1 before N2, so parents still come first), so node i
    of the output is node i of the input. Leaves/correct change only at each N1 (minus `count(N2) * leaves(N2)`).
    """  # fmt: skip
    if score not in SCORES:
        raise ValueError(f"score must be one of {list(SCORES)}, got {score!r}")
    nodes = tree.nodes
    n = len(nodes)
    pidx = parent_indices(tree) if pidx is None else pidx
    new_parent = list(pidx)
    steps = [nd.step for nd in nodes]
    counts = [nd.count for nd in nodes]
    leaves = [nd.leaves for nd in nodes]
    correct = [nd.correct for nd in nodes]
    moved_from: dict[int, int] = {}
    for n1, n2 in moves:
        new_parent[n2] = pidx[n1]
        steps[n2] = nodes[n1].step + separator + nodes[n2].step
        counts[n2] = nodes[n1].count * nodes[n2].count
        leaves[n1] -= nodes[n2].count * nodes[n2].leaves
        correct[n1] -= nodes[n2].count * nodes[n2].correct
        moved_from[n2] = n1

    # New ids for the moved subtrees, top-down with copied hash states (each node hashed once).
    ids = [nd.id for nd in nodes]
    depth = [0] * n
    dirty = bytearray(n)
    hashers: dict[int, hashlib._Hash] = {}
    for i in range(1, n):
        par = new_parent[i]
        depth[i] = depth[par] + 1
        if not (dirty[par] or i in moved_from):
            continue
        dirty[i] = 1
        base = hashers.get(par)
        if base is None:
            base = hashers[par] = _path_hasher(nodes, pidx, par)  # a clean node: its path is unchanged
        h = base.copy()
        h.update(normalize_step(steps[i]).encode("utf-8"))
        h.update(b"\x1f")
        hashers[i] = h
        ids[i] = h.hexdigest()[:16]

    mc_from = tree.mc_from
    if mc_from == "given":
        mcs = [nd.mc for nd in nodes]
        kids: dict[int, list[int]] = {n1: [] for n1, _ in moves}
        for i in range(1, n):
            if new_parent[i] in kids:
                kids[new_parent[i]].append(i)
        for n1, lst in kids.items():
            ws = [
                (counts[c] * (leaves[c] if score == "leaf_fraction" else 1), mcs[c])
                for c in lst
                if mcs[c] is not None
            ]
            tot = sum(w for w, _ in ws)
            mcs[n1] = sum(w * m for w, m in ws) / tot if tot else None  # type: ignore[operator]
    elif score == "leaf_fraction":
        mc_from = "leaves"
        mcs = [c / lv if lv else None for c, lv in zip(correct, leaves, strict=True)]
    else:
        mc_from = "child_mean"
        mcs = []  # filled below, once the new tree exists

    new_nodes = []
    for i, nd in enumerate(nodes):
        par = new_parent[i]
        mf = (
            [nodes[moved_from[i]].id, nd.id]
            if i in moved_from
            else (list(nd.merged_from) if nd.merged_from else None)
        )
        new_nodes.append(TreeNode(ids[i], None if par < 0 else ids[par], depth[i], steps[i], nd.outcome, nd.answer,
                                  counts[i], leaves[i], correct[i], mcs[i] if mcs else None, nd.tokens, mf))  # fmt: skip
    out = Tree(
        tree.problem_id, tree.question, tree.answer, tree.source, cost=dict(tree.cost), mc_from=mc_from
    )
    out.nodes = new_nodes
    out._index = {nid: i for i, nid in enumerate(ids)}
    if score == "child_mean" and tree.mc_from != "given":
        means = child_mean_scores(out, _truncated_counts(out))
        for nd, m in zip(new_nodes, means, strict=True):
            nd.mc = m
    changed = [i for i, (a, b) in enumerate(zip(new_nodes, nodes, strict=True)) if not _same(a.mc, b.mc)]
    merged = sorted(moved_from)
    return HNCResult(out, merged, changed, skipped)


def _same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and abs(a - b) <= 1e-12)


def hnc(
    tree: Tree,
    seed: int = 0,
    min_children: int = 4,
    p: float = 0.5,
    separator: str = "\n\n",
    score: Score = "leaf_fraction",
    rule: Rule = "reference",
) -> HNCResult:
    """HNC on one tree: `plan_moves` with the tree's own generator, then `apply_moves`."""  # fmt: skip
    pidx = parent_indices(tree)
    moves, skipped = plan_moves(tree, tree_rng(seed, tree.problem_id), min_children, p, rule, separator, pidx)
    return apply_moves(tree, moves, separator, score, pidx, skipped)
