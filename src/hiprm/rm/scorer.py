"""Score steps with a trained reward model: reward of step i = softmax(logits)[1] (paper Eq. 4).

Input: a checkpoint folder of any format (`hiprm.rm.formats`): hiprm's own from `hiprm rm
train` (by default a 2-label `AutoModelForSequenceClassification`, class 1 = positive, formatter
settings in `config.hiprm_template`), or a public PRM's, tokenizer beside it. Output: one float
in [0, 1] per step.

The one scoring protocol is `StepScorer.score_inputs(inputs)`: a reward for each (question,
previous steps, current step) input. Every caller reduces its work to such a list in one call:
- `score_solutions(scorer, [(question, steps), ...])`: one reward per step prefix of each
  solution (step i given steps[:i]): best-of-N, `rm score`, ProcessBench, the server;
- `score_candidates(scorer, question, prefix_steps, candidates)`: N candidate next steps that
  share a prefix (step-level search);
- a PRM800K evaluation passes every rated completion of every step of a solution.
How inputs share work (the token trie below, a server's batch) is the scorer's business, so the
in-process `Scorer`, a fake in a test and `hiprm.rm.remote.RemoteScorer` are interchangeable.

`Scorer.from_pretrained` is where a reward model is loaded (every runner, `hiprm serve`,
`hiprm rm score`, `hiprm rm eval` and `hiprm eval`, reaches it through the one scorer loader,
`hiprm.rm.remote.load_scorer`); it refuses a checkpoint whose head was never trained (a plain
causal LM such as a policy model, unless named a tag or chat PRM: a classifier class would add a
random head and return rewards that change every run), see `load_reward_model`.

Every input is encoded by its format's `hiprm.rm.formats.Encoder` (for seqcls,
`hiprm.rm.template.render_fitted` text tokenized whole), exactly as in training, and ends where
its reward is read.
Inputs that share a token prefix share its computation: the inputs for the steps of one
solution all start with the question and the earlier steps, and candidates share everything but
themselves. All inputs of a call are packed as one token trie (`hiprm.rm.trie`, the packing
training uses too): rows of up to `max_tokens_per_batch` trie tokens, one forward pass each, a
result read at each input's last token. The result equals scoring each input alone; this is
checked once per Scorer on real inputs, and if it fails (an attention kernel that does not
honour the plan) the scorer falls back to the plain path with a warning: inputs sorted by
length, cut into batches by a token budget (rows x longest row), right-padded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from hiprm.artifacts import DataError
from hiprm.config import ConfigError, Device, Positive
from hiprm.rm import trie
from hiprm.rm.formats import Encoder, Format, FormatSpec, checkpoint_format, head_token_ids
from hiprm.rm.template import PREVIOUS_HEADER, FitReport, TemplateConfig, render

log = logging.getLogger(__name__)


ScoreInput = tuple[str, list[str], str]  # (question, previous steps, current step)


@runtime_checkable
class StepScorer(Protocol):
    """What every caller needs: one reward in [0, 1] per (question, previous, current) input."""

    def score_inputs(self, inputs: Sequence[ScoreInput]) -> list[float]: ...


def solution_inputs(items: Sequence[tuple[str, list[str]]]) -> list[ScoreInput]:
    """The inputs of every step of every solution: step i given steps[:i]."""
    return [(q, steps[:i], s) for q, steps in items for i, s in enumerate(steps)]


def score_solutions(scorer: StepScorer, items: Sequence[tuple[str, list[str]]]) -> list[list[float]]:
    """One reward per step of each (question, steps) solution, in one `score_inputs` call."""
    flat = scorer.score_inputs(solution_inputs(items))
    out, at = [], 0
    for _, steps in items:
        out.append([float(x) for x in flat[at : at + len(steps)]])
        at += len(steps)
    return out


def score_candidates(scorer: StepScorer, question: str, prefix_steps: list[str], candidates: list[str]) -> list[float]:
    """Rewards of candidate next steps after a shared prefix (step-level search)."""
    return [float(x) for x in scorer.score_inputs([(question, list(prefix_steps), c) for c in candidates])]


@dataclass
class ScorerSettings:
    """How a reward model is loaded and batched: the one set of these keys, shared by `rm score`,
    `rm eval` and `serve` (flat keys: `device=cpu`) and `eval` (`rm.device=cpu`)."""

    device: Device = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = "auto"  # auto: fp32 on CPU, bf16 (else fp16) on CUDA
    batch_size: Positive = 32  # inputs per forward pass on the plain (padded) path
    max_tokens_per_batch: Positive = 16384  # tokens per forward pass (trie rows, padded batches)

    def scorer_kwargs(self) -> dict[str, Any]:
        """`Scorer.from_pretrained` / `hiprm.rm.remote.load_scorer` keyword arguments."""
        return {"device": self.device, "dtype": self.dtype, "batch_size": self.batch_size,
                "max_tokens_per_batch": self.max_tokens_per_batch}  # fmt: skip


def reward_from_logits(row: Sequence[float]) -> float:
    """The reward: softmax(logits)[1], P(positive) (paper Eq. 4).

    >>> round(reward_from_logits([0.0, 0.0]), 3), round(reward_from_logits([-1.0, 1.0]), 3)
    (0.5, 0.881)
    """
    import math

    m = max(row)
    exps = [math.exp(x - m) for x in row]
    return exps[1] / sum(exps)


def load_reward_model(folder: Path, fmt: Format, dtype: Any) -> Any:
    """The model of a checkpoint in `fmt`, refusing one whose head would be initialised at
    random (a policy loaded as a classifier returns rewards that change every run)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    if fmt.layout == "qwen":
        from hiprm.rm.qwen_prm import Qwen2ForProcessRewardModel as auto
    else:
        auto = {"seqcls": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification,
                "tag": AutoModelForCausalLM, "chat": AutoModelForCausalLM}[fmt.name]  # fmt: skip
    model, info = auto.from_pretrained(str(folder), dtype=dtype, output_loading_info=True)
    missing = sorted(k for k in info["missing_keys"] if not (fmt.name in ("tag", "chat") and k == "lm_head.weight"))
    if missing:
        raise DataError(folder, f"weights {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} are not in "
                                f"the checkpoint (transformers would initialise them at random); a {fmt.label} reward "
                                "model needs its trained head: give a checkpoint from `hiprm rm train` or the "
                                "public model's own files")  # fmt: skip
    if fmt.name in ("seqcls", "token") and model.config.num_labels != 2:
        raise ConfigError(f"model: {folder} has {model.config.num_labels} labels; a reward model has 2")
    return model


