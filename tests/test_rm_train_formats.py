"""`rm train format=token|tag`: trie batches equal one row per example (logits and every
parameter's gradient), a trained checkpoint loads through `load_scorer` in its format and scores
as it trained, with hard and soft labels, and the run writes its vLLM command."""

from __future__ import annotations

import json

import pytest

from hiprm.rm import trie
from hiprm.rm.data_collate import PadCollator, soft_label_loss
from hiprm.rm.formats import Encoder, Format, head_token_ids
from tests.test_rm_trie import family, train_cfg

torch = pytest.importorskip("torch")


def _model_and_format(kind, tokenizer):
    from transformers import LlamaForCausalLM, LlamaForTokenClassification

    from tests.public_prms import _llama_config

    torch.manual_seed(0)
    if kind == "token":
        # No dropout before the head, as `rm train` builds it: trie and row batches then agree exactly.
        model = LlamaForTokenClassification(_llama_config(tokenizer, 32, num_labels=2, classifier_dropout=0.0))
        return model, Format("token", "trl", "\n", max_length=256), None
    model = LlamaForCausalLM(_llama_config(tokenizer, 32))
    fmt = Format("tag", "", " ки", max_length=256)
    return model, fmt, head_token_ids(fmt, tokenizer)


@pytest.mark.parametrize("kind", ["token", "tag"])
@pytest.mark.parametrize("row_tokens", [10_000, 60])
def test_trie_batch_equals_one_row_per_example(tiny_tokenizer, kind, row_tokens):
    """The PRM800K-like family of tests/test_rm_trie.py (rated completions, HRM merged pairs, a
    duplicate, a soft label) encoded in the format: a trie batch's head rows and gradients equal
    one forward pass per example."""
    import numpy as np

    model, fmt, lm_ids = _model_and_format(kind, tiny_tokenizer)
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    exs = family()
    seqs, _ = Encoder(fmt, tiny_tokenizer).encode([(e.question, e.previous_steps, e.current_step) for e in exs])
    feats = [{"input_ids": np.asarray(s, dtype=np.int32), "labels": e.label} for s, e in zip(seqs, exs, strict=True)]
    assert trie.pack(seqs, row_tokens).tokens < sum(map(len, seqs))  # something is shared

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    labels = torch.tensor([e.label for e in exs])
    want = torch.cat([trie.head_rows(model, PadCollator(tiny_tokenizer.pad_token_id, ends=True)([f]), lm_ids)
                      for f in feats])  # fmt: skip
    want_grads = grads(soft_label_loss(want, labels))
    before = trie.use_trie_attention(model)
    batch = trie.TrieCollator(tiny_tokenizer.pad_token_id, row_tokens)(feats)
    got = trie.head_rows(model, batch, lm_ids)
    got_grads = grads(soft_label_loss(got, batch["labels"]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert set(got_grads) == set(want_grads) and len(want_grads) > 5
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-6, rtol=1e-4, msg=name)
    # A padded batch of several rows reads each row at its own end.
    trie.restore_attention(model, before)
    padded = trie.head_rows(model, PadCollator(tiny_tokenizer.pad_token_id, ends=True)(feats), lm_ids)
    torch.testing.assert_close(padded, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["token", "tag"])
def test_rm_train_format_trains_saves_and_scores(tmp_path, tiny_backbone_dir, kind):
    from hiprm.rm.remote import load_scorer
    from hiprm.rm.train import run
    from tests.test_rm_trie import toy

    extra = [f"format={kind}", "optim.max_steps=4", "eval.every_steps=2", "checkpoint.every_steps=2"]
    if kind == "tag":
        extra += ["format_options.step_tag=' =>'"]
    out = run(train_cfg(tmp_path, tiny_backbone_dir, *extra))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["batching"] == "trie" and meta["format"] == ("token/trl" if kind == "token" else "tag")
    assert meta["validation"]["eval_loss"] > 0
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 4
    serve = (out / "vllm_serve.txt").read_text()
    assert serve.startswith("# ") if kind == "token" else "--convert classify" in serve
    # The checkpoint names its format: load_scorer needs no options, and scores as it trained.
    scorer = load_scorer(str(out / "model"), device="cpu")
    assert scorer.format.name == kind and (kind == "token" or scorer.format.step_tag == " =>")
    exs = toy(6, 3)
    inputs = [(e.question, e.previous_steps, e.current_step) for e in exs]
    got = scorer.score_inputs(inputs)
    model = scorer.model
    lm_ids = head_token_ids(scorer.format, scorer.tokenizer) if kind == "tag" else None
    seqs, _ = Encoder(scorer.format, scorer.tokenizer).encode(inputs)
    import numpy as np

    with torch.no_grad():
        rows = trie.head_rows(model, PadCollator(0, ends=True)(
            [{"input_ids": np.asarray(s), "labels": 0.0} for s in seqs]), lm_ids)
    want = rows.float().softmax(-1)[:, 1].tolist()
    assert got == pytest.approx(want, abs=1e-5)


def test_rm_train_qwen_layout(tmp_path, tiny_tokenizer):
    """format=token, format_options.layout=qwen on a Qwen2 backbone: a Qwen2ForProcessRewardModel
    with the public weight names, read at <extra_0>; another backbone is one clear error."""
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from hiprm.config import ConfigError
    from hiprm.rm.remote import load_scorer
    from hiprm.rm.train import run
    from tests.public_prms import _tokenizer_with

    tok = _tokenizer_with(tiny_tokenizer, specials=["<extra_0>"])
    backbone = tmp_path / "qwen_backbone"
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)).save_pretrained(backbone)  # fmt: skip
    tok.save_pretrained(backbone)
    out = run(train_cfg(tmp_path, backbone, "format=token", "format_options.layout=qwen", "optim.max_steps=2",
                        "eval.every_steps=2", "checkpoint.every_steps=2"))  # fmt: skip
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForProcessRewardModel"]
    assert {"score.0.weight", "score.2.weight"} <= set(load_file(str(out / "model" / "model.safetensors")))
    assert load_scorer(str(out / "model"), device="cpu").format.label == "token/qwen"
    assert "step_tag_id" in (out / "vllm_serve.txt").read_text()
    (tmp_path / "b").mkdir()
    from tests.conftest import tiny_llama_config  # noqa: F401 - the tiny Llama backbone of conftest

    with pytest.raises(ConfigError, match="needs a Qwen2 backbone"):
        llama = tmp_path / "llama"
        from transformers import LlamaForCausalLM

        from tests.public_prms import _llama_config

        LlamaForCausalLM(_llama_config(tok, 32)).save_pretrained(llama)
        tok.save_pretrained(llama)
        run(train_cfg(tmp_path / "b", llama, "format=token", "format_options.layout=qwen"))


