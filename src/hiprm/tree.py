"""THE tree record: a problem's tree of reasoning steps with MC-scores, one JSONL line per problem.

Every stage that touches trees uses this module: `hiprm annotate` writes trees, HNC rewrites them,
`hiprm data build trees=...` turns them into reward-model examples, `hiprm selftrain` picks
trajectories from them. Pure Python, no torch, so it sits low in the import order (beside
`records`).

A line (`Tree.to_dict`):

    {"problem_id", "question", "answer" (reference), "source",
     "mc_from": "leaves" | "child_mean" | "given",
     "nodes": [{"id", "parent", "depth", "step", "outcome", "answer", "count", "leaves",
                "correct", "mc", "ci", "tokens", "merged_from"}, ...],
     "cost": {"prompt_tokens", "generated_tokens", "calls", "rollouts", "seconds"}}

- `nodes[0]` is the root: `parent` null, `step` "", depth 0. A node's `id` is a hash of the step
  texts on its path (`node_id`), so the same path gets the same id in every run.
- `outcome` (leaves only): correct | wrong | no_answer | truncated; `answer` is the extracted
  final answer of a leaf. A node with children and an outcome does not exist: a leaf ends a
  solution.
- `count`: how many times this exact step (after white-space normalisation) was sampled at
  this place. Identical siblings are stored once (`annotate` merges them), and the count weighs
  the node in its parent's estimate, as if each copy had grown its own subtree: the copies'
  subtrees would be i.i.d. draws of the same distribution, so weighting one grown subtree by
  `count` keeps the parent's MC estimate unbiased (its variance is higher than with independent
  subtrees, which is the compute saved). With `count == 1` everywhere this is the plain rule.
- `leaves`, `correct` (weighted counts per copy of the node) and `mc = correct / leaves`:

      leaves(n)  = [n is a leaf] + sum over children c of count(c) * leaves(c)
      correct(n) = [n is a correct leaf] + sum over children c of count(c) * correct(c)

  `truncated` leaves count as wrong (annotate's `truncated_as` can instead drop them, in which
  case they are stored with `leaves` 0 and do not count at all).
- `mc_from == "child_mean"`: `mc` is the mean of the children's `mc` (each weighing its
  `count`), a leaf's is 1 / 0: the paper's text's definition, written by `hiprm annotate hnc
  score=child_mean` (`hiprm.hnc` says where it differs from `correct / leaves`).
- `mc_from == "given"`: the MC-scores came from elsewhere (OpenR's MCTS trees carry an
  `mc_value` estimated from rollouts that are not all in the file) and `recompute` keeps them;
  `leaves` / `correct` are still counted from the stored leaves.
- `ci`: the 95% Wilson interval of `mc` (derived by `intervals`, ignored on reading): from
  `correct` / `leaves`, or for `child_mean` from the node's sampled next steps (the sum of its
  children's counts), centred on `mc`.
- `tokens`: generated tokens spent on this node's step (0 for nodes read from OpenR).
- `merged_from`: for a node made by HNC, the ids of the two nodes whose steps it joins.

A tiny tree (root -> a -> {b correct, c wrong}; root -> d correct):

>>> t = Tree.new("p1", "1+1?", "2")
>>> a = t.add(t.root.id, "a")
>>> _ = t.add(a.id, "b", outcome="correct", answer="2")
>>> _ = t.add(a.id, "c", outcome="wrong", answer="3")
>>> _ = t.add(t.root.id, "d", outcome="correct", answer="2")
>>> recompute(t)
>>> [(n.step, n.leaves, n.correct, round(n.mc, 3)) for n in t.nodes]
[('', 3, 2, 0.667), ('a', 2, 1, 0.5), ('b', 1, 1, 1.0), ('c', 1, 0, 0.0), ('d', 1, 1, 1.0)]
>>> [n.step for n in path_to(t, t.nodes[3].id)]
['', 'a', 'c']
>>> [[n.step for n in p] for p in iter_paths(t)]
[['', 'a', 'b'], ['', 'a', 'c'], ['', 'd']]
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiprm.artifacts import DataError, SkipLog, read_jsonl
from hiprm.records import problem_id_for

OUTCOMES = ("correct", "wrong", "no_answer", "truncated")
TREE_FORMAT = "hiprm-tree/1"
_REQUIRED = object()  # a field with no default: missing is an error


def normalize_step(text: str) -> str:
    """The key under which identical sibling steps are merged: white space collapsed.

    Same result as `re.sub(r"\\s+", " ", text).strip()` (str.split and `\\s` agree on every
    code point, which tests/test_hnc.py checks), four times faster: HNC re-hashes whole subtrees.

    >>> normalize_step("  x = 1\\n\\n y=2 ") == normalize_step("x = 1 y=2")
    True
    """
    return " ".join(text.split())


def node_id(steps: Iterable[str]) -> str:
    """Stable id of the node reached by these step texts from the root (16 hex digits).

    >>> node_id([]) == node_id([]) and node_id(["a"]) != node_id(["a", ""])
    True
    """
    h = hashlib.sha256()
    for s in steps:
        h.update(normalize_step(s).encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:16]


def wilson(correct: float, leaves: float, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of correct / leaves ((0, 1) when there are no leaves).

    With `count` weights the interval uses the weighted counts, which is exact when every
    count is 1 and too narrow otherwise (the copies share one subtree).

    >>> [round(x, 3) for x in wilson(3, 4)]
    [0.301, 0.954]
    """
    if leaves <= 0:
        return 0.0, 1.0
    p = correct / leaves
    denom = 1 + z * z / leaves
    centre = (p + z * z / (2 * leaves)) / denom
    half = z * math.sqrt(p * (1 - p) / leaves + z * z / (4 * leaves * leaves)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(slots=True)
class TreeNode:
    id: str
    parent: str | None
    depth: int
    step: str
    outcome: str | None = None
    answer: str | None = None
    count: int = 1
    leaves: int = 0
    correct: int = 0
    mc: float | None = None
    tokens: int = 0
    merged_from: list[str] | None = None

    def to_dict(self, ci: tuple[float, float] | None) -> dict[str, Any]:
        d = {
            "id": self.id, "parent": self.parent, "depth": self.depth, "step": self.step,
            "outcome": self.outcome, "answer": self.answer, "count": self.count,
            "leaves": self.leaves, "correct": self.correct, "mc": self.mc, "tokens": self.tokens,
        }  # fmt: skip
        # The interval is derived (`intervals`), written for readers of the file, and ignored
        # when read back.
        d["ci"] = [round(x, 4) for x in ci] if ci is not None else None
        if self.merged_from is not None:
            d["merged_from"] = self.merged_from
        return d


@dataclass
class Tree:
    """One problem's tree. `nodes[0]` is the root; parents come before their children."""

    problem_id: str
    question: str
    answer: str
    source: str = ""
    nodes: list[TreeNode] = field(default_factory=list)
    cost: dict[str, Any] = field(default_factory=dict)
    mc_from: str = "leaves"
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def new(cls, problem_id: str, question: str, answer: str, source: str = "") -> Tree:
        t = cls(problem_id, question, answer, source)
        t._append(TreeNode(id=node_id([]), parent=None, depth=0, step=""))
        return t

    @property
    def root(self) -> TreeNode:
        return self.nodes[0]

    def node(self, nid: str) -> TreeNode:
        return self.nodes[self._index[nid]]

    def __contains__(self, nid: str) -> bool:
        return nid in self._index

    def _append(self, node: TreeNode) -> TreeNode:
        if node.id in self._index:
            raise ValueError(f"tree {self.problem_id}: node {node.id} already exists")
        self._index[node.id] = len(self.nodes)
        self.nodes.append(node)
        return node

    def add(
        self,
        parent: str,
        step: str,
        outcome: str | None = None,
        answer: str | None = None,
        tokens: int = 0,
        count_duplicate: bool = True,
    ) -> TreeNode:
        """Add a child of `parent`, or, if an identical sibling exists, count one more copy of it
        (its tokens added). `count_duplicate=False` (MCTS with leaf fractions): a repeat of an
        inner step is one more visit through it, not a copy; a repeated leaf is still a copy."""
        p = self.node(parent)
        steps = [n.step for n in path_to(self, parent)][1:] + [step]
        nid = node_id(steps)
        if nid in self._index:
            existing = self.node(nid)
            if count_duplicate or existing.outcome is not None:
                existing.count += 1
            existing.tokens += tokens
            return existing
        return self._append(TreeNode(nid, parent, p.depth + 1, step, outcome, answer, tokens=tokens))

    def children(self) -> dict[str, list[TreeNode]]:
        """parent id -> its children, in node order."""
        out: dict[str, list[TreeNode]] = {}
        for n in self.nodes[1:]:
            out.setdefault(n.parent, []).append(n)  # type: ignore[arg-type]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TREE_FORMAT, "problem_id": self.problem_id, "question": self.question,
            "answer": self.answer, "source": self.source, "mc_from": self.mc_from,
            "nodes": [n.to_dict(ci) for n, ci in zip(self.nodes, intervals(self), strict=True)], "cost": self.cost,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "<tree>", line: int | None = None) -> Tree:
        """Parse (and `validate`) one tree line; errors name `where:line`, the node and the field.

        Every field is checked for its type, nothing is coerced: a count or depth is a JSON
        integer (not `true`, not `2.0`, not `"2"`), a score a finite number in [0, 1] or null.
        """
        if not isinstance(d, dict):
            raise DataError(where, f"expected a tree object, got {type(d).__name__}", line)
        f = _Fields(where, line)
        question = f.text(d, "question")
        answer = f.answer(d, "answer")
        nodes = d.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise DataError(where, f"expected a non-empty list of nodes, got {_shown(nodes)}", line, "nodes")
        mc_from = d.get("mc_from", "leaves")
        if mc_from not in MC_FROM:
            raise DataError(where, f"expected one of {list(MC_FROM)}, got {_shown(mc_from)}", line, "mc_from")
        cost = d.get("cost") or {}
        if not isinstance(cost, dict):
            raise DataError(where, f"expected an object, got {_shown(cost)}", line, "cost")
        pid = d.get("problem_id") or problem_id_for(question)
        source = d.get("source", "") or ""
        for key, value in (("problem_id", pid), ("source", source)):
            if not isinstance(value, str):
                raise DataError(where, f"expected a string, got {_shown(value)}", line, key)
        t = cls(pid, question, answer, source, cost=dict(cost), mc_from=mc_from)
        for i, nd in enumerate(nodes):
            at = f"nodes[{i}]"
            if not isinstance(nd, dict):
                raise DataError(where, f"expected an object, got {_shown(nd)}", line, at)
            merged = nd.get("merged_from")
            if merged is not None and not (isinstance(merged, list) and all(isinstance(x, str) for x in merged)):
                raise DataError(where, f"expected a list of node ids or null, got {_shown(merged)}", line,
                                f"{at}.merged_from")  # fmt: skip
            node = TreeNode(
                id=f.text(nd, "id", at), parent=f.optional_text(nd, "parent", at), depth=f.count(nd, "depth", at),
                step=f.text(nd, "step", at, empty=True), outcome=f.optional_text(nd, "outcome", at),
                answer=f.optional_text(nd, "answer", at), count=f.count(nd, "count", at, 1),
                leaves=f.count(nd, "leaves", at, 0), correct=f.count(nd, "correct", at, 0),
                mc=f.score(nd, "mc", at), tokens=f.count(nd, "tokens", at, 0), merged_from=merged,
            )  # fmt: skip
            if node.id in t._index:
                raise DataError(where, f"node id {node.id} appears twice", line, f"nodes[{i}].id")
            t._append(node)
        validate(t, where, line)
        return t


