"""What every Trainer-based runner (`hiprm rm train`, `hiprm selftrain`) shares: the Trainer's
arguments, metrics.jsonl, a loss plot, and the checkpoint bookkeeping that makes a rerun resume.

- `trainer_arguments(out, ...)` builds `transformers.TrainingArguments` from plain values, with
  the settings every hiprm trainer needs (checkpoints in `out/checkpoints`, no reporting
  integrations, our own batches and labels, CPU training when no accelerator is there), and
  refuses an fp32 run under a launcher set to mixed precision (`check_launcher_precision`).
- `train_or_restore(trainer, resume)` trains, or resumes from a checkpoint.

- `MetricsLog` (a transformers callback) appends every Trainer log row to `metrics.jsonl` as
  `{"step": N, ...}` (train rows carry `loss`, validation rows `eval_loss`, `eval_f1`, ...).
- `trim_metrics(path, step)` drops rows logged after the checkpoint a rerun resumes from, so a
  resumed run's file reads as one uninterrupted run.
- `plot_losses(metrics_path, png_path)` draws train/validation loss against step (Agg backend).
- `prepare_output_dir(out, config, ...)` decides what a rerun does: resume the same run, return
  a finished one, refuse a different config in the same folder, or start over (`overwrite`).
- `last_complete_checkpoint(folder)` is the newest `checkpoint-N` with its weights and a
  `trainer_state.json` (written last by Trainer) that parses; a checkpoint cut short by a crash
  is moved aside.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from hiprm.artifacts import append_jsonl, atomic_write, identity_diff, read_json, sha256_file, write_meta
from hiprm.config import ConfigError

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _clean(value: Any) -> Any:
    """JSON-safe numbers: NaN / inf (e.g. AUROC with one class) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog(TrainerCallback):
    """Appends each Trainer log row to `path` (main process only)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if logs and state.is_world_process_zero:
            row = {"step": state.global_step, **{k: _clean(v) for k, v in logs.items()}}
            append_jsonl(self.path, row)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash ends the usable part
    return rows


def trim_metrics(path: Path, step: int) -> int:
    """Keep rows with `step <= step`; returns how many were dropped."""
    rows = read_metrics(path)
    keep = [r for r in rows if r.get("step", 0) <= step]
    if len(keep) != len(rows) or (Path(path).is_file() and not rows):
        with atomic_write(path) as f:
            for r in keep:
                f.write(json.dumps(r) + "\n")
    return len(rows) - len(keep)


def plot_losses(metrics_path: Path, png_path: Path) -> Path | None:
    """Train and validation loss against step; None when there is nothing to draw."""
    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    val = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(png_path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return Path(png_path)


# What holds a checkpoint's weights, by how Trainer saves them: whole or sharded (and their
# index), a LoRA adapter, FSDP's shard folders, DeepSpeed's `global_stepN` folders.
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
            "adapter_model.safetensors", "adapter_model.bin")  # fmt: skip
_WEIGHT_PREFIXES = ("pytorch_model_fsdp", "global_step")


def checkpoint_is_complete(path: Path) -> bool:
    """Trainer writes a checkpoint's weights first and `trainer_state.json` last, and that file
    not atomically: a kill while it is written leaves it empty or cut short. So a checkpoint is
    complete when it has weights and a trainer_state.json that parses to a JSON object."""
    if not any((path / n).is_file() for n in _WEIGHTS) and not any(
        p.name.startswith(_WEIGHT_PREFIXES) for p in path.iterdir()
    ):
        return False
    try:
        return isinstance(json.loads((path / "trainer_state.json").read_bytes()), dict)
    except (OSError, ValueError):  # missing, unreadable, empty, torn or not UTF-8
        return False


def last_complete_checkpoint(folder: Path, clean: bool = False) -> Path | None:
    """The newest complete `checkpoint-N` under `folder` (`checkpoint_is_complete`).

    Newer incomplete ones were cut short by a crash; with `clean` (main process only) they are
    deleted, so Trainer's rotation and the resume see only whole checkpoints.
    """
    if not Path(folder).is_dir():
        return None
    found = sorted(
        (
            (int(m.group(1)), p)
            for p in Path(folder).iterdir()
            if (m := _CHECKPOINT.match(p.name)) and p.is_dir()
        ),
        reverse=True,
    )
    for _, path in found:
        if checkpoint_is_complete(path):
            return path
        if clean:
            aside = path.with_name(f".partial-{path.name}.{os.getpid()}")
            log.warning("%s: incomplete checkpoint (no weights, or no whole trainer_state.json), deleting it", path)
            os.rename(path, aside)
            shutil.rmtree(aside, ignore_errors=True)
    return None


def prepare_output_dir(
    out: Path, config: dict[str, Any], inputs: list[str], overwrite: bool, is_main: bool
) -> bool:
    """Check `out` against an earlier run; True when that run already finished.

    The same config and inputs resume (or return at once when done); anything else in the
    folder is an error unless `overwrite=true`, which starts over.
    """
    hashes = {str(p): sha256_file(p) for p in inputs}
    meta_path = out / "meta.json"
    # A start that failed before its first checkpoint (a wrong model name, a bad data file)
    # left only its meta.json: nothing to resume or lose, so it must not block the fixed rerun.
    saved_nothing = not (out / "model").exists() and last_complete_checkpoint(out / "checkpoints") is None
    if meta_path.is_file() and overwrite:
        if is_main:
            log.warning("%s: overwrite=true, deleting the earlier run", out)
            shutil.rmtree(out)
    elif meta_path.is_file() and saved_nothing:
        if is_main:
            log.info("%s: the earlier start saved no checkpoint; starting afresh", out)
            for name in ("meta.json", "config.yaml", "metrics.jsonl", "loss.png"):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
    elif meta_path.is_file():
        meta = read_json(meta_path)
        changed = identity_diff(meta.get("config", {}), config)
        changed += [f"input {p}" for p, h in hashes.items() if meta.get("inputs", {}).get(p) != h]
        if changed:
            raise ConfigError(
                f"{out} holds a run with a different config or input ({', '.join(changed)}); use another "
                f"output_dir or overwrite=true"
            )
        if meta.get("status") == "done" and (out / "model" / "config.json").is_file():
            return True
    if is_main:
        write_meta(out, config, inputs, status="running")
    return False


def checkpoint_step(path: Path) -> int:
    m = _CHECKPOINT.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a checkpoint-N folder")
    return int(m.group(1))


def has_accelerator() -> bool:
    """Without a GPU, Trainer must be told `use_cpu` or, under torchrun (`accelerate launch
    --multi_gpu`), it joins no process group and every process trains alone."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available())


