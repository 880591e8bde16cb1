"""Against a real vLLM server (the CPU build, `scripts/vllm_server.sh`): `hiprm annotate` in both
modes, greedy sampling with n > 1 (which vLLM rejects unless sent as n = 1), and `hiprm eval`.

Marker `vllm`. The server is the one at $HIPRM_VLLM_URL, or one this module starts from
`.venv-vllm` (made by `bash scripts/vllm_server.sh install`; ~2-4 min to warm up on 2 cores);
without either the tests skip.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
from pathlib import Path

import httpx
import pytest

from hiprm.config import load_config
from hiprm.rm.scorer import score_solutions

ROOT = Path(__file__).resolve().parents[1]
PORT = 8013
pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_url():
    url = os.environ.get("HIPRM_VLLM_URL")
    if url:
        yield url.rstrip("/")
        return
    if not (ROOT / ".venv-vllm" / "bin" / "python").exists():
        pytest.skip("no vLLM: set HIPRM_VLLM_URL or run `bash scripts/vllm_server.sh install`")
    script = ROOT / "scripts" / "vllm_server.sh"
    start = subprocess.run(
        ["bash", str(script), "start", "", str(PORT)], cwd=ROOT, capture_output=True, text=True
    )
    if start.returncode != 0:
        pytest.fail(f"vLLM did not start: {start.stdout[-1000:]} {start.stderr[-2000:]}")
    try:
        yield f"http://127.0.0.1:{PORT}/v1"
    finally:
        subprocess.run(["bash", str(script), "stop", str(PORT)], cwd=ROOT, capture_output=True)


def _policy_args(url: str) -> list[str]:
    return [f"policy.base_url={url}", "policy.backend=openai", "policy.model=policy", "policy.concurrency=16",
            "policy.tokenizer=smollm2-135m-instruct"]  # fmt: skip


@pytest.mark.parametrize("mode", ["bfs", "mcts"])
def test_annotate_against_vllm(vllm_url, tmp_path, mode, caplog):
    from hiprm.annotate.run import AnnotateConfig, run
    from hiprm.tree import read_trees

    data = tmp_path / "p.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": q, "answer": a}) + "\n"
            for q, a in [("What is 2 + 3?", "5"), ("What is 10 - 4?", "6")]
        )
    )
    cfg = load_config(AnnotateConfig, None, [
        f"dataset={data}", f"out_dir={tmp_path / mode}", f"mode={mode}", "budget=4", "children=2", "max_depth=2",
        "prompt.style=paragraph", "max_step_tokens=24", "max_solution_tokens=48", "temperature=0.8", "progress=false",
        *_policy_args(vllm_url),
    ])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        trees = list(read_trees(run(cfg)))
    assert "dropped the stop string" not in caplog.text  # vLLM says which stop matched (stop_reason)
    assert len(trees) == 2
    for t in trees:
        assert t.root.leaves > 0 and t.cost["generated_tokens"] > 0


def test_greedy_n_gt_1_against_vllm(vllm_url):
    from hiprm.policy.openai_http import OpenAIPolicy
    from hiprm.policy.protocol import SamplingParams

    pol = OpenAIPolicy(base_url=vllm_url, model="policy")
    out = pol.generate(
        ["Question: What is 2 + 3?\nAnswer:"],
        SamplingParams(n=3, temperature=0.0, max_tokens=12, stop=["\n\n"]),
    )
    assert len(out[0]) == 3 and len(set(out[0])) == 1
    # the request the client used to send, which vLLM 0.32 rejects
    r = httpx.post(
        vllm_url + "/completions",
        json={"model": "policy", "prompt": "x", "n": 2, "temperature": 0, "max_tokens": 2},
    )
    assert r.status_code == 400 and "greedy" in r.text


def test_eval_against_vllm(vllm_url, tmp_path):
    """Step-level search and best-of-N with the policy on vLLM (reward models faked)."""
    from hiprm.search.run import EvalConfig, run
    from tests.rm_fixtures import FakeScorer

    def fake() -> FakeScorer:
        return FakeScorer(lambda question, previous, step: min(1.0, len(step) / 100))

    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    cfg = load_config(EvalConfig, None, [
        f"dataset={data}", f"out_dir={tmp_path / 'out'}", "n_values=[1,2]",
        "methods=[majority,orm,prm-step,prm-min,prm-beam,prm-dvts,prm-particles,prm-hier]", "beam_width=2",
        "subsamples=2", "orm=fake", "prm=fake", "prompt.style=paragraph", "max_solution_tokens=48",
        "max_step_tokens=24", "max_steps=2", "progress=false", *_policy_args(vllm_url),
    ])  # fmt: skip
    out = run(cfg, scorers={"orm": fake(), "prm": fake()})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problems"] == 1 and metrics["cost"]["tokens_generated"] > 0
    for m in ("prm-beam", "prm-dvts", "prm-particles", "prm-hier"):  # the tree searches on a server
        assert metrics["accuracy"][m]["2"]["tokens"] > 0


# --- a hiprm reward model served by vLLM's pooling runner --------------------------------------


@pytest.fixture(scope="module")
def vllm_rm(tmp_path_factory, shared_data):
    """A checkpoint written by `hiprm rm train` (1 step on 2 PRM800K problems) and a vLLM
    `--runner pooling` server for it: (model folder, base url)."""
    if os.environ.get("HIPRM_VLLM_URL") or not (ROOT / ".venv-vllm" / "bin" / "python").exists():
        pytest.skip("the pooling parity check starts its own vLLM from .venv-vllm")
    from hiprm.data import build as data_build
    from hiprm.rm import train as rm_train

    out = tmp_path_factory.mktemp("vllm_rm")
    data_build.run(data_build.BuildConfig(kind="prm", input=str(shared_data / "prm800k" / "phase1_test.jsonl"),
                                          out_dir=str(out / "data"), max_problems=2, val_fraction=0.0, quiet=True))  # fmt: skip
    tc = rm_train.TrainConfig(output_dir=str(out / "rm"))
    tc.data.train, tc.data.val = str(out / "data" / "train.jsonl"), None
    tc.optim.max_steps, tc.optim.batch_size, tc.model.train_top_layers, tc.template.max_length = 1, 2, 1, 256
    model = rm_train.run(tc) / "model"
    script = ROOT / "scripts" / "vllm_server.sh"
    env = {**os.environ, "VLLM_NAME": "rm"}
    port = PORT + 1
    start = subprocess.run(["bash", str(script), "start", str(model), str(port), "--runner", "pooling"], cwd=ROOT,
                           capture_output=True, text=True, env=env)  # fmt: skip
    if start.returncode != 0:
        pytest.fail(f"vLLM (pooling) did not start: {start.stdout[-1000:]} {start.stderr[-2000:]}")
    try:
        yield model, f"http://127.0.0.1:{port}"
    finally:
        subprocess.run(["bash", str(script), "stop", str(port)], cwd=ROOT, capture_output=True)


def test_vllm_classify_matches_hiprm_rewards(vllm_rm):
    """vLLM's /classify on hiprm's formatted inputs returns hiprm's own rewards (softmax P(positive))."""
    from hiprm.rm.scorer import Scorer
    from hiprm.rm.template import render

    model, base = vllm_rm
    scorer = Scorer.from_pretrained(str(model), device="cpu")
    question = "What is $2+3$?"
    steps = ["We add the two numbers.", "$2+3=5$.", "# Answer\n\n5"]
    ours = score_solutions(scorer, [(question, steps)])[0]
    texts = [render(question, steps[:i], s, scorer.template) for i, s in enumerate(steps)]
    r = httpx.post(base + "/classify", json={"model": "rm", "input": texts}, timeout=120)
    assert r.status_code == 200, r.text
    theirs = [row["probs"][1] for row in sorted(r.json()["data"], key=lambda d: d["index"])]
    assert theirs == pytest.approx(ours, abs=1e-5)

    # hiprm's own server answers the same requests with vLLM's shapes and the same numbers.
    from fastapi.testclient import TestClient

    from hiprm.serve.app import create_app

    app = create_app(scorer, model_name=str(model), served_name="rm", max_model_len=2048,
                     id2label={int(k): v for k, v in scorer.model.config.id2label.items()})  # fmt: skip
    models_v = httpx.get(base + "/v1/models", timeout=30).json()
    with TestClient(app) as client:
        for body in ({"model": "rm", "input": texts}, {"model": "rm", "input": texts[-1], "use_activation": False}):
            v = httpx.post(base + "/classify", json=body, timeout=120).json()
            h = client.post("/classify", json=body).json()
            assert set(h) == set(v) and h["object"] == v["object"] and h["model"] == v["model"]
            assert [set(d) for d in h["data"]] == [set(d) for d in v["data"]]
            for dh, dv in zip(h["data"], v["data"], strict=True):
                assert dh["index"] == dv["index"] and dh["num_classes"] == dv["num_classes"]
                assert dh["label"] == dv["label"] and dh["probs"] == pytest.approx(dv["probs"], abs=1e-4)
            assert h["usage"]["prompt_tokens"] == v["usage"]["prompt_tokens"]
            assert set(h["usage"]) <= set(v["usage"]) | {"prompt_tokens_details"}
        mh = client.get("/v1/models").json()
    assert set(mh) == set(models_v) and set(mh["data"][0]) == set(models_v["data"][0])
    assert mh["data"][0]["id"] == models_v["data"][0]["id"] == "rm"


