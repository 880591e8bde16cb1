"""Trees -> reward-model examples: what `hiprm data build trees=FILE --kind prm|hrm` writes.

    hiprm data build --kind hrm trees=runs/annotate/x/trees.jsonl out_dir=runs/data/tree_hrm
    hiprm data build --kind prm trees=../shared/data/samples/openr_samples_math-aps-tree.jsonl

Input: a tree file in either format (`hiprm.tree.read_trees`: hiprm trees or OpenR's
MCTS trees); output: example dicts with the fields of `RMExample` (written straight to JSONL:
building 1M RMExample objects would cost more than the rest of the work).

- `prm`: one example per non-root node with an MC-score, conditioned on the steps of its path:
  previous_steps = the steps above it, current_step = its step, label = its `mc` (`soft`), or
  `1.0 if mc >= hard_threshold else 0.0` (`hard`). kind "prm", source "file:line#node_id".
- `hrm`: the PRM examples plus, on the training split only, what HNC (`hiprm.hnc`) adds (the
  paper's rule, `pairs="hnc"`: "about 30% more samples", Sec. 4.2); with `pairs="all"` also one
  `hrm_pair` per node at depth >= 2 in every split (its parent's step + separator + its step,
  conditioned on the steps above the parent, labelled with the node's `mc`). HNC adds: each merged
  node in its new context (kind "hrm_pair") and each node whose score HNC changed, with the new
  score (kind "prm"). A moved node's descendants keep their score and, rendered, their context
  (a merged step renders like the two steps it joins), so they add nothing and are left out.
  The validation split gets the PRM and pair examples (as the PRM800K build does) but never HNC:
  HNC is augmentation, and validating on it would measure the augmentation.

HNC scores follow the tree's own rule: `child_mean` for `mc_from="child_mean"` trees, else
`leaf_fraction` (for OpenR's given scores, the re-estimated N1 weighs children by their leaves).

Duplicates: within a problem an example is dropped when one with the same question, the same
rendered context, the same current step and the same label came first (order: PRM, pairs, HNC).
"Rendered context" treats a merged step as the two steps it joins, so a merged node's example,
which is the pair example of its N2 whenever its score is unchanged, is dropped. The same input
with a different label is kept (as the reference code's set of (input, label) does): HNC's
re-scored N1 is a second, smaller-sample estimate of the same state.

`balance=true` (the reference code's `sort_node`): per tree and depth, nodes are grouped by exact
score; if a depth has several scores, each group keeps a random `max(smallest group, 10% of the
group)` nodes; if it has one score, 5 random nodes are kept. PRM and pair examples come from the
kept nodes; the HNC examples are balanced the same way among themselves.
"""

from __future__ import annotations

import gc
import random
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from hiprm.artifacts import DataError, SkipLog
from hiprm.hnc import hnc, parent_indices
from hiprm.tree import Tree, read_tree_lines

LabelRule = Literal["soft", "hard"]
_NO_RATINGS: list[int | None] = []  # shared by every example dict: trees carry no human ratings


def read_forest(path: str | Path, skip_log: SkipLog | None = None) -> list[tuple[Tree, str]]:
    """Every tree of a file (`read_trees`, the one reader) with where it came from."""
    return [(tree, f"{path}:{line}") for line, tree in read_tree_lines(path, skip_log)]


def node_label(mc: float, label_rule: LabelRule = "soft", hard_threshold: float = 0.5) -> float:
    """An MC-score as a label.

    >>> node_label(0.75), node_label(0.75, "hard"), node_label(0.5, "hard"), node_label(0.4, "hard")
    (0.75, 1.0, 1.0, 0.0)
    """
    if label_rule == "soft":
        return float(mc)
    if label_rule == "hard":
        return 1.0 if mc >= hard_threshold else 0.0
    raise ValueError(f"label_rule must be soft or hard, got {label_rule!r}")


def balanced(items: list[tuple[int, float, int]], rng: random.Random) -> list[int]:
    """The reference code's per-depth score balancing; items are (depth, score, index).

    >>> items = [(1, 1.0, i) for i in range(20)] + [(1, 0.0, 20), (1, 0.0, 21)] + [(2, 0.5, 30 + i) for i in range(9)]
    >>> kept = balanced(items, random.Random(0))
    >>> sum(i < 20 for i in kept), sum(20 <= i < 30 for i in kept), sum(i >= 30 for i in kept)
    (2, 2, 5)
    """
    groups: dict[int, dict[float, list[int]]] = {}
    for depth, score, i in items:
        groups.setdefault(depth, {}).setdefault(score, []).append(i)
    kept: list[int] = []
    for depth in sorted(groups):
        by_score = groups[depth]
        if len(by_score) > 1:
            smallest = min(len(v) for v in by_score.values())
            for v in by_score.values():
                kept += rng.sample(v, max(smallest, int(len(v) * 0.1)))
        else:
            (v,) = by_score.values()
            kept += rng.sample(v, min(5, len(v)))
    return sorted(kept)


