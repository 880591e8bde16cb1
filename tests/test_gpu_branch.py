"""The branches a GPU run takes, forced on CPU where PyTorch allows (marker `gpu_branch`).

The checks themselves are in tests/gpu_paths.py, shared with tests/test_gpu.py (marker `gpu`,
CUDA only, run by scripts/gpu_check.sh). docs/gpu.md lists every GPU path and where it has run.
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
from .test_rm_train import metric_rows, toy_examples  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gpu_branch


@pytest.fixture
def toy_data(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", toy_examples(160, seed=0))
    write_jsonl(tmp_path / "val.jsonl", toy_examples(32, seed=1))
    return tmp_path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kernel", gpu_paths.sdpa_kernels("cpu"), ids=lambda k: k.name.lower())
def test_trie_attention_under_each_masked_sdpa_kernel(tiny_tokenizer, kernel, dtype):
    """Trie attention hands SDPA a boolean mask per sibling group; on CUDA that selects the
    memory-efficient kernel, here the math and the flash kernels: logits and gradients equal
    the plain rows' in both, in fp32 and in bf16 (the dtype a GPU scorer and trainer use)."""
    gpu_paths.check_trie_step(tiny_tokenizer, "cpu", dtype, kernel)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_scorer_in_the_gpu_dtype_against_a_plain_forward(tmp_path_factory, tiny_tokenizer, dtype):
    """`Scorer(dtype=auto)` picks bf16 on CUDA: trie-packed bf16 rewards against a plain fp32 forward."""
    gpu_paths.check_scorer_against_hf(shared_tiny_rm(tmp_path_factory, tiny_tokenizer), "cpu", dtype)


def test_gpu_dtype_choices(monkeypatch):
    from hiprm.policy.hf import policy_dtype
    from hiprm.rm.scorer import _resolve_dtype

    assert policy_dtype("cuda") == torch.bfloat16 and policy_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert _resolve_dtype("auto", "cuda:0") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # V100, T4
    assert _resolve_dtype("auto", "cuda") == torch.float16
    assert _resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        policy_dtype("cpu", "int8x")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decode_loop_in_the_gpu_dtype_equals_generate(tiny_lm_dir, dtype):
    """The hf policy loads bf16 on CUDA: the decode loop's static cache, shared prefill and
    compaction in bf16 give `generate`'s greedy tokens."""
    gpu_paths.check_decode(tiny_lm_dir, "cpu", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_selftrain_loss_in_the_gpu_dtype(dtype):
    gpu_paths.check_fused_loss("cpu", dtype)


def rm_train_args(data: Path, backbone: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"output_dir={out}", f"model.name={backbone}", f"data.train={data / 'train.jsonl'}",
        f"data.val={data / 'val.jsonl'}", "optim.max_steps=6", "optim.batch_size=8", "eval.every_steps=3",
        "checkpoint.every_steps=3", "logging_steps=1", "optim.learning_rate=3e-3", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_rm_train_bf16_autocast_tracks_fp32(toy_data, tiny_backbone_dir):
    """`optim.precision=bf16` (Trainer's autocast, the GPU setting) on CPU: the same trie
    batches, each step's loss within 5% of the fp32 run's. (fp16 cannot be forced on CPU:
    accelerate would silently train in fp32, so it is refused.)"""
    from hiprm.config import ConfigError, load_config
    from hiprm.rm.train import TrainConfig, run

    half = "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        run(load_config(TrainConfig, None, rm_train_args(toy_data, tiny_backbone_dir, toy_data / "fp16",
                                                         "optim.precision=fp16")))  # fmt: skip

    losses = {}
    for precision in ("fp32", half):
        out = toy_data / precision
        run(load_config(TrainConfig, None, rm_train_args(toy_data, tiny_backbone_dir, out, f"optim.precision={precision}")))
        meta = json.loads((out / "meta.json").read_text())
        assert meta["batching"] == "trie" and meta["global_step"] == 6
        losses[precision] = [r["loss"] for r in metric_rows(out) if "loss" in r]
    assert len(losses[half]) == len(losses["fp32"]) == 6
    for a, b in zip(losses[half], losses["fp32"], strict=True):
        assert a == pytest.approx(b, rel=0.05)
    assert losses[half] != losses["fp32"]  # autocast did run


@pytest.mark.slow
def test_selftrain_bf16_autocast_tracks_fp32(tmp_path, tiny_lm_dir):
    from hiprm.selftrain.train import run

    from .test_selftrain import make_cfg, rows, toy_tree

    trees = tmp_path / "trees.jsonl"
    write_jsonl(trees, [toy_tree(f"p{i}", f"What is 2 + 3? ({i})").to_dict() for i in range(6)])
    got = {}
    for precision in ("fp32", "bf16"):
        out = run(make_cfg(trees, tiny_lm_dir, tmp_path / precision, "lam=0.5", f"precision={precision}"))
        got[precision] = [r["lm_loss"] for r in rows(out) if "lm_loss" in r]
    assert len(got["bf16"]) == len(got["fp32"]) == 4
    for a, b in zip(got["bf16"], got["fp32"], strict=True):
        assert a == pytest.approx(b, rel=0.05)
    assert got["bf16"] != got["fp32"]


def test_trie_check_on_meta_weights_takes_rank0s_verdict(tiny_tokenizer):
    """Under FSDP's RAM-efficient loading, every rank but 0 holds meta weights until the model
    is sharded: the trie check must not run a forward there (rank 0's verdict is broadcast)."""
    from transformers import LlamaForSequenceClassification

    from hiprm.rm.data_collate import FeatureDataset
    from hiprm.rm.train import trie_batches_ok

    feats, _ = gpu_paths.encode_examples(tiny_tokenizer, gpu_paths.family(), gpu_paths.TemplateConfig(max_length=256))
    with torch.device("meta"):
        model = LlamaForSequenceClassification(gpu_paths.tiny_llama_config(tiny_tokenizer, num_labels=2))
    assert trie_batches_ok(model, FeatureDataset(feats), list(range(len(feats))), tiny_tokenizer.pad_token_id, 10_000)


@pytest.mark.slow
def test_fsdp_config_on_cpu_processes_is_refused_in_one_line(toy_data, tiny_backbone_dir):
    """accelerate never turns FSDP on for CPU processes (its MULTI_CPU state has no FSDP branch):
    the FSDP config would silently train as DDP, or crash on meta weights. hiprm says so."""
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--config_file", str(REPO / "configs" / "accelerate" / "fsdp.yaml"),
           "--num_processes", "2", "-m", "hiprm.cli", "rm", "train",
           *rm_train_args(toy_data, tiny_backbone_dir, toy_data / "out")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "the accelerate config asks for FSDP, which needs GPUs" in proc.stderr
    assert not (toy_data / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_gpu_check_script_runs_on_cpu(tmp_path):
    """`scripts/gpu_check.sh --cpu`: the device check's tests and benchmark, on CPU, every CI run."""
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bench = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert bench["score_ratio"] > 0 and bench["train_ratio"] > 0 and bench["reward_gap"] < 1e-3
    assert "passed" in (tmp_path / "out" / "tests.log").read_text()
    assert (tmp_path / "out" / "junit.xml").is_file() and (tmp_path / "out" / "env.txt").is_file()
