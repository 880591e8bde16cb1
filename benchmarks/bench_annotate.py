"""Annotation benchmark: label quality per generated token (BFS vs MCTS), and throughput.

    python benchmarks/bench_annotate.py quality [--problems 40] [--seeds 0 1 2] [--score child_mean]
        [--world uniform|first-error]
    python benchmarks/bench_annotate.py throughput [--problems 4] [--model smollm2-135m-instruct]
    python benchmarks/bench_annotate.py throughput --base-url http://127.0.0.1:8011/v1 --problems 16

1. quality: a simulated policy whose steps have known probabilities, so every node's true
   MC-score (the probability that a completion from its state is correct, `World.value`) is
   computed exactly. Each problem is a random world: a state is the list of moves so far; it
   offers K moves with Dirichlet(1) probabilities; a move ends the solution with a probability
   that grows with depth (always at depth 6), and an ending move's answer is right or wrong:
   `--world uniform`, independently per move with a per-world rate, so values spread over
   (0, 1); `--world first-error`, wrong exactly when the path made an error move, so most
   values are exactly 0 or 1 as in real annotation data (see `World`). `bfs` runs at the
   paper's settings (5 children, depth 7) and `mcts` at a range of rollout budgets, both with
   `--score`; tokens are everything the policy generated.
   For each run it prints the RMSE of the inner nodes' MC-scores against the truth (not the
   root, which makes no training example, nor the leaves, whose score is their exact graded
   outcome) on the nodes each tree labels (with how many), and on the nodes both trees hold,
   for both; then the token ratio at which mcts first matches BFS's error on each (interpolated
   in log tokens between budgets), and against BFS with the paper's leaf fraction. A seed s
   takes worlds 10000*s ... and request seed s; the summary averages the ratios over seeds
   (goal: <= 1/3). It also prints the share of bfs's labelled inner nodes whose exact value is
   strictly between 0 and 1. Writes a PNG of RMSE vs tokens.
2. throughput: the same annotate run on a real model (hf backend, or `--base-url` of a vLLM
   server: `bash scripts/vllm_server.sh start`) with cross-problem batching
   and prefix sharing (many problems per generate call, n samples per prompt) against one
   prompt and one sample per call (the reference code's shape), same backend, same trees
   settings: generated tokens/s and labelled nodes/minute, and their ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import re
import sys
import time
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hiprm.annotate.grow import GrowSettings, grow_trees  # noqa: E402
from hiprm.policy.prompts import STYLES  # noqa: E402
from hiprm.policy.protocol import SamplingParams, cut_at_stop  # noqa: E402
from hiprm.records import Problem  # noqa: E402
from hiprm.tree import Tree, path_to  # noqa: E402

K = 4
WORLD_DEPTH = 6
_MOVE = re.compile(r"move (\d+) at (\d+)")


def _u(*key: object) -> float:
    h = hashlib.sha256("|".join(map(str, key)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


class World:
    """The simulated problem: move probabilities, endings and exact values per state.

    kind "uniform": an ending move's answer is right with a probability fixed per world in
    [0.25, 0.75], independently per move, so values spread over (0, 1) at every depth.
    kind "first-error": the shape of real step annotation (OmegaPRM, Math-Shepherd): a move is
    an error with a rate e fixed per world (e = 0.4 u^2, u uniform: most problems are easy); a
    solution with no error ends right, one with an error ends wrong. A state after an error has
    value exactly 0 and one whose every continuation is error-free exactly 1, so most nodes sit
    at 0 or 1 and the uncertain ones are those before a possible error."""

    def __init__(self, name: str, kind: str = "uniform"):
        self.name, self.kind = name, kind

    @cache  # noqa: B019 - one World per problem, lives for the benchmark
    def probs(self, state: tuple[int, ...]) -> tuple[float, ...]:
        g = [-math.log(max(_u(self.name, state, k, "p"), 1e-12)) for k in range(K)]
        s = sum(g)
        return tuple(x / s for x in g)

    def ends(self, state: tuple[int, ...], k: int) -> bool:
        d = len(state) + 1
        return d >= WORLD_DEPTH or _u(self.name, state, k, "end") < 0.15 + 0.12 * d

    def error(self, state: tuple[int, ...], k: int) -> bool:
        return _u(self.name, state, k, "error") < 0.4 * _u(self.name, "difficulty") ** 2

    def erred(self, state: tuple[int, ...]) -> bool:
        return any(self.error(state[:i], state[i]) for i in range(len(state)))

    def right(self, state: tuple[int, ...], k: int) -> bool:
        if self.kind == "first-error":
            return not (self.erred(state) or self.error(state, k))
        # Worlds differ in difficulty so that values spread over (0, 1).
        return _u(self.name, state, k, "right") < 0.25 + 0.5 * _u(self.name, "difficulty")

    @cache  # noqa: B019
    def value(self, state: tuple[int, ...]) -> float:
        v = 0.0
        for k, p in enumerate(self.probs(state)):
            if self.ends(state, k):
                v += p * self.right(state, k)
            else:
                v += p * self.value((*state, k))
        return v

    def step_text(self, state: tuple[int, ...], k: int) -> str:
        d = len(state)
        text = f"# Step {d + 1}\nmove {k} at {d}\n\n"
        if self.ends(state, k):
            text += f"# Answer\n\n{1 if self.right(state, k) else 0}\n# END!"
        return text

    def sample(self, state: tuple[int, ...], rng: random.Random) -> int:
        return rng.choices(range(K), weights=self.probs(state))[0]


class SimPolicy:
    """A Policy over Worlds: continues a prompt's moves by the world's probabilities."""

    concurrent = False

    def close(self) -> None:
        pass

    def __init__(self, kind: str = "uniform") -> None:
        self.kind = kind
        self.worlds: dict[str, World] = {}

    def render_chat(self, user_text: str) -> str:
        return user_text

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _state(self, prompt: str) -> tuple[World, tuple[int, ...]]:
        name = re.search(r"world (\d+)", prompt).group(0)
        world = self.worlds.setdefault(name, World(name, self.kind))
        body = prompt.split("-----------------\n")[-1]
        return world, tuple(int(m.group(1)) for m in _MOVE.finditer(body))

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        out = []
        seen: dict[str, int] = {}
        for i, prompt in enumerate(prompts):
            occ = seen[prompt] = seen.get(prompt, -1) + 1
            world, state = self._state(prompt)
            samples = []
            for j in range(params.n):
                rng = random.Random(f"{params.seed_for(i)}|{prompt}|{occ}|{j}")
                whole = params.stop == [STYLES["step"].end_stop]
                text, s = "", state
                while True:
                    k = world.sample(s, rng)
                    text += world.step_text(s, k)
                    if world.ends(s, k):
                        break
                    s = (*s, k)
                    if not whole:
                        text += f"# Step {len(s) + 1}"
                        break
                samples.append(cut_at_stop(text, params.stop, params.include_stop)[0])
            out.append(samples)
        return out


def node_states(tree: Tree) -> dict[str, tuple[int, ...]]:
    out = {}
    for n in tree.nodes[1:]:
        moves = tuple(int(m.group(1)) for s in path_to(tree, n.id)[1:] for m in [_MOVE.search(s.step)] if m)
        out[n.id] = moves
    return out


def exact(trees: list[Tree], policy: SimPolicy) -> dict[tuple[str, str], tuple[float, float]]:
    """(problem, node id) -> (the node's MC-score, its exact value), over the inner nodes a tree
    labels: not the root (no training example is made of it) and not the leaves (a leaf's score
    is its graded outcome, exact in every method)."""
    out = {}
    for t in trees:
        world = policy.worlds[re.search(r"world (\d+)", t.question).group(0)]
        kids = t.children()
        for nid, state in node_states(t).items():
            n = t.node(nid)
            if n.mc is None or nid not in kids:
                continue
            out[(t.problem_id, nid)] = (n.mc, world.value(state))
    return out


def errors(ex: dict[tuple[str, str], tuple[float, float]]) -> dict[tuple[str, str], float]:
    """`exact`'s output -> squared error of each node's MC-score against its exact value."""
    return {k: (mc - v) ** 2 for k, (mc, v) in ex.items()}


def mid_share(ex: dict[tuple[str, str], tuple[float, float]]) -> float:
    """Share of `exact`'s nodes whose exact value is strictly between 0 and 1."""
    return sum(1e-9 < v < 1 - 1e-9 for _, v in ex.values()) / max(len(ex), 1)


def rmse(sq: dict, keys=None) -> float:
    vals = [sq[k] for k in (keys if keys is not None else sq)]
    return math.sqrt(sum(vals) / len(vals)) if vals else float("nan")


def crossing(points: list[tuple[int, float]], target: float) -> float:
    """Tokens at which a curve of (tokens, error) first gets down to `target`, interpolated
    linearly in log(tokens) between the two budgets around it (nan if it never does).

    >>> round(crossing([(100, 0.3), (400, 0.1)], 0.2))
    200
    """
    prev = None
    for tokens, err in points:
        if err <= target:
            if prev is None:
                return float(tokens)
            t0, e0 = prev
            f = (e0 - target) / (e0 - err)
            return math.exp(math.log(t0) + f * (math.log(tokens) - math.log(t0)))
        prev = (tokens, err)
    return float("nan")


def quality_seed(args: argparse.Namespace, seed: int) -> dict:
    """One set of worlds (seed s: worlds 10000*s ...) and request seeds: bfs, then mcts per budget."""
    problems = [
        Problem(f"w{i}", f"Solve world {i}.", "1") for i in range(10000 * seed, 10000 * seed + args.problems)
    ]
    style = STYLES["step"]

    def grow(**kw) -> tuple[dict, int, int]:
        """(exact values, generated tokens, sampled steps): a node's `count` is how often its step
        was sampled at its parent, so the counts add up to every step the policy generated."""
        pol = SimPolicy(args.world)
        trees = list(grow_trees(problems, pol, style, GrowSettings(children=5, max_depth=7, batch_problems=64,
                                                                   seed=seed, **kw)))  # fmt: skip
        steps = sum(n.count for t in trees for n in t.nodes[1:])
        return exact(trees, pol), sum(t.cost["generated_tokens"] for t in trees), steps

    bfs_ex, bfs_tokens, bfs_steps = grow(mode="bfs", score=args.score)
    bfs_sq = errors(bfs_ex)
    paper_ex, paper_tokens, _ = grow(mode="bfs", score="leaf_fraction")
    paper_sq = errors(paper_ex)
    runs = []
    for budget in args.budgets:
        ex, tokens, steps = grow(mode="mcts", budget=budget, rollouts_per_round=4, score=args.score)
        sq = errors(ex)
        common = [k for k in sq if k in bfs_sq]
        runs.append(dict(budget=budget, tokens=tokens, steps=steps, nodes=len(sq), rmse=rmse(sq), common=len(common),
                         mcts_common=rmse(sq, common), bfs_common=rmse(bfs_sq, common)))  # fmt: skip
    bfs_err = rmse(bfs_sq)
    return dict(
        seed=seed, bfs_tokens=bfs_tokens, bfs_steps=bfs_steps, bfs_nodes=len(bfs_sq), bfs_rmse=bfs_err,
        paper_rmse=rmse(paper_sq),
        mid=mid_share(bfs_ex),
        runs=runs,
        # own labels: mcts's RMSE over the nodes it labels against bfs's over the nodes bfs labels
        own=crossing([(r["tokens"], r["rmse"]) for r in runs], bfs_err) / bfs_tokens,
        # the same nodes: both RMSEs over the nodes both trees hold
        common=crossing([(r["tokens"], r["mcts_common"] - r["bfs_common"]) for r in runs], 0.0) / bfs_tokens,
        paper=crossing([(r["tokens"], r["rmse"]) for r in runs], rmse(paper_sq)) / paper_tokens,
    )  # fmt: skip


def quality(args: argparse.Namespace) -> None:
    print(f"{args.problems} simulated problems per seed, score={args.score}; RMSE of inner-node MC-scores "
          "against the exact values (tokens: everything the policy generated)")  # fmt: skip
    results = []
    for seed in args.seeds:
        res = quality_seed(args, seed)
        results.append(res)
        print(f"\nseed {seed}: {res['mid']:.0%} of bfs's labelled inner nodes have an exact value strictly "
              "between 0 and 1")  # fmt: skip
        # tok/step: generated tokens per sampled step, i.e. per sample of one node's next step,
        # what every MC-score is estimated from.
        print(f"{'method':<34} {'tokens':>9} {'x bfs':>6} {'tok/step':>8} {'labelled':>8} {'RMSE':>7}   "
              f"{'common nodes':>12} {'mcts':>7} {'bfs':>7}")  # fmt: skip
        print(f"{'bfs (paper: 5 children, depth 7)':<34} {res['bfs_tokens']:>9} {1:>6.2f} "
              f"{res['bfs_tokens'] / res['bfs_steps']:>8.2f} {res['bfs_nodes']:>8} "
              f"{res['bfs_rmse']:>7.4f}   (leaf_fraction: {res['paper_rmse']:.4f})")  # fmt: skip
        for r in res["runs"]:
            print(f"{'mcts budget=' + str(r['budget']) + ' rollouts':<34} {r['tokens']:>9} "
                  f"{r['tokens'] / res['bfs_tokens']:>6.2f} {r['tokens'] / r['steps']:>8.2f} {r['nodes']:>8} "
                  f"{r['rmse']:>7.4f}   {r['common']:>12} {r['mcts_common']:>7.4f} {r['bfs_common']:>7.4f}")  # fmt: skip
        print(f"mcts matches bfs at {res['own']:.2f}x bfs's tokens on the nodes each labels, "
              f"{res['common']:.2f}x on the nodes both hold; "
              f"{res['paper']:.2f}x against bfs with the paper's leaf fraction (goal <= 0.33)")  # fmt: skip

    def summary(key: str) -> str:
        vals = [r[key] for r in results]
        ok = [v for v in vals if v == v]
        mean = sum(ok) / len(ok) if ok else float("nan")
        never = f", never within the budgets for {len(vals) - len(ok)}" if len(ok) < len(vals) else ""
        return f"{mean:.2f}x (seeds: {' '.join(f'{v:.2f}' for v in vals)}{never})"

    print(
        f"\ntokens mcts needs for bfs's RMSE, as a multiple of bfs's (goal <= 0.33), over {len(results)} seeds:"
    )
    print(f"  on the nodes each labels:       {summary('own')}")
    print(f"  on the nodes both trees hold:   {summary('common')}")
    print(f"  vs bfs with the leaf fraction:  {summary('paper')}")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for i, res in enumerate(results):
            ax.plot([r["tokens"] for r in res["runs"]], [r["rmse"] for r in res["runs"]], "o-", color="C0",
                    alpha=0.6, label="mcts (budgets)" if i == 0 else None)  # fmt: skip
            ax.plot([res["bfs_tokens"]], [res["bfs_rmse"]], "s", color="red",
                    label="bfs (paper settings)" if i == 0 else None)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("generated tokens (simulated)")
        ax.set_ylabel(f"RMSE of MC-scores vs truth ({args.score})")
        ax.legend()
        fig.tight_layout()
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.png, dpi=120)
        print(f"plot: {args.png}")


