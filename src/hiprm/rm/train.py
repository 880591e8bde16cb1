"""`hiprm rm train CONFIG [key=value ...]`: fine-tune a reward model, in any format, on step examples.

    hiprm rm train configs/rm_train_prm.yaml optim.max_steps=200
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m hiprm.cli rm train configs/rm_train_prm.yaml

(Two CPU processes: `accelerate launch --cpu` starts only one unless MPI is set up, so the
2-process config goes through torchrun; with no GPU, `use_cpu` puts them on CPU + gloo.)

Input: `data.train` / `data.val` JSONL of RMExamples (from `hiprm data build`), TRL stepwise
rows or Math-Shepherd rows (`hiprm.rm.data_collate.read_examples`). Every input comes from the
format's one encoder (`format=seqcls`: the paper's template, `hiprm.rm.template`; `token` /
`tag`: `hiprm.rm.formats`, the encoder scoring uses), tokenized once up front. The model is
built on `model.name` (default: the embedded SmolLM2-135M-Instruct, see `hiprm.models`): a
2-label `AutoModelForSequenceClassification` (seqcls), `AutoModelForTokenClassification` or
`Qwen2ForProcessRewardModel` (token), or the causal LM itself (tag); the loss is cross-entropy
of the [bad, good] row at the step's reward position against [1 - label, label], so hard and
soft (MC-score) labels share one path; reward = softmax(row)[1]. Training runs on transformers' Trainer with dynamic padding
and length-grouped batches, `max_grad_norm` 0.01 as in the paper, optional LoRA (merged into
the saved model).

Output (`output_dir`, returned):
    checkpoints/checkpoint-N/   resume points (rerunning the same command continues from the
                                newest, on the batches an uninterrupted run would see: the
                                training order is a function of (seed, epoch), see
                                `trie.PrefixBlockSampler`; the best by `eval.metric` is kept)
    model/                      final model (best checkpoint when validating) + tokenizer;
                                loads with plain from_pretrained, `config.hiprm_template` set
                                (and `hiprm_format` for token / tag)
    vllm_serve.txt              the `vllm serve` command for model/ (`hiprm rm vllm-command`)
    metrics.jsonl, loss.png     every log row; train/validation loss curves
    meta.json, config.yaml      resolved config, input sha256s, final validation metrics, the
                                whole run's mean training loss
Rerunning a finished run returns at once; a different config in the same folder is an error
(set `overwrite=true` to start over).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import Trainer, TrainerCallback
from transformers.modeling_outputs import SequenceClassifierOutput

from hiprm.artifacts import atomic_write, check_input_file, locked, write_meta
from hiprm.config import (
    ConfigError,
    NonNegative,
    NonNegativeFloat,
    Positive,
    PositiveFloat,
    Probability,
    Scheduler,
    to_dict,
)
from hiprm.models import freeze_lower_layers, load_tokenizer, resolve_model_path
from hiprm.rm import trie
from hiprm.rm.data_collate import FeatureDataset, PadCollator, load_split, soft_label_loss
from hiprm.rm.formats import Encoder, Format, build_format, head_token_ids
from hiprm.rm.metrics import binary_metrics
from hiprm.rm.template import TemplateConfig
from hiprm.training import (
    MetricsLog,
    checkpoint_step,
    last_complete_checkpoint,
    plot_losses,
    prepare_output_dir,
    save_final_model,
    train_or_restore,
    trainer_arguments,
    trim_metrics,
)

log = logging.getLogger(__name__)

LABELS = {0: "negative", 1: "positive"}


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # or a local folder / HF name (resolve_model_path)
    cache_dir: str | None = None  # where the embedded GGUF is converted; default $HIPRM_CACHE
    gradient_checkpointing: bool = False
    # Train only the top k decoder layers (+ final norm and the classification head); the rest is
    # frozen, so the backward pass stops k layers down. -1 = train everything. On a 2-core CPU
    # this is what makes a quickstart-sized run of a 135M model affordable.
    train_top_layers: int = -1


@dataclass
class DataConfig:
    train: str = "runs/data/prm/train.jsonl"
    val: str | None = "runs/data/prm/val.jsonl"  # null or "" = no validation
    max_train: Positive | None = None  # first N examples only (quick runs)
    max_val: Positive | None = None
    # trie: the examples of a batch share their common token prefixes (`hiprm.rm.trie`): same
    # loss and gradients as one row per example, a fraction of the tokens; batches are runs of
    # examples in token order (those of one problem together), shuffled per (seed, epoch).
    # rows: one padded row per example, length-grouped (the classic Trainer setup).
    batching: Literal["trie", "rows"] = "trie"
    row_tokens: Positive = 16384  # tokens per packed row (trie batching); a longer example gets its own row
    # Trie batching: a batch is made of runs of this many token-order neighbours (0 = one run of
    # the whole batch). Smaller runs mix more problems into a batch and share less.
    trie_run: NonNegative = 0


@dataclass
class OptimConfig:
    learning_rate: NonNegativeFloat = 1e-5
    batch_size: Positive = 8  # per process
    grad_accum: Positive = 1
    epochs: PositiveFloat = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    warmup: NonNegativeFloat = 0.0  # steps when >= 1, else a fraction of all steps
    weight_decay: NonNegativeFloat = 0.0
    scheduler: Scheduler = "linear"
    max_grad_norm: PositiveFloat = 0.01  # the paper's clipping
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 42
    group_by_length: bool = True


@dataclass
class ValidationConfig:
    every_steps: Positive = 50
    batch_size: Positive = 16
    metric: Literal["f1", "accuracy", "auroc", "loss"] = "loss"  # picks the best checkpoint (paper: loss)


@dataclass
class CheckpointConfig:
    every_steps: Positive = 50  # a multiple of eval.every_steps when validating
    keep: Positive = 2  # newest checkpoints kept (the best one is kept as well)


@dataclass
class LoraConfig:
    r: NonNegative = 0  # 0 = full fine-tuning
    alpha: Positive = 16
    dropout: Probability = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class FormatOptions:
    """Where the reward is read in the `token` and `tag` formats (`hiprm.rm.formats`)."""

    layout: Literal["trl", "qwen"] = "trl"  # token: TRL's *ForTokenClassification, or Qwen2ForProcessRewardModel (a Qwen2 backbone)
    step_tag: str | None = None  # default: "\n" (trl), "<extra_0>" (qwen), " ки" (tag)
    good_token: str = "+"  # tag: the tokens whose logits make the reward
    bad_token: str = "-"
    system_prompt: str | None = None  # qwen: default the Qwen2.5-Math-PRM model card's


@dataclass
class TrainConfig:
    output_dir: str = "runs/rm/prm"
    # seqcls: the paper's per-prefix sequence classifier; token: token classification at a step
    # tag; tag: a causal LM that learns `+`/`-` at a step tag (Math-Shepherd / OpenR layout).
    format: Literal["seqcls", "token", "tag"] = "seqcls"
    format_options: FormatOptions = field(default_factory=FormatOptions)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    template: TemplateConfig = field(default_factory=TemplateConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    logging_steps: int = 10
    overwrite: bool = False


class RMTrainer(Trainer):
    """Trainer with the soft-label loss; everything else (DDP, accumulation, clipping,
    checkpoints, resume) is Trainer's own."""

    # compute_loss returns a per-batch mean: Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, train_sampler: Any = None, fmt: Format | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.fmt = fmt or Format("seqcls")
        # tag: the LM head's rows of [bad, good]; None: a classifier head
        self.lm_ids = head_token_ids(self.fmt, self.processing_class) if self.fmt.name == "tag" else None
        self.model_accepts_loss_kwargs = False  # no token counting / num_items_in_batch
        self.train_sampler = train_sampler  # a trie.PrefixBlockSampler; None = Trainer's own (random)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.train_sampler is None:
            return super()._get_train_sampler(train_dataset)
        return self.train_sampler

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kw: Any
    ) -> Any:
        inputs = dict(inputs)
        labels = inputs.pop("labels")  # (batch,) in [0, 1]
        if "ends" in inputs:  # a trie batch (TrieCollator), or rows of a format read at a position
            outputs = SequenceClassifierOutput(logits=trie.head_rows(model, inputs, self.lm_ids))
        else:
            outputs = model(**inputs, use_cache=False)  # seqcls rows, logits: (batch, 2)
        loss = soft_label_loss(outputs.logits, labels)
        return (loss, outputs) if return_outputs else loss


