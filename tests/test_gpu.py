"""The device check: every GPU path on a real GPU (marker `gpu`; skipped without CUDA).

Run by scripts/gpu_check.sh, which installs what a GPU machine lacks; `gpu_check.sh --cpu` runs
these same tests on CPU (HIPRM_CHECK_DEVICE=cpu) in every CI run, so they cannot rot. The
bodies are in tests/gpu_paths.py, shared with the CPU-forced tests (tests/test_gpu_branch.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hiprm.artifacts import write_jsonl  # noqa: E402

from . import gpu_paths  # noqa: E402
from .rm_fixtures import shared_tiny_rm  # noqa: E402
from .test_rm_train import toy_examples  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEVICE = os.environ.get("HIPRM_CHECK_DEVICE", "cuda")
CUDA = DEVICE.startswith("cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA and not torch.cuda.is_available(), reason="no CUDA device (HIPRM_CHECK_DEVICE=cpu runs it on CPU)"),
]
HALF = torch.bfloat16  # what `auto` picks on CUDA (Ampere and later)


@pytest.mark.parametrize("kernel", gpu_paths.sdpa_kernels(DEVICE), ids=lambda k: k.name.lower())
def test_trie_training_step_in_bf16_against_rows(tiny_tokenizer, kernel):
    gpu_paths.check_trie_step(tiny_tokenizer, DEVICE, HALF, kernel)


def test_scorer_auto_dtype_against_a_plain_forward(tmp_path_factory, tiny_tokenizer):
    gpu_paths.check_scorer_against_hf(shared_tiny_rm(tmp_path_factory, tiny_tokenizer), DEVICE, "auto")


def test_decode_loop_auto_dtype_equals_generate(tiny_lm_dir):
    gpu_paths.check_decode(tiny_lm_dir, DEVICE, "auto")


def test_fused_selftrain_loss_in_bf16():
    gpu_paths.check_fused_loss(DEVICE, HALF)


def launch(config: str, tmp: Path, backbone: Path, *extra: str) -> subprocess.CompletedProcess:
    write_jsonl(tmp / "train.jsonl", toy_examples(160, seed=0))
    write_jsonl(tmp / "val.jsonl", toy_examples(32, seed=1))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / f"{config}.yaml"), "--num_processes", "1", "-m", "hiprm.cli",
           "rm", "train", f"output_dir={tmp / 'out'}", f"model.name={backbone}", f"data.train={tmp / 'train.jsonl'}",
           f"data.val={tmp / 'val.jsonl'}", "optim.max_steps=4", "optim.batch_size=8", "eval.every_steps=2",
           "checkpoint.every_steps=2", "logging_steps=1", "optim.learning_rate=3e-3", *extra]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if not CUDA:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_rm_train_bf16_trie_batches(tmp_path, tiny_backbone_dir):
    """`rm train optim.precision=bf16` through `accelerate launch`: trie batches, a saved model."""
    proc = launch("cpu_2proc", tmp_path, tiny_backbone_dir, "optim.precision=bf16")
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["batching"] == "trie" and meta["global_step"] == 4
    assert (tmp_path / "out" / "model" / "config.json").is_file()


def test_fsdp_one_process_smoke(tmp_path, tiny_backbone_dir):
    """The shipped FSDP2 config (RAM-efficient loading, full state dict on save) trains and saves
    a model that loads with plain from_pretrained. On CPU, accelerate has no FSDP: refused."""
    proc = launch("fsdp", tmp_path, tiny_backbone_dir, "optim.precision=bf16")
    if not CUDA:
        assert proc.returncode != 0 and "asks for FSDP, which needs GPUs" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-4000:]
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())
