"""Peak memory and tokens/s of the self-training loss (LM + lam * log KL), forward + backward.

    python benchmarks/bench_selftrain.py                      # SmolLM2 sizes: vocab 49,152, hidden 576, 1k tokens
    python benchmarks/bench_selftrain.py --tokens 2048 --chunk 256 --threads 2

Not the whole model: a random lm_head of SmolLM2-135M's shape (vocab 49,152 x hidden 576) for
the policy and another for the frozen reference, and random last hidden states for 1 x
`--tokens` positions, all completion tokens. The policy's hidden states and lm_head weight get
gradients (full fine-tuning); the reference's do not. Variants:

- full:   both logit tensors (tokens x vocab) built at once, log-softmaxes of both, one backward
          (`selftrain_loss(h @ W.T, rh @ rW.T, chunk_size=0)`: the plain way);
- chunked logits: the same logits, log-softmaxes `--chunk` tokens at a time under checkpointing
          (`selftrain_loss(..., chunk_size=--chunk)`);
- fused:  hidden states + lm_head weights, no full logits ever (`selftrain_loss_from_hidden`),
          what `hiprm selftrain` trains with.

Each variant runs in a fresh Python process: peak memory = the process's peak RSS
(`resource.getrusage(...).ru_maxrss`, which sees torch's allocations, unlike tracemalloc) during
the first forward + backward, minus its RSS after the inputs were built (glibc's mmap threshold
fixed at 1 MiB for every variant, so freed blocks go back to the OS); speed = best of
`--repeat` timed steps in a second fresh process with the default allocator. Prints both and the ratios against `full`
(goal: fused <= 1/4 of full's peak memory at >= 0.9x its tokens/s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MEMORY_GOAL, SPEED_GOAL = 0.25, 0.9


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(
    variant: str, tokens: int, vocab: int, hidden: int, chunk: int, repeat: int, threads: int
) -> dict:
    """Run one variant in this process; returns peak MB over the inputs and best seconds per step."""
    import torch

    from hiprm.selftrain.loss import selftrain_loss, selftrain_loss_from_hidden

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(1, tokens, hidden, generator=g)).requires_grad_()
    rh = torch.randn(1, tokens, hidden, generator=g)
    w = (torch.randn(vocab, hidden, generator=g) * 0.05).requires_grad_()
    rw = w.detach() + 0.01 * torch.randn(vocab, hidden, generator=g)
    labels = torch.randint(0, vocab, (1, tokens), generator=g)
    labels[0, 0] = -100

    def step() -> float:
        h.grad = w.grad = None
        t0 = time.perf_counter()
        if variant == "fused":
            total = selftrain_loss_from_hidden(h, w, rh, rw, labels, lam=0.5, chunk_size=chunk)[0]
        else:
            c = 0 if variant == "full" else chunk
            total = selftrain_loss(h @ w.T, rh @ rw.T, labels, lam=0.5, chunk_size=c)[0]
        total.backward()
        return time.perf_counter() - t0

    base = _rss_mb()
    first = step()
    peak = _maxrss_mb() - base
    times = [step() for _ in range(repeat)]
    return {"variant": variant, "peak_mb": peak, "seconds": min(times + [first]), "tokens": tokens - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--hidden", type=int, default=576)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default="full,chunked,fused")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.tokens, a.vocab, a.hidden, a.chunk, a.repeat, a.threads)))
        return
    rows = []
    for v in a.variants.split(","):
        cmd = [sys.executable, __file__, "--one", v, "--tokens", str(a.tokens), "--vocab", str(a.vocab),
               "--hidden", str(a.hidden), "--chunk", str(a.chunk), "--repeat", str(a.repeat),
               "--threads", str(a.threads)]  # fmt: skip
        # Memory: glibc's mmap threshold fixed at 1 MiB, so blocks that size and up are unmapped on
        # free and the peak RSS follows the live tensors, not how the adaptive threshold happened
        # to recycle freed chunk-sized blocks (which moved the fused peak by ~25% run to run).
        # Speed: a second fresh process with the default allocator (mmap per chunk costs faults).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
        mem = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.splitlines()[-1]
        )
        speed = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
        )
        rows.append({**speed, "peak_mb": mem["peak_mb"]})
    print(f"tokens {a.tokens}, vocab {a.vocab}, hidden {a.hidden}, chunk {a.chunk}, threads {a.threads}; "
          f"fwd+bwd of LM + 0.5 * log KL")  # fmt: skip
    full = next((r for r in rows if r["variant"] == "full"), rows[0])
    print(f"{'variant':<10} {'peak MB':>9} {'tokens/s':>10} {'mem ratio':>10} {'speed ratio':>12}")
    for r in rows:
        tps = r["tokens"] / r["seconds"]
        mem = r["peak_mb"] / full["peak_mb"]
        speed = tps / (full["tokens"] / full["seconds"])
        print(f"{r['variant']:<10} {r['peak_mb']:>9.0f} {tps:>10.0f} {mem:>10.3f} {speed:>11.2f}x")
    fused = next((r for r in rows if r["variant"] == "fused"), None)
    if fused is not None and fused is not full:
        mem = fused["peak_mb"] / full["peak_mb"]
        speed = (fused["tokens"] / fused["seconds"]) / (full["tokens"] / full["seconds"])
        ok = mem <= MEMORY_GOAL and speed >= SPEED_GOAL
        print(f"fused vs full: memory {mem:.3f} (goal <= {MEMORY_GOAL}), speed {speed:.2f}x (goal >= {SPEED_GOAL}x): "
              f"{'met' if ok else 'NOT met'}")  # fmt: skip


if __name__ == "__main__":
    main()
