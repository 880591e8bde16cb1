"""Reward-model examples -> token ids -> padded batches, and the soft-label loss.

- `read_examples(path)` reads RMExample JSONL (as written by `hiprm data build`), with errors
  that name file, line and field.
- `encode_examples(tokenizer, examples, template)` turns each example into `input_ids` through
  the one formatter (`hiprm.rm.template`), once, up front, and counts what had to be cut.
  The ids are `tokenizer(text)["input_ids"]` with the tokenizer's own special tokens, exactly
  what `hiprm.rm.scorer.Scorer` feeds the model at scoring time.
- `load_split(path, tokenizer, template)` does both for one file -> (dataset, statistics).
- `PadCollator(pad_id)` pads a batch to its longest row only (dynamic padding); paired with
  length-grouped sampling this keeps padding small, where padding every row to `max_length`
  (as the paper's setup does) spends most of the compute on pad tokens.
- `soft_label_loss(logits, labels)` is cross-entropy against `[1 - label, label]`, so hard
  labels (0/1) and soft MC-score labels share one code path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiprm.artifacts import DataError, read_jsonl
from hiprm.records import RMExample, example_from_json
from hiprm.rm.template import TemplateConfig, render, render_fitted

log = logging.getLogger(__name__)


def read_examples(path: str | Path, limit: int | None = None) -> list[RMExample]:
    """The first `limit` (all when None) RMExamples of a JSONL file; bad lines raise DataError."""
    p = Path(path)
    out: list[RMExample] = []
    for line, obj in read_jsonl(p):
        if limit is not None and len(out) >= limit:
            break
        out.append(example_from_json(obj, p, line))
    if not out:
        raise DataError(p, "no examples in file")
    return out


@dataclass
class CutCounts:
    """How many encoded examples lost old steps, and how many had question/step text cut."""

    examples: int = 0
    dropped_steps: int = 0
    examples_with_dropped_steps: int = 0
    truncated_text: int = 0

    def warn_if_cut(self, name: str, max_length: int) -> None:
        if self.examples_with_dropped_steps or self.truncated_text:
            log.warning(
                "%s: %d of %d examples exceed max_length=%d: %d lost old steps (%d steps in all), "
                "%d had question/current-step text cut",
                name,
                self.examples_with_dropped_steps + self.truncated_text,
                self.examples,
                max_length,
                self.examples_with_dropped_steps,
                self.dropped_steps,
                self.truncated_text,
            )


def special_token_count(tokenizer: Any) -> int:
    """How many ids the tokenizer adds around a text (BOS/EOS), found on a probe text."""
    probe = "1 + 1 = 2"
    return len(tokenizer(probe)["input_ids"]) - len(tokenizer(probe, add_special_tokens=False)["input_ids"])


def encode_examples(
    tokenizer: Any, examples: Sequence[RMExample], template: TemplateConfig, chunk: int = 4096
) -> tuple[list[dict[str, Any]], CutCounts]:
    """Features `{"input_ids": int32 array, "labels": float}` per example, and what was cut.

    The text of each example is what `render_fitted(tokenizer, ...)` returns. Most examples
    fit as rendered, so they are rendered and tokenized in batched calls first and
    `render_fitted` is called only for those over the budget (for the others it would return
    the rendered text unchanged, so the result is the same, ~10x faster). Ids are kept as
    int32 arrays: 70k HRM examples take ~100 MB instead of ~1 GB of Python ints.

    >>> from hiprm.rm.data_collate import encode_examples
    >>> encode_examples(lambda texts, **kw: {"input_ids": [[1, 2, 3] for _ in texts]}, [], TemplateConfig())
    ([], CutCounts(examples=0, dropped_steps=0, examples_with_dropped_steps=0, truncated_text=0))
    """
    import numpy as np

    cuts = CutCounts(examples=len(examples))
    if not examples:
        return [], cuts
    n_special = special_token_count(tokenizer)
    budget = template.max_length - 2  # render_fitted's default reserve for special tokens
    features = []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        texts = [render(ex.question, ex.previous_steps, ex.current_step, template) for ex in part]
        for ex, row in zip(part, tokenizer(texts)["input_ids"], strict=True):
            if len(row) - n_special > budget:
                text, report = render_fitted(
                    tokenizer, ex.question, ex.previous_steps, ex.current_step, template
                )
                row = tokenizer(text)["input_ids"][: template.max_length]
                cuts.dropped_steps += report.dropped_steps
                cuts.examples_with_dropped_steps += int(report.dropped_steps > 0 and not report.truncated)
                cuts.truncated_text += int(report.truncated)
            features.append({"input_ids": np.asarray(row, dtype=np.int32), "labels": float(ex.label)})
    return features, cuts


class FeatureDataset:
    """A list of features as a map-style dataset (what Trainer and its samplers expect)."""

    def __init__(self, features: list[dict[str, Any]]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]

    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


def encode_in_format(encoder: Any, examples: Sequence[RMExample]) -> tuple[list[dict[str, Any]], CutCounts]:
    """`encode_examples` for the other formats (`hiprm.rm.formats.Encoder`: token ids ending at
    the step's reward position, fitted as scoring fits them). No label is ever lost to length:
    each example is fitted on its own, its oldest previous steps dropped first."""
    import numpy as np

    cuts = CutCounts(examples=len(examples))
    seqs, reports = encoder.encode([(ex.question, ex.previous_steps, ex.current_step) for ex in examples])
    features = []
    for ex, ids, report in zip(examples, seqs, reports, strict=True):
        cuts.dropped_steps += report.dropped_steps
        cuts.examples_with_dropped_steps += int(report.dropped_steps > 0 and not report.truncated)
        cuts.truncated_text += int(report.truncated)
        features.append({"input_ids": np.asarray(ids, dtype=np.int32), "labels": float(ex.label)})
    return features, cuts


def load_split(
    path: str | Path, tokenizer: Any, template: TemplateConfig, limit: int | None = None, encoder: Any = None
) -> tuple[FeatureDataset, dict[str, Any]]:
    """Read, encode and wrap one JSONL file; warns with counts about inputs that were cut.
    `encoder`: a `hiprm.rm.formats.Encoder` for a format other than seqcls."""
    examples = read_examples(path, limit)
    if encoder is not None and encoder.fmt.name != "seqcls":
        features, cuts = encode_in_format(encoder, examples)
    else:
        features, cuts = encode_examples(tokenizer, examples, template)
    cuts.warn_if_cut(str(path), template.max_length)
    ds = FeatureDataset(features)
    lengths = ds.lengths()
    stats = {
        "examples": len(ds),
        "tokens": sum(lengths),
        "max_tokens": max(lengths),
        "soft_labels": sum(1 for f in features if 0.0 < f["labels"] < 1.0),
        "inputs_cut": cuts.examples_with_dropped_steps + cuts.truncated_text,
        "old_steps_dropped": cuts.dropped_steps,
    }
    return ds, stats


class PadCollator:
    """Right-pads a batch to its longest row (optionally a multiple of `pad_to_multiple_of`).

    Output: input_ids (batch, longest) long, attention_mask (batch, longest) long,
    labels (batch,) float. The classification head reads the last token that is not
    `pad_id`, so `pad_id` must be `model.config.pad_token_id` (and differ from eos).
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None, pad_to_length: int | None = None,
                 ends: bool = False):
        self.pad_id = pad_id
        self.ends = ends  # also give `ends`: flat index (row * width + i) of each row's last token
        self.multiple = pad_to_multiple_of
        # Only the benchmark sets this: the paper's pad-everything-to-max_length baseline.
        self.pad_to_length = pad_to_length

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = self.pad_to_length or max(len(f["input_ids"]) for f in batch)
        if self.multiple and not self.pad_to_length:
            width = -(-width // self.multiple) * self.multiple
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, f in enumerate(batch):
            n = len(f["input_ids"])
            ids[r, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            mask[r, :n] = 1
        labels = torch.tensor([float(f["labels"]) for f in batch], dtype=torch.float32)
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.ends:
            out["ends"] = torch.tensor([r * width + len(f["input_ids"]) - 1 for r, f in enumerate(batch)])
        return out


def soft_label_loss(logits: Any, labels: Any) -> Any:
    """Mean cross-entropy of `logits` (batch, 2) against targets [1 - label, label], labels (batch,).

    A hard label 1 gives -log softmax(logits)[1]; a soft label 0.7 mixes both classes.

    >>> import torch
    >>> round(soft_label_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1.0])).item(), 4)
    0.6931
    """
    import torch

    labels = labels.to(torch.float32)
    target = torch.stack([1.0 - labels, labels], dim=-1)  # (batch, 2)
    logp = torch.log_softmax(logits.float(), dim=-1)  # (batch, 2)
    return -(target * logp).sum(dim=-1).mean()