def tree_examples(
    tree: Tree,
    source: str,
    kind: Literal["prm", "hrm"],
    split: Literal["train", "val"],
    with_hnc: bool = True,
    *,
    label_rule: LabelRule = "soft",
    hard_threshold: float = 0.5,
    separator: str = "\n\n",
    balance: bool = False,
    seed: int = 0,
    hnc_min_children: int = 4,
    hnc_p: float = 0.5,
    hnc_rule: Literal["reference", "node"] = "reference",
    pairs: Literal["hnc", "all"] = "hnc",
    seen: set[tuple[int, str, float]] | None = None,
    counts: Counter | None = None,
) -> list[dict[str, Any]]:
    """The example dicts of one tree (see the module docstring); `seen` carries the duplicate
    keys of the problem across its trees, `counts` gathers prm / hrm_pair / hnc_* / duplicates.

    >>> t = Tree.new("p", "q", "2")
    >>> a = t.add(t.root.id, "a")
    >>> _ = t.add(a.id, "b", outcome="correct"); _ = t.add(a.id, "c", outcome="wrong")
    >>> from hiprm.tree import recompute; recompute(t)
    >>> [(e["previous_steps"], e["current_step"], e["label"], e["kind"])
    ...  for e in tree_examples(t, "f:1", "hrm", "val", False, pairs="all")]
    [([], 'a', 0.5, 'prm'), (['a'], 'b', 1.0, 'prm'), (['a'], 'c', 0.0, 'prm'), ([], 'a\\n\\nb', 1.0, 'hrm_pair'), ([], 'a\\n\\nc', 0.0, 'hrm_pair')]
    """  # fmt: skip
    if with_hnc and kind == "hrm" and split != "train":
        raise ValueError(
            f"{source}: HNC augments the training split only, not {split!r} (problem {tree.problem_id})"
        )
    seen = set() if seen is None else seen
    counts = Counter() if counts is None else counts
    nodes = tree.nodes
    n = len(nodes)
    pidx = parent_indices(tree)
    pid, question = tree.problem_id, tree.question
    # ctx[i]: a key of the rendered path to node i (a chain of Python hashes over its steps);
    # path[i]: the steps to node i, built for parents only and shared by their children's examples.
    ctx = [0] * n
    has_child = bytearray(n)
    for i in range(1, n):
        has_child[pidx[i]] = 1
    def label_of(i: int, mc: float) -> float:
        if not 0.0 <= mc <= 1.0:
            raise DataError(source, f"mc {mc} is not in [0, 1]", None, f"nodes[{i}] (id {nodes[i].id}).mc")
        return mc if label_rule == "soft" else node_label(mc, label_rule, hard_threshold)

    def context_label(i: int, mc: float | None) -> float | None:
        return None if mc is None else label_of(i, mc)  # an unscored step on a path stays unknown

    # path[i] / plab[i]: the steps to node i and their labels (by the same rule as the examples'),
    # for parents only, shared by their children's examples.
    path: list[list[str] | None] = [None] * n
    plab: list[list[float | None] | None] = [None] * n
    path[0], plab[0] = [], []
    for i in range(1, n):
        par = pidx[i]
        ctx[i] = hash((ctx[par], nodes[i].step))
        if has_child[i]:
            path[i] = [*path[par], nodes[i].step]  # type: ignore[misc]
            plab[i] = [*plab[par], context_label(i, nodes[i].mc)]  # type: ignore[misc]

    scored = [i for i in range(1, n) if nodes[i].mc is not None]
    if balance:
        brng = random.Random(f"balance:{seed}:{pid}")
        scored = balanced([(nodes[i].depth, nodes[i].mc, i) for i in scored], brng)  # type: ignore[misc]
    labels = [0.0] * n
    for i in scored:
        labels[i] = label_of(i, nodes[i].mc)  # type: ignore[arg-type]
    out: list[dict[str, Any]] = []
    emit = _Emitter(pid, question, source, seen, out, counts)
    emit([(ctx[pidx[i]], path[pidx[i]], plab[pidx[i]], nodes[i].step, labels[i], nodes[i].id) for i in scored], "prm")
    if kind == "prm":
        return out
    if pairs == "all":
        gps = [(i, pidx[i], pidx[pidx[i]]) for i in scored if pidx[i] > 0]
        emit([(ctx[g], path[g], plab[g], nodes[p].step + separator + nodes[i].step, labels[i], nodes[i].id)
              for i, p, g in gps], "hrm_pair")  # fmt: skip
    if not with_hnc:
        return out
    score = "child_mean" if tree.mc_from == "child_mean" else "leaf_fraction"
    r = hnc(tree, seed, hnc_min_children, hnc_p, separator, score, hnc_rule)
    counts["hnc_moves"] += len(r.merged)
    new = r.tree
    merged = set(r.merged)
    cand = [j for j in sorted(merged.union(r.changed)) if new.nodes[j].mc is not None]
    if balance:
        cand = balanced([(new.nodes[j].depth, new.nodes[j].mc, j) for j in cand], brng)  # type: ignore[misc]
    new_index = new._index
    for group, kind_, name in (([j for j in cand if j in merged], "hrm_pair", "hnc_merged"),
                               ([j for j in cand if j not in merged], "prm", "hnc_rescored")):  # fmt: skip
        # Node i of the HNC tree is node i of the input, and its rendered path is the input's,
        # so the input's ctx keys serve the new tree.
        pars = [new_index[new.nodes[j].parent] for j in group]  # type: ignore[index]
        specs = [(ctx[q], *_steps_to(new, q, context_label), new.nodes[j].step, label_of(j, new.nodes[j].mc),  # type: ignore[arg-type]
                  new.nodes[j].id) for j, q in zip(group, pars, strict=True)]  # fmt: skip
        counts[name] += emit(specs, kind_)
    return out


