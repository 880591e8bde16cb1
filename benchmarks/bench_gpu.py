"""Scoring and training tokens/s of hiprm's trie batches against plain transformers rows, on any
device, measured in the same run (the numbers scripts/gpu_check.sh reports).

    python benchmarks/bench_gpu.py --device cuda --out runs/gpu_check/bench.json   # SmolLM2-135M's shape, bf16
    python benchmarks/bench_gpu.py --device cpu --layers 2 --solutions 4          # what `gpu_check.sh --cpu` runs

The model has SmolLM2-135M's architecture (30 layers, hidden 576, 9 heads, 3 KV heads, vocabulary
49,152) with random weights: speed does not depend on the weights, and the GPU machine has no
network to fetch them. Inputs are PRM800K-shaped token sequences: per solution a 120-token
question, `--steps` steps of 40 tokens, and at each step 3 rated alternative completions (the
examples of one solution are prefixes of each other, as in PRM800K and in step search).

- scoring: every step prefix's reward. Ours: all prefixes as one token trie (`hiprm.rm.trie`,
  what `Scorer` runs). Baseline: a plain `AutoModelForSequenceClassification` forward over rows
  sorted by length and padded per batch (`--score-batch` rows), the way one would score with
  transformers alone.
- training: optimizer steps of `--train-batch` examples. Ours: one trie batch per step (what
  `rm train` runs). Baseline: rows grouped by length, padded per micro-batch of `--micro-batch`,
  gradients accumulated to the same batch (what `Trainer` with `group_by_length` does).
Both sides get the same examples, model, dtype and optimizer; tokens/s counts each example's own
tokens. Ratios > 1 mean hiprm is faster. Also checks that both give the same rewards.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


def build_model(args: argparse.Namespace):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=args.layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, tie_word_embeddings=True, num_labels=2, pad_token_id=2,
                      attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(args.seed)
    return LlamaForSequenceClassification(cfg).to(device=args.device, dtype=getattr(torch, args.dtype))


def examples(args: argparse.Namespace) -> list[list[int]]:
    """Token sequences ending at each rated step: PRM800K-shaped, shared prefixes."""
    rng = random.Random(args.seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(3, 49152) for _ in range(n)]

    out = []
    for _ in range(args.solutions):
        prefix = tokens(120)
        for _ in range(args.steps):
            alternatives = [tokens(40) for _ in range(3)]
            out += [prefix + a for a in alternatives]
            prefix = prefix + alternatives[0]
    return out


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def score_ours(model, seqs, args) -> list[float]:
    import torch

    from hiprm.rm import trie

    trie.use_trie_attention(model)
    packed = trie.pack(seqs, args.row_tokens)
    out = [0.0] * len(seqs)
    for r in range(len(packed.ids)):
        b = trie.tensors(packed, 2, [r])
        batch = {k: (v.to(args.device) if k != "sequences" else v) for k, v in b.items()}
        with torch.inference_mode():
            logits = trie.classifier_logits(model, batch).float().softmax(-1)[:, 1].tolist()
        for k, v in zip(b["sequences"], logits, strict=True):
            out[k] = v
    trie.restore_attention(model, "sdpa")
    return out


def score_rows(model, seqs, args) -> list[float]:
    import torch

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    for s in range(0, len(order), args.score_batch):
        idx = order[s : s + args.score_batch]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), 2, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, : len(seqs[i])] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(args.device), attention_mask=mask.to(args.device)).logits
        for r, v in zip(idx, logits.float().softmax(-1)[:, 1].tolist(), strict=True):
            out[r] = v
    return out


def train_steps(model, seqs, args, mode: str) -> None:
    import torch

    from hiprm.rm import trie
    from hiprm.rm.data_collate import PadCollator, soft_label_loss

    rng = random.Random(args.seed)
    labels = [float(rng.random() < 0.5) for _ in seqs]
    feats = [{"input_ids": torch.tensor(s), "labels": y} for s, y in zip(seqs, labels, strict=True)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    if mode == "trie":
        trie.use_trie_attention(model)
    order = trie.token_order(seqs) if mode == "trie" else sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for step in range(args.train_steps):
        chunk = [feats[i] for i in order[(step * args.train_batch) % len(order):][: args.train_batch]]
        opt.zero_grad()
        if mode == "trie":
            batch = trie.TrieCollator(2, args.row_tokens)(chunk)
            batch = {k: v.to(args.device) for k, v in batch.items()}
            loss = soft_label_loss(trie.classifier_logits(model, batch).float(), batch["labels"])
            loss.backward()
        else:
            for s in range(0, len(chunk), args.micro_batch):
                b = PadCollator(2)(chunk[s : s + args.micro_batch])
                logits = model(input_ids=b["input_ids"].to(args.device),
                               attention_mask=b["attention_mask"].to(args.device)).logits  # fmt: skip
                part = soft_label_loss(logits.float(), b["labels"].to(args.device))
                (part * len(b["labels"]) / len(chunk)).backward()
        opt.step()
    if mode == "trie":
        trie.restore_attention(model, "sdpa")
    model.eval()


def timed(fn, device: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--dtype", default="", help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--layers", type=int, default=30, help="decoder layers (30 = SmolLM2-135M)")
    ap.add_argument("--solutions", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8, help="steps per solution")
    ap.add_argument("--score-batch", type=int, default=32, help="baseline rows per scoring forward")
    ap.add_argument("--train-batch", type=int, default=64, help="examples per optimizer step, both sides")
    ap.add_argument("--micro-batch", type=int, default=16, help="baseline rows per forward/backward")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--row-tokens", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=3, help="best of N timings (after one warm-up)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    seqs = examples(args)
    n_tokens = sum(len(s) for s in seqs)
    model = build_model(args).eval()
    ours, rows = score_ours(model, seqs, args), score_rows(model, seqs, args)  # warm-up and agreement
    gap = max(abs(a - b) for a, b in zip(ours, rows, strict=True))
    res = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
           "dtype": args.dtype, "layers": args.layers, "examples": len(seqs), "example_tokens": n_tokens,
           "reward_gap": gap, "torch": torch.__version__}  # fmt: skip
    t_ours = timed(lambda: score_ours(model, seqs, args), args.device, args.repeat)
    t_rows = timed(lambda: score_rows(model, seqs, args), args.device, args.repeat)
    res["score_tokens_per_s"] = {"hiprm_trie": n_tokens / t_ours, "hf_rows": n_tokens / t_rows}
    res["score_ratio"] = t_rows / t_ours
    trained = args.train_steps * args.train_batch
    per_step = sum(len(s) for s in seqs[:trained]) / max(trained, 1)  # about equal on both sides
    times = {}
    for mode in ("trie", "rows"):
        train_steps(model, seqs, argparse.Namespace(**{**vars(args), "train_steps": 1}), mode)  # warm-up
        times[mode] = timed(lambda m=mode: train_steps(model, seqs, args, m), args.device, args.repeat)
    res["train_tokens_per_s"] = {k: per_step * trained / v for k, v in times.items()}
    res["train_ratio"] = times["rows"] / times["trie"]
    if args.device.startswith("cuda"):
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(f"device {res['device']}  dtype {args.dtype}  layers {args.layers}  examples {len(seqs)} "
          f"({n_tokens} tokens)  reward gap {gap:.2g}")
    print(f"scoring  tokens/s  hiprm trie {res['score_tokens_per_s']['hiprm_trie']:10.0f}   "
          f"hf rows {res['score_tokens_per_s']['hf_rows']:10.0f}   ratio {res['score_ratio']:.2f}x")
    print(f"training tokens/s  hiprm trie {res['train_tokens_per_s']['trie']:10.0f}   "
          f"hf rows {res['train_tokens_per_s']['rows']:10.0f}   ratio {res['train_ratio']:.2f}x")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    tol = 1e-3 if args.dtype == "float32" else 3e-2
    if gap > tol:
        print(f"bench_gpu: trie and plain rewards differ by {gap:.3g} (> {tol})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
