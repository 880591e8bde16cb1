"""Reward-model scoring speed, measured against baselines in the same run on the same inputs.

    python benchmarks/bench_score.py                                   # tiny random model
    python benchmarks/bench_score.py --model smollm2-135m-instruct     # the embedded backbone, untrained head
    python benchmarks/bench_score.py --model runs/rm/hrm/model         # a trained checkpoint
    python benchmarks/bench_score.py --model runs/quickstart/rm/hrm/model --parts c --threads 1
                                                                       # in-process vs vLLM, 1 thread each
    python benchmarks/bench_score.py --model runs/quickstart/rm/prm/model --parts d \
        --also-model runs/quickstart/rm/hrm/model                      # two RMs, one shared trunk

(a) Step scoring throughput (steps/s) of `score_solutions` (the Scorer) on PRM800K phase-1-test
    solutions against the HRM reference code's way: one step prefix per forward pass, padded to
    max_length 4096, batch size 1. Target: >= 20x.
(b) N = 8 candidate next steps sharing a prefix (prefix 400-800 tokens, candidates 30-60
    tokens, like step-level search): `score_candidates` (the Scorer: prefix run once, candidates
    against it) against a plain batched HF forward with dynamic padding. Target: >= 2x.
(c) The in-process Scorer against vLLM's CPU build serving the same trained checkpoint
    (`--runner pooling`, called through `hiprm.rm.remote.RemoteScorer`) on the first
    `--prefixes` (112) PRM800K step prefixes, at equal threads: torch.set_num_threads(N) and this
    process pinned to cores 0..N-1, against vLLM started by scripts/vllm_server.sh with
    OMP_NUM_THREADS=N and VLLM_CPU_OMP_THREADS_BIND=0,..,N-1 (its engine bound to the same cores).
    Needs `--model` a checkpoint from `hiprm rm train` and `.venv-vllm` (or `--vllm-url` of a
    server already serving it, whose threads are then its own). Target: in-process <= vLLM.
(d) Two trained checkpoints that share bottom layers (`--model` and `--also-model`, e.g. the
    quickstart's PRM and HRM, top 4 of 30 layers trained) scoring the same `--solutions` PRM800K
    solutions: `hiprm.rm.shared_trunk.SharedTrunk` (the shared layers once) against each model's
    own Scorer one after the other (what `rm eval share_trunk=false` does). Rewards must be equal.

Each part reports the largest difference between our rewards and the baseline's. The baseline of
(a) is slow by design, so it runs on the first `--paper-steps` step prefixes only and its
throughput is extrapolated per step. Uses fp32 on CPU and the default torch thread count (`--threads N`).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "prm800k" / "phase1_test.jsonl"


def build_tiny():
    """A small random Llama classifier. Its tokenizer is SmolLM2's when the embedded backbone is
    installed (so token counts are realistic), else the test suite's tiny byte-level BPE."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import make_tiny_tokenizer, tiny_llama_config
    from transformers import LlamaForSequenceClassification

    try:
        from hiprm.models import load_tokenizer, resolve_model_path

        tok, which = load_tokenizer(resolve_model_path("smollm2-135m-instruct")), "SmolLM2 tokenizer"
    except Exception:  # noqa: BLE001 - any failure: fall back to the tiny tokenizer
        tok, which = make_tiny_tokenizer(), "tiny test tokenizer"
    cfg = tiny_llama_config(tok, num_labels=2)
    cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 128, 256, 4
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.max_position_embeddings = 4, 2, 8192
    torch.manual_seed(0)
    return LlamaForSequenceClassification(cfg).eval(), tok, f"tiny random Llama (4 layers, d=128; {which})"


def build_from(path: str):
    """A trained checkpoint, or a causal-LM backbone with a fresh (untrained) 2-label head."""
    from transformers import AutoModelForSequenceClassification

    from hiprm.models import load_tokenizer, resolve_model_path

    folder = resolve_model_path(path)
    tok = load_tokenizer(folder, padding_side="right")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, dtype=torch.float32).eval()
    if len(tok) > model.config.vocab_size:
        model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    return model, tok, f"{path} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params)"