class _Emitter:
    """Appends example dicts for (ctx key, previous steps, their labels, step, label, node id)
    specs, dropping duplicates by (ctx key, step, label); one tight loop, as this runs once per node."""

    def __init__(self, pid: str, question: str, source: str, seen: set, out: list, counts: Counter):
        self.pid, self.question, self.source, self.seen, self.out, self.counts = (
            pid,
            question,
            source,
            seen,
            out,
            counts,
        )

    def __call__(self, specs: list[tuple[int, list[str], list[float | None], str, float, str]], kind: str) -> int:
        pid, question, source, seen, append = self.pid, self.question, self.source, self.seen, self.out.append
        before = len(self.out)
        dups = 0
        for ctx_key, prev, prev_labels, step, label, nid in specs:
            key = (ctx_key, step, label)
            if key in seen:
                dups += 1
                continue
            seen.add(key)
            append({"problem_id": pid, "question": question, "previous_steps": prev, "current_step": step,
                    "label": label, "kind": kind, "ratings": _NO_RATINGS, "source": f"{source}#{nid}",
                    "previous_labels": prev_labels})  # fmt: skip
        made = len(self.out) - before
        self.counts[kind] += made
        self.counts["duplicates"] += dups
        return made


def _steps_to(tree: Tree, i: int, label_of: Any) -> tuple[list[str], list[float | None]]:
    """The step texts from the root's child down to node i (i = 0 gives []), and their labels."""
    steps, labels = [], []
    nodes, index = tree.nodes, tree._index
    while i > 0:
        steps.append(nodes[i].step)
        labels.append(label_of(i, nodes[i].mc))
        i = index[nodes[i].parent]  # type: ignore[index]
    return steps[::-1], labels[::-1]


def forest_examples(
    forest: list[tuple[Tree, str]],
    val_ids: set[str],
    kind: Literal["prm", "hrm"],
    hnc_on_train: bool = True,
    **options: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Counter]]:
    """(train rows, val rows, {"train": counts, "val": counts}) for trees already split by problem
    (`val_ids`). A problem's trees are processed together (in order of first appearance) so that
    duplicates are found across them."""  # fmt: skip
    # The build allocates a few million small acyclic dicts and lists; the cyclic collector
    # would re-scan all of them at every full pass (1M nodes, one run each on a shared machine:
    # 9.9 s with it, 4.0 s without).
    # Nothing here makes a cycle, so it is paused and restored, whatever happens.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _forest_examples(forest, val_ids, kind, hnc_on_train, options)
    finally:
        if was_enabled:
            gc.enable()


def _forest_examples(
    forest: list[tuple[Tree, str]],
    val_ids: set[str],
    kind: Literal["prm", "hrm"],
    hnc_on_train: bool,
    options: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Counter]]:
    groups: dict[str, list[tuple[Tree, str]]] = {}
    for tree, src in forest:
        groups.setdefault(tree.problem_id, []).append((tree, src))
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    counts = {"train": Counter(), "val": Counter()}
    for pid, items in groups.items():
        is_val = pid in val_ids
        seen: set[tuple[int, str, float]] = set()
        for tree, src in items:
            rows = tree_examples(tree, src, kind, "val" if is_val else "train", hnc_on_train and not is_val,
                                 seen=seen, counts=counts["val" if is_val else "train"], **options)  # fmt: skip
            (val if is_val else train).extend(rows)
    return train, val, counts
