"""Tokens and seconds to score ProcessBench with one backbone in two formats: seqcls vs token.

    python benchmarks/bench_formats.py                      # SmolLM2-135M, 12 GSM8K + 12 MATH entries (~6 min)
    python benchmarks/bench_formats.py --entries 8 --reps 1 # a quick look
    python benchmarks/bench_formats.py --model PATH         # another backbone (a causal LM folder)

The same backbone gets two untrained 2-label heads (timing does not depend on the head's
weights): a `*ForSequenceClassification` read in hiprm's `seqcls` format (the paper's template:
one input per step, each repeating the question and the previous steps after a header) and a
`*ForTokenClassification` read in TRL's `token` layout (one sequence per solution, a reward at
each step separator). Both run through `load_scorer` with trie packing on, so the seqcls side
is hiprm's best (shared prefixes computed once), not a strawman; the table also gives seqcls
without the trie (one padded input per step, what a plain HF scorer does).

Reported per format: input tokens (the sum of the inputs' lengths), tokens run through the model
(after trie sharing), seconds (median over `--reps` interleaved repetitions) and the ratios
seqcls / token. fp32 on CPU, `--threads` torch threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "processbench"


def build_checkpoints(backbone: str, out: Path) -> dict[str, str]:
    """The backbone with a sequence-classification and a token-classification head, saved."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from hiprm.models import load_tokenizer, resolve_model_path

    path = resolve_model_path(backbone)
    tok = load_tokenizer(path)
    specs = {}
    for name, auto in (("seqcls", AutoModelForSequenceClassification), ("token", AutoModelForTokenClassification)):
        torch.manual_seed(0)
        model = auto.from_pretrained(path, num_labels=2, dtype=torch.float32)
        model.config.pad_token_id = tok.pad_token_id
        model.save_pretrained(out / name)
        tok.save_pretrained(out / name)
        specs[name] = str(out / name)
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="backbone (a causal LM folder or name)")
    ap.add_argument("--entries", type=int, default=12, help="ProcessBench entries per split (GSM8K and MATH)")
    ap.add_argument("--reps", type=int, default=1, help="interleaved repetitions; the median is reported")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--max-length", type=int, default=2048, help="token budget of one input, both formats")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(REPO / "src"))
    from hiprm.rm.eval_data import load_processbench
    from hiprm.rm.remote import load_scorer
    from hiprm.rm.scorer import score_solutions

    splits = load_processbench(DATA, ["gsm8k", "math"], args.entries, seed=0)
    items = [(e.question, e.steps) for entries in splits.values() for e in entries]
    n_steps = sum(len(s) for _, s in items)
    with tempfile.TemporaryDirectory() as tmp:
        specs = build_checkpoints(args.model, Path(tmp))
        runs = {"seqcls": f"{specs['seqcls']}?max_length={args.max_length}",
                "seqcls, no trie": f"{specs['seqcls']}?max_length={args.max_length}",
                "token": f"{specs['token']}?max_length={args.max_length}"}  # fmt: skip
        seconds: dict[str, list[float]] = {k: [] for k in runs}
        tokens: dict[str, tuple[int, int]] = {}
        for _ in range(args.reps):
            for name, spec in runs.items():
                scorer = load_scorer(spec, device="cpu", prefix_cache=name != "seqcls, no trie")
                score_solutions(scorer, items[:1])  # warm-up and the trie's one-time self-check
                scorer.stats.input_tokens = scorer.stats.trie_tokens = 0
                start = time.perf_counter()
                score_solutions(scorer, items)
                seconds[name].append(time.perf_counter() - start)
                run_tokens = scorer.stats.trie_tokens or scorer.stats.input_tokens
                tokens[name] = (scorer.stats.input_tokens, run_tokens)
    print(f"{args.model}: {len(items)} ProcessBench entries (GSM8K + MATH), {n_steps} steps; median of {args.reps}")
    print(f"{'format':<18}{'input tokens':>14}{'model tokens':>14}{'seconds':>10}{'steps/s':>10}")
    med = {k: statistics.median(v) for k, v in seconds.items()}
    for name in runs:
        print(f"{name:<18}{tokens[name][0]:>14}{tokens[name][1]:>14}{med[name]:>10.2f}{n_steps / med[name]:>10.1f}")
    print(f"ratio seqcls / token: input tokens {tokens['seqcls'][0] / tokens['token'][0]:.2f}x, model tokens "
          f"{tokens['seqcls'][1] / tokens['token'][1]:.2f}x, seconds {med['seqcls'] / med['token']:.2f}x "
          f"(without the trie: {med['seqcls, no trie'] / med['token']:.2f}x)")


if __name__ == "__main__":
    main()