def run_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config recorded in meta.json and compared on rerun (`overwrite` is not part of it)."""
    return {k: v for k, v in to_dict(cfg).items() if k != "overwrite"}


def has_val(cfg: TrainConfig) -> bool:
    return bool(cfg.data.val)


def check_config(cfg: TrainConfig) -> None:
    """Errors a config can be caught on before any model is loaded."""
    checks = [
        (cfg.optim.batch_size >= 1, "optim.batch_size must be >= 1"),
        (cfg.optim.grad_accum >= 1, "optim.grad_accum must be >= 1"),
        (cfg.checkpoint.every_steps >= 1, "checkpoint.every_steps must be >= 1"),
        (cfg.template.max_length >= 16, "template.max_length must be >= 16"),
        (cfg.data.row_tokens >= 1, "data.row_tokens must be >= 1"),
        (cfg.data.trie_run >= 0, "data.trie_run must be >= 0 (0 = the whole batch)"),
        (cfg.lora.r >= 0, "lora.r must be >= 0 (0 = no LoRA)"),
        (
            cfg.lora.r == 0 or cfg.model.train_top_layers < 0,
            "lora.r and model.train_top_layers are two ways to train less; set one of them",
        ),
        (cfg.optim.max_steps > 0 or cfg.optim.epochs > 0, "set optim.max_steps > 0 or optim.epochs > 0"),
    ]
    if has_val(cfg):
        every = cfg.eval.every_steps
        checks.append((every >= 1, "eval.every_steps must be >= 1"))
        checks.append(
            (every >= 1 and cfg.checkpoint.every_steps % every == 0,
             f"checkpoint.every_steps ({cfg.checkpoint.every_steps}) must be a multiple of eval.every_steps "
             f"({every}) so the best checkpoint can be kept"),
        )  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    check_input_file(cfg.data.train)
    if has_val(cfg):
        check_input_file(cfg.data.val)


def training_arguments(cfg: TrainConfig, out: Path) -> Any:
    o, v, c = cfg.optim, cfg.eval, cfg.checkpoint
    validating = has_val(cfg)
    return trainer_arguments(
        out, precision=o.precision, precision_key="optim.precision", batch_size=o.batch_size,
        eval_batch_size=v.batch_size, grad_accum=o.grad_accum, learning_rate=o.learning_rate, scheduler=o.scheduler,
        warmup=o.warmup, epochs=o.epochs, max_steps=o.max_steps, max_grad_norm=o.max_grad_norm, seed=o.seed,
        save_every=c.every_steps, keep=c.keep, logging_steps=cfg.logging_steps,
        gradient_checkpointing=cfg.model.gradient_checkpointing, weight_decay=o.weight_decay,
        train_sampling_strategy="group_by_length" if o.group_by_length else "random",
        eval_strategy="steps" if validating else "no", eval_steps=v.every_steps if validating else None,
        load_best_model_at_end=validating, metric_for_best_model=v.metric if validating else None,
        greater_is_better=v.metric != "loss",
    )  # fmt: skip


def validation_metrics(eval_pred: Any) -> dict[str, float]:
    """Trainer `compute_metrics`: predictions (n, 2) logits, label_ids (n,) labels in [0, 1]."""
    import numpy as np

    logits = eval_pred.predictions
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = np.asarray(logits, dtype=np.float64)
    z = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(z[:, 1]) / np.exp(z).sum(axis=-1)
    m = binary_metrics(np.asarray(eval_pred.label_ids).reshape(-1), probs)
    return {"accuracy": m["accuracy"], "f1": m["f1"], "auroc": m["auroc"]}


def load_sets(
    cfg: TrainConfig, tokenizer: Any, fmt: Format | None = None
) -> tuple[FeatureDataset, FeatureDataset | None, dict[str, Any]]:
    """Train and validation features (tokenized once) and their statistics for meta.json."""
    enc = Encoder(fmt, tokenizer) if fmt is not None and fmt.name != "seqcls" else None
    train, stats = load_split(cfg.data.train, tokenizer, cfg.template, cfg.data.max_train, enc)
    all_stats = {"train": stats}
    val = None
    if has_val(cfg):
        val, all_stats["val"] = load_split(cfg.data.val, tokenizer, cfg.template, cfg.data.max_val, enc)
    return train, val, all_stats


def train_format(cfg: TrainConfig, tokenizer: Any, backbone: str) -> Format:
    """The format a run trains, its tokens checked against the tokenizer."""
    o = cfg.format_options
    if cfg.format == "seqcls":
        return Format("seqcls", max_length=cfg.template.max_length, template=cfg.template)
    return build_format(cfg.format, o.layout, o.step_tag, o.good_token, o.bad_token, o.system_prompt,
                        cfg.template.max_length, tokenizer, Path(backbone))  # fmt: skip


def build_model(path: str, tokenizer: Any, cfg: TrainConfig, fmt: Format | None = None) -> Any:
    """The reward model of `fmt` on the backbone (seqcls: a 2-label sequence classifier; token: a
    token classifier, or Qwen2ForProcessRewardModel; tag: the causal LM itself), with its pad id
    and format settings in its config."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    fmt = fmt or Format("seqcls", template=cfg.template)
    labels = {"num_labels": 2, "id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    if fmt.layout == "qwen":
        from transformers import AutoConfig

        from hiprm.rm.qwen_prm import Qwen2ForProcessRewardModel

        if AutoConfig.from_pretrained(path).model_type != "qwen2":
            raise ConfigError(f"format_options.layout=qwen needs a Qwen2 backbone; {path} is not one")
        model = Qwen2ForProcessRewardModel.from_pretrained(path, dtype=torch.float32, **labels)
    elif fmt.name == "tag":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    elif fmt.name == "token":
        # No dropout before the head (transformers' default is 0.1): the paper's classifier has
        # none, and training stays a function of the data order (trie and row batches agree).
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, **labels)
        config.classifier_dropout = 0.0
        model = AutoModelForTokenClassification.from_pretrained(path, config=config, dtype=torch.float32)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32, **labels)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # load_tokenizer had to add a pad token
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.hiprm_template = cfg.template.to_dict()
    if fmt.name != "seqcls":
        model.config.hiprm_format = fmt.saved()
    if cfg.lora.r > 0:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        peft_cfg = PeftLoraConfig(
            # keeps a new classification head fully trainable (modules_to_save)
            task_type={"seqcls": "SEQ_CLS", "token": "TOKEN_CLS", "tag": "CAUSAL_LM"}[fmt.name],
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
        )
        model = get_peft_model(model, peft_cfg)
    elif cfg.model.train_top_layers >= 0:
        freeze_lower_layers(model, cfg.model.train_top_layers)
    return model


