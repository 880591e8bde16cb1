"""Policy sampling speed: the hf policy's own decode loop against transformers' `generate`.

    python benchmarks/bench_policy.py                        # the embedded SmolLM2-135M-Instruct
    python benchmarks/bench_policy.py --problems 8 --repeat 3

Both sides are `hiprm.policy.hf.HFPolicy` on the same weights, prompts, batch size and shared
prefill; only `decoder` differs ("hiprm": `hiprm.policy.decode`; "generate": `model.generate`
with the same stop-string criterion, the baseline a Hugging Face user would write). Two
workloads, the quickstart's:
- `step`: next steps of step-level search: `--problems` GSM8K test questions in the paragraph
  prompt, with 0-2 steps already written, n=4, temperature 0.7, top_p 0.95, at most 48 tokens,
  stopping at the paragraph break;
- `rollout`: whole solutions of MCTS annotation: n=4, temperature 0.8, at most 96 tokens,
  stopping at `# END!`.
The runs alternate (ours, theirs, ours, ...) and each side's total generated tokens over its
total seconds is reported, with the ratio. The samples differ (the random numbers are used
differently), so the token counts differ a little; greedy decoding is checked to give equal text
first. Uses fp32 on CPU and the default torch thread count.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def prompts_for(policy, problems: int) -> list[str]:
    from hiprm.policy.build import PromptConfig, build_style

    style = build_style(PromptConfig(style="paragraph"))
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:problems]]
    out = []
    for i, row in enumerate(rows):
        steps = [s for s in row["answer"].split("\n") if s and not s.startswith("####")][: i % 3]
        previous = "".join(s + "\n\n" for s in steps)
        out.append(style.prompt_for(row["question"], previous, policy.render_chat))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="HF folder or embedded model name")
    ap.add_argument("--problems", type=int, default=6, help="GSM8K test questions (prompts per call)")
    ap.add_argument("--batch-size", type=int, default=16, help="policy.batch_size (the quickstart's: 16)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per side and workload")
    args = ap.parse_args()

    from hiprm.policy.hf import HFPolicy
    from hiprm.policy.protocol import SamplingParams

    policy = HFPolicy(args.model, batch_size=args.batch_size)
    prompts = prompts_for(policy, args.problems)
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=24, stop=["\n\n"])
    texts = {}
    for decoder in ("hiprm", "generate"):
        policy.decoder = decoder
        texts[decoder] = policy.generate(prompts[:3], greedy)
    print(f"greedy text equal: {texts['hiprm'] == texts['generate']}")
    workloads = {
        "step": SamplingParams(n=4, temperature=0.7, top_p=0.95, max_tokens=48, stop=["\n\n"], seed=1),
        "rollout": SamplingParams(n=4, temperature=0.8, top_p=1.0, max_tokens=96, stop=["# END!"], seed=1),
    }
    print(f"{args.problems} prompts x n=4, policy.batch_size={args.batch_size}, {args.repeat} runs a side")
    print("| workload | generate tok/s | hiprm tok/s | ratio |")
    print("|---|---|---|---|")
    for name, params in workloads.items():
        tokens = {"hiprm": 0, "generate": 0}
        seconds = {"hiprm": 0.0, "generate": 0.0}
        for r in range(args.repeat):
            for decoder in ("hiprm", "generate"):
                policy.decoder = decoder
                before = policy.tokens_generated
                start = time.perf_counter()
                policy.generate(prompts, SamplingParams(**{**params.__dict__, "seed": r}))
                seconds[decoder] += time.perf_counter() - start
                tokens[decoder] += policy.tokens_generated - before
        ours, theirs = tokens["hiprm"] / seconds["hiprm"], tokens["generate"] / seconds["generate"]
        print(f"| {name} | {theirs:.1f} ({tokens['generate']} in {seconds['generate']:.1f} s) "
              f"| {ours:.1f} ({tokens['hiprm']} in {seconds['hiprm']:.1f} s) | **{ours / theirs:.2f}x** |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