def solutions(n: int) -> list[tuple[str, list[str]]]:
    from hiprm.data.prm800k import read_prm800k

    sols = [s for s in read_prm800k(DATA) if s.finish_reason == "solution"]
    random.Random(0).shuffle(sols)
    return [(s.question, s.trajectory()) for s in sols[:n]]


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def bench_steps(scorer, tok, items, paper_steps: int, paper_len: int, also_plain: bool) -> None:
    from hiprm.rm.scorer import score_solutions
    from hiprm.rm.template import render

    triples = [(q, steps[:i], s) for q, steps in items for i, s in enumerate(steps)]
    lengths = [n_tokens(tok, render(*t, scorer.template)) for t in triples]
    score_solutions(scorer, items[:1])  # warm-up
    t = time.perf_counter()
    ours = [r for rs in score_solutions(scorer, items) for r in rs]
    ours_s = time.perf_counter() - t

    def paper(q, prev, cur):
        enc = tok(render(q, prev, cur, scorer.template), padding="max_length", max_length=paper_len,
                  truncation=True, return_tensors="pt")
        with torch.inference_mode():
            return torch.softmax(scorer.model(**enc).logits, -1)[0, 1].item()

    t = time.perf_counter()
    base = [paper(*tr) for tr in triples[:paper_steps]]
    base_s = time.perf_counter() - t
    ours_rate, base_rate = len(triples) / ours_s, paper_steps / base_s
    diff = max(abs(a - b) for a, b in zip(ours, base, strict=False))
    print(f"(a) {len(items)} solutions, {len(triples)} step prefixes, {sum(lengths) / len(lengths):.0f} tokens "
          f"on average (max {max(lengths)})")
    print(f"    paper's way (batch 1, padded to {paper_len}): {base_rate:8.3f} steps/s  ({paper_steps} steps timed)")
    print(f"    score_solutions (Scorer)              : {ours_rate:8.3f} steps/s")
    print(f"    speed-up {ours_rate / base_rate:6.1f}x (target >= 20x)   max |reward diff| {diff:.1e}")
    if also_plain:
        from hiprm.rm.scorer import Scorer

        plain = Scorer(scorer.model, tok, scorer.template, prefix_cache=False)
        t = time.perf_counter()
        score_solutions(plain, items)
        rate = len(triples) / (time.perf_counter() - t)
        print(f"    (reference: Scorer without prefix sharing, batching only: {rate:8.2f} steps/s, "
              f"{rate / base_rate:.1f}x)")


def candidate_sets(tok, template, items, n_sets: int, n: int):
    """(question, prefix steps, n candidates): prefix 400-800 tokens, candidates 30-60 tokens."""
    from hiprm.rm.template import render

    pool = [s for _, steps in items for s in steps if 30 <= n_tokens(tok, s) <= 60]
    rng = random.Random(1)
    sets = []
    for q, steps in items:
        fits = [i for i in range(1, len(steps)) if 400 <= n_tokens(tok, render(q, steps[:i], "", template)) <= 800]
        if fits:
            i = rng.choice(fits)
            sets.append((q, steps[:i], rng.sample(pool, n)))
        if len(sets) == n_sets:
            break
    return sets


def bench_candidates(scorer, tok, sets, repeat: int) -> None:
    from hiprm.rm.scorer import score_candidates
    from hiprm.rm.template import render

    def plain_hf(q, prefix, cands):
        texts = [render(q, prefix, c, scorer.template) for c in cands]
        enc = tok(texts, padding="longest", return_tensors="pt")
        with torch.inference_mode():
            return torch.softmax(scorer.model(**enc).logits, -1)[:, 1].tolist()

    def timed(fn):
        best, out = float("inf"), None
        for _ in range(repeat):
            t = time.perf_counter()
            out = [fn(*s) for s in sets]
            best = min(best, time.perf_counter() - t)
        return best, out

    score_candidates(scorer, *sets[0])  # warm-up, and the one-time check of the cached path
    plain_hf(*sets[0])
    base_s, base = timed(plain_hf)
    ours_s, ours = timed(lambda q, prefix, cands: score_candidates(scorer, q, prefix, cands))
    diff = max(abs(a - b) for x, y in zip(ours, base, strict=True) for a, b in zip(x, y, strict=True))
    pre = [n_tokens(tok, render(q, p, "", scorer.template)) for q, p, _ in sets]
    cand = [n_tokens(tok, c) for _, _, cs in sets for c in cs]
    print(f"(b) {len(sets)} prefixes of {min(pre)}-{max(pre)} tokens x {len(sets[0][2])} candidates of "
          f"{min(cand)}-{max(cand)} tokens (cached prefix path used: {scorer._prefix_cache_ok})")
    print(f"    HF batched, dynamic padding: {len(sets) / base_s:8.3f} sets/s")
    print(f"    score_candidates (Scorer)  : {len(sets) / ours_s:8.3f} sets/s")
    print(f"    speed-up {base_s / ours_s:6.1f}x (target >= 2x)   max |reward diff| {diff:.1e}")


