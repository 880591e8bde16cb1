"""`hiprm selftrain [CONFIG.yaml] [key=value ...]`: self-train the policy on its best trajectories.

    hiprm selftrain configs/selftrain.yaml trees=runs/annotate/trees.jsonl out_dir=runs/selftrain
    hiprm selftrain trees=../shared/data/samples/openr_samples_math-aps-tree.jsonl max_steps=10
    hiprm selftrain configs/selftrain.yaml 'lambdas=[0.001, 0.5, 10]'          # Fig. 4 sweep
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m hiprm.cli selftrain configs/selftrain.yaml

Input: `trees` (hiprm trees.jsonl, HNC trees, or OpenR MCTS trees). Trajectories whose every
step has MC-score > `min_mc` and whose leaf is correct are picked (`hiprm.selftrain.select`)
and written as the policy's own A.3 step-format answer after its chat-templated prompt; only
the completion (and the end-of-turn token) carries loss.

Training (paper Sec. 4.4, Eq. 3): L = L_LM + lam * f(KL(P||Q)) with P the policy being trained
and Q a frozen copy of the starting model, run online on the same batch (no grad; its logits
are never stored), from the last hidden states through `selftrain_loss_from_hidden`, so full
logits are never built. Full fine-tuning or LoRA (`lora.r > 0`, merged on save); fp32 or bf16;
transformers' Trainer underneath (DDP, accumulation, clipping, checkpoints). The LM term is a
token mean over the whole optimizer step (Trainer's `num_items_in_batch`, across micro-batches
and processes); see `hiprm.selftrain.loss` for what that means for f(KL).

Output (`out_dir`, returned; with `lambdas` one subfolder `lam_<value>` per lambda, plus the
sweep's figure at `out_dir/fig4.png`):
    model/              plain HF causal LM + tokenizer: `hiprm eval policy.backend=hf policy.model=<it>`
    checkpoints/        resume points: rerun the same command after a crash (kill -9 included)
    trajectories.jsonl  the selected trajectories (train and val, with their split)
    metrics.jsonl       per logged step: loss, lm_loss, kl, log_kl, kl_term, learning_rate, ...
    fig4.png            log-KL and LM loss against steps (one column per lambda in a sweep)
    meta.json, config.yaml
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from hiprm.artifacts import DataError, check_input_file, locked, write_jsonl, write_meta
from hiprm.config import (
    ConfigError,
    Fraction,
    NonNegativeFloat,
    Positive,
    PositiveFloat,
    Probability,
    Scheduler,
    to_dict,
)
from hiprm.rm.train import LoraConfig  # one LoRA block for both trainers
from hiprm.selftrain.loss import DIRECTIONS, TRANSFORMS
from hiprm.selftrain.select import RULES, Trajectory, select_trajectories, split_trajectories, training_text
from hiprm.tree import read_trees

log = logging.getLogger(__name__)


@dataclass
class SelftrainConfig:
    trees: str = "runs/annotate/trees.jsonl"
    model: str = "smollm2-135m-instruct"  # the embedded default, or any HF folder / name
    out_dir: str = "runs/selftrain"
    # selection
    min_mc: Probability = 0.9  # paper 0.9; the reference code 0.95
    rule: Literal["all_steps", "mean"] = "all_steps"
    max_trajectories: Positive | None = None  # first N after selection (quick runs)
    val_fraction: Fraction = 0.0  # problems held out, evaluated once at the end
    max_length: Positive = 1024  # prompt + completion tokens; longer trajectories are dropped
    # loss
    lam: NonNegativeFloat = 0.5
    lambdas: list[float] = field(default_factory=list)  # a sweep: one run per value
    direction: Literal["policy_ref", "ref_policy"] = "policy_ref"
    transform: Literal["log", "log1p", "identity"] = "log"
    kl_eps: PositiveFloat = 1e-6
    chunk_size: Positive = 128
    # optimisation
    lr: PositiveFloat = 1e-5
    batch_size: Positive = 2  # per process
    grad_accum: Positive = 1
    epochs: PositiveFloat = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    warmup: NonNegativeFloat = 0.0
    scheduler: Scheduler = "linear"
    max_grad_norm: PositiveFloat = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    gradient_checkpointing: bool = False
    # Train only the top k decoder layers (+ final norm; the tied lm_head stays frozen), so the
    # backward pass stops k layers down: what makes a quickstart-sized run affordable on CPU.
    # -1 = everything. Exclusive with LoRA.
    train_top_layers: int = -1
    seed: int = 42
    lora: LoraConfig = field(default_factory=LoraConfig)
    # bookkeeping
    save_every: Positive = 50
    keep_checkpoints: Positive = 2
    logging_steps: Positive = 1
    overwrite: bool = False


def check_config(cfg: SelftrainConfig) -> None:
    """Errors a config can be caught on before anything is loaded, beyond the ranges its field
    types already checked when it loaded (min_mc, lam, kl_eps, lr, sizes, val_fraction)."""
    checks = [
        (cfg.rule in RULES, f"rule must be one of {RULES}"),
        (all(x >= 0 for x in cfg.lambdas), f"lambdas must all be >= 0, got {cfg.lambdas}"),
        (len(set(cfg.lambdas)) == len(cfg.lambdas), f"lambdas has repeated values: {cfg.lambdas}"),
        (cfg.direction in DIRECTIONS, f"direction must be one of {DIRECTIONS}"),
        (cfg.transform in TRANSFORMS, f"transform must be one of {TRANSFORMS}"),
        (cfg.max_steps > 0 or cfg.epochs > 0, "set max_steps > 0 or epochs > 0"),
        (cfg.max_length >= 64, "max_length must be >= 64"),
        (cfg.lora.r >= 0, "lora.r must be >= 0 (0 = full fine-tuning)"),
        (
            cfg.lora.r == 0 or cfg.train_top_layers < 0,
            "lora.r and train_top_layers are two ways to train less; set one of them",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_input_file(cfg.trees)
    from hiprm.policy.hf import check_policy_folder

    check_policy_folder(cfg.model)  # a reward model's folder is refused here, before any output


def pick(cfg: SelftrainConfig) -> tuple[list[Trajectory], list[Trajectory], dict[str, Any]]:
    """(train, val, selection stats); DataError when nothing passes."""
    trajectories, stats = select_trajectories(read_trees(cfg.trees), cfg.min_mc, cfg.rule)
    if not trajectories:
        raise DataError(
            cfg.trees,
            f"no trajectory passes min_mc={cfg.min_mc} (rule {cfg.rule}) with a correct leaf: {stats['trees']} "
            f"trees, {stats['paths']} paths, rejected {stats['rejected']}; lower min_mc or check the trees",
        )
    if cfg.max_trajectories is not None:
        trajectories = trajectories[: cfg.max_trajectories]
    train, val = split_trajectories(trajectories, cfg.val_fraction, cfg.seed)
    if not train:
        raise DataError(cfg.trees, f"val_fraction={cfg.val_fraction} leaves no training problem")
    return train, val, stats


def encode(
    trajectories: list[Trajectory], tokenizer: Any, render_chat: Any, max_length: int
) -> tuple[list[dict[str, list[int]]], int]:
    """(examples, how many were too long): token ids and HF-aligned labels (-100 over the prompt).

    The completion ends with the tokenizer's eos (the end of the assistant turn), so the policy
    also learns to stop after `# END!`. A trajectory longer than max_length is dropped, not cut:
    a cut completion would teach the policy to stop mid-solution without `# END!`.
    """
    eos = tokenizer.eos_token or ""
    out, too_long = [], 0
    for t in trajectories:
        prompt, completion = training_text(t, render_chat)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion + eos, add_special_tokens=False)["input_ids"]
        if len(p) + len(c) > max_length:
            too_long += 1
            continue
        out.append({"input_ids": p + c, "labels": [-100] * len(p) + c})
    return out, too_long


class PadCollator:
    """Right-pads input_ids (pad id), labels (-100) and builds attention_mask: (batch, longest)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            labels[i, :k] = torch.tensor(r["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run_config(cfg: SelftrainConfig) -> dict[str, Any]:
    return {k: v for k, v in to_dict(cfg).items() if k != "overwrite"}


@locked(lambda cfg: cfg.out_dir)
def run(cfg: SelftrainConfig) -> Path:
    """Train one lambda (or each of `lambdas`); returns `out_dir`."""
    check_config(cfg)
    out = Path(cfg.out_dir)
    if not cfg.lambdas:
        _train_one(cfg, out)
        return out
    runs = {}
    for lam in cfg.lambdas:
        sub = out / f"lam_{lam:g}"
        _train_one(replace(cfg, lam=float(lam), lambdas=[], out_dir=str(sub)), sub)
        runs[float(lam)] = sub / "metrics.jsonl"
    if _is_main():
        from hiprm.selftrain.plot import plot_fig4

        plot_fig4(runs, out / "fig4.png", cfg.kl_eps)
        write_meta(
            out,
            run_config(cfg),
            [cfg.trees],
            status="done",
            runs={str(k): str(v.parent) for k, v in runs.items()},
        )
    return out


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _train_one(cfg: SelftrainConfig, out: Path) -> Path:
    from transformers import set_seed

    from hiprm.policy.hf import resolve_policy_model
    from hiprm.selftrain.model import SelftrainTrainer, build_models, save_final, training_arguments
    from hiprm.training import (
        MetricsLog,
        checkpoint_step,
        last_complete_checkpoint,
        prepare_output_dir,
        train_or_restore,
        trim_metrics,
    )

    args = training_arguments(cfg, out)
    is_main = args.process_index == 0
    train, val, stats = pick(cfg)  # a bad tree file is refused before the output folder is made
    with args.main_process_first(desc="output dir"):
        if prepare_output_dir(out, run_config(cfg), [cfg.trees], cfg.overwrite, is_main):
            log.info("%s: already trained; returning it (overwrite=true to retrain)", out)
            return out
        if is_main:
            last_complete_checkpoint(out / "checkpoints", clean=True)
    resume = last_complete_checkpoint(out / "checkpoints")
    with args.main_process_first(desc="model"):
        path = resolve_policy_model(cfg.model)  # a folder as is, else the embedded name
    set_seed(cfg.seed)
    policy, reference, tokenizer, render_chat = build_models(path, cfg)
    train_set, too_long = encode(train, tokenizer, render_chat, cfg.max_length)
    val_set, val_too_long = encode(val, tokenizer, render_chat, cfg.max_length) if val else (None, 0)
    if not train_set:
        raise DataError(
            cfg.trees,
            f"all {len(train)} selected training trajectories are longer than max_length={cfg.max_length} tokens",
        )
    if too_long or val_too_long:
        log.warning("dropped %d train / %d val trajectories longer than max_length=%d tokens", too_long,
                    val_too_long, cfg.max_length)  # fmt: skip
    if is_main:
        rows = [{**t.to_dict(), "split": s} for s, ts in (("train", train), ("val", val)) for t in ts]
        write_jsonl(out / "trajectories.jsonl", rows)
    log.info("selected %d trajectories (%d train, %d val) from %s: %s", len(train) + len(val), len(train), len(val),
             cfg.trees, stats)  # fmt: skip
    trainer = SelftrainTrainer(
        model=policy,
        ref_model=reference,
        loss_args=dict(
            lam=cfg.lam,
            direction=cfg.direction,
            transform=cfg.transform,
            eps=cfg.kl_eps,
            chunk_size=cfg.chunk_size,
        ),  # fmt: skip
        args=args,
        train_dataset=train_set,
        data_collator=PadCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[MetricsLog(out / "metrics.jsonl")],
    )
    if resume is not None:
        log.info("resuming from %s", resume)
        if is_main:
            trim_metrics(out / "metrics.jsonl", checkpoint_step(resume))
    train_loss = train_or_restore(trainer, resume)
    validation = trainer.evaluate(val_set) if val_set else {}
    save_final(trainer, cfg, path, tokenizer, out)
    if is_main:
        from hiprm.selftrain.plot import plot_fig4

        plot_fig4({cfg.lam: out / "metrics.jsonl"}, out / "fig4.png", cfg.kl_eps)
        write_meta(out, run_config(cfg), [cfg.trees], status="done", model=path, selection=stats,
                   examples={"train": len(train_set), "val": len(val_set or []), "too_long": too_long + val_too_long}, train_loss=train_loss,
                   global_step=trainer.state.global_step, validation=validation,
                   world_size=args.world_size)  # fmt: skip
    return out