MC_FROM = ("leaves", "child_mean", "given")


def _shown(value: Any) -> str:
    """A field's value in an error message: its JSON type and a short repr.

    >>> _shown(True), _shown("0.5"), _shown([1, 2])
    ('a boolean (True)', "a string ('0.5')", 'a list ([1, 2])')
    """
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)  # fmt: skip
    return kind if value is None else f"{kind} ({value!r:.60})"


@dataclass
class _Fields:
    """Typed field reads for one tree line: each names `where:line` and the field when it fails."""

    where: str
    line: int | None

    def _fail(self, expected: str, value: Any, field: str) -> DataError:
        return DataError(self.where, f"expected {expected}, got {_shown(value)}", self.line, field)

    def _get(self, d: dict[str, Any], key: str, at: str, default: Any) -> tuple[Any, str]:
        field = f"{at}.{key}" if at else key
        if key not in d and default is _REQUIRED:
            raise DataError(self.where, "missing", self.line, field)
        return d.get(key, default), field

    def text(self, d: dict[str, Any], key: str, at: str = "", empty: bool = False) -> str:
        v, field = self._get(d, key, at, _REQUIRED)
        if not isinstance(v, str) or (not empty and not v):
            raise self._fail("a non-empty string" if not empty else "a string", v, field)
        return v

    def optional_text(self, d: dict[str, Any], key: str, at: str) -> str | None:
        v, field = self._get(d, key, at, None)
        if v is not None and not isinstance(v, str):
            raise self._fail("a string or null", v, field)
        return v

    def answer(self, d: dict[str, Any], key: str) -> str:
        """A reference answer: a string, or a JSON number written as text (GSM8K's are)."""
        v, field = self._get(d, key, "", _REQUIRED)
        if isinstance(v, bool) or not isinstance(v, str | int | float) or (isinstance(v, float) and not math.isfinite(v)):
            raise self._fail("a string or a number", v, field)
        return v if isinstance(v, str) else str(v)

    def count(self, d: dict[str, Any], key: str, at: str, default: Any = _REQUIRED) -> int:
        v, field = self._get(d, key, at, default)
        if type(v) is not int or v < 0:  # bool is an int subclass; 2.0 and "2" are not counts
            raise self._fail("a whole number >= 0", v, field)
        return v

    def score(self, d: dict[str, Any], key: str, at: str) -> float | None:
        v, field = self._get(d, key, at, None)
        if v is None:
            return None
        return check_score(v, self.where, self.line, field)