WARM_UP = [("What is $1+1$?", [], "$1+1=2$."), ("What is $1+1$?", ["$1+1=2$."], "# Answer\n\n2")]


def bench_vllm(path: str, threads: int, n_prefixes: int, repeat: int, url: str, port: int) -> None:
    """(c): the in-process Scorer against vLLM's CPU server on one checkpoint, at equal threads.
    vLLM keeps the KV blocks of earlier requests (prefix caching), so it is timed on inputs it
    has not seen: its cache is reset before each timed run (`/reset_prefix_cache`, which the
    server started here offers), and without that only one run is timed."""
    import os
    import subprocess

    import httpx

    from hiprm.rm.remote import RemoteScorer
    from hiprm.rm.scorer import Scorer, solution_inputs

    threads = threads or torch.get_num_threads()
    cores = list(range(threads))
    inputs = solution_inputs(solutions(60))[:n_prefixes]
    scorer = Scorer.from_pretrained(path, device="cpu", dtype="float32")
    lengths = [len(ids) for ids in scorer.encode_inputs(inputs)]
    max_len = max(2048, scorer.template.max_length)  # the server must hold what the template allows
    print(f"(c) {len(inputs)} PRM800K step prefixes, {sum(lengths)} tokens ({max(lengths)} the longest), "
          f"{threads} thread(s) on cores {cores}")

    def best_of(fn, runs: int, before=lambda: None) -> tuple[float, list[float]]:
        best, out = float("inf"), []
        for _ in range(runs):
            before()
            t = time.perf_counter()
            out = fn(inputs)
            best = min(best, time.perf_counter() - t)
        return best, out

    old_affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)  # the cores vLLM's engine is bound to below
    try:
        scorer.score_inputs(WARM_UP)  # warm-up, and the Scorer's one-time check of the trie path
        ours_s, ours = best_of(scorer.score_inputs, repeat)
    finally:
        os.sched_setaffinity(0, old_affinity)
    print(f"    in-process Scorer (torch threads {torch.get_num_threads()}): {ours_s:7.1f} s  "
          f"(trie path: {scorer._prefix_cache_ok})")
    del scorer

    script = REPO / "scripts" / "vllm_server.sh"
    started = False
    if not url:
        env = {**os.environ, "VLLM_NAME": "rm", "VLLM_SERVER_DEV_MODE": "1", "OMP_NUM_THREADS": str(threads),
               "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores)),
               "VLLM_MAX_LEN": str(max_len)}  # fmt: skip
        t = time.perf_counter()
        start = subprocess.run(["bash", str(script), "start", path, str(port), "--runner", "pooling"], cwd=REPO,
                               env=env, capture_output=True, text=True)  # fmt: skip
        if start.returncode != 0:
            raise SystemExit(f"vLLM did not start: {start.stdout[-500:]} {start.stderr[-1500:]}")
        started, url = True, f"http://127.0.0.1:{port}"
        print(f"    (vLLM CPU server started in {time.perf_counter() - t:.0f} s, engine bound to cores {cores})")
    try:
        remote = RemoteScorer(url, checkpoint=path, timeout=1800)
        remote.score_inputs(WARM_UP)

        def reset() -> None:
            r = httpx.post(remote.base_url + "/reset_prefix_cache", timeout=60)
            if r.status_code != 200 or not r.json().get("success"):
                raise RuntimeError(r.text)

        try:
            reset()
        except (httpx.HTTPError, RuntimeError, ValueError):
            print("    (the server has no /reset_prefix_cache (VLLM_SERVER_DEV_MODE=1): one timed run)")
            runs, before = 1, (lambda: None)
        else:
            runs, before = repeat, reset
        theirs_s, theirs = best_of(remote.score_inputs, runs, before)
    finally:
        if started:
            subprocess.run(["bash", str(script), "stop", str(port)], cwd=REPO, capture_output=True)
    diff = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    print(f"    vLLM CPU server via RemoteScorer ({runs} run(s)): {theirs_s:7.1f} s")
    print(f"    in-process / vLLM time {ours_s / theirs_s:5.2f} (target <= 1)   max |reward diff| {diff:.1e}")


