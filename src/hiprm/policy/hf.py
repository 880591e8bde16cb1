"""Local policy with transformers: batched sampling on CPU (fp32) or GPU, stop strings honoured.

    policy = HFPolicy("smollm2-135m-instruct")          # the embedded default, or any HF folder
    policy.generate([policy.render_chat("What is 2+3?")], SamplingParams(n=4, stop=["# END!"]))

Prompts are left-padded so a batch of them can be generated together. Each distinct prompt is
prefilled once and its KV cache copied to its `n` sample rows (`share_prefill`): the paper's
prompts are ~400 tokens, so on CPU the prefill of n copies would cost more than the decoding.
`decoder="hiprm"` (the default) samples with `hiprm.policy.decode` (static cache, finished rows
leave the batch, nucleus sampling without a vocabulary sort); `decoder="generate"` uses
transformers' `model.generate` instead, for a model the static cache does not fit.
A sequence stops generating as soon as the decoded tail of its new tokens contains a stop string
(`tail_has_stop`; transformers' own `stop_strings=` rebuilds a vocabulary-sized table on every
call, ~2 s for SmolLM2's 49k tokens), and the decoded text is then cut at the first stop string
by `cut_at_stop`, because a token may run past it.
Sampling is seeded inside `torch.random.fork_rng`, so calling `generate` does not disturb the
caller's global RNG.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hiprm.artifacts import DataError, StageError, read_json
from hiprm.policy.decode import DECODERS
from hiprm.policy.protocol import Sample, SamplingParams, cut_at_stop

try:  # transformers is an optional extra; the class below is only built when it is installed
    from transformers import StoppingCriteria
except ImportError:  # pragma: no cover
    StoppingCriteria = object  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)


def tail_has_stop(tokenizer: Any, stops: list[str], tails: list[list[int]]) -> list[bool]:
    """For each token list (the last few generated tokens of a row), whether its decoded text
    contains a stop string."""
    texts = tokenizer.batch_decode(tails, skip_special_tokens=True)
    return [any(s in t for s in stops) for t in texts]


def stop_window(stops: list[str]) -> int:
    """Tokens to decode so a stop string is seen on the step it is completed: a few more than
    its length in characters (a token is at least one character)."""
    return max((len(s) for s in stops if s), default=0) + 4


class StopOnStrings(StoppingCriteria):
    """Per-row stop: true once the last few generated tokens, decoded, contain a stop string.

    input_ids: (rows, prompt_len + generated). The window is a few tokens longer than the longest
    stop string in characters, so a stop string is seen on the step it is completed.
    """

    def __init__(self, tokenizer: Any, stops: list[str], prompt_len: int):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_len = prompt_len
        self.window = stop_window(self.stops)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        hit = tail_has_stop(self.tokenizer, self.stops, input_ids[:, start:].tolist())
        return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)


REWARD_HEADS = ("ForSequenceClassification", "ForTokenClassification", "ForProcessRewardModel")


def check_policy_folder(name_or_path: str) -> None:
    """Refuse a local folder whose config.json names a reward model's architecture (a
    classification head, as `hiprm rm train` writes), before anything loads: loaded as a causal
    LM it would get a fresh, untrained lm_head with no error, and its score head would be
    silently dropped. Reads config.json only; anything that is not a folder passes."""
    cfg_path = Path(name_or_path).expanduser() / "config.json"
    archs = [str(a) for a in (read_json(cfg_path).get("architectures") or [])] if cfg_path.is_file() else []
    if archs and all(a.endswith(REWARD_HEADS) for a in archs):
        raise DataError(cfg_path, f"{', '.join(archs)} is a reward model (a classification head), not a "
                                  "policy; give a causal LM (the base model the reward model was trained "
                                  "from, say)", field="architectures")  # fmt: skip


def resolve_policy_model(name_or_path: str) -> str:
    """A local folder as is (`check_policy_folder`); otherwise an embedded model name known to
    `hiprm.models`."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        check_policy_folder(name_or_path)
        return str(folder)
    from hiprm.models import resolve_model_path

    return str(resolve_model_path(name_or_path))


