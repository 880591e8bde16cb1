"""Grow reasoning trees with a policy: the paper's BFS and a budgeted MCTS, many problems at once.

    trees = grow_trees(problems, policy, style, GrowSettings(mode="mcts", budget=64))

Both modes return one `Tree` per problem (`hiprm.tree`): every node is a step, every
leaf a finished (graded), answerless or depth-limited solution, and every node carries an
MC-score (an estimate of the probability that a completion from it is correct, by `score`)
with a 95% interval (`tree.intervals`).

- `bfs` (the paper's procedure and its reference code): every non-terminal node gets `children`
  samples of its next step (paper: 5-6), down to `max_depth` (paper: 7). A node at `max_depth`
  that is not a final step becomes a `truncated` leaf.
- `mcts`: a budget of rollouts (or generated tokens) per problem, spent where the labels are
  uncertain. The rule: Monte-Carlo tree search without a value model, as in ReST-MCTS* and
  AlphaMath's value-free variant, with selection made for annotation rather than for finding a
  best path (OmegaPRM's motivation, without its binary search for the first error): each round
  picks, over the whole tree, the growable nodes where one more rollout shrinks the variance of
  the MC-score's Beta(1, 1) posterior most per generated token (`Engine._priority`; the UCT
  bonus `c_explore` enters in the same units). The posterior counts the rollouts the score
  rests on: for `child_mean` the node's sampled completions (rollouts that passed through it
  having started at it or above it; one started below it says nothing about its next step),
  for `leaf_fraction` every rollout through it. Rollouts start only at nodes with fewer than
  `children` children, and one round's starts never fill a node past that; a rollout whose first
  steps repeat existing ones continues below them as one more sample of those nodes and may add
  a child to a full node there (dropping its tail would throw that sample away).
  Expansion and rollout are one generate call: from the selected node the policy completes the
  solution to `# END!`; the text is split into steps by `policy.steps.split_solution` (the
  splitter step search uses), the first step is the new child, the rest are stored as a chain
  below it, the last is graded, and the counts propagate to the root. A problem stops when its
  budget is spent, when every inner node's interval (as the record writes it) is narrower than
  `ci_width` (`ci_width=0`: off), or when nothing is left to grow.
- Identical sibling steps (white space normalised) are stored once. A repeated sample raises
  the node's `count`, which weighs its one grown subtree in the parent's estimate as if each
  copy had grown its own (unbiased; see `tree.py`), so low-temperature sampling does not pay for
  duplicate subtrees. In `mcts` with `score=child_mean` the count of a node is then exactly the
  number of its parent's sampled completions that took its step. With `score=leaf_fraction` a
  rollout whose first step repeats an existing child is instead one more visit through it
  (count stays 1), since the child's leaves already hold that rollout.
- `score`: `leaf_fraction` (the paper: correct leaves / leaves below) or `child_mean` (the
  count-weighted mean of the children's scores). With BFS's uneven subtrees, and with MCTS
  rollouts that start below a node, the leaf fraction over-weights the large or often-chosen
  subtrees; the child mean is an unbiased estimate of the node's success probability in both
  modes (each child is a fresh sample of the node's next step, and its score is unbiased in
  turn). For `mcts` use `child_mean`: its leaf fraction is biased by the rollouts started below
  a node and levels off whatever the budget (tests/test_annotate.py checks both against exact
  values). Measured on a simulated policy (benchmarks/bench_annotate.py, 200 problems x 3
  seeds, values spread over (0, 1)): BFS at the paper's settings has RMSE 0.155-0.16 with
  child_mean, 0.21 with the leaf fraction; MCTS with child_mean needs 1.46x BFS's tokens to
  match BFS with child_mean (1.34x on the nodes both trees hold), 0.57x to match BFS with the
  leaf fraction, and goes on to 0.09 at 512 rollouts. At a third of BFS's tokens it is at 0.25:
  each generated step is one sample of one node's next step in both modes, and BFS already
  gives every node 5. On problems shaped like real annotation data (`--world first-error`: most
  values exactly 0 or 1) the ratios are 1.35x, 1.23x and 0.28x.
- Cost: `generated_tokens` counts every text the policy returned, stop strings included (BFS's
  next-step header, the end marker): the policy generated them. A node's `tokens` are those of
  its own step.

Batching: `batch_problems` problems are in flight, with `n` samples per prompt so a server (vLLM,
SGLang with prefix caching) or the hf backend (one prefill per distinct prompt) shares each
prefix. In-process backends run in lockstep rounds: every round, the requests of all problems in
flight go into one `generate` call per distinct `n`. A server backend (`concurrent = True`) runs
overlapped instead: each problem sends its next round the moment its last one returns, so the
server's batch is refilled continuously rather than draining to the slowest request of a round.
Each request carries its own seed (a hash of the run seed, the problem and the node), so a problem's
tree does not depend on which problems share its batch: a resumed run gives the same trees with
the scripted or OpenAI-compatible backends (hf samples a batch from one generator).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

from hiprm.artifacts import StageError
from hiprm.grading import GradingMode, extract_answer, is_equivalent
from hiprm.policy.prompts import PromptStyle
from hiprm.policy.protocol import Policy, SamplingParams, generated_tokens
from hiprm.policy.steps import ANSWER_MARK, split_solution, split_trailing_header
from hiprm.records import Problem
from hiprm.tree import Tree, TreeNode, intervals, path_to, recompute


@dataclass
class GrowSettings:
    """How trees grow. `budget` (mcts, or a cap for bfs; 0 = none) counts `budget_unit`
    (rollouts | tokens) per problem. `truncated_as`: wrong (counted as a wrong leaf, the default)
    or drop (not counted). `grade_timeout`: seconds for the symbolic answer check; `grading`:
    lenient | strict (see `hiprm.grading.equivalence`)."""

    mode: Literal["bfs", "mcts"] = "bfs"
    children: int = 5
    max_depth: int = 7
    budget: int = 0
    budget_unit: Literal["rollouts", "tokens"] = "rollouts"
    temperature: float = 0.7
    top_p: float = 0.95
    max_step_tokens: int = 256
    max_solution_tokens: int = 1024
    rollouts_per_round: int = 4
    c_explore: float = 0.1
    ci_width: float = 0.0
    truncated_as: Literal["wrong", "drop"] = "wrong"
    score: Literal["leaf_fraction", "child_mean"] = "leaf_fraction"
    grade_timeout: float = 3.0
    grading: GradingMode = "strict"
    batch_problems: int = 16
    seed: int = 0


@dataclass
class _Growth:
    """One problem being grown: its tree plus what the engine needs in memory only."""

    problem: Problem
    tree: Tree
    raw: dict[str, str] = field(default_factory=dict)  # node id -> model text of the path so far
    visits: dict[str, int] = field(default_factory=dict)  # mcts: rollouts through each node
    wins: dict[str, int] = field(default_factory=dict)
    # mcts: the rollouts that passed through a node having started at it or above it, i.e. the
    # sampled completions of the node (rollouts started below it are not), their wins, and the
    # tokens they generated after it (what a rollout from the node costs).
    passes: dict[str, int] = field(default_factory=dict)
    pass_wins: dict[str, int] = field(default_factory=dict)
    pass_tokens: dict[str, int] = field(default_factory=dict)
    expansions: dict[str, int] = field(default_factory=dict)  # requests made from each node
    frontier: list[str] = field(default_factory=list)  # bfs: nodes to expand this round
    cost: dict[str, float] = field(
        default_factory=lambda: dict(prompt_tokens=0, generated_tokens=0, calls=0, rollouts=0, seconds=0.0)
    )
    started: float = field(default_factory=time.perf_counter)
    done: bool = False


def request_seed(seed: int, problem_id: str, nid: str, k: int) -> int:
    """Seed of the k-th request from node `nid` of a problem (31 bits, stable across runs)."""
    h = hashlib.sha256(f"{seed}|{problem_id}|{nid}|{k}".encode()).digest()
    return int.from_bytes(h[:4], "big") >> 1


def grade_leaf(text: str, reference: str, timeout: float, mode: GradingMode) -> tuple[str, str | None]:
    """(outcome, extracted answer) of a finished solution: `no_answer` without an explicit answer,
    else `correct` or `wrong` against the reference.

    >>> grade_leaf("So 2+4=6.\\n\\n# Answer\\n\\n6\\n# END!", "6", 0, "strict")
    ('correct', '6')
    >>> grade_leaf("I am not sure.", "6", 0, "strict")
    ('no_answer', None)
    """
    answer = extract_answer(text)
    if answer is None:
        return "no_answer", None
    ok = is_equivalent(answer, reference, timeout=timeout, mode=mode)
    return ("correct" if ok else "wrong"), answer


def classify_step(text: str, style: PromptStyle) -> str:
    """What a generated piece is: "final" (states `# Answer`), "end" (stopped at the end marker
    without an answer), "step" (ended by a step delimiter) or "cut" (neither: end of sequence or
    the token limit).

    >>> from hiprm.policy.prompts import STYLES
    >>> s = STYLES["step"]
    >>> [classify_step(t, s) for t in ["# Step 1\\nx\\n\\n# Step 2", "x\\n# Answer\\n\\n3\\n# END!", "x\\n# END!", "x = 2"]]
    ['step', 'final', 'end', 'cut']
    """
    if ANSWER_MARK in text:
        return "final"
    if style.end_stop and style.end_stop in text:
        return "end"
    tail = text.rstrip(" ")
    for stop in style.step_stops:
        if "{n}" in stop:
            pattern = style.header_pattern()
            if pattern is not None and any(m.end() == len(tail.rstrip()) for m in pattern.finditer(tail)):
                return "step"
        elif tail.endswith(stop):
            return "step"
    return "cut"


def raw_step(text: str, style: PromptStyle) -> str:
    """The model's text of one step as it enters later prompts: a trailing next-step header
    (`# Step 3`, the stop that ended it) and the end marker are removed, so the model writes
    the next header itself.

    >>> from hiprm.policy.prompts import STYLES
    >>> raw_step("# Step 1\\nx = 1\\n\\n# Step 2", STYLES["step"])
    '# Step 1\\nx = 1\\n\\n'
    """
    if style.end_stop:
        i = text.find(style.end_stop)
        if i >= 0:
            text = text[:i]
    return split_trailing_header(text, style)[0]


def split_rollout(text: str, style: PromptStyle) -> list[str]:
    """A completed solution -> the raw text of each step (concatenated they give the text minus
    the end marker), cut where `split_solution` cuts.

    >>> from hiprm.policy.prompts import STYLES
    >>> split_rollout("# Step 1\\na\\n\\n# Step 2\\nb\\n\\n# Answer\\n\\n3\\n# END!", STYLES["step"])
    ['# Step 1\\na\\n\\n', '# Step 2\\nb\\n\\n# Answer\\n\\n3\\n']
    """
    body = text
    if style.end_stop and style.end_stop in body:
        body = body[: body.find(style.end_stop)]
    steps = split_solution(body, style)
    starts = []
    pos = 0
    for s in steps:
        i = body.find(s, pos)
        if i < 0:  # cannot happen for split_solution's output; keep the text whole rather than lose it
            return [body] if body.strip() else []
        starts.append(i)
        pos = i + len(s)
    if not starts:
        return []
    starts[0] = 0
    return [body[a:b] for a, b in zip(starts, [*starts[1:], len(body)], strict=True)]


class Engine:
    """Grows the trees of many problems in lockstep rounds (see the module docstring)."""

    def __init__(self, policy: Policy, style: PromptStyle, settings: GrowSettings):
        if settings.children < 1 or settings.max_depth < 1:
            raise ValueError("children and max_depth must be >= 1")
        self.policy, self.style, self.s = policy, style, settings

    # --- per-problem state ---------------------------------------------------------------------
    def start(self, problem: Problem) -> _Growth:
        g = _Growth(problem, Tree.new(problem.problem_id, problem.question, problem.answer, problem.source))
        g.tree.mc_from = "child_mean" if self.s.score == "child_mean" else "leaves"
        g.raw[g.tree.root.id] = ""
        g.frontier = [g.tree.root.id]
        return g

    def _prompt(self, g: _Growth, nid: str) -> str:
        return self.style.prompt_for(g.problem.question, g.raw[nid], self.policy.render_chat)

    def _grade(self, g: _Growth, text: str) -> tuple[str, str | None]:
        return grade_leaf(text, g.problem.answer, self.s.grade_timeout, self.s.grading)

    def _spent(self, g: _Growth) -> float:
        return g.cost["rollouts"] if self.s.budget_unit == "rollouts" else g.cost["generated_tokens"]

    def _over_budget(self, g: _Growth) -> bool:
        return self.s.budget > 0 and self._spent(g) >= self.s.budget

    def _add(self, g: _Growth, parent: str, raw: str, kind: str, count_duplicate: bool) -> TreeNode:
        """Add one generated step below `parent`; returns the (new or existing) node."""
        t = g.tree
        step = raw.strip()
        depth = t.node(parent).depth + 1
        outcome = answer = None
        if kind in ("final", "end", "cut"):
            # The solution ended here: by its answer marker, or by the end marker / end of
            # sequence. The last two are graded too when they state an answer in another way
            # ("the answer is 5", \boxed{5}); without one the leaf is `no_answer`.
            outcome, answer = self._grade(g, raw)
        elif depth >= self.s.max_depth:
            outcome = "truncated"
        tokens = self.policy.count_tokens(raw)
        node = t.add(
            parent, step, outcome=outcome, answer=answer, tokens=tokens, count_duplicate=count_duplicate
        )
        if node.id not in g.raw:  # a new node: later prompts continue the model's own text of it
            g.raw[node.id] = g.raw[parent] + raw
        return node

    def finish(self, g: _Growth) -> Tree:
        recompute(g.tree, truncated_counts=self.s.truncated_as == "wrong")
        g.cost["seconds"] = round(time.perf_counter() - g.started, 3)
        g.tree.cost = {k: (round(v, 3) if isinstance(v, float) else int(v)) for k, v in g.cost.items()}
        labelled = sum(1 for n in g.tree.nodes[1:] if n.mc is not None)
        g.tree.cost["labelled_nodes"] = labelled
        g.tree.cost["tokens_per_labelled_node"] = (
            round(g.cost["generated_tokens"] / labelled, 2) if labelled else None
        )
        g.done = True
        return g.tree

    # --- one round -------------------------------------------------------------------------------
    def requests(self, g: _Growth) -> list[tuple[str, int]]:
        """(node id, samples) to generate from this round; [] when the problem is finished."""
        if self.s.mode == "bfs":
            if self._over_budget(g):
                return []
            return [(nid, self.s.children) for nid in g.frontier]
        return self._mcts_select(g)

    def absorb(self, g: _Growth, nid: str, texts: list[str]) -> None:
        """Put the samples generated from node `nid` into the tree."""
        g.cost["calls"] += 1
        # Cost is every token the policy returned, stop strings included (a step's next-step
        # header, the end marker): it generated them, though they are not part of any step.
        g.cost["generated_tokens"] += sum(generated_tokens(self.policy, t) for t in texts)
        if self.s.mode == "bfs":
            for text in texts:
                node = self._add(g, nid, raw_step(text, self.style), classify_step(text, self.style), True)
                g.cost["rollouts"] += node.outcome is not None
            return
        for text in texts:
            self._mcts_rollout(g, nid, text)

    def after_round(self, g: _Growth) -> None:
        if self.s.mode == "bfs":
            kids = g.tree.children()
            nxt = [c.id for nid in g.frontier for c in kids.get(nid, []) if c.outcome is None]
            g.frontier = list(dict.fromkeys(nxt))

    def generate(self, jobs: list[tuple[_Growth, str, int]]) -> tuple[list[str], list[list[str]]]:
        """Generate the samples of (problem, node, n) requests: one call per (n, stop set), each
        request with its own seed. Returns the prompts and each request's texts. Touches only
        the jobs' own problems (the overlapped schedule runs one problem's round per thread)."""
        prompts = [self._prompt(g, nid) for g, nid, _ in jobs]
        seeds = []
        for g, nid, _ in jobs:
            k = g.expansions.get(nid, 0)
            g.expansions[nid] = k + 1
            seeds.append(request_seed(self.s.seed, g.problem.problem_id, nid, k))
        bfs = self.s.mode == "bfs"
        outs: list[list[str]] = [[] for _ in jobs]
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
        for i, (g, nid, n) in enumerate(jobs):
            # bfs stops at the next step's delimiter, which for header styles depends on the depth
            stops = tuple(self.style.stops_at(g.tree.node(nid).depth)) if bfs else (self.style.end_stop,)
            groups.setdefault((n, stops), []).append(i)
        # by n, keeping first-seen order within (the hf backend seeds one generator per call)
        for (n, stops), idx in sorted(groups.items(), key=lambda kv: kv[0][0]):
            params = SamplingParams(
                n=n, temperature=self.s.temperature, top_p=self.s.top_p,
                max_tokens=self.s.max_step_tokens if bfs else self.s.max_solution_tokens,
                stop=list(stops), seed=self.s.seed, include_stop=True, seeds=[seeds[i] for i in idx],
            )  # fmt: skip
            try:
                got = self.policy.generate([prompts[i] for i in idx], params)
            except StageError as e:
                ids = sorted({jobs[i][0].problem.problem_id for i in idx})
                raise StageError(f"{e} -- while growing problems {', '.join(ids)} (nothing written for "
                                 "them; finished problems are kept: rerun to resume)") from None  # fmt: skip
            for i, texts in zip(idx, got, strict=True):
                outs[i] = texts
        return prompts, outs

    def absorb_all(
        self, jobs: list[tuple[_Growth, str, int]], generated: tuple[list[str], list[list[str]]]
    ) -> int:
        """Put generated samples into their trees; returns the tokens generated."""
        prompts, outs = generated
        tokens = 0
        for (g, nid, _), prompt, texts in zip(jobs, prompts, outs, strict=True):
            before = g.cost["generated_tokens"]
            g.cost["prompt_tokens"] += self.policy.count_tokens(prompt)
            self.absorb(g, nid, texts)
            tokens += g.cost["generated_tokens"] - before
        return tokens

    # --- mcts ------------------------------------------------------------------------------------
    def _mcts_rollout(self, g: _Growth, start: str, text: str) -> None:
        g.cost["rollouts"] += 1
        total = generated_tokens(self.policy, text)
        pieces = split_rollout(text, self.style) or [text]
        at = start
        leaf: TreeNode | None = None
        chain = [(start, 0)]  # (node, tokens of this text up to the end of its step), start down
        spent = 0
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            # Only the last piece can end the solution; ending on a step delimiter is a cut.
            kind = classify_step(text, self.style) if last else "step"
            if kind == "step" and last:
                kind = "cut"
            # child_mean weighs a child by how often its step was sampled, so a repeat counts;
            # with leaf_fraction a count would weigh the child's whole subtree twice.
            node = self._add(g, at, piece, kind, count_duplicate=self.s.score == "child_mean")
            spent += self.policy.count_tokens(piece)
            chain.append((node.id, spent))
            at = node.id
            if node.outcome is not None:
                leaf = node
                break
        if leaf is None:  # the text ended on a step delimiter: no answer
            leaf = g.tree.node(at)
            if leaf.outcome is None and not g.tree.children().get(leaf.id):
                leaf.outcome = "no_answer"
        if leaf.outcome == "truncated" and self.s.truncated_as == "drop":
            return
        win = 1 if leaf.outcome == "correct" else 0
        for n in path_to(g.tree, leaf.id):
            g.visits[n.id] = g.visits.get(n.id, 0) + 1
            g.wins[n.id] = g.wins.get(n.id, 0) + win
        for nid, before in chain:
            g.passes[nid] = g.passes.get(nid, 0) + 1
            g.pass_wins[nid] = g.pass_wins.get(nid, 0) + win
            g.pass_tokens[nid] = g.pass_tokens.get(nid, 0) + max(total - before, 0)

    def _growable(self, g: _Growth, n: TreeNode) -> bool:
        return n.outcome is None and n.depth < self.s.max_depth

    def _samples(self, g: _Growth, nid: str) -> tuple[int, int]:
        """(rollouts, correct) that the node's MC-score rests on. child_mean: the node's sampled
        completions (its `passes`; their count is the sum of its children's counts). leaf_fraction:
        every rollout through it, since each leaves a leaf in its subtree."""
        if self.s.score == "child_mean":
            return g.passes.get(nid, 0), g.pass_wins.get(nid, 0)
        return g.visits.get(nid, 0), g.wins.get(nid, 0)

    def _mcts_select(self, g: _Growth) -> list[tuple[str, int]]:
        """Up to `rollouts_per_round` start nodes for this round's rollouts (with repeats).

        Each pick is the growable node (not a leaf, above `max_depth`) where one more rollout
        is worth most (`_priority`: for child_mean, the shrink of its score's uncertainty per
        generated token); picks made this round count as samples (virtual loss) so one round
        spreads over several nodes. Choosing over the whole tree, rather than descending by UCT
        from the root, sends rollouts straight to the nodes that one rollout left with a single
        sample.
        """
        if self._over_budget(g):
            return []
        if self.s.ci_width > 0 and g.cost["rollouts"] > 0 and self._all_certain(g):
            return []
        left = (
            math.inf
            if not self.s.budget or self.s.budget_unit != "rollouts"
            else self.s.budget - g.cost["rollouts"]
        )
        kids = g.tree.children()
        # A rollout from a node adds a child (unless its first step repeats one): a node with
        # `children` children is full, and only its descendants can start rollouts. This
        # round's picks count as children already, or a round of several rollouts could give
        # one node more than `children` (a duplicate first step leaves room for the next round).
        cands = [
            n for n in g.tree.nodes if self._growable(g, n) and len(kids.get(n.id, [])) < self.s.children
        ]
        picks: dict[str, int] = {}
        virtual: dict[str, int] = {}
        for _ in range(int(min(self.s.rollouts_per_round, left))):
            if not cands:
                break
            best = max(cands, key=lambda n: self._priority(g, n, virtual))
            picks[best.id] = picks.get(best.id, 0) + 1
            if len(kids.get(best.id, [])) + picks[best.id] >= self.s.children:
                cands.remove(best)
            # The rollout will be a sample of the nodes whose `_samples` it joins: the pick's
            # (and, for the leaf fraction, its ancestors').
            for n in [best] if self.s.score == "child_mean" else path_to(g.tree, best.id):
                virtual[n.id] = virtual.get(n.id, 0) + 1
        return sorted(picks.items())

    def _priority(self, g: _Growth, n: TreeNode, virtual: dict[str, int]) -> float:
        """How much one more rollout from `n` is worth.

        child_mean: how much it shrinks the variance of the node's score, per token. With r
        sampled completions, w correct, the Beta(1, 1) posterior has mean p = (w+1)/(r+2) and
        variance p(1-p)/(r+3); one more shrinks it by p(1-p)/((r+3)(r+4)). The UCT bonus
        enters in the same units, c_explore^2 * ln(N+1) / ((r+3)(r+4)) for N rollouts so far.
        Divided by the mean tokens the node's past completions generated after it (a deep
        node's rollout is short).

        leaf_fraction: the standard error of the Beta(1, 1) posterior over the v rollouts through
        the node, sqrt(p(1-p)/(v+2)), plus c_explore * sqrt(ln(V+1)/(v+1)), V the root's. Not per
        token: a rollout started below a node adds a leaf to its subtree, so cheap deep starts
        add to the bias of every ancestor's leaf fraction (measured in
        benchmarks/bench_annotate.py: dividing by tokens raised its RMSE from 0.20 to 0.25).
        """
        r, w = self._samples(g, n.id)
        r += virtual.get(n.id, 0)
        p = (w + 1) / (r + 2)
        if self.s.score != "child_mean":
            n_root = g.visits.get(g.tree.root.id, 0)
            return math.sqrt(p * (1 - p) / (r + 2)) + self.s.c_explore * math.sqrt(
                math.log(n_root + 1) / (r + 1)
            )
        bonus = self.s.c_explore**2 * math.log(g.cost["rollouts"] + 1)
        return (p * (1 - p) + bonus) / ((r + 3) * (r + 4)) / self._rollout_tokens(g, n.id)

    def _rollout_tokens(self, g: _Growth, nid: str) -> float:
        """Expected generated tokens of a rollout from the node: the mean over its sampled
        completions, else over all of the problem's rollouts so far."""
        if g.passes.get(nid):
            return max(g.pass_tokens[nid] / g.passes[nid], 1.0)
        if g.cost["rollouts"]:
            return max(g.cost["generated_tokens"] / g.cost["rollouts"], 1.0)
        return 1.0

    def _all_certain(self, g: _Growth) -> bool:
        """Whether every inner node's interval, as the tree record will write it, is narrower
        than `ci_width` (leaves are graded outcomes, not estimates)."""
        recompute(g.tree, truncated_counts=self.s.truncated_as == "wrong")
        kids = g.tree.children()
        for n, ci in zip(g.tree.nodes, intervals(g.tree), strict=True):
            if n.id in kids and ci is not None and ci[1] - ci[0] > self.s.ci_width:
                return False
        return True


