"""A tiny reward-model checkpoint like the one `hiprm rm train` writes, and a fake scorer.

`make_tiny_rm(folder, tokenizer)` (built once per session by `shared_tiny_rm`) saves a randomly initialised 2-label
LlamaForSequenceClassification with the tokenizer beside it and `config.hiprm_template` set,
so tests load it through `Scorer.from_pretrained` exactly like a trained checkpoint.
`FakeScorer` returns rewards given by a function of the text, for metric tests with
hand-computed answers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.conftest import tiny_llama_config


def make_tiny_rm(folder: Path, tokenizer, seed: int = 0, max_length: int = 512) -> Path:
    import torch
    from transformers import LlamaForSequenceClassification

    from hiprm.rm.template import TemplateConfig

    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=2))
    # A random head gives rewards near 0.5 for everything; a larger head spreads them out so
    # comparisons between paths are not trivially close.
    with torch.no_grad():
        model.score.weight.mul_(50.0)
    model.config.hiprm_template = TemplateConfig(max_length=max_length).to_dict()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tuned_copy(src: Path, dst: Path, tokenizer, seed: int) -> Path:
    """`src` with its top layer, final norm and head changed, as `rm train` with
    train_top_layers=1 leaves a model: the bottom layers stay those of `src` bit for bit."""
    import torch
    from transformers import LlamaForSequenceClassification

    model = LlamaForSequenceClassification.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*model.model.layers[-1].parameters(), *model.model.norm.parameters(), model.score.weight]:
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


_SESSION: dict[str, Path] = {}


def shared_tiny_rm(tmp_path_factory, tokenizer) -> Path:
    """One tiny checkpoint per test session, shared by every module's `tiny_rm_dir` fixture."""
    if "rm" not in _SESSION:
        _SESSION["rm"] = make_tiny_rm(tmp_path_factory.mktemp("tiny_rm"), tokenizer)
    return _SESSION["rm"]


class FakeScorer:
    """Reward of a step = `fn(question, previous_steps, step)`; counts calls."""

    def __init__(self, fn: Callable[[str, list[str], str], float]):
        self.fn = fn
        self.calls = 0

    def score_inputs(self, inputs) -> list[float]:
        self.calls += 1
        return [self.fn(question, list(prev), cur) for question, prev, cur in inputs]
