"""Reward-model training speed: trie batches (`data.batching=trie`) vs per-example rows with
dynamic padding and length grouping (`data.batching=rows`, the classic Trainer setup), same
model, same examples, timed interleaved (best of `--repeat`) in one run.

    python benchmarks/bench_train.py                                   # real data, SmolLM2
    python benchmarks/bench_train.py --data runs/data/hrm/train.jsonl --batch-size 64 --steps 3
    python benchmarks/bench_train.py --model tiny --steps 2            # quick, a small random model
    python benchmarks/bench_train.py --paper                           # + padding to max_length

Data: an RMExample JSONL written by `hiprm data build` (default: the HRM set of PRM800K phase-1
train, `hiprm data build kind=hrm out_dir=runs/data/hrm`; falls back to the quickstart's HRM
set), through the one formatter and tokenizer of `hiprm rm train`, `--max-length` 1024.

The examples: `--steps` batches picked at random from one epoch of the trie sampler's order
(`PrefixBlockSampler`: runs of `--batch-size` examples in token order, as `rm train` draws
them). Rows mode trains on exactly those examples, length-grouped into batches of the same size
(transformers' `get_length_grouped_indices`, as Trainer's `group_by_length`), each run as
micro-batches of `--rows-micro-batch` rows padded to their longest (`PadCollator`) with the
gradients accumulated: one 64-row forward pass is ~3x slower per token here (its padded
attention and activations), so rows get their best setting. `--paper` adds random batches
padded to `--max-length`.

`--format token` compares the token format (TRL's `*ForTokenClassification` layout, reward at
each step separator): hiprm's trie batches of per-step examples (the inputs of one solution are
prefixes of each other, so each solution runs once, and rated alternatives share their prefix)
against the strongest baseline a user would write with TRL's layout: the same labelled steps put
into as few rows as possible (one row per path that ends a solution in the batch, a label at
each of its labelled separators, -100 elsewhere; a step labelled in one row is not labelled
again), padded by transformers' `DataCollatorForTokenClassification`, length-grouped, run as
micro-batches of `--rows-micro-batch` rows. Examples = labelled steps, the same in both; goal
>= 5x examples/s.

A step is forward + soft-label loss + backward + clip (0.01) + AdamW on the top
`--top-layers` decoder layers (the quickstart's 4 by default; -1 = all, as the paper). Prints
examples/s and real (non-pad) tokens/s per mode, the trie / rows ratio (goal >= 8x examples/s)
and the peak memory of one step of each mode (each measured in a fresh process: RSS growth
over the loaded model).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from hiprm.models import freeze_lower_layers, load_tokenizer, resolve_model_path
from hiprm.rm import trie
from hiprm.rm.data_collate import PadCollator, encode_examples, read_examples, soft_label_loss
from hiprm.rm.template import TemplateConfig

REPO = Path(__file__).resolve().parents[1]
TARGET = 8.0
TARGET_TOKEN = 5.0
DEFAULT_DATA = [REPO / "runs/data/hrm/train.jsonl", REPO / "runs/quickstart/data/hrm/train.jsonl"]


def build_model(name: str, tokenizer, max_length: int, fmt: str = "seqcls"):
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    if fmt == "token":
        from transformers import AutoConfig, AutoModelForTokenClassification, LlamaForTokenClassification

        if name == "tiny":
            cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(max_length, 2048),
                              pad_token_id=tokenizer.pad_token_id, num_labels=2, classifier_dropout=0.0)  # fmt: skip
            return LlamaForTokenClassification(cfg)
        config = AutoConfig.from_pretrained(resolve_model_path(name), num_labels=2)
        config.classifier_dropout = 0.0  # as `rm train format=token` builds it
        model = AutoModelForTokenClassification.from_pretrained(resolve_model_path(name), config=config)
        model.config.pad_token_id = tokenizer.pad_token_id
        return model
    if name == "tiny":
        cfg = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(max_length, 2048),
            pad_token_id=tokenizer.pad_token_id, num_labels=2,
        )  # fmt: skip
        return LlamaForSequenceClassification(cfg)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(name), num_labels=2)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def train_steps(model, batch_list) -> tuple[float, int, int]:
    """Wall seconds for one optimizer step per batch, examples and real tokens processed.

    A batch is a list of micro-batches whose gradients accumulate into one step (each loss
    weighted by its share of the batch's examples, so the step equals one pass over all)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    examples = tokens = 0
    t0 = time.perf_counter()
    for micro, n_tokens in batch_list:
        n = sum(int((b["labels"] != -100).sum()) if "step_labels" in b else len(b["labels"]) for b in micro)
        for b in micro:
            if "ends" in b:
                logits = trie.classifier_logits(model, b)
                labels = b["labels"]
            elif "step_labels" in b:  # TRL layout rows: logits (rows, L, 2) at the labelled separators
                out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
                at = b["labels"] != -100
                logits, labels = out[at], b["step_labels"][at]
            else:
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits
                labels = b["labels"]
            (soft_label_loss(logits, labels) * len(labels) / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 0.01)
        opt.step()
        opt.zero_grad(set_to_none=True)
        examples += n
        tokens += n_tokens
    return time.perf_counter() - t0, examples, tokens


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def peak_growth(fn) -> float:
    """MB of RSS growth (sampled every 5 ms) while `fn` runs."""
    start, peak, done = rss_mb(), [0.0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    t = threading.Thread(target=watch)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(peak[0], rss_mb()) - start


def prepare(args):
    """Tokenizer, features, the chosen batches per mode (lists of example indices)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    data = Path(args.data) if args.data else next((p for p in DEFAULT_DATA if p.is_file()), DEFAULT_DATA[0])
    if not data.is_file():
        raise SystemExit(f"{data}: no such file; build it with `hiprm data build kind=hrm out_dir=runs/data/hrm`")
    tokenizer = load_tokenizer(resolve_model_path("embedded" if args.model == "tiny" else args.model),
                               padding_side="right")  # fmt: skip
    if args.format == "token":
        from hiprm.rm.data_collate import encode_in_format
        from hiprm.rm.formats import Encoder, Format

        fmt = Format("token", "trl", "\n", max_length=args.max_length)
        features, _ = encode_in_format(Encoder(fmt, tokenizer), read_examples(data))
    else:
        features, _ = encode_examples(tokenizer, read_examples(data), TemplateConfig(max_length=args.max_length))
    rng = random.Random(args.seed)
    sampler = trie.PrefixBlockSampler([f["input_ids"].tolist() for f in features], args.batch_size, args.seed)
    order = list(sampler)
    blocks = [order[k : k + args.batch_size] for k in range(0, len(order) - args.batch_size + 1, args.batch_size)]
    chosen = rng.sample(blocks, min(args.steps, len(blocks)))
    picked = [i for b in chosen for i in b]
    lengths = [len(features[i]["input_ids"]) for i in picked]
    g = torch.Generator().manual_seed(args.seed)
    grouped = [picked[j] for j in get_length_grouped_indices(lengths, args.batch_size, generator=g)]
    shuffled = rng.sample(picked, len(picked))
    split = lambda o: [o[k : k + args.batch_size] for k in range(0, len(o), args.batch_size)]  # noqa: E731
    if args.format == "token":
        rows = trl_rows(chosen, features)
        lengths = [len(r["input_ids"]) for b in rows for r in b]
        flat = [r for b in rows for r in b]
        grouped_rows = [flat[j] for j in get_length_grouped_indices(lengths, args.rows_micro_batch, generator=g)]
        per_step = [len(b) for b in rows]  # rows per step: each step trains the same labelled steps as trie's
        steps, at = [], 0
        for n in per_step:
            steps.append(grouped_rows[at : at + n])
            at += n
        return data, tokenizer, features, {"trie": chosen, "rows (TRL layout)": steps}
    modes = {"trie": chosen, "rows": split(grouped)}
    if args.paper:
        modes[f"paper (pad to {args.max_length})"] = split(shuffled)
    return data, tokenizer, features, modes


def trl_rows(batches, features):
    """Per batch of example indices: the same labelled steps as TRL-layout rows, as few as
    possible. An example's ids end at its step's separator, and one solution's examples are
    prefixes of each other: each example goes to a longest sequence of its batch that contains
    it (in token order, an extension sorts right after its prefix), and every such sequence
    becomes one row with a label at each of its examples' separators, so every labelled step is
    trained once, as in the trie batch. (Two equal sequences are one example's input twice: they
    keep two rows, as a dataset with a repeated step would.)"""
    out = []
    for b in batches:
        seqs = {i: features[i]["input_ids"].tolist() for i in b}
        order = sorted(b, key=lambda i: seqs[i])
        leaf_of: dict[int, int] = {}
        rows: dict[int, list[tuple[int, float]]] = {}
        for pos in reversed(range(len(order))):
            i = order[pos]
            nxt = order[pos + 1] if pos + 1 < len(order) else None
            if nxt is not None and len(seqs[nxt]) > len(seqs[i]) and seqs[nxt][: len(seqs[i])] == seqs[i]:
                leaf_of[i] = leaf_of[nxt]
            else:
                leaf_of[i] = i
                rows[i] = []
            rows[leaf_of[i]].append((len(seqs[i]) - 1, float(features[i]["labels"])))
        out.append([{"input_ids": seqs[k], "positions": v} for k, v in rows.items()])
    return out


def collate(name, idx_batches, features, tokenizer, args):
    """Per batch: its micro-batches (trie: the whole batch at once; rows: `--rows-micro-batch`
    examples each, gradients accumulated) and its real token count."""
    pad = tokenizer.pad_token_id
    if name.startswith("rows (TRL"):
        return collate_trl(idx_batches, tokenizer, args)
    if name == "trie":
        fn, micro = trie.TrieCollator(pad, args.row_tokens), args.batch_size
    elif name == "rows":
        fn, micro = PadCollator(pad), args.rows_micro_batch
    else:
        fn, micro = PadCollator(pad, pad_to_length=args.max_length), args.rows_micro_batch
    out = []
    for b in idx_batches:
        feats = [features[i] for i in b]
        out.append(([fn(feats[k : k + micro]) for k in range(0, len(feats), micro)],
                    sum(len(f["input_ids"]) for f in feats)))  # fmt: skip
    return out


def collate_trl(step_rows, tokenizer, args):
    """TRL-layout rows -> transformers' DataCollatorForTokenClassification batches (labels
    padded with -100), plus the soft labels at the same places (`step_labels`)."""
    import torch
    from transformers import DataCollatorForTokenClassification

    collator = DataCollatorForTokenClassification(tokenizer, label_pad_token_id=-100)
    out = []
    for rows in step_rows:
        micro = []
        for k in range(0, len(rows), args.rows_micro_batch):
            part = rows[k : k + args.rows_micro_batch]
            feats = []
            for r in part:
                labels = [-100] * len(r["input_ids"])
                for p, _ in r["positions"]:
                    labels[p] = 1  # a place holder: the loss reads the soft label beside it
                feats.append({"input_ids": r["input_ids"], "labels": labels})
            b = collator(feats)
            soft = torch.full(b["labels"].shape, -100.0)
            for j, r in enumerate(part):
                for p, y in r["positions"]:
                    soft[j, p] = y
            b["step_labels"] = soft
            micro.append(b)
        out.append((micro, sum(len(r["input_ids"]) for r in rows)))
    return out


def attention_for(model, name: str) -> None:
    """Trie batches need `hiprm_trie`; rows run on the model's own `sdpa`, as `rm train` does."""
    if name == "trie":
        trie.use_trie_attention(model)
    else:
        trie.restore_attention(model, "sdpa")


def load_model(args, tokenizer):
    model = build_model(args.model, tokenizer, args.max_length, args.format)
    if args.top_layers >= 0:
        freeze_lower_layers(model, args.top_layers)
    return model


def peak_memory(args, name: str) -> float:
    """MB of RSS growth during one step of `name`, in a fresh process (freed memory of another
    mode cannot hide this one's)."""
    cmd = [sys.executable, __file__, "--_memory", name, *sys.argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])["mb"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M), 'tiny' (random, in code), or a folder")
    ap.add_argument("--data", default="", help="RMExample JSONL (default: runs/data/hrm, else the quickstart's HRM set)")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per mode")
    ap.add_argument("--batch-size", type=int, default=64, help="examples per step, both modes")
    ap.add_argument("--rows-micro-batch", type=int, default=8,
                    help="rows mode: examples per forward pass, accumulated to --batch-size (rows' best setting)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--row-tokens", type=int, default=16384, help="trie tokens per packed row (data.row_tokens)")
    ap.add_argument("--top-layers", type=int, default=4, help="decoder layers trained (-1 = all)")
    ap.add_argument("--repeat", type=int, default=2, help="best of N interleaved timings per mode")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--paper", action="store_true", help="also time padding every row to --max-length")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-mode peak-memory runs")
    ap.add_argument("--format", choices=["seqcls", "token"], default="seqcls",
                    help="token: the token format's trie batches against TRL-layout rows (goal >= 5x)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--_memory", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data, tokenizer, features, modes = prepare(args)
    if args._memory:
        batch = collate(args._memory, modes[args._memory][:1], features, tokenizer, args)
        model = load_model(args, tokenizer)
        attention_for(model, args._memory)
        print(json.dumps({"mb": peak_growth(lambda: train_steps(model, batch))}))
        return 0
    model = load_model(args, tokenizer)
    batches = {name: collate(name, b, features, tokenizer, args) for name, b in modes.items()}
    n_ex = sum(len(b) for b in modes["trie"])
    print(f"data={data} model={args.model} examples={n_ex} batch={args.batch_size} "
          f"(rows: micro-batches of {args.rows_micro_batch}) steps={len(modes['trie'])} "
          f"max_length={args.max_length} top_layers={args.top_layers} repeat={args.repeat} "
          f"threads={torch.get_num_threads()}")  # fmt: skip
    trie_tokens = sum(int(b["input_ids"].numel()) for micro, _ in batches["trie"] for b in micro)
    base = next(name for name in batches if name.startswith("rows"))
    real = sum(n for _, n in batches[base])
    print(f"tokens: {real} real in {base}, {trie_tokens} in trie batches ({real / trie_tokens:.1f}x fewer)")
    for name, batch_list in batches.items():
        attention_for(model, name)
        train_steps(model, batch_list[:1])  # untimed warm-up at this mode's shapes
    best: dict[str, tuple[float, int, int]] = {}
    for _ in range(args.repeat):  # interleaved, best of: other jobs on a shared machine add noise
        for name, batch_list in batches.items():
            attention_for(model, name)
            run = train_steps(model, batch_list)
            if name not in best or run[0] < best[name][0]:
                best[name] = run
    memory = {} if args.no_memory else {name: peak_memory(args, name) for name in batches}
    rates = {}
    for name, (secs, examples, tokens) in best.items():
        rates[name] = examples / secs
        mem = f"  peak +{memory[name]:6.0f} MB" if name in memory else ""
        print(f"{name:24s} {secs / len(batches[name]):7.2f} s/step  {examples / secs:7.2f} examples/s  "
              f"{tokens / secs:8.0f} real tok/s{mem}")  # fmt: skip
    ratio = rates["trie"] / rates[base]
    target = TARGET if args.format == "seqcls" else TARGET_TOKEN
    print(f"speed-up trie / {base}: {ratio:.1f}x examples/s (goal >= {target:.0f}x: {'OK' if ratio >= target else 'UNDER'})")
    for name in rates:
        if name.startswith("paper"):
            print(f"speed-up rows / {name}: {rates['rows'] / rates[name]:.1f}x")
    return 0 if ratio >= target else 1


if __name__ == "__main__":
    raise SystemExit(main())