def _base(model: Any) -> Any:
    """The backbone (decoder without head) of a transformers model, None if it has none."""
    m = trie.unwrap(model)
    return getattr(m, getattr(m, "base_model_prefix", ""), None)


def _head(model: Any, fmt: Format, tokenizer: Any) -> Callable[[Any], Any]:
    """hidden (n, H) -> rows (n, 2) = [bad, good] logits, so that the reward is softmax(row)[1]."""
    m = trie.unwrap(model)
    if fmt.name in ("seqcls", "token"):
        return trie.classifier_head(m)
    ids = head_token_ids(fmt, tokenizer)
    lm_head = m.get_output_embeddings()
    cap = getattr(m.config, "final_logit_softcapping", None)

    def rows(h: Any) -> Any:
        out = lm_head(h)[:, ids]
        return cap * (out / cap).tanh() if cap else out

    return rows


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # bf16 matmuls are ~20x slower than fp32 on most CPUs
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"dtype: {dtype!r} is not one of auto, {', '.join(table)}")
    return table[dtype]


def budget_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped longest-first so that rows x longest row <= max_tokens (and rows <= batch_size).

    >>> budget_batches([5, 100, 7, 90], batch_size=8, max_tokens=200)
    [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]  # longest first: the head sets the width
        if cur and (len(cur) >= batch_size or (len(cur) + 1) * width > max_tokens):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


@dataclass
class _Stats:
    inputs: int = 0
    forward_passes: int = 0
    input_tokens: int = 0  # tokens of the inputs as given
    trie_tokens: int = 0  # tokens run through the model on the trie path (shared ones once)
    dropped_steps: int = 0
    truncated: int = 0


