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
from hiprm.records import RMExample, example_from_json, problem_id_for
from hiprm.rm.template import TemplateConfig, render, render_fitted

log = logging.getLogger(__name__)


def read_examples(path: str | Path, limit: int | None = None) -> list[RMExample]:
    """The first `limit` (all when None) examples of a JSONL file; bad lines raise DataError.

    Three kinds of line, told apart by their fields, so that "train a PRM on your own data" is
    one command:
    - hiprm's RMExample (`hiprm data build`): one example;
    - a TRL stepwise row (`prompt`, `completions`, `labels`: what `hiprm data export-trl` and TRL's
      PRM datasets hold): one example per step, the steps before it as its context, its label a
      bool or a soft score in [0, 1];
    - a Math-Shepherd row (`input` with ` ки` after each step, `label` the same text with `+` or
      `-` in place of each tag): one example per step (`math_shepherd_examples`).
    """
    p = Path(path)
    out: list[RMExample] = []
    for line, obj in read_jsonl(p):
        if limit is not None and len(out) >= limit:
            break
        if isinstance(obj, dict) and "completions" in obj and "prompt" in obj:
            out += trl_examples(obj, p, line)
        elif isinstance(obj, dict) and "input" in obj and "label" in obj and "question" not in obj:
            out += math_shepherd_examples(obj, p, line)
        else:
            out.append(example_from_json(obj, p, line))
    if not out:
        raise DataError(p, "no examples in file")
    return out[:limit] if limit is not None else out


def _step_label(value: Any, p: Path, line: int, field: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and 0.0 <= value <= 1.0:
        return float(value)
    raise DataError(p, f"expected true / false or a score in [0, 1], got {value!r}", line=line, field=field)


def trl_examples(obj: dict[str, Any], p: Path, line: int) -> list[RMExample]:
    """One example per step of a TRL stepwise row.

    >>> [(e.previous_steps, e.current_step, e.label) for e in trl_examples(
    ...     {"prompt": "1+1?", "completions": ["1+1=2.", "So 2."], "labels": [True, 0.5]}, Path("x"), 1)]
    [([], '1+1=2.', 1.0), (['1+1=2.'], 'So 2.', 0.5)]
    """
    prompt, steps, labels = obj.get("prompt"), obj.get("completions"), obj.get("labels")
    if not isinstance(prompt, str):
        raise DataError(p, f"expected a string, got {type(prompt).__name__}", line=line, field="prompt")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise DataError(p, "expected a list of step strings", line=line, field="completions")
    if not isinstance(labels, list) or len(labels) != len(steps):
        n = len(labels) if isinstance(labels, list) else type(labels).__name__
        raise DataError(p, f"{len(steps)} completions but {n} labels: steps and labels disagree", line=line,
                        field="labels")  # fmt: skip
    pid = problem_id_for(prompt)
    return [RMExample(pid, prompt, list(steps[:i]), s, _step_label(y, p, line, f"labels[{i}]"), "prm", [], "trl")
            for i, (s, y) in enumerate(zip(steps, labels, strict=True))]  # fmt: skip


MATH_SHEPHERD_TAG = "ки"


def math_shepherd_examples(obj: dict[str, Any], p: Path, line: int) -> list[RMExample]:
    r"""One example per step of a Math-Shepherd row: `input` = question + " Step 1: ... ки\nStep
    2: ... ки", `label` = the same text with `+` / `-` for each tag. The question is the text
    before " Step 1:"; a step keeps its "Step k:" prefix, as the model saw it.

    >>> row = {"input": "1+1? Step 1: 1+1=2. ки\nStep 2: So 3. ки", "label": "1+1? Step 1: 1+1=2. +\nStep 2: So 3. -"}
    >>> [(e.current_step, e.label) for e in math_shepherd_examples(row, Path("x"), 1)]
    [('Step 1: 1+1=2.', 1.0), ('Step 2: So 3.', 0.0)]
    """
    text, marked = obj.get("input"), obj.get("label")
    for name, v in (("input", text), ("label", marked)):
        if not isinstance(v, str):
            raise DataError(p, f"expected a string, got {type(v).__name__}", line=line, field=name)
    pieces = text.split(MATH_SHEPHERD_TAG)
    if len(pieces) < 2 or pieces[-1].strip():
        raise DataError(p, f"expected steps each ending with {MATH_SHEPHERD_TAG!r}", line=line, field="input")
    labels, at = [], 0
    for k, piece in enumerate(pieces[:-1]):
        if marked[at : at + len(piece)] != piece or marked[at + len(piece) : at + len(piece) + 1] not in ("+", "-"):
            raise DataError(p, f"step {k + 1}: the label text does not match the input with +/- for its tag "
                               "(steps and labels disagree)", line=line, field="label")  # fmt: skip
        labels.append(1.0 if marked[at + len(piece)] == "+" else 0.0)
        at += len(piece) + 1
    head, sep, first = pieces[0].partition(" Step 1:")
    if not sep:
        raise DataError(p, "expected the first step to start with 'Step 1:'", line=line, field="input")
    steps = [("Step 1:" + first).strip()] + [s.strip() for s in pieces[1:-1]]
    question, pid = head.strip(), problem_id_for(head.strip())
    return [RMExample(pid, question, steps[:i], s, y, "prm", [], "math-shepherd")
            for i, (s, y) in enumerate(zip(steps, labels, strict=True))]  # fmt: skip


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
