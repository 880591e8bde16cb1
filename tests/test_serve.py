"""HTTP scoring server: payload validation with no server, the app through TestClient with a fake
scorer, and a load test on loopback (uvicorn in a thread, a tiny real model, 64 concurrent
requests) checking results, and that concurrent requests were batched together."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from hiprm.rm.scorer import score_solutions
from hiprm.serve.app import ServeConfig, create_app
from hiprm.serve.protocol import Limits, RequestError, parse_request
from tests.rm_fixtures import FakeScorer, shared_tiny_rm


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    return shared_tiny_rm(tmp_path_factory, tiny_tokenizer)


def length_reward(question, previous, step):
    return round(len(step) / 100, 4)


# ---- parse_request, no server ---------------------------------------------------------------------


def _status(body, limits=None):
    try:
        parse_request(body if isinstance(body, bytes) else json.dumps(body).encode(), limits or Limits())
    except RequestError as e:
        return e.status, e.message
    return 200, ""


def test_parse_request_accepts_one_or_many():
    one = parse_request(b'{"question": "q", "steps": ["a", "bb"]}', Limits())
    assert [(i.question, i.steps) for i in one] == [("q", ["a", "bb"])]
    many = parse_request(json.dumps([{"question": "q1", "steps": []}, {"question": "q2", "steps": ["x"]}]).encode(),
                         Limits())
    assert [i.question for i in many] == ["q1", "q2"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ({"question": "q"}, "steps"),
        ({"question": "q", "steps": "a"}, "steps"),
        ({"question": "q", "steps": ["a", 3]}, "steps.1"),
        ({"question": 5, "steps": []}, "question"),
        ({"question": "q", "steps": [], "extra": 1}, "extra"),
        ([{"question": "q", "steps": []}, {"steps": []}], "1.question"),
        ("just a string", "expected"),
        (None, "expected"),
    ],
)
def test_parse_request_rejects_bad_shapes_with_422(body, fragment):
    status, message = _status(body)
    assert status == 422
    assert fragment in message


def test_parse_request_limits():
    small = Limits(max_body_bytes=200, max_items_per_request=2, max_steps_per_item=3, max_chars_per_step=10,
                   max_chars_per_question=20)
    assert _status({"question": "q", "steps": ["a"] * 3}, small)[0] == 200
    assert _status({"question": "q", "steps": ["a"] * 4}, small) == (422, "[0].steps has 4 steps; the limit is 3")
    assert "steps[1] has 11 characters" in _status({"question": "q", "steps": ["a", "x" * 11]}, small)[1]
    assert "question has 21 characters" in _status({"question": "q" * 21, "steps": []}, small)[1]
    assert "3 solutions" in _status([{"question": "q", "steps": []}] * 3, small)[1]
    assert _status({"question": "q" * 300, "steps": []}, small)[0] == 413


# ---- the app through TestClient (no socket) -------------------------------------------------------


def test_app_scores_validates_and_reports():
    fake = FakeScorer(length_reward)
    cfg = ServeConfig(max_body_bytes=5_000, max_steps_per_item=4)
    with TestClient(create_app(fake, cfg, model_name="fake")) as client:
        r = client.post("/v1/score", json={"question": "q", "steps": ["a" * 10, "b" * 20]})
        assert r.status_code == 200
        assert r.json() == {"rewards": [[0.1, 0.2]]}
        r = client.post("/v1/score", json=[{"question": "q", "steps": ["a"]}, {"question": "q", "steps": []}])
        assert r.json() == {"rewards": [[0.01], []]}
        assert client.post("/v1/score", content=b"x" * 6_000).status_code == 413
        assert client.post("/v1/score", json={"question": "q", "steps": ["a"] * 5}).status_code == 422
        bad = client.post("/v1/score", content=b"[1, 2")
        assert bad.status_code == 422 and "not valid JSON" in bad.json()["detail"]
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["model"] == "fake" and health["items"] == 3


def test_scorer_failure_is_a_500_with_a_message_and_the_server_survives():
    def explode(question, previous, step):
        if step == "boom":
            raise RuntimeError("CUDA out of memory (pretend)")
        return 0.5

    with TestClient(create_app(FakeScorer(explode))) as client:
        r = client.post("/v1/score", json={"question": "q", "steps": ["boom"]})
        assert r.status_code == 500
        assert "RuntimeError: CUDA out of memory (pretend)" in r.json()["detail"]
        assert client.post("/v1/score", json={"question": "q", "steps": ["ok"]}).json() == {"rewards": [[0.5]]}


def test_concurrent_requests_are_batched_through_asgi_transport():
    class SlowFake(FakeScorer):
        def score_inputs(self, inputs):
            time.sleep(0.02)  # the model being busy lets the queue fill up
            return super().score_inputs(inputs)

    fake = SlowFake(length_reward)
    app = create_app(fake, ServeConfig(batch_window_ms=20, max_batch=16))

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            reqs = [client.post("/v1/score", json={"question": "q", "steps": ["a" * n]}) for n in range(1, 41)]
            responses = await asyncio.gather(*reqs)
        await app.state.batcher.stop()
        return responses

    responses = asyncio.run(main())
    assert [r.json()["rewards"] for r in responses] == [[[round(n / 100, 4)]] for n in range(1, 41)]
    b = app.state.batcher
    assert b.items == 40 and b.max_requests_per_batch > 1 and b.max_items_per_batch <= 16
    assert b.batches < 40


# ---- load test on loopback with a tiny real model ---------------------------------------------------


class _ServerThread:
    """uvicorn on 127.0.0.1 with an ephemeral port, in a background thread."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