def bench_shared_trunk(paths: list[str], n_solutions: int, repeat: int) -> None:
    from hiprm.rm.scorer import Scorer, solution_inputs
    from hiprm.rm.shared_trunk import SharedTrunk

    scorers = [Scorer.from_pretrained(p, device="cpu") for p in paths]
    group = SharedTrunk(scorers)
    inputs = solution_inputs(solutions(n_solutions))
    group.score_inputs(inputs[:8])  # warm-up and the shared path's one-time check against the models alone

    ways = {"alone": lambda: [s.score_inputs(inputs) for s in scorers], "shared": lambda: group.score_inputs(inputs)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    out: dict[str, list[list[float]]] = {}
    for _ in range(repeat):  # interleaved, so a slow spell of the machine hits both ways
        for k, fn in ways.items():
            t = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - t)
    (alone_s, alone), (shared_s, shared) = ((min(times[k]), out[k]) for k in ways)
    diff = max(abs(a - b) for x, y in zip(alone, shared, strict=True) for a, b in zip(x, y, strict=True))
    layers = len(scorers[0].model.model.layers)
    print(f"(d) {len(paths)} models sharing {group.depth} of {layers} layers; {n_solutions} PRM800K solutions, "
          f"{len(inputs)} step prefixes; best of {repeat}")
    print(f"    each model alone, one after the other: {alone_s:7.1f} s")
    print(f"    SharedTrunk                           : {shared_s:7.1f} s")
    print(f"    speed-up {alone_s / shared_s:5.2f}x   max |reward diff| {diff:.1e}")


def main() -> int:
    from hiprm.rm.scorer import Scorer
    from hiprm.rm.template import TemplateConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="checkpoint folder or backbone name; default: a tiny random model")
    ap.add_argument("--solutions", type=int, default=8, help="PRM800K solutions scored in (a)")
    ap.add_argument("--paper-steps", type=int, default=4, help="step prefixes timed the paper's way in (a)")
    ap.add_argument("--paper-length", type=int, default=4096)
    ap.add_argument("--sets", type=int, default=6, help="candidate sets in (b)")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--parts", default="ab", help="which measurements to run: any of a, b, c, d")
    ap.add_argument("--also-model", default="", help="(d): a second checkpoint sharing --model's bottom layers")
    ap.add_argument("--prefixes", type=int, default=112, help="PRM800K step prefixes scored in (c)")
    ap.add_argument("--vllm-url", default="", help="(c): a vLLM server already serving --model (--runner pooling); "
                    "default: start one from .venv-vllm")
    ap.add_argument("--vllm-port", type=int, default=8016, help="(c): port of the vLLM server started here")
    ap.add_argument("--also-plain", action="store_true", help="(a): also time the Scorer with prefix sharing off")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); on a busy "
                    "machine 1 thread gives steadier timings")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if "c" in args.parts and not args.model:
        ap.error("--parts c needs --model: a checkpoint from `hiprm rm train`")
    if "d" in args.parts and not (args.model and args.also_model):
        ap.error("--parts d needs --model and --also-model: two checkpoints from `hiprm rm train`")

    if "a" in args.parts or "b" in args.parts:
        model, tok, name = build_from(args.model) if args.model else build_tiny()
        # The same long budget for both ways, so neither truncates.
        scorer = Scorer(model, tok, TemplateConfig(max_length=args.paper_length))
        print(f"model: {name}; torch threads: {torch.get_num_threads()}")
        items = solutions(max(args.solutions, 60))
        if "a" in args.parts:
            bench_steps(scorer, tok, items[: args.solutions], args.paper_steps, args.paper_length, args.also_plain)
        if "b" in args.parts:
            sets = candidate_sets(tok, scorer.template, items, args.sets, args.candidates)
            bench_candidates(scorer, tok, sets, args.repeat)
        del model, scorer
    if "c" in args.parts:
        print(f"model: {args.model} (its own template); torch threads: {args.threads or torch.get_num_threads()}")
        bench_vllm(args.model, args.threads, args.prefixes, args.repeat, args.vllm_url, args.vllm_port)
    if "d" in args.parts:
        bench_shared_trunk([args.model, args.also_model], args.solutions, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
