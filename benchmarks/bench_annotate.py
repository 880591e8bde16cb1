"""Annotation benchmark: label quality per generated token (BFS vs MCTS), and throughput.

    python benchmarks/bench_annotate.py quality [--problems 40] [--png runs/bench_annotate.png]
    python benchmarks/bench_annotate.py throughput [--problems 4] [--model smollm2-135m-instruct]
    python benchmarks/bench_annotate.py throughput --base-url http://127.0.0.1:8011/v1 --problems 16

1. quality: a simulated policy whose steps have known probabilities, so every node's true
   MC-score (its probability of reaching a correct answer) is computed exactly. Each problem is
   a random world: a state is the list of moves so far; it offers K moves with Dirichlet(1)
   probabilities; a move ends the solution with a probability that grows with depth (always at
   depth 6), and an ending move's answer is right or wrong (fixed per move). `bfs` runs at the
   paper's settings (5 children, depth 7) and `mcts` at a range of rollout budgets; for each run
   it prints generated tokens and the RMSE of the inner nodes' MC-scores against the truth, over
   the nodes each tree labelled and over the nodes both trees share, then the token ratio at
   which mcts first matches BFS's error (goal: <= 1/3). Writes a PNG of RMSE vs tokens.
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
from hiprm.annotate.tree import Tree, path_to  # noqa: E402
from hiprm.policy.prompts import STYLES  # noqa: E402
from hiprm.policy.protocol import SamplingParams, cut_at_stop  # noqa: E402
from hiprm.records import Problem  # noqa: E402

K = 4
WORLD_DEPTH = 6
_MOVE = re.compile(r"move (\d+) at (\d+)")


def _u(*key: object) -> float:
    h = hashlib.sha256("|".join(map(str, key)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


class World:
    """The simulated problem: move probabilities, endings and exact values per state."""

    def __init__(self, name: str):
        self.name = name

    @cache  # noqa: B019 - one World per problem, lives for the benchmark
    def probs(self, state: tuple[int, ...]) -> tuple[float, ...]:
        g = [-math.log(max(_u(self.name, state, k, "p"), 1e-12)) for k in range(K)]
        s = sum(g)
        return tuple(x / s for x in g)

    def ends(self, state: tuple[int, ...], k: int) -> bool:
        d = len(state) + 1
        return d >= WORLD_DEPTH or _u(self.name, state, k, "end") < 0.15 + 0.12 * d

    def right(self, state: tuple[int, ...], k: int) -> bool:
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

    def __init__(self) -> None:
        self.worlds: dict[str, World] = {}

    def render_chat(self, user_text: str) -> str:
        return user_text

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def _state(self, prompt: str) -> tuple[World, tuple[int, ...]]:
        name = re.search(r"world (\d+)", prompt).group(0)
        world = self.worlds.setdefault(name, World(name))
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


def errors(trees: list[Tree], policy: SimPolicy) -> dict[tuple[str, str], float]:
    """(problem, node id) -> squared error of the node's MC-score, inner nodes only."""
    out = {}
    for t in trees:
        world = policy.worlds[re.search(r"world (\d+)", t.question).group(0)]
        kids = t.children()
        for nid, state in node_states(t).items():
            n = t.node(nid)
            if n.mc is None or nid not in kids:  # leaves are exact in every method
                continue
            out[(t.problem_id, nid)] = (n.mc - world.value(state)) ** 2
    return out


def rmse(sq: dict, keys=None) -> float:
    vals = [sq[k] for k in (keys if keys is not None else sq)]
    return math.sqrt(sum(vals) / len(vals)) if vals else float("nan")


def quality(args: argparse.Namespace) -> None:
    problems = [Problem(f"w{i}", f"Solve world {i}.", "1") for i in range(args.problems)]
    style = STYLES["step"]

    def grow(settings: GrowSettings) -> tuple[list[Tree], int, SimPolicy]:
        pol = SimPolicy()
        trees = list(grow_trees(problems, pol, style, settings))
        return trees, sum(t.cost["generated_tokens"] for t in trees), pol

    bfs_trees, bfs_tokens, pol = grow(
        GrowSettings(mode="bfs", children=5, max_depth=7, batch_problems=64, score=args.score)
    )
    bfs_sq = errors(bfs_trees, pol)
    bfs_err = rmse(bfs_sq)
    rows = [("bfs (paper: 5 children, depth 7)", bfs_tokens, bfs_err, float("nan"), len(bfs_sq))]
    points = []
    first_match = None
    for budget in args.budgets:
        trees, tokens, pol = grow(GrowSettings(mode="mcts", children=5, max_depth=7, budget=budget, batch_problems=64,
                                               rollouts_per_round=4, score=args.score))  # fmt: skip
        sq = errors(trees, pol)
        common = [k for k in sq if k in bfs_sq]
        err = rmse(sq)
        rows.append(
            (
                f"mcts budget={budget} rollouts",
                tokens,
                err,
                rmse(sq, common) if common else float("nan"),
                len(sq),
            )
        )
        points.append((tokens, err))
        if first_match is None and err <= bfs_err:
            first_match = (budget, tokens)
    print(f"{args.problems} simulated problems; RMSE of inner-node MC-scores against the exact values")
    print(f"{'method':<36} {'tokens':>10} {'RMSE':>8} {'RMSE on BFS nodes':>18} {'nodes':>7}")
    for name, tokens, err, common, n in rows:
        print(f"{name:<36} {tokens:>10} {err:>8.4f} {common:>18.4f} {n:>7}")
    if first_match:
        print(f"mcts reaches BFS's RMSE ({bfs_err:.4f}) at budget {first_match[0]} with {first_match[1]} tokens: "
              f"{first_match[1] / bfs_tokens:.3f} x BFS's tokens (goal <= 0.333)")  # fmt: skip
    else:
        print(f"mcts did not reach BFS's RMSE ({bfs_err:.4f}) within the budgets tried")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label="mcts (budgets)")
        ax.plot([bfs_tokens], [bfs_err], "s", color="red", label="bfs (paper settings)")
        ax.set_xscale("log")
        ax.set_xlabel("generated tokens (simulated)")
        ax.set_ylabel("RMSE of MC-scores vs truth")
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

        hf = OpenAIPolicy(base_url=args.base_url, model=args.served_model, concurrency=args.concurrency, tokenizer=args.model)
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
    q.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    q.add_argument("--png", default="runs/bench_annotate_quality.png")
    q.add_argument("--score", choices=["leaf_fraction", "child_mean"], default="leaf_fraction")
    t = sub.add_parser("throughput", help="batched vs one prompt at a time on a real model (hf backend)")
    t.add_argument("--problems", type=int, default=4)
    t.add_argument("--children", type=int, default=3)
    t.add_argument("--depth", type=int, default=2)
    t.add_argument("--step-tokens", type=int, default=32)
    t.add_argument("--model", default="smollm2-135m-instruct")
    t.add_argument("--base-url", default="", help="an OpenAI-compatible server (vLLM) instead of the hf backend")
    t.add_argument("--served-model", default="policy")
    t.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    quality(args) if args.what == "quality" else throughput(args)


if __name__ == "__main__":
    main()