def save_final(trainer: Trainer, cfg: TrainConfig, backbone: str, tokenizer: Any, out: Path,
               fmt: Format | None = None) -> Path:
    """`out/model` (`save_final_model`). Trie attention is a training-time switch: the saved
    model is a plain `sdpa` one."""

    def plain_attention(model: Any) -> None:
        if trie.unwrap(model).config._attn_implementation == "hiprm_trie":
            trie.restore_attention(model, "sdpa")

    base = (lambda: build_model(backbone, tokenizer, _without_lora(cfg), fmt)) if cfg.lora.r > 0 else None
    return save_final_model(trainer, out, tokenizer, base, plain_attention)


def write_vllm_command(out: Path, fmt: Format) -> None:
    """`out/vllm_serve.txt`: the command that serves `out/model` with vLLM as hiprm reads it
    (`hiprm rm vllm-command`), or why vLLM cannot."""
    from hiprm.rm.remote import VllmCommandConfig, vllm_command

    try:
        text = vllm_command(VllmCommandConfig(model=str(out / "model")))
    except ConfigError as e:
        text = f"# {e}"
    with atomic_write(out / "vllm_serve.txt") as f:
        f.write(text + "\n")


class LogAtCheckpoints(TrainerCallback):
    """Log the training loss at every checkpoint and at the last step as well, so the log rows
    restored with a checkpoint end at its step, and those of the run cover every step once
    (what `run_train_loss` adds up; rows at `logging_steps` alone would leave gaps at resumes)."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if control.should_save or state.global_step >= state.max_steps:
            control.should_log = True
        return control


def run_train_loss(log_history: list[dict[str, Any]]) -> float | None:
    """Mean training loss over every step of the run, sessions before a resume included: each
    logged `loss` is the mean over the steps since the previous row (`LogAtCheckpoints` makes the
    rows meet at checkpoints), so the rows are weighted by the steps they cover.

    >>> run_train_loss([{"step": 1, "loss": 1.0}, {"step": 4, "loss": 0.5}, {"step": 4, "eval_loss": 9.0}])
    0.625
    """
    total, last = 0.0, 0
    for row in log_history:
        if "loss" in row:
            total += row["loss"] * (row["step"] - last)
            last = row["step"]
    return total / last if last else None


def _without_lora(cfg: TrainConfig) -> TrainConfig:
    from dataclasses import replace

    return replace(cfg, lora=replace(cfg.lora, r=0))


def trie_batches_ok(model: Any, train_set: FeatureDataset, order: list[int], pad_id: int, row_tokens: int,
                    lm_ids: list[int] | None = None) -> bool:
    """Whether trie batches are exact for this model: refuse models they cannot run on, then
    compare trie and per-example head rows once on real examples (the first 8 in token `order`,
    so they share prefixes), so an attention that ignores the plan cannot train on wrong inputs."""
    import torch

    reason = trie.supported(model) if lm_ids is None else None
    if reason is None and any(p.is_meta for p in model.parameters()):
        # FSDP's RAM-efficient loading: only rank 0 holds the weights until the model is sharded.
        return _rank0_verdict(True)
    if reason is None:
        feats = [train_set[i] for i in order[:8]]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            rows = PadCollator(pad_id, ends=True)(feats)  # the reference: the model's own attention, padded rows
            want = trie.head_rows(model, rows, lm_ids)
            before = trie.use_trie_attention(model)
            got = trie.head_rows(model, trie.TrieCollator(pad_id, row_tokens)(feats), lm_ids)
        model.train(was_training)
        worst = (got.float() - want.float()).abs().max().item()
        if _rank0_verdict(worst <= trie.tolerance(next(model.parameters()).dtype)):
            return True
        trie.restore_attention(model, before)
        reason = f"trie logits differ from per-example logits by {worst:.2g}"
    log.warning("data.batching=trie is not exact here (%s); training on per-example rows", reason)
    return False


def _rank0_verdict(ok: bool) -> bool:
    """Rank 0's answer on every process, so that all ranks batch alike (a rank holding meta
    weights cannot check, and ranks that disagreed would wait for each other's collectives)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        box = [ok]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])
    return ok