def check_score(v: Any, where: str, line: int | None, field: str) -> float:
    """An MC-score read from a file: a finite JSON number in [0, 1] (not a string, not a boolean).

    >>> check_score(0.25, "t.jsonl", 3, "mc")
    0.25
    >>> check_score("0.5", "t.jsonl", 3, "nodes[2].mc")
    Traceback (most recent call last):
    hiprm.artifacts.DataError: t.jsonl:3: field 'nodes[2].mc': expected a number in [0, 1], got a string ('0.5')
    """
    if isinstance(v, bool) or not isinstance(v, int | float) or not (0.0 <= v <= 1.0):  # NaN fails too
        raise DataError(where, f"expected a number in [0, 1], got {_shown(v)}", line, field)
    return float(v)


def path_to(tree: Tree, nid: str) -> list[TreeNode]:
    """The nodes from the root to `nid`, both included."""
    out = []
    cur: str | None = nid
    while cur is not None:
        n = tree.node(cur)
        out.append(n)
        cur = n.parent
        if len(out) > len(tree.nodes):
            raise ValueError(f"tree {tree.problem_id}: cycle through node {nid}")
    return out[::-1]


def iter_paths(tree: Tree) -> Iterator[list[TreeNode]]:
    """Every root-to-leaf path (a leaf = a node without children), depth first, in node order."""
    kids = tree.children()
    stack: list[list[TreeNode]] = [[tree.root]]
    while stack:
        path = stack.pop()
        below = kids.get(path[-1].id, [])
        if not below:
            yield path
        for c in reversed(below):
            stack.append([*path, c])