def _row_seed(seed: int | None, k: int) -> int:
    """The seed of sample k of a prompt whose seed is `seed` (63 bits).

    >>> _row_seed(7, 0) != _row_seed(7, 1) and _row_seed(7, 1) == _row_seed(7, 1)
    True
    """
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}|{k}".encode()).digest()[:8], "big") >> 1


def policy_dtype(device: str, dtype: str = "auto") -> Any:
    """The policy's weight dtype: `dtype` by name, or (auto) fp32 on CPU, where bf16 matmuls are
    many times slower, and bf16 on an accelerator.

    >>> import torch; [policy_dtype(d) for d in ("cpu", "cuda", "cuda:1")] == [torch.float32, torch.bfloat16, torch.bfloat16]
    True
    >>> policy_dtype("cpu", "bfloat16")
    torch.bfloat16
    """
    import torch

    if dtype == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype: {dtype!r} is not a torch dtype (auto, float32, bfloat16, float16)")
    return value


class HFPolicy:
    """transformers causal LM as a policy.

    `chat_template`: wrap prompts with the tokenizer's chat template when it has one (instruct
    models); `batch_size`: sequences (prompts x n) per forward pass; `device`: "cpu" or "cuda";
    `share_prefill`: prefill each distinct prompt once for all its samples; `decoder`: "hiprm"
    (`hiprm.policy.decode`) or "generate" (transformers' `model.generate`).
    Weights are loaded in fp32 on CPU (bf16 matmuls are many times slower there).
    """

    concurrent = False  # batches within one call; one generator per process

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        chat_template: bool = True,
        batch_size: int = 16,
        device: str = "cpu",
        dtype: str = "auto",
        share_prefill: bool = True,
        decoder: str = "hiprm",
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_policy_model(model)
        self.path = path
        self.device = device
        self.batch_size = max(1, batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=policy_dtype(device, dtype)).to(device).eval()
        self.use_chat = bool(chat_template and getattr(self.tokenizer, "chat_template", None))
        if chat_template and not self.use_chat:
            log.info("%s has no chat template; prompts are used as plain text", path)
        self.share_prefill = share_prefill
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder = decoder
        self.tokens_generated = 0

    def render_chat(self, user_text: str) -> str:
        if not self.use_chat:
            return user_text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        """Nothing to release: the model lives as long as the object."""

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        import torch

        out: list[list[str]] = []
        per_batch = max(1, self.batch_size // params.n)
        with torch.random.fork_rng(devices=[] if self.device == "cpu" else None):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            for start in range(0, len(prompts), per_batch):
                seeds = None if params.seeds is None else [params.seed_for(i) for i in
                                                           range(start, min(start + per_batch, len(prompts)))]  # fmt: skip
                out.extend(self._generate_batch(prompts[start : start + per_batch], params, seeds))
        return out

    def _generate_batch(self, prompts: list[str], params: SamplingParams,
                        seeds: list[int | None] | None = None) -> list[list[str]]:  # fmt: skip
        """`seeds` (one per prompt, from `params.seeds`): the hiprm decoder then samples each row
        from its own generator seeded by (prompt seed, sample index), so a prompt's samples do
        not depend on the other prompts of the call, on how calls are batched, or on a resume."""
        import torch

        greedy = params.temperature == 0
        per = 1 if greedy else params.n  # greedy samples are identical: make one, repeat it below
        unique = list(dict.fromkeys(prompts))
        where = {p: i for i, p in enumerate(unique)}
        rows = torch.tensor([where[p] for p in prompts for _ in range(per)])
        # Chat-templated prompts already contain their special tokens.
        enc = self.tokenizer(unique, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        # Past its context a model's output is noise, and a 131k-token prompt to an 8k model ran
        # for minutes: refuse the prompt, and never generate past the context.
        context = getattr(self.model.config, "max_position_embeddings", None)
        max_new = params.max_tokens
        if context:
            lengths = mask.sum(-1)
            longest = int(lengths.max())
            if longest >= context:
                first = unique[int(lengths.argmax())][:60]
                raise StageError(f"hf policy: a prompt of {longest} tokens does not fit the model's context of "
                                 f"{context} tokens (it starts {first!r})")  # fmt: skip
            max_new = min(max_new, context - ids.shape[1])
        if not (self.share_prefill and len(rows) > len(unique)):
            ids, mask, rows = ids[rows], mask[rows], torch.arange(len(rows))
        gens = None
        if seeds is not None and not greedy and self.decoder == "hiprm":
            gens = [torch.Generator(device=self.device).manual_seed(_row_seed(seeds[i], k))
                    for i in range(len(prompts)) for k in range(per)]  # fmt: skip
        with torch.no_grad():
            if self.decoder == "hiprm":
                new = self._decode(ids, mask, rows, max_new, params, gens)
            else:
                new = self._generate(ids, mask, rows, max_new, params)
        self.tokens_generated += sum(len(t) for t in new)
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        texts = [Sample(cut_at_stop(t, params.stop, params.include_stop)[0], len(ids_))
                 for t, ids_ in zip(texts, new, strict=True)]  # fmt: skip
        grouped = [texts[i * per : (i + 1) * per] for i in range(len(prompts))]
        return [g * params.n if greedy else g for g in grouped]

    def _decode(self, ids: Any, mask: Any, rows: Any, max_new: int, params: SamplingParams,
                generators: list[Any] | None = None) -> list[list[int]]:  # fmt: skip
        from hiprm.policy.decode import decode

        stops = [s for s in params.stop if s]
        window = stop_window(stops)

        def stopped(tokens: list[int]) -> bool:
            return tail_has_stop(self.tokenizer, stops, [tokens[-window:]])[0]

        return decode(self.model, ids, mask, rows, max_new, params.temperature, params.top_p,
                      stopped if stops else None, self._eos_ids(), self.tokenizer.pad_token_id,
                      generators=generators)  # fmt: skip

    def _generate(self, ids: Any, mask: Any, rows: Any, max_new: int, params: SamplingParams) -> list[list[int]]:
        """transformers' `generate`; each row's tokens up to its first pad/eos (finished rows are
        padded to the batch's length)."""
        greedy = params.temperature == 0
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new,
            do_sample=not greedy,
            num_return_sequences=1,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if not greedy:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            from transformers import StoppingCriteriaList

            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [StopOnStrings(self.tokenizer, params.stop, prompt_len=ids.shape[1])]
            )
        if len(rows) > len(ids) and ids.shape[1] > 1:
            from hiprm.policy.decode import cache_kwarg

            kwargs[cache_kwarg(self.model)] = self._prefill(ids, mask, rows)
        seqs = self.model.generate(input_ids=ids[rows], attention_mask=mask[rows], **kwargs)
        return self._until_end(seqs[:, ids.shape[1] :])

    def _prefill(self, ids: Any, mask: Any, rows: Any) -> Any:
        """KV cache of each distinct prompt (all but its last token), computed once and copied to
        every sample row: n samples of a 400-token prompt cost one prefill, not n.

        ids, mask: (unique prompts, seq), left-padded; rows: (samples,) index into them.
        """
        from hiprm.policy.decode import last_logits_only

        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position_ids[:, :-1], use_cache=True,
            **last_logits_only(self.model),
        )
        cache = out.past_key_values
        cache.reorder_cache(rows.to(ids.device))
        return cache

    def _eos_ids(self) -> set[int]:
        """The model's end-of-sequence token ids (its generation config holds one, a list or none)."""
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def _until_end(self, new: Any) -> list[list[int]]:
        """Each row of `generate`'s new tokens up to its end: up to and including its first eos,
        or up to its first pad (a row that met a stop string while others went on is padded;
        the padding is not generated text). Where pad == eos, that pad counts as generated."""
        pad = self.tokenizer.pad_token_id
        ends = self._eos_ids()
        rows = []
        for row in new.tolist():
            cut = next((i + (t in ends) for i, t in enumerate(row) if t in ends or t == pad), len(row))
            rows.append(row[:cut])
        return rows
