"""hiprm.rm.trie: trie batches give the logits and gradients of one row per example, and the
block sampler's order is a function of (seed, epoch)."""

from __future__ import annotations

import json
import logging

import pytest

from hiprm.artifacts import write_jsonl
from hiprm.records import RMExample
from hiprm.rm import trie
from hiprm.rm.data_collate import PadCollator, encode_examples, soft_label_loss
from hiprm.rm.template import TemplateConfig

from .conftest import tiny_llama_config

torch = pytest.importorskip("torch")


def family() -> list[RMExample]:
    """One PRM800K-like problem: rated completions per step, the HRM merged pairs (whose input
    starts with the single step's, so the single step ends inside the pair's path), an exact
    duplicate, and an unrelated problem."""
    q = "What is 2 + 3 + 4?"
    steps = ["2 + 3 = 5.", "5 + 4 = 9.", "# Answer\n\n9"]
    out = []
    for i, s in enumerate(steps):
        out.append(RMExample("a", q, steps[:i], s, 1.0, "prm", [1]))
        out.append(RMExample("a", q, steps[:i], s + " Wrong!", 0.0, "prm", [-1]))
        if i + 1 < len(steps):
            out.append(RMExample("a", q, steps[:i], s + "\n\n" + steps[i + 1], 1.0, "hrm", [1, 1]))
    out.append(out[0])  # duplicate
    out.append(RMExample("b", "Factor t^2 - 49.", [], "(t - 7)(t + 7)", 0.7, "prm", [1]))
    return out


def features(tokenizer):
    feats, _ = encode_examples(tokenizer, family(), TemplateConfig(max_length=256))
    return feats


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("row_tokens", [10_000, 60])  # one row; many rows that repeat shared parts
def test_trie_batch_equals_one_row_per_example(tiny_tokenizer, attn, row_tokens):
    from transformers import LlamaForSequenceClassification

    feats = features(tiny_tokenizer)
    ends_inside = trie.pack([f["input_ids"].tolist() for f in feats], row_tokens)
    assert ends_inside.tokens < sum(len(f["input_ids"]) for f in feats)  # something was shared
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_llama_config(tiny_tokenizer, num_labels=2, attn_implementation=attn))
    model.config.pad_token_id = tiny_tokenizer.pad_token_id

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    labels = torch.tensor([f["labels"] for f in feats])
    rows = [model(input_ids=torch.tensor(f["input_ids"], dtype=torch.long)[None]).logits for f in feats]
    want = torch.cat(rows)
    want_grads = grads(soft_label_loss(want, labels))
    trie.use_trie_attention(model)
    batch = trie.TrieCollator(tiny_tokenizer.pad_token_id, row_tokens)(feats)
    if row_tokens == 60:
        assert batch["input_ids"].shape[0] > 1
    got = trie.classifier_logits(model, batch)
    got_grads = grads(soft_label_loss(got, batch["labels"]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-6, rtol=1e-4, msg=name)
    # Ordinary padded batches on the switched model are plain sdpa.
    padded = PadCollator(tiny_tokenizer.pad_token_id)(feats)
    again = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    torch.testing.assert_close(again, want, atol=1e-5, rtol=1e-4)


def test_pack_shares_prefixes_and_reads_each_end():
    seqs = [[1, 2, 3, 4], [1, 2], [1, 2, 3, 4], [1, 2, 9], [7]]
    p = trie.pack(seqs, row_tokens=100)
    assert p.ids == [[1, 2, 3, 4, 9, 7]]
    assert p.ends == [(0, 3), (0, 1), (0, 3), (0, 4), (0, 5)]
    assert [p.ids[0][i] for _, i in p.ends] == [s[-1] for s in seqs]
    with pytest.raises(ValueError, match="empty"):
        trie.pack([[1], []], 10)


def test_block_sampler_order_is_a_function_of_seed_and_epoch():
    seqs = [[i % 5, i] for i in range(23)]
    a, b = trie.PrefixBlockSampler(seqs, 4, seed=3), trie.PrefixBlockSampler(seqs, 4, seed=3)
    first = list(a)
    assert sorted(first) == list(range(23)) and first == list(b)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(23))
    b.set_epoch(1)
    assert list(a) == list(b)
    # Each batch is a run of examples in token order; the short block comes last.
    batches = [first[k : k + 4] for k in range(0, 23, 4)]
    runs = [a.order[k : k + 4] for k in range(0, 23, 4)]
    assert all(bt in runs for bt in batches) and batches[-1] == runs[-1] and len(batches[-1]) == 3


