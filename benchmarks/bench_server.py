"""Generated tokens/s that `hiprm annotate` and `hiprm eval` get from a policy server, against
the server's own ceiling: what a saturating client gets from the same server in the same run.

    bash scripts/vllm_server.sh start                      # the embedded SmolLM2 on vLLM's CPU build
    python benchmarks/bench_server.py --base-url http://127.0.0.1:8011/v1 [--problems 32]

1. saturating client: `--clients` threads, each sending completion requests back to back (the
   annotation prompts, n=1, `--tokens` new tokens, no stop) for the same number of requests as
   annotate makes; tokens/s from the server's `usage`;
2. `hiprm annotate` (mcts, `batch_problems` = all problems in flight, `policy.concurrency` =
   clients) on the same problems;
3. `hiprm eval` (majority / pass over N whole solutions) with `executor=threads`, `workers`
   problems in flight, against `executor=local` (one problem at a time, today's default).
Prints tokens/s of each and the ratio to the saturating client (goal: >= 0.8 with enough
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import httpx  # noqa: E402

from hiprm.annotate.run import AnnotateConfig, load_problems  # noqa: E402
from hiprm.annotate.run import run as annotate  # noqa: E402
from hiprm.artifacts import read_appended  # noqa: E402
from hiprm.config import load_config  # noqa: E402
from hiprm.search.run import EvalConfig  # noqa: E402
from hiprm.search.run import run as evaluate  # noqa: E402


def saturate(base: str, model: str, prompts: list[str], tokens: int, clients: int) -> tuple[float, int]:
    """(tokens/s, tokens): `clients` threads sending the prompts round robin, back to back."""
    lock = threading.Lock()
    queue = list(prompts)
    total = [0]

    def worker() -> None:
        with httpx.Client(timeout=600) as c:
            while True:
                with lock:
                    if not queue:
                        return
                    prompt = queue.pop()
                r = c.post(base + "/completions", json={"model": model, "prompt": prompt, "max_tokens": tokens,
                                                         "temperature": 0.8, "ignore_eos": True})  # fmt: skip
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
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--budget", type=int, default=4, help="mcts rollouts per problem")
    ap.add_argument("--workers", type=int, default=16, help="eval problems in flight")
    args = ap.parse_args()
    base = args.base_url.rstrip("/")
    tmp = Path(tempfile.mkdtemp(prefix="bench_server_"))
    common = ["dataset=math-train", "order=shortest_question", f"limit={args.problems}", "policy.backend=openai",
              f"policy.base_url={base}", f"policy.model={args.model}", f"policy.tokenizer={args.tokenizer}",
              f"policy.concurrency={args.clients}", "progress=false", "prompt.style=paragraph"]  # fmt: skip
    problems, _ = load_problems(
        AnnotateConfig(dataset="math-train", order="shortest_question", limit=args.problems)
    )
    from hiprm.policy.prompts import make_style

    style = make_style("paragraph")
    prompts = [style.prompt_for(p.question, "") for p in problems] * args.budget
    sat, sat_tokens = saturate(base, args.model, prompts, args.tokens, args.clients)
    print(
        f"saturating client ({args.clients} threads, {len(prompts)} requests): {sat:7.1f} tok/s ({sat_tokens} tokens)"
    )

    t0 = time.perf_counter()
    trees = annotate(load_config(AnnotateConfig, None, [*common, "mode=mcts", f"budget={args.budget}", "children=4",
                                                        f"max_solution_tokens={args.tokens}", f"batch_problems={args.problems}",
                                                        f"rollouts_per_round={args.budget}", f"out_dir={tmp / 'ann'}"]))  # fmt: skip
    secs = time.perf_counter() - t0
    gen = sum(t["cost"]["generated_tokens"] for t in read_appended(trees))
    print(f"hiprm annotate (mcts, {args.problems} problems in flight): {gen / secs:7.1f} tok/s ({gen} tokens, {secs:.1f} s) "
          f"= {gen / secs / sat:.2f} x the saturating client")  # fmt: skip
    rows = {}
    for executor in ("local", "threads"):
        t0 = time.perf_counter()
        out = evaluate(load_config(EvalConfig, None, [
            *[c.replace("dataset=math-train", "dataset=gsm8k").replace("order=shortest_question", "limit=" + str(args.problems))
              for c in common if not c.startswith("limit=")],
            "methods=[majority,pass]", "n_values=[4]", "subsamples=1", f"max_solution_tokens={args.tokens}",
            f"executor={executor}", f"workers={args.workers}", f"out_dir={tmp / ('eval_' + executor)}",
        ]))  # fmt: skip
        secs = time.perf_counter() - t0
        gen = json.loads((out / "metrics.json").read_text())["cost"]["tokens_generated"]
        rows[executor] = gen / secs
        print(f"hiprm eval executor={executor:<7} ({args.workers if executor == 'threads' else 1} in flight): "
              f"{gen / secs:7.1f} tok/s ({gen} tokens, {secs:.1f} s) = {gen / secs / sat:.2f} x the saturating client")  # fmt: skip
    print(f"eval threads / local: {rows['threads'] / rows['local']:.2f}x")


if __name__ == "__main__":
    main()
