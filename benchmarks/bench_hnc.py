"""HNC + HRM example building on a synthetic forest, against a plain recursive implementation.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hnc.py              # 1,000,000 nodes
    .venv/bin/python benchmarks/bench_hnc.py --nodes 100000 --profile        # where the time goes

Both sides start from the same in-memory `Tree`s and end with the example dicts of
`hiprm data build trees=... --kind hrm` (everything on the train split: PRM examples, consecutive
pairs, HNC merged and re-scored nodes, duplicates dropped); reading and writing files are left
out (the write is timed separately). The baseline is what one would write first: a
dict-of-children tree per problem, HNC as the reference code's BFS on a recursive copy, ids and
scores by recursion, examples by recursion with path lists copied per node and duplicates keyed
by the joined text. Both make the same random choices, so their example counts must agree.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import pstats
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hiprm.artifacts import write_jsonl
from hiprm.data.trees import forest_examples
from hiprm.hnc import tree_rng
from hiprm.tree import Tree, TreeNode, node_id, normalize_step, recompute

SEP = "\n\n"
WORDS = "let x be the value so we get then add both sides hence divide by two and check sum".split()


def synthetic_forest(n_nodes: int, per_tree: int = 200, seed: int = 0) -> list[tuple[Tree, str]]:
    """Trees of about `per_tree` nodes, BFS order, branching 1-6, depth <= 6, texts ~60 chars."""
    rng = random.Random(seed)
    forest = []
    made = 0
    k = 0
    while made < n_nodes:
        size = min(per_tree, n_nodes - made)
        t = Tree(f"p{k:06d}", f"Question {k}: what is {rng.randint(1, 99)} + {rng.randint(1, 99)}?", "0")
        root = TreeNode(node_id([]), None, 0, "")
        t.nodes = [root]
        hashers = {0: hashlib.sha256()}
        queue = [0]
        head = 0
        while head < len(queue) and len(t.nodes) < size:
            i = queue[head]
            head += 1
            if t.nodes[i].depth >= 6:
                continue
            for _ in range(rng.choice((1, 2, 3, 4, 4, 5, 6)) if i else 6):
                if len(t.nodes) >= size:
                    break
                step = f"Step {t.nodes[i].depth + 1}: " + " ".join(rng.choices(WORDS, k=10))
                h = hashers[i].copy()
                h.update(normalize_step(step).encode())
                h.update(b"\x1f")
                j = len(t.nodes)
                hashers[j] = h
                t.nodes.append(TreeNode(h.hexdigest()[:16], t.nodes[i].id, t.nodes[i].depth + 1, step))
                queue.append(j)
        has_child = {n.parent for n in t.nodes[1:]}
        for n in t.nodes[1:]:
            if n.id not in has_child:
                n.outcome = "correct" if rng.random() < 0.6 else "wrong"
        t._index = {n.id: i for i, n in enumerate(t.nodes)}
        recompute(t)
        forest.append((t, f"synthetic:{k + 1}"))
        made += len(t.nodes)
        k += 1
    return forest


# --- the baseline: dict-of-children trees, recursion ----------------------------------------


def to_nested(tree: Tree) -> dict:
    nodes = {
        n.id: {"step": n.step, "outcome": n.outcome, "count": n.count, "children": []} for n in tree.nodes
    }
    for n in tree.nodes[1:]:
        nodes[n.parent]["children"].append(nodes[n.id])
    return nodes[tree.root.id]


def copy_tree(node: dict) -> dict:
    return {**node, "children": [copy_tree(c) for c in node["children"]]}


def base_hnc(root: dict, rng: random.Random, min_children: int = 4, p: float = 0.5) -> list[dict]:
    """The reference code's split_node on a copy; returns the merged nodes."""
    merged = []
    level = [(c, root) for c in root["children"]]
    moved: set[int] = set()
    while level:
        nxt = []
        for node, parent in level:
            kids = list(node["children"])
            if id(node) not in moved and len(kids) >= min_children:
                for c in kids:
                    if rng.random() < p:
                        node["children"].remove(c)
                        c["step"] = node["step"] + SEP + c["step"]
                        c["count"] = node["count"] * c["count"]
                        c["merged_from"] = node
                        parent["children"].append(c)
                        moved.add(id(c))
                        merged.append(c)
                        break
            nxt += [(c, node) for c in kids]
        level = nxt
    return merged