# ---- rm train ----------------------------------------------------------------------------------


def toy(n: int, seed: int) -> list[RMExample]:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        steps = [f"Step {j}: {j} + 1 = {j + 1}." for j in range(rng.randint(0, 4))]
        good = rng.random() < 0.5
        out.append(RMExample(f"p{i % 6}", f"Count from {i % 6}.", steps,
                             "The answer is 5." if good else "x = -3, y = 7%.", float(good), "prm", [1]))
    return out


def train_cfg(tmp_path, backbone, *extra):
    from hiprm.config import load_config
    from hiprm.rm.train import TrainConfig

    write_jsonl(tmp_path / "train.jsonl", toy(96, 0))
    write_jsonl(tmp_path / "val.jsonl", toy(16, 1))
    return load_config(TrainConfig, None, [
        f"output_dir={tmp_path / 'out'}", f"model.name={backbone}", f"data.train={tmp_path / 'train.jsonl'}",
        f"data.val={tmp_path / 'val.jsonl'}", "optim.max_steps=8", "optim.learning_rate=3e-3",
        "eval.every_steps=4", "checkpoint.every_steps=4", "logging_steps=1", *extra,
    ])  # fmt: skip


def final_weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "model" / "model.safetensors"))


def test_rm_train_uses_trie_batches_and_resumes_exactly(tmp_path, tiny_backbone_dir):
    import shutil

    from transformers import AutoConfig, TrainerCallback

    from hiprm.rm.train import run

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 6:
                raise KeyboardInterrupt

    cfg = train_cfg(tmp_path, tiny_backbone_dir)
    out = run(cfg)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["batching"] == "trie"
    assert AutoConfig.from_pretrained(out / "model")._attn_implementation != "hiprm_trie"
    whole = final_weights(out)
    shutil.move(out, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, callbacks=[StopAt()])
    run(cfg)  # resumes from checkpoint-4 and must see the batches an uninterrupted run sees
    for name, w in final_weights(out).items():
        torch.testing.assert_close(w, whole[name], msg=name)


def test_rm_train_trie_with_gradient_accumulation_and_lora(tmp_path, tiny_backbone_dir):
    from hiprm.rm.train import run

    out = run(train_cfg(tmp_path, tiny_backbone_dir, "optim.grad_accum=2", "optim.batch_size=4", "lora.r=4",
                        "optim.max_steps=4", "eval.every_steps=4", "checkpoint.every_steps=4"))  # fmt: skip
    meta = json.loads((out / "meta.json").read_text())
    assert meta["batching"] == "trie" and meta["global_step"] == 4
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "loss" in r][-1] == pytest.approx(4 * 2 * 4 / 96, abs=0.01)


def test_rm_train_rows_batching_and_fallback(tmp_path, tiny_backbone_dir, monkeypatch, caplog):
    from hiprm.rm.train import run

    out = run(train_cfg(tmp_path, tiny_backbone_dir, "data.batching=rows", "optim.max_steps=2",
                        "eval.every_steps=2", "checkpoint.every_steps=2"))  # fmt: skip
    assert json.loads((out / "meta.json").read_text())["batching"] == "rows"

    # An attention that ignores the trie plan is caught on real examples: rows, with a warning.
    monkeypatch.setattr(trie, "_trie_attention", lambda m, q, k, v, mask, **kw: (
        torch.zeros_like(q).transpose(1, 2), None))  # fmt: skip
    (tmp_path / "b").mkdir()
    cfg = train_cfg(tmp_path / "b", tiny_backbone_dir, "optim.max_steps=2", "eval.every_steps=2",
                    "checkpoint.every_steps=2")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        out = run(cfg)
    assert json.loads((out / "meta.json").read_text())["batching"] == "rows"
    assert "not exact here" in caplog.text