def grow_trees(
    problems: Iterable[Problem],
    policy: Policy,
    style: PromptStyle,
    settings: GrowSettings,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[Tree]:
    """Yield each problem's finished tree (in the order they finish), `batch_problems` at a time
    in flight.

    Two schedules, same trees (every request's seed depends only on its problem and node):
    - lockstep (in-process policies): every round's requests of all problems in flight go into
      one generate call per distinct n, so the hf backend batches across problems;
    - overlapped (a policy that says `concurrent = True`, i.e. a server): each problem sends its
      round as soon as its previous one came back, from its own thread, so the server is never
      left waiting on the slowest request of a round (the client's bounded concurrency still
      caps what is in flight)."""
    engine = Engine(policy, style, settings)
    if policy.concurrent and settings.batch_problems > 1:
        yield from _grow_overlapped(engine, iter(problems), on_round)
    else:
        yield from _grow_lockstep(engine, iter(problems), on_round)


def _grow_lockstep(engine: Engine, queue: Iterator[Problem], on_round: Callable | None) -> Iterator[Tree]:
    active: list[_Growth] = []
    round_no = 0
    while True:
        while len(active) < max(1, engine.s.batch_problems):
            p = next(queue, None)
            if p is None:
                break
            active.append(engine.start(p))
        if not active:
            return
        jobs: list[tuple[_Growth, str, int]] = []
        for g in active:
            reqs = engine.requests(g)
            if not reqs:
                g.done = True
            jobs.extend((g, nid, n) for nid, n in reqs)
        for g in [g for g in active if g.done]:
            yield engine.finish(g)
        active = [g for g in active if not g.done]
        if not jobs:
            continue
        tokens = engine.absorb_all(jobs, engine.generate(jobs))
        for g in active:
            engine.after_round(g)
        if on_round is not None:
            on_round({"round": round_no, "requests": len(jobs), "tokens": tokens})
        round_no += 1


def _grow_overlapped(engine: Engine, queue: Iterator[Problem], on_round: Callable | None) -> Iterator[Tree]:
    width = engine.s.batch_problems
    pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="grow")
    pending: dict[Future, tuple[_Growth, list]] = {}

    def advance(g: _Growth) -> Tree | None:
        """Send the problem's next round (one problem has at most one round in flight, so its
        state is touched by one thread at a time), or finish it and return its tree."""
        reqs = engine.requests(g)
        if not reqs:
            return engine.finish(g)
        jobs = [(g, nid, n) for nid, n in reqs]
        pending[pool.submit(engine.generate, jobs)] = (g, jobs)
        return None

    rounds = 0
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < width:
                p = next(queue, None)
                if p is None:
                    exhausted = True
                elif (tree := advance(engine.start(p))) is not None:
                    yield tree
            if not pending:
                return
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                g, jobs = pending.pop(fut)
                tokens = engine.absorb_all(jobs, fut.result())
                engine.after_round(g)
                if on_round is not None:
                    on_round({"round": rounds, "requests": len(jobs), "tokens": tokens})
                rounds += 1
                if (tree := advance(g)) is not None:
                    yield tree
    finally:
        # On an error, or when the consumer stops, do not wait for other problems' requests:
        # those problems are not written, and a rerun resumes them.
        pool.shutdown(wait=False, cancel_futures=True)