def is_leaf_outcome_correct(outcome: str | None) -> bool:
    return outcome == "correct"


def recompute(tree: Tree, truncated_counts: bool = True) -> None:
    """Recompute `leaves`, `correct` and (unless `mc_from == "given"`) `mc`, bottom-up, in place.

    A leaf counts 1 (0 if it is `truncated` and `truncated_counts` is false); a child's totals
    enter its parent's `count` times. Nodes are processed deepest first, so this is linear.
    """
    idx = tree._index
    nodes = tree.nodes
    leaves = [0] * len(nodes)
    correct = [0] * len(nodes)
    has_child = [False] * len(nodes)
    for n in nodes[1:]:
        has_child[idx[n.parent]] = True  # type: ignore[index]
    for i, n in enumerate(nodes):
        if not has_child[i] and n.outcome is not None:
            if n.outcome != "truncated" or truncated_counts:
                leaves[i] = 1
                correct[i] = 1 if n.outcome == "correct" else 0
    order = sorted(range(1, len(nodes)), key=lambda i: -nodes[i].depth)
    for i in order:
        n = nodes[i]
        p = idx[n.parent]  # type: ignore[index]
        leaves[p] += n.count * leaves[i]
        correct[p] += n.count * correct[i]
    given = tree.mc_from == "given"
    means = child_mean_scores(tree, truncated_counts) if tree.mc_from == "child_mean" else None
    for i, n in enumerate(nodes):
        n.leaves, n.correct = leaves[i], correct[i]
        if means is not None:
            n.mc = means[i]
        elif not given:
            n.mc = correct[i] / leaves[i] if leaves[i] else None


