"""Partial fine-tuning (`model.train_top_layers=k`): only the top k layers, the final norm and the
classification head change; the frozen part of the saved model equals the backbone."""

from __future__ import annotations

import pytest

from hiprm.artifacts import write_jsonl
from hiprm.config import ConfigError
from tests.test_rm_train import make_cfg, toy_examples

torch = pytest.importorskip("torch")


@pytest.fixture
def toy_data(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", toy_examples(64, seed=0))
    write_jsonl(tmp_path / "val.jsonl", toy_examples(16, seed=1))
    return tmp_path


def test_only_top_layers_and_head_are_trained(toy_data, tiny_backbone_dir):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hiprm.rm.train import run

    out = run(make_cfg(toy_data, tiny_backbone_dir, "model.train_top_layers=1", "optim.max_steps=6"))
    trained = AutoModelForSequenceClassification.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_backbone_dir)
    t_layers, b_layers = trained.model.layers, base.model.layers
    assert torch.equal(t_layers[0].self_attn.q_proj.weight, b_layers[0].self_attn.q_proj.weight)
    assert torch.equal(trained.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert not torch.equal(t_layers[1].mlp.up_proj.weight, b_layers[1].mlp.up_proj.weight)


def test_too_many_layers_is_a_config_error(toy_data, tiny_backbone_dir):
    from hiprm.rm.train import run

    with pytest.raises(ConfigError, match="train_top_layers=9 but the model has 2 layers"):
        run(make_cfg(toy_data, tiny_backbone_dir, "model.train_top_layers=9"))