def best_validation(trainer: Trainer) -> dict[str, float]:
    """Validation metrics of the kept (best) checkpoint.

    They were logged when that checkpoint was validated, so they are read back from the log
    instead of running validation again (a minute per pass on CPU); a run resumed from a
    checkpoint whose evaluation is not in the log falls back to evaluating.
    """
    best = trainer.state.best_model_checkpoint
    step = checkpoint_step(Path(best)) if best else trainer.state.global_step
    for row in reversed(trainer.state.log_history):
        if row.get("step") == step and "eval_loss" in row:
            return {k: v for k, v in row.items() if k.startswith("eval_")}
    return trainer.evaluate()


@locked(lambda cfg: cfg.output_dir)
def run(cfg: TrainConfig, callbacks: list[TrainerCallback] | None = None) -> Path:
    """Train (or resume, or return a finished run); returns the output directory."""
    from transformers import set_seed

    check_config(cfg)
    out = Path(cfg.output_dir)
    args = training_arguments(cfg, out)
    is_main = args.process_index == 0
    inputs = [p for p in (cfg.data.train, cfg.data.val) if p]
    with args.main_process_first(desc="output dir"):
        if prepare_output_dir(out, run_config(cfg), inputs, cfg.overwrite, is_main):
            log.info("%s: already trained; returning it (overwrite=true to retrain)", out)
            return out
        if is_main:
            last_complete_checkpoint(out / "checkpoints", clean=True)
    resume = last_complete_checkpoint(out / "checkpoints")
    with args.main_process_first(desc="backbone"):
        backbone = resolve_model_path(cfg.model.name, cfg.model.cache_dir)
    tokenizer = load_tokenizer(backbone, padding_side="right")
    fmt = train_format(cfg, tokenizer, backbone)
    train_set, val_set, data_stats = load_sets(cfg, tokenizer, fmt)
    set_seed(cfg.optim.seed)  # the new classification head is initialised from this seed
    model = build_model(backbone, tokenizer, cfg, fmt)
    lm_ids = head_token_ids(fmt, tokenizer) if fmt.name == "tag" else None
    seqs = [f["input_ids"].tolist() for f in train_set.features]
    sampler = None
    if cfg.data.batching == "trie":  # one sort of the training set, for the check and the order
        sampler = trie.PrefixBlockSampler(seqs, cfg.data.trie_run or args.per_device_train_batch_size, cfg.optim.seed)
        if not trie_batches_ok(model, train_set, sampler.order, tokenizer.pad_token_id, cfg.data.row_tokens, lm_ids):
            sampler = None
    use_trie = sampler is not None
    if not use_trie and cfg.optim.group_by_length:
        # Our length grouping, not Trainer's: that one draws from the global RNG, so a run resumed
        # after its first epoch would train some examples of the interrupted epoch twice.
        sampler = trie.PrefixBlockSampler(seqs, args.per_device_train_batch_size * args.gradient_accumulation_steps,
                                          cfg.optim.seed, by="length")  # fmt: skip
    collator = trie.TrieCollator(tokenizer.pad_token_id, cfg.data.row_tokens) if use_trie else PadCollator(
        tokenizer.pad_token_id, ends=fmt.name != "seqcls")
    trainer = RMTrainer(
        model=model,
        args=args,
        train_sampler=sampler,
        fmt=fmt,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=validation_metrics if val_set is not None else None,
        callbacks=[LogAtCheckpoints(), MetricsLog(out / "metrics.jsonl"), *(callbacks or [])],
    )
    if resume is not None:
        log.info("resuming from %s", resume)
        if is_main:
            trim_metrics(out / "metrics.jsonl", checkpoint_step(resume))
    train_or_restore(trainer, resume)
    final_metrics = best_validation(trainer) if val_set is not None else {}
    save_final(trainer, cfg, backbone, tokenizer, out, fmt)
    if is_main:
        write_vllm_command(out, fmt)
        plot_losses(out / "metrics.jsonl", out / "loss.png")
        write_meta(
            out,
            run_config(cfg),
            inputs,
            status="done",
            backbone=backbone,
            data=data_stats,
            global_step=trainer.state.global_step,
            train_loss=run_train_loss(trainer.state.log_history),
            best_checkpoint=trainer.state.best_model_checkpoint,
            validation=final_metrics,
            world_size=args.world_size,
            batching="trie" if use_trie else "rows",
            format=fmt.label,
        )
    return out
