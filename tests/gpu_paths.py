"""The checks of every GPU code path, written once and run on a device given by the caller:
on CPU with the GPU branch forced (tests/test_gpu_branch.py, marker `gpu_branch`, every CI run)
and on CUDA (tests/test_gpu.py, marker `gpu`, run by scripts/gpu_check.sh on a GPU machine).
docs/gpu.md lists which path has run where.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hiprm.rm import trie
from hiprm.rm.data_collate import encode_examples, soft_label_loss
from hiprm.rm.template import TemplateConfig

from .conftest import tiny_llama_config
from .test_rm_trie import family  # one PRM800K-like family: rated completions, HRM pairs, a duplicate

QUESTION = "What is 2 + 3 + 4?"
STEPS = ["2 + 3 = 5.", "5 + 4 = 9.", "# Answer\n\n9"]


def sdpa_kernels(device: str) -> list[Any]:
    """The SDPA kernels that take a boolean mask on `device` (what trie attention runs on):
    math and flash on CPU; math and memory-efficient on CUDA (flash takes no mask there)."""
    from torch.nn.attention import SDPBackend

    if device.startswith("cuda"):
        return [SDPBackend.MATH, SDPBackend.EFFICIENT_ATTENTION]
    return [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION]


def check_trie_step(tokenizer: Any, device: str, dtype: torch.dtype, kernel: Any) -> float:
    """One training step's logits and every parameter's gradient from a trie batch against one
    row per example (plain `sdpa`), under `kernel`, in `dtype`. Returns the largest logit gap."""
    from torch.nn.attention import sdpa_kernel
    from transformers import LlamaForSequenceClassification

    feats, _ = encode_examples(tokenizer, family(), TemplateConfig(max_length=256))
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=2, attn_implementation="sdpa"))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device=device, dtype=dtype)

    def grads(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return {n: p.grad.float().clone() for n, p in model.named_parameters()}

    labels = torch.tensor([f["labels"] for f in feats], device=device)
    with sdpa_kernel([kernel]):
        want = torch.cat([model(input_ids=torch.tensor(f["input_ids"], device=device)[None]).logits for f in feats])
        want_grads = grads(soft_label_loss(want.float(), labels))
        trie.use_trie_attention(model)
        batch = trie.TrieCollator(tokenizer.pad_token_id, 10_000)(feats)
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        got = trie.classifier_logits(model, batch)
        got_grads = grads(soft_label_loss(got.float(), batch["labels"]))
    tol = trie.tolerance(dtype)
    gap = (got.float() - want.float()).abs().max().item()
    assert gap <= tol, f"trie logits differ by {gap:.3g} (> {tol}) under {kernel} in {dtype}"
    for name, g in want_grads.items():
        scale = g.abs().max().item() + 1e-6
        err = (got_grads[name] - g).abs().max().item() / scale
        assert err <= (1e-3 if dtype == torch.float32 else 0.1), f"{name}: gradient differs by {err:.3g} of its size"
    return gap


def check_scorer_against_hf(rm_dir: Path, device: str, dtype: str) -> float:
    """Scorer rewards (trie-packed, `device`, `dtype`) against a plain transformers forward of
    each step prefix, one at a time, in float32 on CPU. Returns the largest reward gap."""
    from transformers import AutoModelForSequenceClassification

    from hiprm.rm.scorer import Scorer, score_solutions, solution_inputs

    scorer = Scorer.from_pretrained(rm_dir, device=device, dtype=dtype)
    got = score_solutions(scorer, [(QUESTION, STEPS)])[0]
    ref = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
    want = []
    for ids in scorer.encode_inputs(solution_inputs([(QUESTION, STEPS)])):
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([ids])).logits[0]
        want.append(torch.softmax(logits.float(), -1)[1].item())
    gap = max(abs(a - b) for a, b in zip(got, want, strict=True))
    tol = 1e-5 if scorer.model.dtype == torch.float32 else 3e-2
    assert gap <= tol, f"rewards differ from a plain forward by {gap:.3g} (> {tol}) on {device} in {dtype}"
    return gap


def check_decode(lm_dir: Path, device: str, dtype: str) -> None:
    """The hf policy's decode loop (static cache, shared prefill, rows leaving the batch) gives
    `model.generate`'s greedy tokens on `device` in `dtype`."""
    from hiprm.policy.hf import HFPolicy
    from hiprm.policy.protocol import SamplingParams

    ours = HFPolicy(str(lm_dir), batch_size=8, device=device, dtype=dtype)
    theirs = HFPolicy(str(lm_dir), batch_size=8, device=device, dtype=dtype, decoder="generate")
    assert ours.model.dtype == theirs.model.dtype
    prompts = ["Question: What is 2 + 3?", "so x", "Question: What is 2 + 3?", "abc def ghi jkl"]
    params = SamplingParams(n=2, temperature=0.0, max_tokens=16)
    assert ours.generate(prompts, params) == theirs.generate(prompts, params)


def check_fused_loss(device: str, dtype: torch.dtype) -> float:
    """Self-training's fused loss (hidden states, no full logits) against the loss from logits
    in float32: value and the gradient of the hidden states. Returns the relative loss gap."""
    from hiprm.selftrain.loss import selftrain_loss, selftrain_loss_from_hidden

    g = torch.Generator().manual_seed(0)
    h, rh, w, rw = (torch.randn(s, generator=g) for s in [(2, 24, 16), (2, 24, 16), (50, 16), (50, 16)])
    labels = torch.randint(0, 50, (2, 24), generator=g)
    labels[:, :5] = -100
    h32 = h.clone().requires_grad_()
    want = selftrain_loss(h32 @ w.T, rh @ rw.T, labels)
    want[0].backward()
    hd = h.to(device=device, dtype=dtype).requires_grad_()
    got = selftrain_loss_from_hidden(hd, w.to(device, dtype), rh.to(device, dtype), rw.to(device, dtype),
                                     labels.to(device))  # fmt: skip
    got[0].backward()
    assert hd.grad.dtype == dtype
    rel = abs(got[0].item() - want[0].item()) / abs(want[0].item())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel <= tol, f"fused loss differs by {rel:.3g} of its value (> {tol}) on {device} in {dtype}"
    grad_err = (hd.grad.float().cpu() - h32.grad).abs().max().item() / h32.grad.abs().max().item()
    assert grad_err <= (1e-4 if dtype == torch.float32 else 5e-2), f"hidden-state gradient differs by {grad_err:.3g}"
    return rel