def test_remote_scorer_matches_the_in_process_scorer(vllm_rm, shared_data, caplog):
    """`RemoteScorer` through vLLM's `/classify` gives the in-process Scorer's rewards and token
    counts (issue 12 §4): a first step, later steps, inputs over the checkpoint's max_length (256;
    fitted before they are sent) and whole PRM800K solutions through `score_solutions`."""
    from hiprm.data.prm800k import read_prm800k
    from hiprm.rm.remote import RemoteScorer, load_scorer
    from hiprm.rm.scorer import Scorer

    model, base = vllm_rm
    scorer = Scorer.from_pretrained(str(model), device="cpu")
    q, first, second = "What is $2+3$?", "We add the two numbers.", "$2+3=5$."
    long_step = " ".join(f"Then ${k} \\times 3 = {3 * k}$." for k in range(60))  # ~700 tokens
    inputs = [
        (q, [], first),  # no previous-reasoning block
        (q, [first], second),
        (q, [first, second], "# Answer\n\n5"),
        ("Compute $3 \\times 59$.", [long_step, "So the last product is 177."], "# Answer\n\n177"),  # oldest dropped
        ("Compute $3 \\times 59$.", [], long_step),  # the current step's tail cut
    ]
    with caplog.at_level(logging.WARNING):
        want = scorer.score_inputs(inputs)
    assert "1 old steps dropped, 1 inputs with cut text" in caplog.text
    remote = load_scorer(f"{base}#{model}", batch_size=2)
    assert isinstance(remote, RemoteScorer) and remote.model == "rm"
    got = remote.score_inputs(inputs)
    assert got == pytest.approx(want, abs=1e-5)
    assert max(want) - min(want) > 1e-4  # rewards that differ, so equal lists say something
    # vLLM tokenized each text into exactly the ids the in-process Scorer ran.
    assert remote.prompt_tokens == sum(len(ids) for ids in scorer.encode_inputs(inputs))
    assert remote.requests == 3

    sols = [(s.question, s.trajectory()) for s in read_prm800k(shared_data / "prm800k" / "phase1_test.jsonl")][:3]
    ours, theirs = score_solutions(scorer, sols), score_solutions(remote, sols)
    assert [len(r) for r in theirs] == [len(s) for _, s in sols]
    for a, b in zip(theirs, ours, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.fixture(scope="module")
def vllm_public_prms(tmp_path_factory, tiny_tokenizer):
    """Tiny Qwen2.5-Math-PRM-layout and Math-Shepherd-layout checkpoints, each served by the CPU
    vLLM with the arguments `hiprm.rm.formats.vllm_args` gives (the two servers start together):
    {name: (hiprm spec options, checkpoint folder, base url)}."""
    if os.environ.get("HIPRM_VLLM_URL") or not (ROOT / ".venv-vllm" / "bin" / "python").exists():
        pytest.skip("the STEP-pooling parity check starts its own vLLM from .venv-vllm")
    import shutil

    from hiprm.rm.remote import load_scorer
    from tests import public_prms

    root = tmp_path_factory.mktemp("vllm_public")
    made = {"qwen": ("", public_prms.make_qwen_prm(root / "qwen", tiny_tokenizer, width=64)),
            "math_shepherd": ("?format=tag", public_prms.make_math_shepherd(root / "ms", tiny_tokenizer, width=64)),
            "trained_tag": ("", _trained_prm(root, tiny_tokenizer, "tag")),
            "trained_qwen": ("", _trained_prm(root, tiny_tokenizer, "qwen"))}
    script = ROOT / "scripts" / "vllm_server.sh"
    procs, out = [], {}
    for k, (name, (options, folder)) in enumerate(made.items()):
        from hiprm.rm.formats import vllm_args

        scorer = load_scorer(f"{folder}{options}", device="cpu")
        # vLLM builds a Qwen2 tokenizer for model_type qwen2 and ignores a custom tokenizer.json
        # unless the tokenizer comes from a folder of its own.
        tok_dir = root / f"{name}_tokenizer"
        tok_dir.mkdir()
        for f in folder.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(f, tok_dir / f.name)
        port = PORT + 2 + k
        args = ["bash", str(script), "start", str(folder), str(port), "--tokenizer", str(tok_dir),
                *vllm_args(scorer.format, scorer.tokenizer)]  # fmt: skip
        if name.startswith("trained"):  # the command `rm train` wrote is the one hiprm gives
            assert shlex.join(args[5:][2:]) in (folder.parent / "vllm_serve.txt").read_text()
        procs.append(subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "VLLM_NAME": name}))  # fmt: skip
        out[name] = (options, folder, f"http://127.0.0.1:{port}")
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=900)
            if p.returncode != 0:
                pytest.fail(f"vLLM (STEP pooling) did not start: {stdout[-1000:]} {stderr[-2000:]}")
        yield out
    finally:
        for k in range(len(made)):
            subprocess.run(["bash", str(script), "stop", str(PORT + 2 + k)], cwd=ROOT, capture_output=True)


