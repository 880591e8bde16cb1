"""Generated tokens/s that `hiprm annotate` and `hiprm eval` get from a policy server, against
the server's own ceiling: what a saturating client gets from the same server in the same run.

    bash scripts/vllm_server.sh start                      # the embedded SmolLM2 on vLLM's CPU build
    python benchmarks/bench_server.py --base-url http://127.0.0.1:8011/v1 [--problems 32]

Two ceilings, both saturating clients (`--clients` threads sending requests back to back, tokens
counted from the server's `usage`):
- **replay** (the goal's yardstick): every request body hiprm's run sent (prompt, n, stops, seed,
  max_tokens), recorded on its HTTP client, then sent again with no waiting between them: the same work, with
  nothing of hiprm's scheduling (rounds, problems waiting on their slowest sample). The same
  seeds give the same samples, so both do the same generation. Its tokens/s over hiprm's is how
  well hiprm keeps the server busy;
- **synthetic**: root prompts, n=1, exactly `--tokens` new tokens (`ignore_eos`), no stop: the
  server's decode ceiling. It flatters the server against any real workload (long uniform
  samples, one prefill each, no prompt growing with the steps), so it is printed for reference:
  how far real annotation requests are from it is the server's business, not the client's.
A fresh server is slow on its first batches (kernels warming up for new shapes), so an untimed
warm-up comes first.

Runs: `hiprm annotate` (mcts, `budget` rollouts in rounds of `--rollouts-per-round`,
`batch_problems` = all problems in flight, `policy.concurrency` = clients); `hiprm eval`
(majority / pass over N whole solutions) with `executor=threads` (`--workers` problems in
flight), and `executor=local` (one problem at a time, the default; a rate, so measured on the
first `--local-problems` only). Prints tokens/s of each and the ratios (goal: >= 0.8 with enough
problems in flight).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import httpx  # noqa: E402

from hiprm.annotate.run import AnnotateConfig, load_problems  # noqa: E402
from hiprm.annotate.run import run as annotate  # noqa: E402
from hiprm.artifacts import read_appended  # noqa: E402
from hiprm.config import load_config  # noqa: E402
from hiprm.policy.build import build_policy  # noqa: E402
from hiprm.policy.prompts import make_style  # noqa: E402
from hiprm.search.run import EvalConfig  # noqa: E402
from hiprm.search.run import run as evaluate  # noqa: E402


def saturate(base: str, model: str, bodies: list[dict[str, Any]], clients: int) -> tuple[float, int]:
    """(tokens/s, tokens): `clients` threads sending the request bodies in order, back to back."""
    lock = threading.Lock()
    queue = list(reversed(bodies))
    total = [0]

    def worker() -> None:
        with httpx.Client(timeout=1800) as c:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                r = c.post(base + "/completions", json={"model": model, **body})
                r.raise_for_status()
                with lock:
                    total[0] += r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    return total[0] / secs, total[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", default="policy", help="the served model name")
    ap.add_argument("--tokenizer", default="smollm2-135m-instruct")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--clients", type=int, default=32, help="requests in flight (hiprm's policy.concurrency too)")
    ap.add_argument("--tokens", type=int, default=64, help="max new tokens per sample")
    ap.add_argument("--budget", type=int, default=8, help="mcts rollouts per problem")
    ap.add_argument("--rollouts-per-round", type=int, default=4)
    ap.add_argument("--workers", type=int, default=16, help="eval problems in flight")
    ap.add_argument("--local-problems", type=int, default=8, help="problems for eval executor=local (a rate)")
    ap.add_argument("--synthetic-clients", type=int, nargs="*", default=[32, 128],
                    help="client counts for the synthetic ceiling (the best is kept)")  # fmt: skip
    args = ap.parse_args()
    base = args.base_url.rstrip("/")
    tmp = Path(tempfile.mkdtemp(prefix="bench_server_"))
    common = ["dataset=math-train", "order=shortest_question", f"limit={args.problems}", "policy.backend=openai",
              f"policy.base_url={base}", f"policy.model={args.model}", f"policy.tokenizer={args.tokenizer}",
              f"policy.concurrency={args.clients}", "progress=false", "prompt.style=paragraph"]  # fmt: skip
    problems, _ = load_problems(
        AnnotateConfig(dataset="math-train", order="shortest_question", limit=args.problems)
    )
    style = make_style("paragraph")
    roots = [style.prompt_for(p.question, "") for p in problems]
    synthetic = [{"prompt": p, "max_tokens": args.tokens, "temperature": 0.8, "ignore_eos": True} for p in roots]
    saturate(base, args.model, synthetic * 2, args.clients)  # warm-up, untimed
    synth = {}
    for c in args.synthetic_clients:
        synth[c] = saturate(base, args.model, synthetic * max(1, (2 * c) // len(synthetic)), c)[0]
        print(f"synthetic ceiling, {c} clients: {synth[c]:7.1f} tok/s", flush=True)
    best_synth = max(synth.values()) if synth else float("nan")

    rows = []

    def measure(name: str, cfg: Any, runner: Any, tokens_of: Any) -> None:
        policy = build_policy(cfg.policy)
        bodies: list[dict[str, Any]] = []  # every request body exactly as sent (list.append is atomic)
        policy.pool.client.event_hooks["request"].append(lambda request: bodies.append(json.loads(request.content)))
        t0 = time.perf_counter()
        try:
            out = runner(cfg, policy=policy)
        finally:
            policy.close()
        secs = time.perf_counter() - t0
        gen = tokens_of(out)
        rate = gen / secs
        replay = saturate(base, args.model, [{k: v for k, v in b.items() if k != "model"} for b in bodies],
                          args.clients)[0]  # fmt: skip
        rows.append((name, rate, gen, secs, len(bodies), replay))
        print(f"{name}: {rate:.1f} tok/s ({gen} tokens, {secs:.1f} s, {len(bodies)} requests); "
              f"replayed by a saturating client: {replay:.1f} tok/s", flush=True)  # fmt: skip

    measure(
        f"hiprm annotate (mcts, {args.problems} problems in flight)",
        load_config(AnnotateConfig, None, [*common, "mode=mcts", f"budget={args.budget}", "children=4",
                                           f"max_solution_tokens={args.tokens}", f"batch_problems={args.problems}",
                                           f"rollouts_per_round={args.rollouts_per_round}", f"out_dir={tmp / 'ann'}"]),  # fmt: skip
        annotate,
        lambda trees: sum(t["cost"]["generated_tokens"] for t in read_appended(trees)),
    )
    for executor in ("threads", "local"):
        limit = args.problems if executor == "threads" else min(args.problems, args.local_problems)
        inflight = args.workers if executor == "threads" else 1
        measure(
            f"hiprm eval executor={executor} ({limit} problems, {inflight} in flight)",
            load_config(EvalConfig, None, [
                *[c.replace("dataset=math-train", "dataset=gsm8k").replace("order=shortest_question", f"limit={limit}")
                  for c in common if not c.startswith("limit=")],
                "methods=[majority,pass]", "n_values=[4]", "subsamples=1", f"max_solution_tokens={args.tokens}",
                f"executor={executor}", f"workers={args.workers}", f"out_dir={tmp / ('eval_' + executor)}",
            ]),  # fmt: skip
            evaluate,
            lambda out: json.loads((out / "metrics.json").read_text())["cost"]["tokens_generated"],
        )

    print(f"\n{'run':<52} {'tok/s':>7} {'replay':>7} {'x replay':>8} {'x synthetic':>11}")
    for name, rate, _gen, _secs, _n, replay in rows:
        print(f"{name:<52} {rate:7.1f} {replay:7.1f} {rate / replay:8.2f} {rate / best_synth:11.2f}")
    print(f"(synthetic ceiling: {best_synth:.1f} tok/s, the best of {sorted(synth)} clients; goal: >= 0.8 x replay)")


if __name__ == "__main__":
    main()
