"""Score steps with a trained reward model: reward of step i = softmax(logits)[1] (paper Eq. 4).

Input: a checkpoint folder written by `hiprm rm train` (a 2-label
`AutoModelForSequenceClassification`, class 1 = positive, tokenizer beside it, formatter
settings in `config.hiprm_template`). Output: one float in [0, 1] per step.

- `Scorer.score(question, steps)`: one reward per step prefix (step i given steps[:i]).
- `Scorer.score_batch([(question, steps), ...])`: many solutions in one go.
- `Scorer.score_candidates(question, prefix_steps, candidates)`: N candidate next steps that
  share a prefix (step-level search). The shared prefix is run through the model ONCE with
  `use_cache=True` and the candidates run as a batch against copies of its key/value cache.

Every input goes through `hiprm.rm.template.render_fitted`. Each input is tokenized as two
pieces, the rendered prefix (question, previous steps, current-step header) and the current step,
and the ids are concatenated; the plain path and the cached-prefix path see the exact same ids.
For byte-level BPE tokenizers (SmolLM2, Qwen, Llama 3) the header ends in a newline, which the
pre-tokenizer always splits after, so this equals tokenizing the whole text as training does.

Speed comes from sorting inputs by length and cutting batches by a token budget (rows x longest
row), so padding is small and never reaches `max_length`.

Command (the runner below): `hiprm rm score model=PATH input=solutions.jsonl output=scored.jsonl`
reads `{question, steps: [...], ...}` lines and writes the same records with `step_rewards`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hiprm.artifacts import DataError, read_jsonl, write_meta
from hiprm.config import ConfigError, to_dict
from hiprm.rm.template import CURRENT_HEADER, INTRO, TemplateConfig, render, render_fitted

log = logging.getLogger(__name__)


@runtime_checkable
class StepScorer(Protocol):
    """What search code and the HTTP server need: one reward in [0, 1] per step prefix."""

    def score(self, question: str, steps: list[str]) -> list[float]: ...


def score_many(scorer: StepScorer, items: Sequence[tuple[str, list[str]]]) -> list[list[float]]:
    """`scorer.score_batch(items)` when it has one, else `score` per item (fakes in tests)."""
    batch = getattr(scorer, "score_batch", None)
    if batch is not None:
        return batch(list(items))
    return [scorer.score(q, s) for q, s in items]


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text (e.g. BOS), found on a probe text."""
    probe = "1 + 1 = 2"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare) :])
    return [], []


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
    cached_prefixes: int = 0
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
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template or TemplateConfig()
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self.device = next(model.parameters()).device
        pad = model.config.pad_token_id
        if pad is None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            if pad is None:
                raise ValueError("neither the model config nor the tokenizer defines a pad or eos token")
            model.config.pad_token_id = pad
        # The classification head reads the last token that is not `config.pad_token_id`, so we
        # pad with exactly that id.
        self.pad_id = int(pad)
        self.head_ids, self.tail_ids = _special_affixes(tokenizer)
        self.stats = _Stats()
        # None = not checked yet; the first shared-prefix call compares against the plain path.
        self._prefix_cache_ok: bool | None = None if prefix_cache and self._supports_prefix_cache() else False

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 32,
        max_tokens_per_batch: int = 16384,
        prefix_cache: bool = True,
    ) -> Scorer:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p = Path(path)
        if not (p / "config.json").is_file():
            raise ConfigError(f"model: {p} is not a checkpoint folder (no config.json)")
        device = _resolve_device(device)
        model = AutoModelForSequenceClassification.from_pretrained(str(p), dtype=_resolve_dtype(dtype, device))
        if model.config.num_labels != 2:
            raise ConfigError(f"model: {p} has {model.config.num_labels} labels; a reward model has 2")
        tokenizer = AutoTokenizer.from_pretrained(str(p))
        raw = getattr(model.config, "hiprm_template", None)
        if raw is None:
            log.warning("%s: no hiprm_template in config.json; using the default template settings", p)
        return cls(model.to(device), tokenizer, TemplateConfig.from_dict(raw), batch_size, max_tokens_per_batch,
                   prefix_cache)

    # ---- public API -------------------------------------------------------------------------

    def score(self, question: str, steps: list[str]) -> list[float]:
        return self.score_batch([(question, steps)])[0]

    def score_batch(self, items: Sequence[tuple[str, list[str]]]) -> list[list[float]]:
        triples = [(q, list(steps[:i]), steps[i]) for q, steps in items for i in range(len(steps))]
        flat = self._score_plain([self._encode(*t) for t in triples])
        self._warn_cuts(len(triples))
        out, k = [], 0
        for _, steps in items:
            out.append(flat[k : k + len(steps)])
            k += len(steps)
        return out

    def score_candidates(self, question: str, prefix_steps: list[str], candidates: list[str]) -> list[float]:
        encoded = [self._encode(question, list(prefix_steps), c) for c in candidates]
        self._warn_cuts(len(candidates))
        # Candidates of very different lengths can leave a different number of old steps after
        # fitting, so group by the exact shared ids.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (prefix, _) in enumerate(encoded):
            groups.setdefault(tuple(prefix), []).append(i)
        scores = [0.0] * len(candidates)
        for prefix, idx in groups.items():
            suffixes = [encoded[i][1] for i in idx]
            if len(idx) > 1 and self._prefix_cache_ok is not False:
                vals = self._score_shared(list(prefix), suffixes)
                if self._prefix_cache_ok is None:
                    self._prefix_cache_ok = self._check_shared(vals, [encoded[i] for i in idx])
                    if not self._prefix_cache_ok:
                        vals = self._score_plain([encoded[i] for i in idx])
            else:
                vals = self._score_plain([encoded[i] for i in idx])
            for i, v in zip(idx, vals, strict=True):
                scores[i] = v
        return scores

    # ---- encoding ---------------------------------------------------------------------------

    def _encode(self, question: str, previous: list[str], current: str) -> tuple[list[int], list[int]]:
        """(shared ids, own ids): special head + rendered prefix, then current step + special tail."""
        text, report = render_fitted(self.tokenizer, question, previous, current, self.template)
        self.stats.inputs += 1
        self.stats.dropped_steps += report.dropped_steps
        self.stats.truncated += int(report.truncated)
        prefix = render(question, previous[report.dropped_steps :], "", self.template)
        if not text.startswith(prefix):
            # The question was cut (no previous steps are left then): split after the header.
            # Any split gives the same text; only the token boundary may move.
            cut = text.find(INTRO + CURRENT_HEADER)
            prefix = text[: cut + len(INTRO + CURRENT_HEADER)] if cut >= 0 else ""
        suffix = text[len(prefix) :]
        tok = self.tokenizer
        pre_ids = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        suf_ids = tok(suffix, add_special_tokens=False)["input_ids"] if suffix else []
        return self.head_ids + list(pre_ids), list(suf_ids) + self.tail_ids

    def _warn_cuts(self, n: int) -> None:
        s = self.stats
        if s.truncated or s.dropped_steps:
            log.warning(
                "inputs over max_length=%d: %d old steps dropped, %d inputs with cut text (of %d just scored)",
                self.template.max_length, s.dropped_steps, s.truncated, n,
            )
            s.dropped_steps = s.truncated = 0

    # ---- forward passes ---------------------------------------------------------------------

    def _score_plain(self, encoded: Sequence[tuple[list[int], list[int]]]) -> list[float]:
        """One row per input; batches cut by token budget, right padding to the batch's longest."""
        import torch

        seqs = [p + s for p, s in encoded]
        out = [0.0] * len(seqs)
        for batch in budget_batches([len(s) for s in seqs], self.batch_size, self.max_tokens_per_batch):
            width = max(len(seqs[i]) for i in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[r, : len(seqs[i])] = 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            self.stats.forward_passes += 1
            probs = torch.softmax(logits.float(), dim=-1)[:, 1].tolist()
            for r, i in enumerate(batch):
                out[i] = probs[r]
        return out

    def _supports_prefix_cache(self) -> bool:
        """Llama-style classifiers: a decoder under `base_model_prefix`, a linear `score` head
        on the last non-pad token (transformers' GenericForSequenceClassification)."""
        try:
            from transformers.modeling_layers import GenericForSequenceClassification
        except ImportError:  # pragma: no cover - older transformers
            return False
        m = self.model
        return isinstance(m, GenericForSequenceClassification) and hasattr(m, "score") and hasattr(
            m, m.base_model_prefix
        )

    def _score_shared(self, prefix: list[int], suffixes: list[list[int]]) -> list[float]:
        """Run `prefix` once with a KV cache, then all suffixes against copies of it.

        prefix: P ids; suffix chunk: (rows, S) right-padded; attention mask (rows, P + S);
        hidden states (rows, S, H) -> `model.score` at each row's last non-pad token.
        """
        import torch
        from transformers import DynamicCache

        base = getattr(self.model, self.model.base_model_prefix)
        n_pre = len(prefix)
        with torch.inference_mode():
            pre = base(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            kv = [(layer.keys, layer.values) for layer in pre.past_key_values.layers]
            pre_hidden = pre.last_hidden_state[0]  # (P, H)
        self.stats.forward_passes += 1
        self.stats.cached_prefixes += 1
        pre_last = max((j for j, t in enumerate(prefix) if t != self.pad_id), default=n_pre - 1)
        out = [0.0] * len(suffixes)
        lengths = [len(s) for s in suffixes]
        budget = max(self.max_tokens_per_batch, max(lengths, default=1))
        for batch in budget_batches(lengths, self.batch_size, budget):
            width = max(1, max(lengths[i] for i in batch))
            rows = len(batch)
            ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((rows, n_pre + width), dtype=torch.long)
            mask[:, :n_pre] = 1
            for r, i in enumerate(batch):
                if lengths[i]:
                    ids[r, : lengths[i]] = torch.tensor(suffixes[i])
                    mask[r, n_pre : n_pre + lengths[i]] = 1
            cache = DynamicCache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in kv])
            pos = torch.arange(n_pre, n_pre + width, device=self.device).unsqueeze(0).expand(rows, -1)
            with torch.inference_mode():
                hidden = base(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                ).last_hidden_state  # (rows, S, H)
                picked = []
                for r, i in enumerate(batch):
                    real = [j for j, t in enumerate(suffixes[i]) if t != self.pad_id]
                    picked.append(hidden[r, real[-1]] if real else pre_hidden[pre_last])
                logits = self.model.score(torch.stack(picked))  # (rows, 2)
            self.stats.forward_passes += 1
            probs = torch.softmax(logits.float(), dim=-1)[:, 1].tolist()
            for r, i in enumerate(batch):
                out[i] = probs[r]
        return out

    def _check_shared(self, shared: list[float], encoded: list[tuple[list[int], list[int]]]) -> bool:
        """Compare the cached-prefix path with the plain one on real inputs, once per Scorer."""
        import torch

        plain = self._score_plain(encoded)
        worst = max(abs(a - b) for a, b in zip(shared, plain, strict=True))
        tol = 1e-3 if self.model.dtype == torch.float32 else 3e-2
        if worst > tol:
            log.warning("cached-prefix scoring differs from plain scoring by %.2g for %s; using the plain path",
                        worst, type(self.model).__name__)
            return False
        return True