def check_launcher_sharding() -> None:
    """Refuse FSDP and DeepSpeed launch configs without a GPU: accelerate runs CPU processes
    data-parallel (its MULTI_CPU state never takes the FSDP or DeepSpeed branch), so the config
    would be ignored, and with FSDP's RAM-efficient loading every rank but 0 holds meta weights."""
    if has_accelerator():
        return
    for env, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(env, "false").lower() == "true":
            raise ConfigError(
                f"the accelerate config asks for {name}, which needs GPUs (accelerate runs CPU processes "
                "data-parallel); on CPU launch with configs/accelerate/cpu_2proc.yaml (docs/gpu.md)"
            )


def check_launcher_precision(precision: str, key: str) -> None:
    """Refuse fp32 under an accelerate launcher set to mixed precision: Trainer would silently
    take the launcher's setting over ours."""
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision == "fp32" and launcher not in ("no", "fp32"):
        raise ConfigError(
            f"{key} is fp32 but the accelerate launcher asks for {launcher}; set "
            f"{key}={launcher} or mixed_precision: 'no' in the accelerate config"
        )


def trainer_arguments(
    out: Path,
    *,
    precision: str,
    precision_key: str,
    batch_size: int,
    eval_batch_size: int,
    grad_accum: int,
    learning_rate: float,
    scheduler: str,
    warmup: int,
    epochs: float,
    max_steps: int,
    max_grad_norm: float,
    seed: int,
    save_every: int,
    keep: int,
    logging_steps: int,
    gradient_checkpointing: bool,
    **extra: Any,
) -> Any:
    """`TrainingArguments` for a hiprm trainer writing checkpoints to `out/checkpoints`; `extra`
    passes any other TrainingArguments field (weight decay, evaluation, best-model keeping)."""
    import torch
    from transformers import TrainingArguments

    check_launcher_sharding()
    check_launcher_precision(precision, precision_key)
    if precision == "fp16" and not has_accelerator():
        raise ConfigError(f"{precision_key}=fp16 needs a GPU: on CPU accelerate ignores it and trains in fp32; "
                          "use fp32, or bf16 (autocast on CPU)")
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=learning_rate,
        lr_scheduler_type=scheduler,
        warmup_steps=warmup,
        num_train_epochs=epochs,
        max_steps=max_steps,
        max_grad_norm=max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=seed,
        data_seed=seed,
        save_strategy="steps",
        save_steps=save_every,
        save_total_limit=keep,
        logging_steps=logging_steps,
        logging_first_step=True,
        activation_checkpointing=gradient_checkpointing,
        report_to="none",
        label_names=["labels"],
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not has_accelerator(),
        **extra,
    )


def train_or_restore(trainer: Any, resume: Path | None) -> None:
    """`trainer.train`, resuming from `resume`.

    A run cut short after its last checkpoint (during the final evaluation or save) resumes
    from a checkpoint that already reached max_steps; Trainer 5.x would then take one step
    more, so the best (or last) weights are loaded from it instead.
    """
    from transformers import TrainerState

    if resume is not None:
        state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
        if state.max_steps and state.global_step >= state.max_steps:
            best = state.best_model_checkpoint
            trainer.state = state
            trainer._load_from_checkpoint(best if best and Path(best).is_dir() else str(resume))
            return
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)


def save_final_model(trainer: Any, out: Path, tokenizer: Any, base_for_lora: Callable[[], Any] | None,
                     before_save: Callable[[Any], None] | None = None) -> Path:  # fmt: skip
    """Write `out/model` atomically: the trained (best) weights, the KV cache switched back on,
    LoRA merged, the tokenizer beside them.

    `trainer.save_model` runs on every process (it gathers sharded ZeRO-3 / FSDP weights); with
    LoRA it saves the adapter, and the main process merges it into `base_for_lora()`, a fresh
    copy of the base model (None: no LoRA). `before_save(model)` adjusts the unwrapped model
    first (a training-time attention switched back, say).
    """
    tmp, final = out / ".model.tmp", out / "model"
    is_main = trainer.is_world_process_zero()
    if is_main and tmp.exists():
        shutil.rmtree(tmp)
    # Trainer turns the KV cache off for training; generation-style callers want it on.
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    unwrapped.config.use_cache = True
    if before_save is not None:
        before_save(unwrapped)
    trainer.save_model(str(tmp))
    if not is_main:
        return final
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; config.yaml says it all
    if base_for_lora is not None:
        from peft import PeftModel

        merged = PeftModel.from_pretrained(base_for_lora(), str(tmp)).merge_and_unload()
        shutil.rmtree(tmp)
        merged.config.use_cache = True
        merged.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final