def child_mean_scores(tree: Tree, truncated_counts: bool = True) -> list[float | None]:
    """Per node: a leaf's 1 / 0 (None if it does not count), else the `count`-weighted mean of
    its scored children's scores (None if none is scored). Deepest first, so linear.

    >>> t = Tree.new("p", "q", "a")
    >>> a = t.add(t.root.id, "a")
    >>> _ = [t.add(a.id, s, outcome=o) for s, o in [("b", "correct"), ("c", "wrong"), ("d", "wrong")]]
    >>> _ = t.add(t.root.id, "e", outcome="correct")
    >>> [round(m, 3) for m in child_mean_scores(t)]  # root: (1/3 + 1) / 2, not 2/4
    [0.667, 0.333, 1.0, 0.0, 0.0, 1.0]
    """
    idx = tree._index
    nodes = tree.nodes
    total = [0.0] * len(nodes)
    weight = [0] * len(nodes)
    has_child = [False] * len(nodes)
    for n in nodes[1:]:
        has_child[idx[n.parent]] = True  # type: ignore[index]
    out: list[float | None] = [None] * len(nodes)
    for i in sorted(range(len(nodes)), key=lambda i: -nodes[i].depth):
        n = nodes[i]
        if not has_child[i]:
            if n.outcome is not None and (n.outcome != "truncated" or truncated_counts):
                out[i] = 1.0 if n.outcome == "correct" else 0.0
        elif weight[i]:
            out[i] = total[i] / weight[i]
        if i and out[i] is not None:
            p = idx[n.parent]  # type: ignore[index]
            total[p] += n.count * out[i]  # type: ignore[operator]
            weight[p] += n.count
    return out


