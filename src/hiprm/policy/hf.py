"""Local policy with transformers: batched sampling on CPU (fp32) or GPU, stop strings honoured.

    policy = HFPolicy("smollm2-135m-instruct")          # the embedded default, or any HF folder
    policy.generate([policy.render_chat("What is 2+3?")], SamplingParams(n=4, stop=["# END!"]))

Prompts are left-padded so a batch of them can be generated together; `n` samples per prompt
come from `num_return_sequences`. Stop strings go to transformers (`stop_strings=` with the
tokenizer) so a sequence stops generating as soon as it has one, and the decoded text is then cut
at the first stop string by `cut_at_stop`, because a token may run past it.
Sampling is seeded inside `torch.random.fork_rng`, so calling `generate` does not disturb the
caller's global RNG.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hiprm.policy.protocol import SamplingParams, cut_at_stop

log = logging.getLogger(__name__)


def resolve_policy_model(name_or_path: str) -> str:
    """A local folder as is; otherwise an embedded model name known to `hiprm.rm.backbone`."""
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    from hiprm.rm.backbone import resolve_model_path

    return str(resolve_model_path(name_or_path))


class HFPolicy:
    """transformers causal LM as a policy.

    `chat_template`: wrap prompts with the tokenizer's chat template when it has one (instruct
    models); `batch_size`: sequences (prompts x n) per forward pass; `device`: "cpu" or "cuda".
    Weights are loaded in fp32 on CPU (bf16 matmuls are many times slower there).
    """

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        chat_template: bool = True,
        batch_size: int = 16,
        device: str = "cpu",
        dtype: str = "auto",
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_policy_model(model)
        self.path = path
        self.device = device
        self.batch_size = max(1, batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if dtype == "auto":
            torch_dtype = torch.float32 if device == "cpu" else torch.bfloat16
        else:
            torch_dtype = getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
        self.use_chat = bool(chat_template and getattr(self.tokenizer, "chat_template", None))
        if chat_template and not self.use_chat:
            log.info("%s has no chat template; prompts are used as plain text", path)
        self.tokens_generated = 0

    def render_chat(self, user_text: str) -> str:
        if not self.use_chat:
            return user_text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        import torch

        out: list[list[str]] = []
        per_batch = max(1, self.batch_size // params.n)
        with torch.random.fork_rng(devices=[] if self.device == "cpu" else None):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for start in range(0, len(prompts), per_batch):
                out.extend(self._generate_batch(prompts[start : start + per_batch], params))
        return out

    def _generate_batch(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        import torch

        # Chat-templated prompts already contain their special tokens.
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        greedy = params.temperature == 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_tokens,
            do_sample=not greedy,
            # greedy samples are identical: generate one and repeat it below
            num_return_sequences=1 if greedy else params.n,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if not greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        with torch.no_grad():
            seqs = self.model.generate(**enc, **kwargs)
        new = seqs[:, enc["input_ids"].shape[1] :]
        self.tokens_generated += self._count_generated(new)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        texts = [cut_at_stop(t, params.stop, params.include_stop)[0] for t in texts]
        per = 1 if greedy else params.n
        grouped = [texts[i * per : (i + 1) * per] for i in range(len(prompts))]
        return [g * params.n if greedy else g for g in grouped]

    def _count_generated(self, new: Any) -> int:
        """Generated tokens up to and including each sequence's first pad/eos (finished rows are
        padded to the batch's length and must not count)."""
        pad = self.tokenizer.pad_token_id
        eos = self.model.generation_config.eos_token_id
        ends = {pad} | set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        total = 0
        for row in new.tolist():
            n = 0
            for t in row:
                n += 1
                if t in ends:
                    break
            total += n
        return total
