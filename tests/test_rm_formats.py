"""Every reward-model format scores its tiny public-layout checkpoint as the model card does.

The checkpoints and the references (the model cards' usage, written independently of hiprm) are
in `tests/public_prms.py`. hiprm loads each folder through `load_scorer`, the way every runner
does, and must give the reference's rewards within 1e-5 on the trie path and the plain one.
"""

from __future__ import annotations

import json

import pytest

from hiprm.config import ConfigError
from hiprm.rm.remote import load_scorer
from hiprm.rm.scorer import Scorer, score_solutions
from tests import public_prms

SOLUTIONS = [
    ("What is 2 + 3 * 4?", ["First, 3 * 4 = 12.", "Then 2 + 12 = 14.", "The answer is 14."]),
    ("Tom has 12 apples and gets 7 more. How many?", ["12 + 7 = 19.", "So Tom has 19 apples."]),
    ("Solve x + 1 = 3.", ["Subtract 1: x = 2."]),
]

LAYOUTS = {
    "qwen": (public_prms.make_qwen_prm, public_prms.reference_qwen, ""),
    "trl": (public_prms.make_trl_prm, public_prms.reference_trl, ""),
    "math_shepherd": (public_prms.make_math_shepherd, public_prms.reference_math_shepherd, "?format=tag"),
    "rlhflow": (public_prms.make_rlhflow, public_prms.reference_rlhflow, "?format=chat"),
}


@pytest.fixture(scope="module")
def public_dirs(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("public_prms")
    return {name: make(root / name, tiny_tokenizer) for name, (make, _, _) in LAYOUTS.items()}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("prefix_cache", [True, False])
def test_rewards_equal_the_model_card(public_dirs, layout, prefix_cache):
    folder = public_dirs[layout]
    _, reference, options = LAYOUTS[layout]
    scorer = load_scorer(f"{folder}{options}", device="cpu", prefix_cache=prefix_cache)
    got = score_solutions(scorer, SOLUTIONS)
    want = [reference(folder, q, steps) for q, steps in SOLUTIONS]
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w)
        assert g == pytest.approx(w, abs=1e-5)
    spread = [x for row in want for x in row]
    assert max(spread) - min(spread) > 0.05  # rewards that differ: a wrong position would show
    if prefix_cache:
        assert scorer._prefix_cache_ok
        # One solution's inputs are prefixes of each other: the trie runs each token once.
        assert scorer.stats.trie_tokens <= sum(len(s) for s in scorer.encode_inputs(
            [(q, st[:-1], st[-1]) for q, st in SOLUTIONS]))


def test_format_detected_from_the_checkpoint(public_dirs):
    assert load_scorer(str(public_dirs["qwen"]), device="cpu").format.label == "token/qwen"
    assert load_scorer(str(public_dirs["trl"]), device="cpu").format.label == "token/trl"
    ms = load_scorer(f"{public_dirs['math_shepherd']}?format=tag", device="cpu")
    assert (ms.format.name, ms.format.step_tag) == ("tag", " ки")


def test_long_inputs_drop_oldest_steps_and_keep_the_reward_position(public_dirs):
    folder = public_dirs["qwen"]
    q, steps = SOLUTIONS[0]
    full = load_scorer(str(folder), device="cpu")
    n_last = len(full.encode_inputs([(q, steps[:-1], steps[-1])])[0])
    short = load_scorer(f"{folder}?max_length={n_last - 3}", device="cpu")
    seq = short.encode_inputs([(q, steps[:-1], steps[-1])])[0]
    assert len(seq) <= n_last - 3
    assert seq[-1] == short.encoder.tag_id
    assert short.stats.dropped_steps == 0  # reported and reset by the warning
    # What remains is exactly the input without the oldest step.
    assert seq == short.encode_inputs([(q, steps[1:-1], steps[-1])])[0]


def _edited_copy(src, dst, name, edit):
    """A copy of checkpoint folder `src` with the JSON file `name` changed by `edit`."""
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((dst / name).read_text())
    edit(cfg)
    (dst / name).write_text(json.dumps(cfg))
    return dst


