"""hiprm.rm.train / data_collate / hiprm.training on the tiny backbone from conftest.

The toy task is learnable from the current step alone (positive steps say "The answer is 5.",
negative ones "x = -3, y = 7%."), with 0-6 previous steps so lengths vary.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hiprm.artifacts import DataError, write_jsonl
from hiprm.config import ConfigError, load_config
from hiprm.records import RMExample
from hiprm.rm.data_collate import PadCollator, encode_examples, read_examples, soft_label_loss
from hiprm.rm.scorer import score_solutions
from hiprm.rm.template import TemplateConfig, render_fitted
from hiprm.rm.train import TrainConfig, run
from hiprm.training import last_complete_checkpoint, trim_metrics

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]


def toy_examples(n: int, seed: int, soft: bool = False) -> list[RMExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good = rng.random() < 0.5
        prev = [f"Previous step {j}: 2 + 3 = 5." for j in range(rng.randint(0, 6))]
        label = (rng.uniform(0.6, 1.0) if good else rng.uniform(0.0, 0.4)) if soft else float(good)
        step = "The answer is 5." if good else "x = -3, y = 7%."
        out.append(RMExample(f"p{i}", f"What is {i} + 3?", prev, step, label, "prm", [1 if good else -1]))
    return out


@pytest.fixture
def toy_data(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", toy_examples(160, seed=0))
    write_jsonl(tmp_path / "val.jsonl", toy_examples(32, seed=1))
    return tmp_path


def make_cfg(data: Path, backbone: Path, *overrides: str) -> TrainConfig:
    base = [
        f"output_dir={data / 'out'}",
        f"model.name={backbone}",
        f"data.train={data / 'train.jsonl'}",
        f"data.val={data / 'val.jsonl'}",
        "optim.max_steps=20",
        "optim.learning_rate=3e-3",
        "eval.every_steps=10",
        "checkpoint.every_steps=10",
        "logging_steps=2",
    ]
    return load_config(TrainConfig, None, [*base, *overrides])


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---- pure pieces -------------------------------------------------------------------------------


def test_soft_label_loss_equals_cross_entropy_for_hard_labels():
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1]])
    hard = torch.tensor([1.0, 0.0, 1.0])
    expected = torch.nn.functional.cross_entropy(logits, hard.long())
    torch.testing.assert_close(soft_label_loss(logits, hard), expected)
    # A soft label is the label-weighted mix of the two hard losses.
    soft = torch.tensor([0.7])
    one = logits[:1]
    mix = 0.7 * soft_label_loss(one, torch.tensor([1.0])) + 0.3 * soft_label_loss(one, torch.tensor([0.0]))
    torch.testing.assert_close(soft_label_loss(one, soft), mix)


def test_pad_collator_pads_to_longest_row_only():
    batch = [{"input_ids": [5, 6, 7], "labels": 1.0}, {"input_ids": [8], "labels": 0.25}]
    out = PadCollator(pad_id=0)(batch)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].dtype == torch.float32 and out["labels"].tolist() == [1.0, 0.25]
    assert PadCollator(0, pad_to_multiple_of=4)(batch)["input_ids"].shape == (2, 4)
    assert PadCollator(0, pad_to_length=16)(batch)["input_ids"].shape == (2, 16)


def test_encode_examples_equals_render_fitted_and_counts_cuts(tiny_tokenizer, caplog):
    examples = toy_examples(30, seed=3)
    examples.append(RMExample("long", "What is 2 + 3? " * 40, ["step"], "The answer is 5. " * 40, 1.0, "prm"))
    template = TemplateConfig(max_length=60)
    feats, cuts = encode_examples(tiny_tokenizer, examples, template, chunk=7)  # several chunks
    for ex, feat in zip(examples, feats, strict=True):
        text, _ = render_fitted(tiny_tokenizer, ex.question, ex.previous_steps, ex.current_step, template)
        assert feat["input_ids"].tolist() == tiny_tokenizer(text)["input_ids"]
        assert len(feat["input_ids"]) <= template.max_length
        assert feat["labels"] == ex.label
    assert cuts.examples_with_dropped_steps > 0 and cuts.truncated_text == 1
    with caplog.at_level(logging.WARNING):
        cuts.warn_if_cut("toy", template.max_length)
    assert "exceed max_length=60" in caplog.text


def test_read_examples_names_file_line_field(tmp_path):
    good = toy_examples(1, seed=0)[0].to_dict()
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": 1.5}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'label'"):
        read_examples(path)
    assert len(read_examples(path, limit=1)) == 1


def test_bad_config_key_and_values_raise_config_error(toy_data, tiny_backbone_dir):
    with pytest.raises(ConfigError, match="optim.lr"):
        make_cfg(toy_data, tiny_backbone_dir, "optim.lr=1e-3")
    with pytest.raises(ConfigError, match="precision"):
        make_cfg(toy_data, tiny_backbone_dir, "optim.precision=fp8")
    with pytest.raises(ConfigError, match="multiple of eval.every_steps"):
        run(make_cfg(toy_data, tiny_backbone_dir, "checkpoint.every_steps=15"))
    with pytest.raises(ConfigError, match="set one of them"):
        run(make_cfg(toy_data, tiny_backbone_dir, "lora.r=4", "model.train_top_layers=1"))
    with pytest.raises(DataError, match="no such file"):
        run(make_cfg(toy_data, tiny_backbone_dir, "data.train=missing.jsonl"))


def test_shipped_configs_validate():
    for name in ("rm_train_prm.yaml", "rm_train_hrm.yaml"):
        path = REPO / "configs" / name
        cfg = load_config(TrainConfig, path)
        assert cfg.model.name == "smollm2-135m-instruct"
        assert path.read_text().startswith("# hiprm rm train configs/" + name)


def test_trim_metrics(tmp_path):  # checkpoint picking: tests/test_train_log.py
    m = tmp_path / "metrics.jsonl"
    m.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (2, 4, 6)))
    assert trim_metrics(m, 4) == 1
    assert [json.loads(x)["step"] for x in m.read_text().splitlines()] == [2, 4]


# ---- training on the tiny backbone ---------------------------------------------------------------


def test_train_learns_saves_and_reruns(toy_data, tiny_backbone_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    cfg = make_cfg(toy_data, tiny_backbone_dir)
    out = run(cfg)
    rows = metric_rows(out)
    train_losses = [r["loss"] for r in rows if "loss" in r]
    assert train_losses[-1] < 0.5 * train_losses[0]
    evals = [r for r in rows if "eval_f1" in r]
    assert evals and evals[-1]["eval_accuracy"] >= 0.9 and evals[-1]["eval_auroc"] >= 0.9
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"

    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.hiprm_template == TemplateConfig().to_dict()
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    assert model.config.id2label == {0: "negative", 1: "positive"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "done" and meta["global_step"] == 20
    assert set(meta["inputs"]) == {cfg.data.train, cfg.data.val}
    assert meta["validation"]["eval_accuracy"] >= 0.9

    # The reward (class 1) separates the two kinds of step, through the one formatter.
    good, bad = (
        render_fitted(tok, "What is 7 + 3?", [], s)[0] for s in ("The answer is 5.", "x = -3, y = 7%.")
    )
    with torch.no_grad():
        probs = model(**tok([good, bad], return_tensors="pt", padding=True)).logits.softmax(-1)[:, 1]
    assert probs[0] > 0.5 > probs[1]
    # Scoring reads the same checkpoint and gives the same reward (one formatter, same ids).
    from hiprm.rm.scorer import Scorer

    scorer = Scorer.from_pretrained(out / "model", device="cpu", dtype="float32")
    rewards = [score_solutions(scorer, [("What is 7 + 3?", [s])])[0][0] for s in ("The answer is 5.", "x = -3, y = 7%.")]
    assert rewards == pytest.approx(probs.tolist(), abs=1e-5)

    mtime = (out / "model" / "model.safetensors").stat().st_mtime
    assert run(cfg) == out  # finished: returns without training again
    assert (out / "model" / "model.safetensors").stat().st_mtime == mtime
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        run(make_cfg(toy_data, tiny_backbone_dir, "optim.learning_rate=1e-4"))


def test_soft_labels_train(tmp_path, tiny_backbone_dir):
    write_jsonl(tmp_path / "train.jsonl", toy_examples(64, seed=5, soft=True))
    out = run(
        make_cfg(
            tmp_path, tiny_backbone_dir, "data.val=null", "optim.max_steps=6", "checkpoint.every_steps=3"
        )
    )
    losses = [r["loss"] for r in metric_rows(out) if "loss" in r]
    assert losses and all(0 < v < 5 for v in losses)
    assert (out / "model" / "config.json").is_file()


class StopAt(transformers.TrainerCallback):
    """Simulates Ctrl-C after `step` optimizer steps."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt


class FirstStep(transformers.TrainerCallback):
    def __init__(self):
        self.first = None

    def on_step_end(self, args, state, control, **kw):
        self.first = self.first or state.global_step


def test_resume_after_interrupt_continues_step_count(toy_data, tiny_backbone_dir):
    cfg = make_cfg(
        toy_data, tiny_backbone_dir, "eval.every_steps=4", "checkpoint.every_steps=4", "optim.max_steps=12"
    )
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt(7)])
    out = Path(cfg.output_dir)
    assert not (out / "model").exists()
    assert last_complete_checkpoint(out / "checkpoints").name == "checkpoint-4"
    assert max(r["step"] for r in metric_rows(out)) >= 6  # logged past the checkpoint

    first = FirstStep()
    run(cfg, callbacks=[first])
    assert first.first == 5  # continued after checkpoint-4, did not restart at 1
    train_steps = [r["step"] for r in metric_rows(out) if "loss" in r]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] == 12  # no duplicates
    state = json.loads((out / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12

    # Cut short after the last checkpoint (during the final save): a rerun only saves.
    shutil.rmtree(out / "model")
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    run(cfg)
    assert json.loads((out / "meta.json").read_text())["global_step"] == 12
    assert (out / "model" / "config.json").is_file()
    assert not (out / "checkpoints" / "checkpoint-13").exists()


def test_lora_is_merged_into_a_plain_model(toy_data, tiny_backbone_dir):
    from transformers import AutoModelForSequenceClassification, LlamaForCausalLM

    out = run(make_cfg(toy_data, tiny_backbone_dir, "lora.r=4", "lora.alpha=8", "optim.max_steps=10",
                       "optim.learning_rate=1e-2"))  # fmt: skip
    assert not (out / "model" / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    base = LlamaForCausalLM.from_pretrained(tiny_backbone_dir)
    assert not any("lora" in k for k in model.state_dict())
    q_new = model.model.layers[0].self_attn.q_proj.weight
    q_old = base.model.layers[0].self_attn.q_proj.weight
    mlp_new, mlp_old = model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    assert not torch.allclose(q_new, q_old)  # the adapter was merged in
    torch.testing.assert_close(mlp_new, mlp_old)  # untargeted modules untouched
    assert model.config.hiprm_template["max_length"] == 1024


@pytest.mark.slow
def test_two_process_data_parallel_under_accelerate(toy_data, tiny_backbone_dir):
    """`accelerate launch` with the shipped 2-process CPU config trains data-parallel (~25 s)."""
    accelerate = Path(sys.executable).parent / "accelerate"
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed")
    out = toy_data / "out"
    cmd = [
        str(accelerate), "launch", "--config_file", str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
        "-m", "hiprm.cli", "rm", "train",
        f"output_dir={out}", f"model.name={tiny_backbone_dir}", f"data.train={toy_data / 'train.jsonl'}",
        f"data.val={toy_data / 'val.jsonl'}", "optim.max_steps=6", "optim.batch_size=4", "eval.every_steps=3",
        "checkpoint.every_steps=3", "logging_steps=1", "optim.learning_rate=3e-3",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["global_step"] == 6 and meta["batching"] == "trie"
    # 6 steps x 4 rows x 2 processes = 48 examples seen: 0.3 of the 160-example epoch.
    epochs = [r["epoch"] for r in metric_rows(out) if "loss" in r]
    assert epochs[-1] == pytest.approx(48 / 160, abs=0.01)
    assert (out / "model" / "config.json").is_file()


@pytest.mark.parametrize("name", ["cpu_2proc", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_accelerate_configs_parse_as_the_launcher_reads_them(name):
    """The GPU configs cannot run here; this checks accelerate accepts them and maps them to
    the intended launcher and plugin settings."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    path = REPO / "configs" / "accelerate" / f"{name}.yaml"
    assert path.read_text().startswith("# accelerate launch --config_file configs/accelerate/" + name)
    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "hiprm.cli", "rm", "train"])
    args, defaults, _ = _validate_launch_command(args)
    assert args.mixed_precision == "no"  # precision is set once, by optim.precision
    if name == "cpu_2proc":
        assert args.multi_gpu and args.num_processes == 2
    elif name == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        env = {k: v for k, v in prepare_multi_gpu_env(args).items() if k.startswith("FSDP")}
        old = dict(os.environ)
        os.environ.update(env)
        try:
            plugin = FullyShardedDataParallelPlugin()
        finally:
            os.environ.clear()
            os.environ.update(old)
        assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"
    else:
        stage = int(name[-1])
        assert args.use_deepspeed and defaults.deepspeed_config["zero_stage"] == stage
        assert "gradient_clipping" not in defaults.deepspeed_config  # max_grad_norm comes from hiprm


def test_final_metrics_come_from_the_kept_checkpoint_without_revalidating(toy_data, tiny_backbone_dir):
    from transformers import TrainerCallback

    class CountEvals(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_evaluate(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    counter = CountEvals()
    out = run(make_cfg(toy_data, tiny_backbone_dir), callbacks=[counter])
    assert counter.steps == [10, 20]  # eval.every_steps=10, max_steps=20: no extra pass at the end
    meta = json.loads((out / "meta.json").read_text())
    best_step = int(Path(meta["best_checkpoint"]).name.split("-")[1])
    logged = [r for r in metric_rows(out) if r.get("step") == best_step and "eval_loss" in r]
    assert logged and meta["validation"]["eval_loss"] == pytest.approx(logged[-1]["eval_loss"])


def test_a_failed_start_does_not_block_the_corrected_rerun(toy_data, tiny_backbone_dir):
    """model.name pointing nowhere fails after the output folder was opened; the same folder
    with the right name must train, not be refused as another config."""
    with pytest.raises(Exception, match="nowhere"):
        run(make_cfg(toy_data, tiny_backbone_dir, f"model.name={toy_data / 'nowhere'}", "optim.max_steps=2"))
    assert (toy_data / "out" / "meta.json").is_file()
    out = run(make_cfg(toy_data, tiny_backbone_dir, "optim.max_steps=2", "eval.every_steps=2",
                       "checkpoint.every_steps=2"))  # fmt: skip
    assert json.loads((out / "meta.json").read_text())["status"] == "done"