def base_score(node: dict) -> tuple[int, int]:
    if not node["children"]:
        leaves, correct = (1, int(node["outcome"] == "correct")) if node["outcome"] else (0, 0)
    else:
        leaves = correct = 0
        for c in node["children"]:
            lv, cr = base_score(c)
            leaves += c["count"] * lv
            correct += c["count"] * cr
    node["mc"] = correct / leaves if leaves else None
    return leaves, correct


def base_ids(node: dict, path: list[str]) -> None:
    node["id"] = node_id(path)
    for c in node["children"]:
        base_ids(c, [*path, c["step"]])


def base_examples(tree: Tree, source: str, seed: int) -> list[dict]:
    orig = to_nested(tree)
    base_score(orig)
    base_ids(orig, [])
    out: list[dict] = []
    seen: set = set()

    def emit(prev, step, label, kind, nid):
        key = (SEP.join(prev), step, label)
        if key not in seen:
            seen.add(key)
            out.append({"problem_id": tree.problem_id, "question": tree.question, "previous_steps": list(prev),
                        "current_step": step, "label": label, "kind": kind, "ratings": [], "source": f"{source}#{nid}"})  # fmt: skip

    def prm(node, path):
        for c in node["children"]:
            if c["mc"] is not None:
                emit(path, c["step"], c["mc"], "prm", c["id"])
            prm(c, [*path, c["step"]])

    def pairs(node, path):
        for c in node["children"]:
            for g in c["children"]:
                if g["mc"] is not None:
                    emit(path, c["step"] + SEP + g["step"], g["mc"], "hrm_pair", g["id"])
            pairs(c, [*path, c["step"]])

    prm(orig, [])
    pairs(orig, [])
    new = copy_tree(orig)
    old_mc = {}

    def remember(a, b):  # the copy's nodes -> their score before HNC
        old_mc[id(b)] = a["mc"]
        for x, y in zip(a["children"], b["children"], strict=True):
            remember(x, y)

    remember(orig, new)
    merged = {id(m) for m in base_hnc(new, tree_rng(seed, tree.problem_id))}
    base_score(new)
    base_ids(new, [])

    def hnc_examples(node, path):
        for c in node["children"]:
            if c["mc"] is not None and (id(c) in merged or c["mc"] != old_mc[id(c)]):
                emit(path, c["step"], c["mc"], "hrm_pair" if id(c) in merged else "prm", c["id"])
            hnc_examples(c, [*path, c["step"]])

    hnc_examples(new, [])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--per-tree", type=int, default=200)
    ap.add_argument("--profile", action="store_true", help="cProfile the hiprm side (no baseline)")
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args(argv)
    sys.setrecursionlimit(10_000)
    t0 = time.perf_counter()
    forest = synthetic_forest(args.nodes, args.per_tree)
    print(f"forest: {len(forest)} trees, {sum(len(t.nodes) for t, _ in forest)} nodes "
          f"(made in {time.perf_counter() - t0:.1f}s)")  # fmt: skip
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        forest_examples(forest, set(), "hrm", True)
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(12)
        print(s.getvalue())
        return 0
    t0 = time.perf_counter()
    train, _, counts = forest_examples(forest, set(), "hrm", True)
    fast = time.perf_counter() - t0
    c = counts["train"]
    print(f"hiprm:    {fast:6.2f}s  {len(train)} examples  (prm {c['prm']}, hrm_pair {c['hrm_pair']}, "
          f"HNC moves {c['hnc_moves']}, re-scored {c['hnc_rescored']}, duplicates {c['duplicates']})")  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        write_jsonl(Path(d) / "train.jsonl", train)
        print(f"          {time.perf_counter() - t0:6.2f}s  writing them (orjson, not in the ratio)")
    if args.no_baseline:
        return 0
    # Same conditions as hiprm, which pauses the cyclic garbage collector while it builds.
    gc.disable()
    t0 = time.perf_counter()
    base: list[dict] = []
    for tree, src in forest:
        base += base_examples(tree, src, 0)
    slow = time.perf_counter() - t0
    gc.enable()
    kinds = Counter(r["kind"] for r in base)
    print(f"baseline: {slow:6.2f}s  {len(base)} examples  (prm {kinds['prm']}, hrm_pair {kinds['hrm_pair']})")
    print(f"ratio baseline / hiprm: {slow / fast:.2f}x")
    if len(base) != len(train):
        print("MISMATCH: the two implementations built different numbers of examples")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