# ---- `hiprm rm score` -------------------------------------------------------------------------


@dataclass
class ScoreConfig:
    """`hiprm rm score model=CKPT input=IN.jsonl output=OUT.jsonl` (each line {question, steps})."""

    model: str = ""
    input: str = ""
    output: str = ""
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32
    max_tokens_per_batch: int = 16384
    chunk_size: int = 64  # solutions scored and appended per write (the resume granularity)


def _check_record(obj: Any, path: Path, line: int) -> tuple[str, list[str]]:
    if not isinstance(obj, dict):
        raise DataError(path, f"expected an object, got {type(obj).__name__}", line)
    q = obj.get("question")
    if not isinstance(q, str):
        raise DataError(path, f"expected a string, got {type(q).__name__}", line, "question")
    steps = obj.get("steps")
    if not isinstance(steps, list):
        raise DataError(path, f"expected a list of strings, got {type(steps).__name__}", line, "steps")
    for i, s in enumerate(steps):
        if not isinstance(s, str):
            raise DataError(path, f"expected a string, got {type(s).__name__}", line, f"steps[{i}]")
    return q, steps


def _read_done(path: Path) -> list[dict[str, Any]]:
    """Records already written (a partial file may end in a half-written line: drop it)."""
    if not path.is_file():
        return []
    done = []
    good_bytes = 0
    with path.open("rb") as f:
        for raw in f:
            try:
                done.append(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError):
                break
            good_bytes += len(raw)
    if good_bytes < path.stat().st_size:
        with path.open("rb+") as f:
            f.truncate(good_bytes)
    return done