def test_wrong_pairings_are_one_clear_error(public_dirs, tiny_lm_dir, tmp_path):
    no_template = _edited_copy(public_dirs["math_shepherd"], tmp_path / "no_template", "tokenizer_config.json",
                               lambda cfg: cfg.pop("chat_template", None))  # fmt: skip
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    three = _edited_copy(public_dirs["trl"], tmp_path / "three", "config.json", lambda cfg: cfg.update(
        id2label={"0": "a", "1": "b", "2": "c"}, label2id={"a": 0, "b": 1, "c": 2}))  # fmt: skip
    cases = [
        (str(tiny_lm_dir), ValueError, "format=tag / format=chat"),  # a causal LM without format= (a policy?)
        (f"{tiny_lm_dir}?format=token", ValueError, "token classifier"),
        (f"{public_dirs['math_shepherd']}?format=tag&good_token=%2B%2B", ConfigError,
         "good_token '\\+\\+' is not one token"),  # a tag token the tokenizer splits
        (f"{no_template}?format=chat", ConfigError, "no chat template"),
        (str(three), ValueError, "has 3"),  # a 3-label token classifier
        (f"{public_dirs['qwen']}?fromat=tag", ConfigError, "unknown scorer option"),
        (f"{public_dirs['qwen']}?format=bogus", ConfigError, "is not one of"),
    ]  # fmt: skip
    for spec, error, match in cases:
        with pytest.raises(error, match=match):
            load_scorer(spec, device="cpu")