class Scorer:
    """A reward model ready to score steps; see the module docstring for the three methods."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: TemplateConfig | None = None,
        batch_size: int = 32,
        max_tokens_per_batch: int = 16384,
        prefix_cache: bool = True,
        fmt: Format | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.format = fmt or Format("seqcls", template=template or TemplateConfig())
        self.template = self.format.template or TemplateConfig(max_length=self.format.max_length)  # builds the encoder
        self._head = _head(model, self.format, tokenizer)
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.device = next(model.parameters()).device
        pad = model.config.pad_token_id
        if pad is None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            if pad is None:
                raise ValueError("neither the model config nor the tokenizer defines a pad or eos token")
            model.config.pad_token_id = pad
        # Padding is never read (each result is taken at its own last token); any id will do.
        self.pad_id = int(pad)
        self.stats = _Stats()
        # None = not checked yet; the first trie call compares against the plain path.
        self._prefix_cache_ok: bool | None = None if prefix_cache and _base(model) is not None else False
        if self._prefix_cache_ok is None:
            self._attention = trie.use_trie_attention(model)  # plain batches still run as before

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        max_tokens_per_batch: int = 16384,
        prefix_cache: bool = True,
        spec: FormatSpec | None = None,
    ) -> Scorer:
        """A checkpoint of any format (`hiprm.rm.formats`): from its config.json, or `spec`."""
        p, fmt, tokenizer = checkpoint_format(path, spec or FormatSpec())
        device = _resolve_device(device)
        model = load_reward_model(p, fmt, _resolve_dtype(dtype, device))
        return cls(model.to(device), tokenizer, fmt.template, batch_size, max_tokens_per_batch, prefix_cache, fmt)

    @property
    def template(self) -> TemplateConfig:
        return self._template

    @template.setter
    def template(self, value: TemplateConfig) -> None:
        """Setting the template (seqcls) changes the format, and so how inputs are encoded."""
        self._template = value
        if self.format.name == "seqcls":
            self.format = replace(self.format, template=value, max_length=value.max_length)
        self.encoder = Encoder(self.format, self.tokenizer)

    # ---- public API -------------------------------------------------------------------------

    def score_inputs(self, inputs: Sequence[ScoreInput]) -> list[float]:
        """Rewards of (question, previous, current) inputs: P(positive), all inputs in one trie."""
        return [reward_from_logits(row) for row in self.logits(self.encode_inputs(inputs))]

    def solution_logits(self, items: Sequence[tuple[str, list[str]]]) -> tuple[list[list[list[float]]], list[int]]:
        """Per solution: the logits of each step (step i given steps[:i]) and the tokens its
        inputs hold (what a vLLM-style `usage` counts; the server's `/pooling`)."""
        seqs = self.encode_inputs(solution_inputs(items))
        rows = self.logits(seqs)
        out: list[list[list[float]]] = []
        tokens: list[int] = []
        at = 0
        for _, steps in items:
            out.append(rows[at : at + len(steps)])
            tokens.append(sum(len(ids) for ids in seqs[at : at + len(steps)]))
            at += len(steps)
        return out, tokens

    def encode_inputs(self, inputs: Sequence[ScoreInput]) -> list[list[int]]:
        """Token ids of each input in the model's format (`hiprm.rm.formats.Encoder`), each ending
        at its reward position, fitted to the format's max_length as in training. Each distinct
        step is counted once per call, so fitting the N steps of a long solution is linear in N."""
        seqs, reports = self.encoder.encode(inputs)
        for report, ids in zip(reports, seqs, strict=True):
            self._count(report, ids)
        self._warn_cuts(len(inputs))
        return seqs

    def logits(self, seqs: Sequence[list[int]]) -> list[list[float]]:
        """Classifier logits (one row of num_labels per input) of token-id inputs taken as they
        are (the HTTP server's `/classify`): the trie path, checked once, else plain batches."""
        if self._prefix_cache_ok is False or len(seqs) < 2:
            return self._logits_plain(seqs)
        vals = self._logits_trie(seqs)
        if self._prefix_cache_ok is None:
            self._prefix_cache_ok = self._check_shared(vals, seqs)
            if not self._prefix_cache_ok:
                trie.restore_attention(self.model, self._attention)
                vals = self._logits_plain(seqs)
        return vals

    def encode_text(self, text: str) -> list[int]:
        """Token ids of an already formatted reward-model text, as scoring tokenizes it."""
        return self.encode_texts([text])[0]

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode_text` of each text, in one tokenizer call. Calls without truncation or padding
        only read the tokenizer, so the server may run this in a thread beside scoring."""
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text without special tokens, in one tokenizer call (thread-safe as above)."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def input_tokens(self, items: Sequence[tuple[str, list[str]]]) -> list[list[int]]:
        """About how many tokens each input of each solution will hold; see `solution_input_tokens`."""
        return solution_input_tokens(self.count_tokens, items, self.template)

    # ---- encoding ---------------------------------------------------------------------------

    def _count(self, report: FitReport, ids: list[int]) -> None:
        self.stats.inputs += 1
        self.stats.dropped_steps += report.dropped_steps
        self.stats.truncated += int(report.truncated)
        self.stats.input_tokens += len(ids)

    def _warn_cuts(self, n: int) -> None:
        s = self.stats
        if s.truncated or s.dropped_steps:
            log.warning(
                "inputs over max_length=%d: %d old steps dropped, %d inputs with cut text (of %d just scored)",
                self.template.max_length, s.dropped_steps, s.truncated, n,
            )
            s.dropped_steps = s.truncated = 0

    # ---- forward passes ---------------------------------------------------------------------

    def _logits_plain(self, seqs: Sequence[list[int]]) -> list[list[float]]:
        """One row per input; batches cut by token budget, right padding to the batch's longest."""
        import torch

        out: list[list[float]] = [[] for _ in seqs]
        for batch in budget_batches([len(s) for s in seqs], self.batch_size, self.max_tokens_per_batch):
            width = max(len(seqs[i]) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[r, : len(seqs[i])] = 1
            ends = torch.tensor([r * width + len(seqs[i]) - 1 for r, i in enumerate(batch)])
            with torch.inference_mode():
                logits = self._rows(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), ends=ends)
            self.stats.forward_passes += 1
            rows = logits.float().tolist()
            for r, i in enumerate(batch):
                out[i] = rows[r]
        return out

    def _logits_trie(self, seqs: Sequence[list[int]]) -> list[list[float]]:
        """All inputs as one token trie, a forward pass per row of <= max_tokens_per_batch tokens."""
        import torch

        packed = trie.pack(seqs, self.max_tokens_per_batch)
        out: list[list[float]] = [[] for _ in seqs]
        for r in range(len(packed.ids)):
            batch = trie.tensors(packed, self.pad_id, [r])
            with torch.inference_mode():
                logits = self._rows(input_ids=batch["input_ids"].to(self.device),
                                    attention_mask=batch["attention_mask"].to(self.device),
                                    position_ids=batch["position_ids"].to(self.device),
                                    trie_plan=batch["trie_plan"].to(self.device), ends=batch["ends"])  # fmt: skip
            self.stats.forward_passes += 1
            for k, row in zip(batch["sequences"], logits.float().tolist(), strict=True):
                out[k] = row
        self.stats.trie_tokens += packed.tokens
        return out

    def _rows(self, ends: Any, **inputs: Any) -> Any:
        """The format's head rows (n, 2) at the flat positions `ends` of a batch: the backbone
        runs once, the head only where a reward is read (an LM head over the whole vocabulary at
        every position would cost more than the backbone)."""
        hidden = _base(self.model)(**inputs, use_cache=False).last_hidden_state  # (R, L, H)
        picked = hidden.reshape(-1, hidden.shape[-1])[ends.to(hidden.device)]  # (n, H)
        return self._head(picked)

    def _check_shared(self, shared: list[list[float]], seqs: Sequence[list[int]]) -> bool:
        """Compare the trie path with the plain one (the model's own attention) on real inputs,
        once per Scorer, on the rewards."""
        trie.restore_attention(self.model, self._attention)
        plain = self._logits_plain(seqs)
        trie.use_trie_attention(self.model)
        worst = max(abs(reward_from_logits(a) - reward_from_logits(b)) for a, b in zip(shared, plain, strict=True))
        if worst > trie.tolerance(self.model.dtype):
            log.warning("trie scoring differs from plain scoring by %.2g for %s; using the plain path",
                        worst, type(self.model).__name__)
            return False
        return True


def solution_input_tokens(count: Callable[[list[str]], list[int]], items: Sequence[tuple[str, list[str]]],
                          template: TemplateConfig | None = None, reserve: int = 2) -> list[list[int]]:
    """About how many tokens each input of each solution holds (input i = step i given steps[:i]),
    from one `count` call over the pieces, where rendering every input would take time quadratic
    in the number of steps. Input i = the fixed headers + question + step i + `reserve` special
    tokens, and for i > 0 the previous-reasoning header + steps[:i] + i - 1 separators; capped at
    `template.max_length`, which `render_fitted` never passes (no cap when `template` is None).
    Tokens that merge across pieces make it approximate by a few tokens per input. `count` in
    UTF-8 bytes bounds the tokens of byte-level and byte-fallback tokenizers from above.

    Counted in characters it is exact: len(render("q", ["ab"], "c")) + 2 == 113.

    >>> chars = lambda texts: [len(t) for t in texts]   # fixed headers: 85 chars, previous: 22
    >>> solution_input_tokens(chars, [("q", ["ab", "c"]), ("qq", [])])
    [[90, 113], []]
    >>> solution_input_tokens(chars, [("q", ["ab", "c"])], TemplateConfig(max_length=100))
    [[90, 100]]
    """
    t = template or TemplateConfig()
    pieces = [render("", [], "", t), PREVIOUS_HEADER + "\n\n", t.step_separator]
    for q, steps in items:
        pieces += [q, *steps]
    counts = count(pieces)
    fixed, prev_block, sep = counts[0] + reserve, counts[1], counts[2]
    out, k = [], 3
    for _, steps in items:
        nq, ns = counts[k], counts[k + 1 : k + 1 + len(steps)]
        k += 1 + len(steps)
        row, before = [], 0  # before: tokens of steps[:i] joined
        for i, n in enumerate(ns):
            total = fixed + nq + n + (prev_block + before if i else 0)
            row.append(min(total, t.max_length) if template is not None else total)
            before += n + (sep if i else 0)
        out.append(row)
    return out