def test_load_on_loopback_with_tiny_model(tiny_rm_dir):
    from hiprm.rm.scorer import Scorer

    scorer = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    items = [
        (f"What is {n} + 3?", [f"First, {n} + 3 = {n + 3}.", "The answer is 5. # Answer 5"][: 1 + n % 2])
        for n in range(64)
    ]
    expected = [score_solutions(scorer, [(q, s)])[0] for q, s in items]
    app = create_app(scorer, ServeConfig(batch_window_ms=20, max_batch=64), model_name="tiny")

    async def fire(base):
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            reqs = [client.post("/v1/score", json={"question": q, "steps": s}) for q, s in items]
            responses = await asyncio.wait_for(asyncio.gather(*reqs), timeout=60)
            health = (await client.get("/health")).json()
        return responses, health

    with _ServerThread(app) as base:
        t0 = time.monotonic()
        responses, health = asyncio.run(fire(base))
        elapsed = time.monotonic() - t0
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:3]
    for r, want in zip(responses, expected, strict=True):
        assert r.json()["rewards"][0] == pytest.approx(want, abs=1e-5)
    assert health["items"] == 64
    assert health["max_requests_per_batch"] > 1, health
    assert health["batches"] < 64
    assert elapsed < 60


# ---- vLLM's pooling API: /classify, /pooling, /v1/models -----------------------------------------


def test_vllm_pooling_api_shapes_and_values(tiny_rm_dir):
    """The requests a vLLM client sends (verl's reward loop: /classify with use_activation false,
    reading data[-1].probs[-1]), answered with vLLM 0.32's field names and types, and values
    equal to hiprm's own rewards."""
    import math

    from hiprm.rm.scorer import Scorer
    from hiprm.rm.template import render

    scorer = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    app = create_app(scorer, model_name=str(tiny_rm_dir), served_name="hiprm-rm", max_model_len=2048)
    q, steps = "What is 2 + 3?", ["2 + 3 = 5.", "# Answer\n\n5"]
    want = score_solutions(scorer, [(q, steps)])[0]
    texts = [render(q, steps[:i], s, scorer.template) for i, s in enumerate(steps)]
    with TestClient(app) as client:
        models = client.get("/v1/models").json()
        assert models["object"] == "list" and models["data"][0]["id"] == "hiprm-rm"
        assert set(models["data"][0]) == {"id", "object", "created", "owned_by", "root", "parent", "max_model_len",
                                          "permission"}  # fmt: skip
        r = client.post("/classify", json={"model": "hiprm-rm", "input": texts}).json()
        assert set(r) == {"id", "object", "created", "model", "data", "usage"} and r["id"].startswith("classify-")
        assert r["object"] == "list" and r["model"] == "hiprm-rm" and isinstance(r["created"], int)
        assert [set(d) for d in r["data"]] == [{"index", "label", "probs", "num_classes"}] * 2
        assert [d["index"] for d in r["data"]] == [0, 1] and r["data"][0]["num_classes"] == 2
        assert [d["probs"][1] for d in r["data"]] == pytest.approx(want, abs=1e-5)
        assert r["data"][0]["label"] == ("positive" if want[0] >= 0.5 else "negative")
        assert r["usage"]["prompt_tokens"] == r["usage"]["total_tokens"] > 0 and r["usage"]["completion_tokens"] == 0
        # verl: use_activation false -> raw logits; softmax of them is the reward.
        raw = client.post("/classify", json={"model": "hiprm-rm", "input": texts[-1], "use_activation": False}).json()
        a, b = raw["data"][-1]["probs"]
        assert 1 / (1 + math.exp(a - b)) == pytest.approx(want[-1], abs=1e-5)
        # Token ids, as vLLM accepts them.
        ids = client.post("/classify", json={"input": [scorer.encode_text(t) for t in texts]}).json()
        assert [d["probs"][1] for d in ids["data"]] == pytest.approx(want, abs=1e-5)
        # hiprm's structured extension: one entry per step.
        st = client.post("/classify", json={"input": {"question": q, "steps": steps}}).json()
        assert [d["probs"][1] for d in st["data"]] == pytest.approx(want, abs=1e-5)
        pool = client.post("/pooling", json={"model": "hiprm-rm", "task": "token_classify",
                                             "input": [{"question": q, "steps": steps}]}).json()  # fmt: skip
        assert set(pool) == {"id", "object", "created", "model", "data", "usage"} and pool["id"].startswith("pool-")
        assert pool["data"][0]["object"] == "pooling" and pool["data"][0]["index"] == 0
        assert [row[1] for row in pool["data"][0]["data"]] == pytest.approx(want, abs=1e-5)
        assert all(row[0] + row[1] == pytest.approx(1.0) for row in pool["data"][0]["data"])
        # Refusals: another model name, an unknown task, a text for token_classify, bad shapes.
        assert client.post("/classify", json={"model": "other", "input": "x"}).status_code == 404
        assert client.post("/pooling", json={"task": "embed", "input": {"question": q, "steps": steps}}).status_code == 422
        assert client.post("/pooling", json={"task": "token_classify", "input": "text"}).status_code == 422
        assert client.post("/classify", json={"input": 5}).status_code == 422
        assert client.post("/classify", content=b"{bad").status_code == 422