def intervals(tree: Tree) -> list[tuple[float, float] | None]:
    """Each node's 95% Wilson interval of its MC-score, as `Tree.to_dict` writes it (`ci`).

    `mc_from` leaves / given, and every leaf: `wilson(correct, leaves)` (None without leaves).
    `child_mean`: an inner node's score averages its children over its n sampled next steps
    (n = the sum of its scored children's counts; in an MCTS tree, the rollouts that passed
    through it having started at it or above it), so its interval is `wilson(mc * n, n)`,
    centred on `mc`. When each sampled step continues on its own (every count 1, or an MCTS
    tree, where each rollout through a repeated step completes it afresh), each child's score
    is at least as precise as one completion, so the score's variance is at most that of n
    single completions, mc(1-mc)/n, and the interval is conservative; with BFS's merged
    duplicates, whose copies share one subtree, it can be too narrow (as `wilson` says).
    (`correct / leaves` would count the leaves that rollouts started below the node added, and
    centre the interval on the leaf fraction instead of `mc`.)

    >>> t = Tree.new("p", "q", "a")
    >>> a = t.add(t.root.id, "a")
    >>> _ = [t.add(a.id, s, outcome=o) for s, o in [("b", "correct"), ("c", "wrong"), ("d", "wrong")]]
    >>> _ = t.add(t.root.id, "e", outcome="correct")
    >>> t.mc_from = "child_mean"; recompute(t)
    >>> [round(t.root.mc, 3), [round(x, 3) for x in intervals(t)[0]]]  # n = 2 next steps, not 4 leaves
    [0.667, [0.159, 0.955]]
    """
    if tree.mc_from != "child_mean":
        return [wilson(n.correct, n.leaves) if n.leaves else None for n in tree.nodes]
    n_next = [0] * len(tree.nodes)
    for n in tree.nodes[1:]:
        if n.mc is not None:
            n_next[tree._index[n.parent]] += n.count  # type: ignore[index]
    out: list[tuple[float, float] | None] = []
    for i, n in enumerate(tree.nodes):
        if n_next[i] and n.mc is not None:
            out.append(wilson(n.mc * n_next[i], n_next[i]))
        else:
            out.append(wilson(n.correct, n.leaves) if n.leaves else None)
    return out


def validate(tree: Tree, where: str = "<tree>", line: int | None = None) -> None:
    """Raise DataError naming the node when the tree is not well formed.

    Checks: the first node is the only root; every parent exists and comes earlier (no cycle);
    depth = parent depth + 1; outcomes are known and only on leaves; counts >= 1; `leaves` /
    `correct` add up; `mc == correct / leaves` (the children's mean for `child_mean`) unless
    the scores are given.
    """
    seen: dict[str, TreeNode] = {}
    has_child: set[str] = set()
    for i, n in enumerate(tree.nodes):
        f = f"nodes[{i}] (id {n.id})"
        if i == 0:
            if n.parent is not None or n.depth != 0:
                raise DataError(where, "the first node must be the root (parent null, depth 0)", line, f)
        else:
            if n.parent is None:
                raise DataError(where, "a second root (parent null)", line, f)
            if n.parent not in seen:
                what = (
                    "a parent that comes later (a cycle or bad order)"
                    if n.parent in tree
                    else "a missing parent"
                )
                raise DataError(where, f"{what}: {n.parent}", line, f)
            if n.depth != seen[n.parent].depth + 1:
                raise DataError(where, f"depth {n.depth} but parent depth {seen[n.parent].depth}", line, f)
            has_child.add(n.parent)
        if n.outcome is not None and n.outcome not in OUTCOMES:
            raise DataError(where, f"outcome {n.outcome!r} is not one of {list(OUTCOMES)}", line, f)
        if n.count < 1:
            raise DataError(where, f"count must be >= 1, got {n.count}", line, f)
        seen[n.id] = n
    for i, n in enumerate(tree.nodes):
        if n.id in has_child and n.outcome is not None:
            raise DataError(
                where, f"node has children but an outcome ({n.outcome})", line, f"nodes[{i}] (id {n.id})"
            )
    expected = Tree(tree.problem_id, tree.question, tree.answer, mc_from="given")
    expected._index = tree._index
    expected.nodes = [TreeNode(n.id, n.parent, n.depth, n.step, n.outcome, count=n.count) for n in tree.nodes]
    truncated_counts = _truncated_counts(tree)
    recompute(expected, truncated_counts)
    means = child_mean_scores(expected, truncated_counts) if tree.mc_from == "child_mean" else None
    for i, (n, e) in enumerate(zip(tree.nodes, expected.nodes, strict=True)):
        f = f"nodes[{i}] (id {n.id})"
        if (n.leaves, n.correct) != (e.leaves, e.correct):
            raise DataError(where, f"counts do not add up: leaves/correct {n.leaves}/{n.correct}, "
                            f"children give {e.leaves}/{e.correct}", line, f)  # fmt: skip
        if tree.mc_from != "given":
            want = means[i] if means is not None else e.correct / e.leaves if e.leaves else None
            if (want is None) != (n.mc is None) or (
                want is not None and not math.isclose(n.mc, want, abs_tol=1e-9)
            ):
                raise DataError(where, f"mc {n.mc} but correct/leaves = {want}", line, f)