def test_cli_names_the_checkpoint_and_exits_2(tiny_lm_dir, tmp_path, capsys):
    from hiprm.cli import main

    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"question": "q", "steps": ["a"]}) + "\n")
    code = main(["rm", "score", f"model={tiny_lm_dir}?format=token", f"input={data}", f"output={tmp_path / 'o.jsonl'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tiny_lm_dir) in err and "token classifier" in err


def test_seqcls_unchanged(tiny_rm_dir):
    """hiprm's own checkpoints keep the paper's format and rewards (the plain model forward)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hiprm.rm.template import render

    scorer = load_scorer(str(tiny_rm_dir), device="cpu")
    assert isinstance(scorer, Scorer) and scorer.format.name == "seqcls"
    q, steps = SOLUTIONS[0]
    got = score_solutions(scorer, [(q, steps)])[0]
    tok = AutoTokenizer.from_pretrained(tiny_rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm_dir).eval()
    want = []
    for i, s in enumerate(steps):
        ids = tok(render(q, steps[:i], s), return_tensors="pt")
        with torch.no_grad():
            want.append(model(**ids).logits.softmax(-1)[0, 1].item())
    assert got == pytest.approx(want, abs=1e-5)


@pytest.fixture(scope="module")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    from tests.rm_fixtures import shared_tiny_rm

    return shared_tiny_rm(tmp_path_factory, tiny_tokenizer)


def test_rm_eval_mixes_formats(public_dirs, tiny_rm_dir, shared_data, tmp_path):
    """`rm eval models=[...]` with hiprm's own checkpoint and public layouts side by side: one
    table per benchmark, the format and cost of each model."""
    from hiprm.rm import evaluate

    models = [str(tiny_rm_dir), str(public_dirs["qwen"]), f"{public_dirs['math_shepherd']}?format=tag"]
    cfg = evaluate.RMEvalConfig(models=models, out=str(tmp_path / "out"), data_dir=str(shared_data), prm800k_limit=1,
                                limit=2, processbench_splits=["gsm8k"], prmbench_limit=1, bootstrap=20, device="cpu")
    report = json.loads(evaluate.run(cfg).read_text())
    assert [report["cost"][m]["format"] for m in models] == ["seqcls", "token/qwen", "tag"]
    for m in models:
        assert {"prm800k", "processbench", "prmbench"} <= set(report["models"][m])
        assert report["cost"][m]["inputs"] > 0 and report["cost"][m]["seconds"] > 0
    md = (tmp_path / "out" / "rm_eval.md").read_text()
    assert md.count("?format=tag") >= 4  # a row in each table


def test_serve_scores_a_public_format(public_dirs):
    """`hiprm serve` of a Qwen2.5-Math-PRM-layout checkpoint: /v1/score and /pooling with
    {question, steps} give the in-process rewards; a formatted text (hiprm's seqcls template)
    is refused with 422."""
    from fastapi.testclient import TestClient

    from hiprm.serve.app import create_app

    scorer = load_scorer(str(public_dirs["qwen"]), device="cpu")
    want = score_solutions(scorer, SOLUTIONS[:2])
    body = [{"question": q, "steps": s} for q, s in SOLUTIONS[:2]]
    with TestClient(create_app(scorer, model_name="qwen", served_name="prm")) as client:
        r = client.post("/v1/score", json=body)
        assert r.status_code == 200, r.text
        for g, w in zip(r.json()["rewards"], want, strict=True):
            assert g == pytest.approx(w, abs=1e-6)
        r = client.post("/pooling", json={"model": "prm", "input": body})
        assert r.status_code == 200, r.text
        assert [[row[1] for row in d["data"]] for d in r.json()["data"]] == [pytest.approx(w, abs=1e-6) for w in want]
        r = client.post("/classify", json={"model": "prm", "input": ["Question: q"]})
        assert r.status_code == 422 and "token/qwen" in r.text


def test_vllm_command(public_dirs, tiny_rm_dir, capsys):
    """`hiprm rm vllm-command` prints the server arguments per format (the vllm-marked parity
    test starts servers with exactly these)."""
    from hiprm.cli import main

    assert main(["rm", "vllm-command", f"model={public_dirs['math_shepherd']}?format=tag"]) == 0
    out = capsys.readouterr().out
    assert "--convert classify" in out and '"classifier_from_token": ["-", "+"]' in out and '"pooling_type": "STEP"' in out
    assert main(["rm", "vllm-command", str(tiny_rm_dir)]) == 0
    assert "--runner pooling" in capsys.readouterr().out
    assert main(["rm", "vllm-command", str(public_dirs["trl"])]) == 2


def test_every_runner_takes_any_format(public_dirs, tmp_path):
    """`eval` and `rm score` build their scorers through load_scorer: a tag-format spec works
    there as in rm eval, and `rm score`'s output equals score_solutions."""
    from hiprm.cli import main
    from hiprm.search.run import EvalConfig, _build_scorers, resolve_methods

    spec = f"{public_dirs['math_shepherd']}?format=tag"
    cfg = EvalConfig(prm=spec, methods=["prm-step"])
    assert _build_scorers(cfg, resolve_methods(cfg))["prm"].format.name == "tag"
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"question": q, "steps": s}) + "\n" for q, s in SOLUTIONS))
    out = tmp_path / "out.jsonl"
    assert main(["rm", "score", f"model={spec}", f"input={data}", f"output={out}", "device=cpu"]) == 0
    got = [json.loads(line)["step_rewards"] for line in out.read_text().splitlines()]
    want = score_solutions(load_scorer(spec, device="cpu"), SOLUTIONS)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-6)


def test_specs_with_options_on_the_command_line(public_dirs, tiny_rm_dir):
    """`models=[CKPT,CKPT?format=tag&...]` needs no quoting on the command line, though YAML's flow
    syntax refuses a `?` inside an item."""
    from hiprm.config import load_config
    from hiprm.rm.evaluate import RMEvalConfig

    spec = f"{public_dirs['math_shepherd']}?format=tag&step_tag=%20%D0%BA%D0%B8"
    cfg = load_config(RMEvalConfig, None, [f"models=[{tiny_rm_dir},{spec}]"])
    assert cfg.models == [str(tiny_rm_dir), spec]
    assert load_scorer(cfg.models[1], device="cpu").format.step_tag == " ки"
