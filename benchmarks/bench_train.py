"""Training throughput (real, non-pad tokens/s): dynamic padding + length grouping vs padding
every example to max_length (the paper's setup), same model, same examples, same run.

    python benchmarks/bench_train.py                       # tiny random model, 4 steps per mode
    python benchmarks/bench_train.py --model embedded --steps 2 --max-length 1024
    python benchmarks/bench_train.py --data runs/data/hrm/train.jsonl

Each mode trains on the same `steps x batch_size` examples (from `--data`, default
runs/data/prm/train.jsonl, through the one formatter and tokenizer used by `hiprm rm train`):
`steps` batches drawn at random from a length-grouped pool of 200 batches, as Trainer's
sampler groups lengths within mega-batches of 50 batches.

- ours: length-grouped order (transformers' `get_length_grouped_indices`, as Trainer's
  `group_by_length` sampler) and each batch padded to its longest row (`PadCollator`);
- dynamic only: random order, padded to the longest row (what length grouping adds);
- paper: random order, every row padded to `--max-length` (default 4096: the paper's code
  tokenizes with `padding="max_length", max_length=4096`).

A step is forward + soft-label loss + backward + clip (0.01) + AdamW, as in training. The
tiny model (4 layers, hidden 256, SmolLM2 vocabulary: ~20M parameters) is built in code; `--model embedded`
uses the real SmolLM2-135M-Instruct. Prints tokens/s per mode and the ratio (target >= 10x).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from hiprm.rm.backbone import load_tokenizer, resolve_model_path
from hiprm.rm.data_collate import PadCollator, encode_examples, read_examples, soft_label_loss
from hiprm.rm.template import TemplateConfig

REPO = Path(__file__).resolve().parents[1]
TARGET = 10.0


def build_model(name: str, tokenizer, max_length: int):
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    if name == "tiny":
        cfg = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=max(max_length, 2048),
            pad_token_id=tokenizer.pad_token_id,
            num_labels=2,
        )
        return LlamaForSequenceClassification(cfg)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(name), num_labels=2)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def batches(features, order, batch_size, collate):
    return [
        collate([features[i] for i in order[k : k + batch_size]]) for k in range(0, len(order), batch_size)
    ]


def train_steps(model, batch_list) -> tuple[float, float, int, int]:
    """Wall and CPU seconds for one optimizer step per batch, real and padded tokens processed."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    real = padded = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batch_list:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
        soft_label_loss(logits, b["labels"]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
        opt.step()
        opt.zero_grad(set_to_none=True)
        real += int(b["attention_mask"].sum())
        padded += b["input_ids"].numel()
    return time.perf_counter() - t0, time.process_time() - c0, real, padded


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (built in code), 'embedded', or a folder")
    ap.add_argument("--data", default=str(REPO / "runs/data/prm/train.jsonl"))
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per mode")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=4096, help="the paper pads to this")
    ap.add_argument("--repeat", type=int, default=1, help="best of N interleaved timings per mode")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    if args.threads:
        torch.set_num_threads(args.threads)  # 1 avoids stalls when other jobs share the cores

    tokenizer = load_tokenizer(resolve_model_path("embedded" if args.model == "tiny" else args.model))
    rng = random.Random(args.seed)
    # Trainer groups lengths within mega-batches of 50 batches; build such a pool and time
    # `steps` of its batches picked at random, so the sample is what a training run sees.
    pool_size = max(args.steps, 200) * args.batch_size
    pool = read_examples(args.data, limit=50000)
    examples = rng.sample(pool, min(pool_size, len(pool)))
    features, _ = encode_examples(tokenizer, examples, TemplateConfig(max_length=args.max_length))
    lengths = [len(f["input_ids"]) for f in features]
    g = torch.Generator().manual_seed(args.seed)
    order = get_length_grouped_indices(lengths, args.batch_size, generator=g)
    pool_batches = [
        order[k : k + args.batch_size] for k in range(0, len(order) - args.batch_size + 1, args.batch_size)
    ]
    chosen = rng.sample(pool_batches, min(args.steps, len(pool_batches)))
    grouped = [i for b in chosen for i in b]
    shuffled = rng.sample(grouped, len(grouped))
    lengths = [lengths[i] for i in grouped]
    model = build_model(args.model, tokenizer, args.max_length)
    dynamic = PadCollator(tokenizer.pad_token_id)
    full = PadCollator(tokenizer.pad_token_id, pad_to_length=args.max_length)
    modes = {
        "ours (grouped + dynamic)": batches(features, grouped, args.batch_size, dynamic),
        "dynamic padding only": batches(features, shuffled, args.batch_size, dynamic),
        f"paper (pad to {args.max_length})": batches(features, shuffled, args.batch_size, full),
    }
    print(f"model={args.model} examples={len(grouped)} batch={args.batch_size} steps={args.steps} repeat={args.repeat} "
          f"threads={torch.get_num_threads()}")  # fmt: skip
    print(f"real tokens/example: mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}")
    best: dict[str, tuple[float, float, int, int]] = {}
    for batch_list in modes.values():
        train_steps(model, batch_list[:1])  # untimed warm-up at this mode's shapes
    for _ in range(args.repeat):  # interleaved, best of: other jobs on a shared machine add noise
        for name, batch_list in modes.items():
            run = train_steps(model, batch_list)
            if name not in best or run[0] < best[name][0]:
                best[name] = run
    rates = {}
    for name, (secs, cpu, real, padded) in best.items():
        steps = len(modes[name])
        rates[name] = real / secs
        print(f"{name:28s} {secs / steps:7.2f} s/step (cpu {cpu / steps:6.2f} s)  "
              f"{real / secs:8.0f} real tok/s  pad share {1 - real / padded:5.1%}")  # fmt: skip
    ours, paper = rates["ours (grouped + dynamic)"], rates[f"paper (pad to {args.max_length})"]
    ratio = ours / paper
    print(
        f"speed-up ours / paper: {ratio:.1f}x (target >= {TARGET:.0f}x: {'OK' if ratio >= TARGET else 'UNDER'})"
    )
    print(f"speed-up ours / dynamic padding only: {ours / rates['dynamic padding only']:.2f}x")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
