"""`hiprm rl [CONFIG.yaml] [key=value ...]`: GRPO of the policy with rewards from a reward model.

    hiprm rl configs/rl_cpu.yaml scorer=runs/quickstart/rm/hrm/model                  # HRM step rewards
    hiprm rl configs/rl_cpu.yaml scorer= outcome_weight=1                             # outcome only
    hiprm rl configs/rl_cpu.yaml scorer='http://127.0.0.1:8001#runs/rm/hrm/model'     # a served reward model
    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m hiprm.cli rl configs/rl_cpu.yaml
    hiprm rl configs/rl_gpu.yaml                                                      # vLLM generation (TRL's server mode)

The engine is TRL's `GRPOTrainer` (`pip install hiprm[rl]`): group-relative advantages over
`num_generations` completions per prompt, the clipped policy-gradient loss, an optional KL term to
the starting policy (`beta`). hiprm gives it its problems and prompts and the reward:

- problems: the one problem registry (`dataset`: gsm8k-train, math-train, prm800k-train, ... or a
  JSONL with `question_field` / `answer_field`), as `annotate`; the prompt is the policy's own
  (`prompt.style`, the chat template), as `annotate`, `eval` and `selftrain`;
- reward: `hiprm.rl.rewards.StepRewards` from `scorer` (any spec `load_scorer` takes: a checkpoint
  of any format, `PATH?format=tag`, a server URL), the step rewards aggregated (`aggregation`:
  min | last | prod | mean) and weighted (`rm_weight`), plus `outcome_weight` x correct (graded
  with `hiprm.grading` against the reference answer). `scorer=` (empty) + `outcome_weight > 0`
  is outcome-only GRPO;
- what trains: the top `train_top_layers` layers or LoRA (`lora.r`), as `selftrain`.

Output (`out_dir`): `model/` (plain HF causal LM, LoRA merged: `hiprm eval policy.model=<it>`),
`checkpoints/` (rerun the same command to resume after a crash, kill -9 included),
`metrics.jsonl` (per step: loss, reward, reward_std, rewards/hiprm/mean, reward/rm, accuracy of the
sampled completions, kl when beta > 0, reward_model_seconds, generation_seconds, ...),
`completions.jsonl` (every completion with its steps, step rewards, verdict and reward),
`meta.json`, `config.yaml`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hiprm.artifacts import locked, write_meta
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
from hiprm.grading import GradingMode
from hiprm.policy.build import PromptConfig
from hiprm.rm.scorer import ScorerSettings
from hiprm.rm.train import LoraConfig

log = logging.getLogger(__name__)


@dataclass
class RLConfig:
    model: str = "smollm2-135m-instruct"  # the policy: the embedded default, or any HF folder / name
    out_dir: str = "runs/rl"
    # problems (the registry `annotate` uses) and prompts
    dataset: str = "gsm8k-train"
    data_dir: str = "../shared/data"
    question_field: str = "question"
    answer_field: str = "answer"
    limit: NonNegative = 0  # first N problems (after `order`); 0 = all
    order: Literal["file", "shortest_solution", "shortest_question"] = "file"
    prompt: PromptConfig = field(default_factory=PromptConfig)
    # reward
    scorer: str = ""  # a reward model spec (load_scorer); "" = no reward model (outcome_weight > 0)
    rm: ScorerSettings = field(default_factory=ScorerSettings)
    aggregation: Literal["min", "last", "prod", "mean"] = "min"
    rm_weight: NonNegativeFloat = 1.0
    outcome_weight: NonNegativeFloat = 0.0  # + weight x (the completion's answer is correct)
    grading: GradingMode = "strict"
    grade_timeout: PositiveFloat = 3.0
    # GRPO (TRL's GRPOConfig)
    num_generations: Positive = 4  # completions per prompt (a group)
    batch_size: Positive = 8  # completions per process per micro-step; a multiple of num_generations
    grad_accum: Positive = 1
    max_completion_tokens: Positive = 256
    temperature: NonNegativeFloat = 0.7
    top_p: Probability = 0.95
    beta: NonNegativeFloat = 0.0  # KL coefficient to the starting policy (TRL's default 0: no reference model)
    lr: PositiveFloat = 1e-6
    epochs: PositiveFloat = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    warmup: NonNegativeFloat = 0.0
    scheduler: Scheduler = "linear"
    max_grad_norm: PositiveFloat = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    train_top_layers: int = -1  # -1 = all; exclusive with LoRA
    lora: LoraConfig = field(default_factory=LoraConfig)
    seed: int = 42
    # generation with vLLM through TRL's integration (GPU): server mode, `trl vllm-serve` beside it
    use_vllm: bool = False
    vllm_server_base_url: str = "http://127.0.0.1:8000"
    # bookkeeping
    save_every: Positive = 10
    keep_checkpoints: Positive = 2
    logging_steps: Positive = 1
    overwrite: bool = False


def check_config(cfg: RLConfig) -> None:
    """What no single field's type says, before anything is loaded."""
    checks = [
        (cfg.scorer or cfg.outcome_weight > 0,
         "scorer: empty and outcome_weight is 0: no reward; give a reward model or outcome_weight > 0"),
        (cfg.outcome_weight == 0 or bool(cfg.answer_field),
         "outcome_weight > 0 needs the reference answers (answer_field is empty)"),
        (cfg.num_generations >= 2, "num_generations must be >= 2 (GRPO compares completions of one prompt)"),
        (cfg.batch_size % cfg.num_generations == 0,
         f"batch_size ({cfg.batch_size}) must be a multiple of num_generations ({cfg.num_generations})"),
        (cfg.max_steps > 0 or cfg.epochs > 0, "set max_steps > 0 or epochs > 0"),
        (cfg.lora.r == 0 or cfg.train_top_layers < 0, "lora.r and train_top_layers are two ways to train less; set one"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        import trl  # noqa: F401
    except ImportError as e:
        raise ConfigError("hiprm rl needs TRL: pip install 'hiprm[rl]'") from e
    from hiprm.policy.hf import check_policy_folder

    check_policy_folder(cfg.model)
    if cfg.scorer:
        from hiprm.rm.remote import check_scorer_spec

        check_scorer_spec(cfg.scorer)


def run_config(cfg: RLConfig) -> dict[str, Any]:
    return {k: v for k, v in to_dict(cfg).items() if k != "overwrite"}


def problem_rows(cfg: RLConfig, render_chat: Any) -> tuple[list[dict[str, str]], Path]:
    """The dataset TRL trains on: one row per problem, `prompt` (the policy's prompt as text,
    chat template applied), `question` and `answer` (the reward function's columns)."""
    from hiprm.annotate.run import AnnotateConfig, load_problems
    from hiprm.policy.build import build_style

    problems, path = load_problems(AnnotateConfig(dataset=cfg.dataset, data_dir=cfg.data_dir, limit=cfg.limit,
                                                  order=cfg.order,
                                                  question_field=cfg.question_field,
                                                  answer_field=cfg.answer_field or "answer",
                                                  grade_timeout=cfg.grade_timeout))  # fmt: skip
    style = build_style(cfg.prompt)
    rows = [{"prompt": style.prompt_for(p.question, "", render_chat), "question": p.question, "answer": p.answer}
            for p in problems]  # fmt: skip
    return rows, path


def grpo_arguments(cfg: RLConfig, out: Path) -> Any:
    from trl import GRPOConfig

    from hiprm.training import check_launcher_precision, check_launcher_sharding, has_accelerator

    check_launcher_sharding()
    check_launcher_precision(cfg.precision, "precision")
    extra: dict[str, Any] = {}
    if cfg.use_vllm:
        extra = {"use_vllm": True, "vllm_mode": "server", "vllm_server_base_url": cfg.vllm_server_base_url}
    return GRPOConfig(
        output_dir=str(out / "checkpoints"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        beta=cfg.beta, learning_rate=cfg.lr, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup, lr_scheduler_type=cfg.scheduler, max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.precision == "bf16", seed=cfg.seed, data_seed=cfg.seed, save_strategy="steps",
        save_steps=cfg.save_every, save_total_limit=cfg.keep_checkpoints, logging_steps=cfg.logging_steps,
        logging_first_step=True, report_to="none", gradient_checkpointing=False, activation_checkpointing=False,
        use_cpu=not has_accelerator(), dataloader_num_workers=0, **extra,
    )  # fmt: skip


def _trainer_class() -> Any:
    from trl import GRPOTrainer

    class HiprmGRPOTrainer(GRPOTrainer):
        """GRPOTrainer that also logs its generation seconds beside the reward model's."""

        def _generate(self, prompts: list) -> Any:
            start = time.perf_counter()
            out = super()._generate(prompts)
            self._log_metric("generation_seconds", time.perf_counter() - start)
            return out

    return HiprmGRPOTrainer


@locked(lambda cfg: cfg.out_dir)
def run(cfg: RLConfig) -> Path:
    """Train (or resume, or return a finished run); returns `out_dir`."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, set_seed

    from hiprm.models import load_tokenizer
    from hiprm.policy.build import build_style
    from hiprm.policy.hf import resolve_policy_model
    from hiprm.rl.rewards import StepRewards
    from hiprm.rm.remote import load_scorer
    from hiprm.selftrain.model import render_chat_for, save_final, trainable_policy
    from hiprm.training import (
        MetricsLog,
        checkpoint_step,
        last_complete_checkpoint,
        prepare_output_dir,
        train_or_restore,
        trim_metrics,
    )

    check_config(cfg)
    out = Path(cfg.out_dir)
    args = grpo_arguments(cfg, out)
    is_main = args.process_index == 0
    path = resolve_policy_model(cfg.model)
    tokenizer = load_tokenizer(path, padding_side="left")
    rows, problems_path = problem_rows(cfg, render_chat_for(tokenizer))  # bad problems: refused before any output
    inputs = [str(problems_path)]
    with args.main_process_first(desc="output dir"):
        if prepare_output_dir(out, run_config(cfg), inputs, cfg.overwrite, is_main):
            log.info("%s: already trained; returning it (overwrite=true to retrain)", out)
            return out
        if is_main:
            last_complete_checkpoint(out / "checkpoints", clean=True)
    resume = last_complete_checkpoint(out / "checkpoints")
    if resume is not None and is_main:
        log.info("resuming from %s", resume)
        for name in ("metrics.jsonl", "completions.jsonl"):
            trim_metrics(out / name, checkpoint_step(resume))
    set_seed(cfg.seed)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if len(tokenizer) > policy.get_input_embeddings().num_embeddings:
        raise ConfigError(f"{path}: the tokenizer had to add a pad token; give the model a pad token first")
    policy = trainable_policy(policy, cfg.train_top_layers, cfg.lora)
    scorer = load_scorer(cfg.scorer, **cfg.rm.scorer_kwargs()) if cfg.scorer else None
    reward = StepRewards(scorer, cfg.aggregation, rm_weight=cfg.rm_weight, outcome_weight=cfg.outcome_weight,
                         style=build_style(cfg.prompt), grading=cfg.grading, grade_timeout=cfg.grade_timeout,
                         log_path=out / "completions.jsonl" if is_main else None)  # fmt: skip
    trainer = _trainer_class()(
        model=policy, reward_funcs=[reward], args=args, train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, callbacks=[MetricsLog(out / "metrics.jsonl")],
    )  # fmt: skip
    train_loss = train_or_restore(trainer, resume)
    save_final(trainer, cfg, path, tokenizer, out)
    if is_main:
        write_meta(out, run_config(cfg), inputs, status="done", model=path, problems=len(rows),
                   train_loss=train_loss, global_step=trainer.state.global_step, world_size=args.world_size,
                   reward_model_seconds=round(reward.rm_seconds, 3))  # fmt: skip
    return out