class OneAtATime:
    """The reference code's shape: every sample its own generate call (one prompt, n=1)."""

    def __init__(self, inner):
        self.inner = inner
        self.render_chat, self.count_tokens = inner.render_chat, inner.count_tokens
        self.concurrent, self.close = inner.concurrent, inner.close

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        out = []
        for i, p in enumerate(prompts):
            samples = []
            for j in range(params.n):
                one = SamplingParams(n=1, temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
                                     stop=params.stop, seed=params.seed_for(i) * 31 + j, include_stop=params.include_stop)  # fmt: skip
                samples.extend(self.inner.generate([p], one)[0])
            out.append(samples)
        return out


def throughput(args: argparse.Namespace) -> None:
    from hiprm.annotate.run import AnnotateConfig, load_problems
    from hiprm.policy.hf import HFPolicy
    from hiprm.policy.prompts import make_style

    problems, _ = load_problems(
        AnnotateConfig(dataset="math-train", order="shortest_question", limit=args.problems)
    )
    if args.base_url:
        from hiprm.policy.openai_http import OpenAIPolicy

        hf = OpenAIPolicy(
            base_url=args.base_url,
            model=args.served_model,
            concurrency=args.concurrency,
            tokenizer=args.model,
        )
    else:
        hf = HFPolicy(args.model, batch_size=64)
    print(f"backend: {args.base_url or 'hf (in process)'}; {len(problems)} problems, bfs children={args.children} "
          f"depth={args.depth}, {args.step_tokens} tokens per step")  # fmt: skip
    style = make_style("paragraph")
    settings = GrowSettings(mode="bfs", children=args.children, max_depth=args.depth, max_step_tokens=args.step_tokens,
                            batch_problems=len(problems))  # fmt: skip
    results = {}
    for name, pol in (("batched (hiprm)", hf), ("one prompt at a time", OneAtATime(hf))):
        t0 = time.perf_counter()
        trees = list(grow_trees(problems, pol, style, settings))
        secs = time.perf_counter() - t0
        tokens = sum(t.cost["generated_tokens"] for t in trees)
        nodes = sum(t.cost["labelled_nodes"] for t in trees)
        results[name] = (tokens / secs, nodes / secs * 60, secs, tokens, nodes)
        print(f"{name:<22} {secs:7.1f} s  {tokens:6d} tokens  {tokens / secs:7.1f} tok/s  {nodes:5d} nodes  "
              f"{nodes / secs * 60:7.1f} nodes/min", flush=True)  # fmt: skip
    a, b = results["batched (hiprm)"], results["one prompt at a time"]
    print(
        f"ratio batched / one-at-a-time: {a[0] / b[0]:.2f}x tokens/s, {a[1] / b[1]:.2f}x labelled nodes/min"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality", help="RMSE of MC-scores vs generated tokens on a simulated policy")
    q.add_argument("--problems", type=int, default=40)
    q.add_argument("--budgets", type=int, nargs="+", default=[8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512])
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="world sets and request seeds")
    q.add_argument("--png", default="runs/bench_annotate_quality.png")
    q.add_argument("--score", choices=["leaf_fraction", "child_mean"], default="child_mean")
    q.add_argument("--world", choices=["uniform", "first-error"], default="uniform", help="see World")
    t = sub.add_parser("throughput", help="batched vs one prompt at a time on a real model (hf backend)")
    t.add_argument("--problems", type=int, default=4)
    t.add_argument("--children", type=int, default=3)
    t.add_argument("--depth", type=int, default=2)
    t.add_argument("--step-tokens", type=int, default=32)
    t.add_argument("--model", default="smollm2-135m-instruct")
    t.add_argument(
        "--base-url", default="", help="an OpenAI-compatible server (vLLM) instead of the hf backend"
    )
    t.add_argument("--served-model", default="policy")
    t.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    quality(args) if args.what == "quality" else throughput(args)


if __name__ == "__main__":
    main()
