"""Which quickstart policy: accuracy and generated tokens/s of candidate policies on this machine,
with the hf backend's own decode loop, batched, on the quickstart's problem sets.

    python benchmarks/bench_policy_candidates.py                          # the embedded candidates
    python benchmarks/bench_policy_candidates.py --models smollm2-135m-instruct /tmp/gemma_model

For each model: the first `--problems` GSM8K test problems and `--train` GSM8K train problems in
`--order` (the quickstart's: those with the shortest reference solutions, its search and
annotation sets), the quickstart's prompt (`--style`, chat template on), greedy (one sample) and sampled (`--n` samples at temperature
`--temperature`, top-p 0.95), `--tokens` new tokens at most. Prints per model and set: greedy
accuracy, sampled pass@1 (mean over samples) and pass@n, with 95% intervals (normal, over
problems), and generated tokens/s (all samples, one batched `generate` call per set), and the
share of problems with some but not all samples right (what makes MC-scores strictly between
0 and 1 in annotation). `--threads` sets torch's threads (default: torch's).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hiprm.annotate.run import AnnotateConfig, load_problems  # noqa: E402
from hiprm.grading import is_equivalent  # noqa: E402
from hiprm.policy.hf import HFPolicy  # noqa: E402
from hiprm.policy.prompts import make_style  # noqa: E402
from hiprm.policy.protocol import SamplingParams  # noqa: E402
from hiprm.policy.steps import final_answer  # noqa: E402


def ci(values: list[float]) -> str:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / max(1, len(values) - 1))
    return f"{m:.3f} ± {1.96 * sd / math.sqrt(len(values)):.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
    ap.add_argument("--problems", type=int, default=24, help="GSM8K test problems")
    ap.add_argument("--train", type=int, default=8, help="GSM8K train problems (the annotation set)")
    ap.add_argument("--order", default="shortest_solution", help="file | shortest_solution | shortest_question")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--style", default="brief", help="prompt style (the quickstart's: brief)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    style = make_style(args.style)
    sets = {
        f"gsm8k-test ({args.order})": load_problems(AnnotateConfig(dataset="gsm8k", data_dir=args.data_dir,
                                                                   order=args.order, limit=args.problems))[0],
        f"gsm8k-train ({args.order})": load_problems(AnnotateConfig(dataset="gsm8k-train", data_dir=args.data_dir,
                                                                    order=args.order, limit=args.train))[0],
    }  # fmt: skip
    print(f"{'model':<30} {'set':<32} {'greedy':>14} {'pass@1 (T)':>14} {'pass@n':>14} {'mixed':>6} {'tok/s':>7}")
    for name in args.models:
        policy = HFPolicy(name, batch_size=args.batch_size)
        for set_name, problems in sets.items():
            prompts = [style.prompt_for(p.question, "", policy.render_chat) for p in problems]
            stop = [style.end_stop]
            t0, g0 = time.perf_counter(), policy.tokens_generated
            greedy = policy.generate(prompts, SamplingParams(n=1, temperature=0.0, max_tokens=args.tokens, stop=stop))
            sampled = policy.generate(prompts, SamplingParams(n=args.n, temperature=args.temperature, top_p=0.95,
                                                              max_tokens=args.tokens, stop=stop, seed=0,
                                                              seeds=list(range(len(prompts)))))  # fmt: skip
            secs, gen = time.perf_counter() - t0, policy.tokens_generated - g0

            def right(text: str, ref: str) -> float:
                a = final_answer(text, style)
                return float(a is not None and is_equivalent(a, ref))

            g = [right(s[0], p.answer) for s, p in zip(greedy, problems, strict=True)]
            per = [[right(t, p.answer) for t in s] for s, p in zip(sampled, problems, strict=True)]
            p1 = [sum(x) / len(x) for x in per]
            pn = [float(any(x)) for x in per]
            mixed = sum(0 < sum(x) < len(x) for x in per) / len(per)
            print(f"{name[-30:]:<30} {set_name:<32} {ci(g):>14} {ci(p1):>14} {ci(pn):>14} {mixed:6.2f} "
                  f"{gen / secs:7.1f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