def _trained_prm(root, tokenizer, kind):
    """`hiprm rm train` (2 steps) on a 64-wide tiny backbone: format=tag on a Llama, or
    format=token layout=qwen on a Qwen2 whose tokenizer has <extra_0>; a checkpoint that names
    its format, with its vllm_serve.txt."""
    import torch
    from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from hiprm.artifacts import write_jsonl
    from hiprm.config import load_config
    from hiprm.rm.train import TrainConfig, run
    from tests.public_prms import _llama_config, _tokenizer_with
    from tests.test_rm_trie import toy

    backbone = root / f"{kind}_backbone"
    torch.manual_seed(1)
    if kind == "qwen":
        tokenizer = _tokenizer_with(tokenizer, specials=["<extra_0>"], template=tokenizer.chat_template)
        Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                     max_position_embeddings=2048, initializer_range=0.3)).save_pretrained(backbone)  # fmt: skip
        fmt = ["format=token", "format_options.layout=qwen"]
    else:
        LlamaForCausalLM(_llama_config(tokenizer, 64)).save_pretrained(backbone)
        fmt = ["format=tag"]
    tokenizer.save_pretrained(backbone)
    write_jsonl(root / "prm_train.jsonl", toy(32, 0))
    out = run(load_config(TrainConfig, None, [
        f"output_dir={root / f'{kind}_rm'}", f"model.name={backbone}", f"data.train={root / 'prm_train.jsonl'}",
        "data.val=null", *fmt, "optim.max_steps=2", "optim.learning_rate=3e-3", "checkpoint.every_steps=2"]))
    return out / "model"


