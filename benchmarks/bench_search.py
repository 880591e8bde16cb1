"""`hiprm eval` throughput with its searches batched across problems, against one problem at a
time and against the policy server's own ceiling, in the same run.

    python benchmarks/bench_search.py hf [--problems 8] [--prm runs/quickstart/rm/prm/model]
    bash scripts/vllm_server.sh start     # the embedded SmolLM2 on vLLM's CPU build
    python benchmarks/bench_search.py server --base-url http://127.0.0.1:8011/v1 [--problems 16]

Both run the same eval on GSM8K test problems: majority and PRM best-of-N over N whole solutions,
the paper's step search and beam search (N beams, M = 2), `--n` candidates, with a reward model
(`--prm`, default the quickstart's PRM).

- hf: the hf backend (in process) with `batch_problems` = all problems (one generate call per
  round for all of them) against `batch_problems=1` (one problem at a time). Same seeds: every
  request carries its problem's seed and the hf decoder samples each row from its own generator,
  so both must give the same records (checked, and printed). Prints generated tokens/s of each
  and the ratio.
- server: the openai backend against `--base-url`: the batched eval's tokens/s against the
  replay ceiling (every request body the run sent, recorded on its HTTP client, sent again by a
  saturating client: `bench_server.saturate`) and against `batch_problems=1`. Goal: >= 0.8 x replay.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from hiprm.config import load_config  # noqa: E402
from hiprm.policy.build import build_policy  # noqa: E402
from hiprm.search.report import read_done  # noqa: E402
from hiprm.search.run import EvalConfig  # noqa: E402
from hiprm.search.run import run as evaluate  # noqa: E402

METHODS = "[majority,prm-min,prm-step,prm-beam]"


def eval_args(args: argparse.Namespace, out: Path, batch: int) -> list[str]:
    return [
        "dataset=gsm8k", f"limit={args.problems}", f"methods={METHODS}", f"n_values=[{args.n}]", "subsamples=1",
        f"prm={args.prm}", "rm.device=cpu", "beam_width=2", f"max_solution_tokens={args.tokens}",
        f"max_step_tokens={args.step_tokens}", f"max_steps={args.max_steps}", "prompt.style=paragraph",
        "progress=false", f"batch_problems={batch}", f"out_dir={out}", f"seed={args.seed}",
    ]  # fmt: skip


def records(out: Path) -> list[dict[str, Any]]:
    """What must not depend on batching: every result and every generated text."""
    keep = []
    for r in read_done(out / "problems.jsonl"):
        keep.append({"id": r["problem_id"], "results": r["results"],
                     "candidates": [c["text"] for c in r.get("candidates", [])],
                     "paths": [p["text"] for p in r.get("paths", [])],
                     "searches": [s["text"] for s in r.get("searches", [])]})  # fmt: skip
    return keep


def tokens(out: Path) -> int:
    return json.loads((out / "metrics.json").read_text())["cost"]["tokens_generated"]


def timed(cfg: EvalConfig, policy: Any = None) -> tuple[float, Path]:
    t0 = time.perf_counter()
    out = evaluate(cfg, policy=policy)
    return time.perf_counter() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["hf", "server"])
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--n", type=int, default=4, help="N: solutions, step candidates, beams")
    ap.add_argument("--prm", default=str(ROOT / "runs/quickstart/rm/prm/model"))
    ap.add_argument("--model", default="smollm2-135m-instruct", help="hf: the policy; server: the served name")
    ap.add_argument("--base-url", default="", help="server mode: the policy server's /v1 URL")
    ap.add_argument("--clients", type=int, default=32, help="server mode: requests in flight")
    ap.add_argument("--tokens", type=int, default=96, help="max tokens of a whole solution")
    ap.add_argument("--step-tokens", type=int, default=32)
    ap.add_argument("--max-steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_search_"))
    if args.mode == "hf":
        extra = [f"policy.model={args.model}", "policy.batch_size=64"]
        runs = {}
        for name, batch in (("one problem at a time", 1), (f"{args.problems} problems batched", args.problems)):
            cfg = load_config(EvalConfig, None, [*eval_args(args, tmp / f"b{batch}", batch), *extra])
            secs, out = timed(cfg)
            runs[name] = (secs, out)
            print(f"{name}: {tokens(out) / secs:.1f} generated tokens/s ({tokens(out)} tokens, {secs:.1f} s)", flush=True)
        (s1, o1), (sb, ob) = runs.values()
        same = records(o1) == records(ob)
        print(f"\nbatched / one at a time: {(tokens(ob) / sb) / (tokens(o1) / s1):.2f}x tokens/s; "
              f"identical records: {'yes' if same else 'NO'}")  # fmt: skip
        return 0 if same else 1
    if not args.base_url:
        ap.error("server mode needs --base-url")
    from bench_server import saturate

    base = args.base_url.rstrip("/")
    extra = ["policy.backend=openai", f"policy.base_url={base}", f"policy.model={args.model}",
             "policy.tokenizer=smollm2-135m-instruct", f"policy.concurrency={args.clients}"]  # fmt: skip
    rows = []
    for name, batch in ((f"{args.problems} problems batched", args.problems), ("one problem at a time", 1)):
        cfg = load_config(EvalConfig, None, [*eval_args(args, tmp / f"s{batch}", batch), *extra])
        policy = build_policy(cfg.policy)
        bodies: list[dict[str, Any]] = []
        policy.pool.client.event_hooks["request"].append(lambda request, b=bodies: b.append(json.loads(request.content)))
        try:
            secs, out = timed(cfg, policy)
        finally:
            policy.close()
        rate = tokens(out) / secs
        replay = saturate(base, args.model, [{k: v for k, v in b.items() if k != "model"} for b in bodies],
                          args.clients)[0]  # fmt: skip
        rows.append((name, rate, replay))
        print(f"{name}: {rate:.1f} tok/s ({tokens(out)} tokens, {secs:.1f} s, {len(bodies)} requests); "
              f"replay {replay:.1f} tok/s", flush=True)  # fmt: skip
    print(f"\n{'run':<36} {'tok/s':>7} {'replay':>7} {'x replay':>8}")
    for name, rate, replay in rows:
        print(f"{name:<36} {rate:7.1f} {replay:7.1f} {rate / replay:8.2f}")
    print(f"batched / one at a time: {rows[0][1] / rows[1][1]:.2f}x (goal: batched >= 0.8 x replay)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