def _truncated_counts(tree: Tree) -> bool:
    """Whether this tree counts truncated leaves (read off a truncated leaf's own `leaves`)."""
    for n in tree.nodes:
        if n.outcome == "truncated":
            return n.leaves != 0
    return True


# --- OpenR's MCTS trees ---------------------------------------------------------------------


def is_openr_tree(obj: Any) -> bool:
    """OpenR (math-aps-tree) lines have `reasoning_steps` as a nested {text, mc_value, children}."""
    return isinstance(obj, dict) and isinstance(obj.get("reasoning_steps"), dict) and "nodes" not in obj


def from_openr(obj: dict[str, Any], where: str = "<openr>", line: int | None = None) -> Tree:
    """An OpenR tree line -> Tree, keeping every node's `mc_value` as its `mc` (`mc_from="given"`).

    OpenR's root `text` is the question; every other node's `text` is one step (a leaf's is the
    rest of its rollout). A leaf is correct when its `mc_value` is 1 (a single graded rollout)
    and wrong otherwise; its answer is extracted from its text.
    """
    from hiprm.grading import extract_answer

    for key in ("question", "final_answer", "reasoning_steps"):
        if key not in obj:
            raise DataError(where, "missing (OpenR tree line)", line, key)
    f = _Fields(where, line)
    question = f.text(obj, "question")
    t = Tree(problem_id_for(question), question, f.answer(obj, "final_answer"),
             source=f"{where}:{line}" if line else where, mc_from="given")  # fmt: skip
    root = obj["reasoning_steps"]
    stack: list[tuple[dict[str, Any], str | None, list[str], str]] = [(root, None, [], "reasoning_steps")]
    while stack:
        nd, parent, steps, field_path = stack.pop()
        if not isinstance(nd, dict) or "mc_value" not in nd:
            raise DataError(where, f"expected an object {{text, mc_value, children}}, got {_shown(nd)}", line,
                            field_path)  # fmt: skip
        kids = nd.get("children")
        if kids is None:
            kids = []
        elif not isinstance(kids, list):
            raise DataError(where, f"expected a list of nodes, got {_shown(kids)}", line, f"{field_path}.children")
        text = nd.get("text", "")
        if not isinstance(text, str):
            raise DataError(where, f"expected a string, got {_shown(text)}", line, f"{field_path}.text")
        if parent is None:
            text = ""
        here = steps if parent is None else [*steps, text]
        nid = node_id(here)
        depth = len(here)
        mc = check_score(nd["mc_value"], where, line, f"{field_path}.mc_value")
        if nid in t:
            # An identical sibling: a repeated leaf is one node counted twice; a repeated inner
            # step keeps one node and its children join the first copy's (deduplicated in turn).
            # A step that is a leaf in one copy and expanded in another becomes the inner node
            # (a node is never both), whichever copy came first; the leaf copy's rollout is dropped.
            existing = t.node(nid)
            if kids:
                if existing.outcome is not None:
                    existing.outcome = existing.answer = None
                    existing.count = 1
                for k in range(len(kids) - 1, -1, -1):
                    stack.append((kids[k], nid, here, f"{field_path}.children[{k}]"))
            elif existing.outcome is not None:
                existing.count += 1
            continue
        outcome = None if kids else ("correct" if mc >= 1.0 else "wrong")
        answer = None if kids else extract_answer(text)
        t._append(TreeNode(nid, parent, depth, text, outcome, answer, mc=mc))
        for k in range(len(kids) - 1, -1, -1):
            stack.append((kids[k], nid, here, f"{field_path}.children[{k}]"))
    _parents_first(t)
    recompute(t)
    validate(t, where, line)
    return t


def _parents_first(t: Tree) -> None:
    """Reorder nodes breadth-first (stable), which the record requires; rebuilds the index."""
    nodes = sorted(t.nodes, key=lambda n: n.depth)
    t.nodes = []
    t._index = {}
    for n in nodes:
        t._append(n)