def run(cfg: ScoreConfig) -> Path:
    from tqdm import tqdm

    for key in ("model", "input", "output"):
        if not getattr(cfg, key):
            raise ConfigError(f"{key}: required (hiprm rm score model=CKPT input=IN.jsonl output=OUT.jsonl)")
    src, out = Path(cfg.input), Path(cfg.output)
    if src.resolve() == out.resolve():
        raise ConfigError("output: must differ from input")
    rows = [(line, obj, *_check_record(obj, src, line)) for line, obj in read_jsonl(src)]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    if not partial.exists() and out.is_file():
        partial.write_bytes(out.read_bytes())  # rerun on a grown input: continue from the output
    done = _read_done(partial)
    for (line, _, q, steps), rec in zip(rows, done, strict=False):
        if rec.get("question") != q or rec.get("steps") != steps:
            raise DataError(partial, f"holds a different record than {src}:{line}; delete it to start over", len(done))
    if len(done) > len(rows):
        raise DataError(partial, f"has {len(done)} records but {src} only {len(rows)}; delete it to start over")
    if done:
        log.info("resuming: %d of %d solutions already scored in %s", len(done), len(rows), partial)
    todo = rows[len(done) :]
    scorer = Scorer.from_pretrained(cfg.model, cfg.device, cfg.dtype, cfg.batch_size,
                                    cfg.max_tokens_per_batch) if todo else None
    with tqdm(total=len(rows), initial=len(done), desc="scoring", unit="sol") as bar, \
            partial.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), max(cfg.chunk_size, 1)):
            chunk = todo[start : start + cfg.chunk_size]
            rewards = scorer.score_batch([(q, steps) for _, _, q, steps in chunk])  # type: ignore[union-attr]
            for (_, obj, _, _), r in zip(chunk, rewards, strict=True):
                f.write(json.dumps({**obj, "step_rewards": r}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(chunk))
    os.replace(partial, out)
    write_meta(out.parent, to_dict(cfg), inputs=[src], n_solutions=len(rows),
               n_steps=sum(len(r[3]) for r in rows))
    return out