def test_trains_on_trl_and_math_shepherd_rows(tmp_path, tiny_backbone_dir, shared_data):
    """`data.train` may be TRL stepwise rows (what `data export-trl` writes) or Math-Shepherd rows
    as they are: one example per step; the tag format re-renders a Math-Shepherd row exactly."""
    from hiprm.rm.data_collate import read_examples
    from hiprm.rm.formats import tag_text
    from hiprm.rm.train import run

    ms = shared_data / "samples" / "openr_samples_math-shepherd.jsonl"
    exs = read_examples(ms)
    rows = [json.loads(x) for x in ms.read_text().splitlines()]
    assert len(exs) == sum(r["input"].count("ки") for r in rows)
    last = [e for e in exs if e.question == exs[0].question][-1]
    assert tag_text(last.question, [*last.previous_steps, last.current_step]) == rows[0]["input"]
    assert [e.label for e in exs if e.question == exs[0].question] == [1, 1, 1, 1, 0]
    trl = tmp_path / "trl.jsonl"
    trl.write_text("".join(json.dumps({"prompt": f"Count {i}.", "completions": ["1", "2", "x"],
                                       "labels": [True, 0.8, False]}) + "\n" for i in range(8)))  # fmt: skip
    for data, fmt in ((trl, "token"), (ms, "tag")):
        (tmp_path / fmt).mkdir()
        cfg = train_cfg(tmp_path / fmt, tiny_backbone_dir, f"format={fmt}", f"data.train={data}", "data.val=null",
                        "optim.max_steps=2", "checkpoint.every_steps=2")  # fmt: skip
        meta = json.loads((run(cfg) / "meta.json").read_text())
        assert meta["data"]["train"]["examples"] == (24 if fmt == "token" else len(exs))
        assert meta["data"]["train"]["soft_labels"] == (8 if fmt == "token" else 0)


@pytest.mark.parametrize("row, field", [
    ({"prompt": "q", "completions": ["a", "b"], "labels": [True]}, "labels"),
    ({"prompt": "q", "completions": ["a"], "labels": [1.5]}, "labels[0]"),
    ({"input": "q Step 1: a ки\nStep 2: b ки", "label": "q Step 1: a +\nStep 2: b ки"}, "label"),
    ({"input": "q Step 1: a ки", "label": "q Step 1: changed +"}, "label"),
])  # fmt: skip
def test_disagreeing_steps_and_labels_name_file_line_field(tmp_path, row, field):
    from hiprm.artifacts import DataError
    from hiprm.rm.data_collate import read_examples

    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "completions": ["a"], "labels": [True]}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"rows.jsonl:2: field '{field.replace('[', '.').replace(']', '.')}'"):
        read_examples(path)
