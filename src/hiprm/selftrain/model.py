"""The models and Trainer of `hiprm selftrain`: policy + frozen reference, the loss hook, saving.

- `build_models(path, cfg)`: the policy to train (full or LoRA) and a frozen reference copy of
  the same weights (eval mode, no grad), the tokenizer (pad distinct from eos) and the chat
  renderer the policy uses at inference (`HFPolicy.render_chat`'s template call). Checks once
  that the model's logits are `lm_head(last hidden state)`, which the fused loss relies on.
- `SelftrainTrainer.compute_loss`: one policy forward (hidden states; logits only for the last
  position), one reference forward under no_grad on the same batch, then
  `selftrain_loss_from_hidden`. lm_loss / kl per optimizer step are kept and added to the
  Trainer's log rows (reduced over processes).
- `save_final`: `out/model` atomically: a plain causal LM folder (LoRA merged) + tokenizer.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from hiprm.config import ConfigError
from hiprm.selftrain.loss import kl_transform, selftrain_loss_from_hidden
from hiprm.training import save_final_model, trainer_arguments

log = logging.getLogger(__name__)


def training_arguments(cfg: Any, out: Path) -> Any:
    return trainer_arguments(
        out, precision=cfg.precision, precision_key="precision", batch_size=cfg.batch_size,
        eval_batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, learning_rate=cfg.lr, scheduler=cfg.scheduler,
        warmup=cfg.warmup, epochs=cfg.epochs, max_steps=cfg.max_steps, max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed, save_every=cfg.save_every, keep=cfg.keep_checkpoints, logging_steps=cfg.logging_steps,
        gradient_checkpointing=cfg.gradient_checkpointing, average_tokens_across_devices=True,
    )  # fmt: skip


def render_chat_for(tokenizer: Any) -> Any:
    """The prompt wrapper `HFPolicy` uses (chat template with a generation prompt), or None."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render(user_text: str) -> str:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )

    return render


def _load_lm(path: str, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def check_head(model: Any) -> None:
    """The fused loss computes logits as hidden_states[-1] @ lm_head.weight.T: make sure."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ConfigError(f"{type(model).__name__}: selftrain needs a bias-free linear lm_head")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        via_hidden = out.hidden_states[-1].float() @ head.weight.float().T
    if not torch.allclose(out.logits.float(), via_hidden, atol=1e-3, rtol=1e-3):
        raise ConfigError(
            f"{type(model).__name__}: logits are not lm_head(last hidden state) (logit scaling or soft-capping?); "
            f"the fused self-training loss does not support this model"
        )


def build_models(path: str, cfg: Any) -> tuple[Any, Any, Any, Any]:
    """(policy, reference, tokenizer, render_chat). Both models are loaded in fp32 (bf16 comes
    from autocast, as Trainer's `bf16=True` does it)."""
    from hiprm.models import load_tokenizer

    tokenizer = load_tokenizer(path, padding_side="right")
    policy = _load_lm(path, torch.float32)
    reference = _load_lm(path, torch.float32)
    if len(tokenizer) > policy.get_input_embeddings().num_embeddings:
        raise ConfigError(f"{path}: the tokenizer had to add a pad token; give the model a pad token first")
    check_head(policy)
    policy.config.use_cache = False
    reference.eval()
    reference.requires_grad_(False)
    return trainable_policy(policy, cfg.train_top_layers, cfg.lora), reference, tokenizer, render_chat_for(tokenizer)


def trainable_policy(policy: Any, train_top_layers: int, lora: Any) -> Any:
    """What of a causal LM policy trains (`selftrain` and `rl`): the top `train_top_layers`
    decoder layers and the final norm (-1: everything), or LoRA adapters (`lora.r > 0`)."""
    if train_top_layers >= 0:
        from hiprm.models import freeze_lower_layers

        freeze_lower_layers(policy, train_top_layers)
        # freeze_lower_layers keeps the output head trainable; for a causal LM with tied
        # embeddings that weight is also the input embedding, whose gradient would pull the
        # backward pass through every frozen layer. Train only the top layers and the norm.
        policy.get_output_embeddings().weight.requires_grad_(False)
    if lora.r > 0:
        from peft import LoraConfig, get_peft_model

        policy = get_peft_model(policy, LoraConfig(
            task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
        ))  # fmt: skip
    return policy


class SelftrainTrainer(Trainer):
    """Trainer with L = L_LM + lam * f(KL) against a frozen reference model (the loss is
    normalised by the step's global token count: already scaled for accumulation)."""

    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, ref_model: Any, loss_args: dict[str, Any], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.ref_model = ref_model.to(self.args.device)
        self.loss_args = loss_args
        # Make Trainer count completion tokens over the whole optimizer step (labels[..., 1:]
        # != -100 over every micro-batch, summed across processes) and pass them in.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self._sums = {"train": [0.0, 0.0, 0], "eval": [0.0, 0.0, 0]}  # lm, kl, micro-batches

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        labels = inputs["labels"]
        fwd = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False,
                   output_hidden_states=True, logits_to_keep=1)  # fmt: skip
        out = model(**fwd)
        with torch.no_grad():
            ref_hidden = self.ref_model(**fwd).hidden_states[-1]
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        ref_head = self.ref_model.get_output_embeddings()
        training = model.training and num_items_in_batch is not None
        total, lm, kl = selftrain_loss_from_hidden(
            out.hidden_states[-1], head.weight, ref_hidden, ref_head.weight, labels,
            num_tokens=num_items_in_batch if training else None, **self.loss_args,
        )  # fmt: skip
        sums = self._sums["train" if training else "eval"]
        sums[0] += float(lm)
        sums[1] += float(kl)
        sums[2] += 1
        if training:
            # DDP averages gradients over processes; the token count is already global.
            total = total * self.accelerator.num_processes
        return (total, out) if return_outputs else total

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        key = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        sums = self._sums[key]
        pending = torch.tensor(sums, dtype=torch.float64, device=self.args.device)
        pending = self.accelerator.reduce(pending, reduction="sum")
        lm, kl, micro = (float(x) for x in pending)
        if micro > 0:
            # train: each micro-batch holds its share of the step's mean; eval: plain means.
            per = micro / (self.args.gradient_accumulation_steps * self.accelerator.num_processes)
            per = per if key == "train" else micro
            prefix = "eval_" if key == "eval" else ""
            lm, kl = lm / per, kl / per
            eps, transform = self.loss_args["eps"], self.loss_args["transform"]
            logs[f"{prefix}lm_loss"] = lm
            logs[f"{prefix}kl"] = kl
            logs[f"{prefix}log_kl"] = math.log(max(kl, 0.0) + eps)
            logs[f"{prefix}kl_term"] = self.loss_args["lam"] * float(
                kl_transform(torch.tensor(kl), transform, eps)
            )
        self._sums[key] = [0.0, 0.0, 0]
        super().log(logs, start_time)


def save_final(trainer: Trainer, cfg: Any, backbone: str, tokenizer: Any, out: Path) -> Path:
    """`out/model` (`save_final_model`): the trained weights (LoRA merged), tokenizer, use_cache on."""
    base = (lambda: _load_lm(backbone, torch.float32)) if cfg.lora.r > 0 else None
    return save_final_model(trainer, out, tokenizer, base)