def tree_from_json(obj: Any, where: str, line: int | None = None) -> Tree:
    """Either format, told apart by shape: hiprm's has `nodes`, OpenR's `reasoning_steps`."""
    if isinstance(obj, dict) and "reasoning_steps" in obj and "nodes" not in obj:
        return from_openr(obj, where, line)
    if isinstance(obj, dict) and "nodes" not in obj:
        raise DataError(where, "missing: a tree line has `nodes` (a hiprm tree) or `reasoning_steps` (an OpenR "
                               "tree)", line, "nodes")  # fmt: skip
    return Tree.from_dict(obj, where, line)


def read_trees(path: str | Path, skip_log: SkipLog | None = None) -> Iterator[Tree]:
    """The trees of a file (`read_tree_lines` without the line numbers)."""
    for _, tree in read_tree_lines(path, skip_log):
        yield tree


def read_tree_lines(path: str | Path, skip_log: SkipLog | None = None) -> Iterator[tuple[int, Tree]]:
    """THE tree reader: `(line, tree)` from a hiprm `trees.jsonl` or an OpenR tree file (per line, by
    shape), each typed and validated (`Tree.from_dict`, `from_openr`). A problem that comes
    twice (two runs appended to one file, a file concatenated with itself) is an error naming
    both lines. Bad lines raise, or with `skip_log` are counted there and skipped."""
    first: dict[str, int] = {}
    for line, obj in read_jsonl(path, skip_log):
        try:
            tree = tree_from_json(obj, str(path), line)
            if tree.problem_id in first:
                raise DataError(path, f"problem {tree.problem_id} again (first at line {first[tree.problem_id]}); "
                                      "a tree file holds each problem once", line, "problem_id")  # fmt: skip
        except DataError as e:
            if skip_log is None:
                raise
            skip_log.add(e)
            continue
        first[tree.problem_id] = line
        yield line, tree


def tree_stats(trees: list[Tree]) -> dict[str, Any]:
    """Counts for `hiprm annotate stats`: problems, nodes, leaves, outcomes, depth/branching and
    MC histograms (10 bins), share of nodes with 0 < mc < 1, and tokens.

    Two token counts: `step_tokens`, the nodes' own steps, and `generated_tokens`, everything
    the policy produced (the sum of the trees' `cost` blocks: it also holds what a rollout
    generated past a leaf at `max_depth`, and stop strings). `tokens_per_node`, the cost of a
    node, divides the second by the non-root nodes. Trees without a cost block (OpenR's) make
    both of those None: what they cost is not recorded."""
    depth: dict[int, int] = {}
    branching: dict[int, int] = {}
    outcomes: dict[str, int] = {}
    mc_hist = [0] * 10
    strictly = scored = nodes = leaves = tokens = 0
    costed = [t.cost["generated_tokens"] for t in trees if "generated_tokens" in t.cost]
    generated = sum(costed) if len(costed) == len(trees) and trees else None
    for t in trees:
        kids = t.children()
        for n in t.nodes:
            nodes += 1
            tokens += n.tokens
            depth[n.depth] = depth.get(n.depth, 0) + 1
            b = len(kids.get(n.id, []))
            if b:
                branching[b] = branching.get(b, 0) + 1
            else:
                leaves += 1
                outcomes[str(n.outcome)] = outcomes.get(str(n.outcome), 0) + 1
            if n.parent is not None and n.mc is not None:
                scored += 1
                mc_hist[min(int(n.mc * 10), 9)] += 1
                strictly += 0.0 < n.mc < 1.0
    return {
        "problems": len(trees), "nodes": nodes, "non_root_nodes": nodes - len(trees), "leaves": leaves,
        "outcomes": dict(sorted(outcomes.items())), "depth": dict(sorted(depth.items())),
        "branching": dict(sorted(branching.items())), "mc_histogram": mc_hist,
        "scored_nodes": scored, "share_strictly_between": strictly / scored if scored else 0.0,
        "step_tokens": tokens, "generated_tokens": generated,
        "tokens_per_node": None if generated is None else generated / max(nodes - len(trees), 1),
    }  # fmt: skip