@pytest.mark.parametrize("name", ["qwen", "math_shepherd", "trained_tag", "trained_qwen"])
def test_vllm_step_pooling_matches_hiprm_rewards(vllm_public_prms, name):
    """vLLM's STEP pooling (`/pooling`) of a Qwen2.5-Math-PRM-layout model (native), of a
    Math-Shepherd-layout causal LM (converted to a 2-label token classifier from the `-`/`+`
    rows of its LM head) and of tag- and qwen-format checkpoints from `hiprm rm train`, served
    with the command the run wrote, gives hiprm's in-process rewards within 1e-5, through `RemoteScorer`;
    one request carries each solution once."""
    from hiprm.rm.remote import RemoteScorer, load_scorer
    from tests.test_rm_formats import SOLUTIONS

    options, folder, base = vllm_public_prms[name]
    local = load_scorer(f"{folder}{options}", device="cpu")
    remote = load_scorer(f"{base}{options}#{folder}", batch_size=8)
    assert isinstance(remote, RemoteScorer) and remote.format == local.format
    want, got = score_solutions(local, SOLUTIONS), score_solutions(remote, SOLUTIONS)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-5)
    flat = [x for row in want for x in row]
    assert max(flat) - min(flat) > 0.01  # rewards that differ: a wrong row would show
    assert remote.requests == 1
    # Only the longest input of each solution went to the server.
    assert remote.prompt_tokens == sum(len(local.encode_inputs([(q, s[:-1], s[-1])])[0]) for q, s in SOLUTIONS)
