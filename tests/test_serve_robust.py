"""`hiprm serve` against bad requests and bad checkpoints (issue 13 §3): malformed bodies are a 4xx,
never a 500, and never fail the requests batched with them; a request or a batch cannot hold the
worker past its token budget; /health says "busy" while one call runs long; stalled uploads time
out and a client that goes away is one log line; a checkpoint without a trained head is refused.

All through TestClient / httpx's ASGI transport, or the ASGI app called with a hand-made
`receive`: no socket. The real-model parts use the tiny in-memory reward model (rm_fixtures)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from hiprm.artifacts import DataError
from hiprm.config import ConfigError
from hiprm.rm.score_file import ScoreConfig
from hiprm.rm.scorer import Scorer, score_solutions, solution_input_tokens, solution_inputs
from hiprm.serve.app import ServeConfig, create_app, utf8_lengths
from hiprm.serve.protocol import Limits, RequestError, parse_request
from tests.rm_fixtures import FakeScorer, shared_tiny_rm


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    return shared_tiny_rm(tmp_path_factory, tiny_tokenizer)


@pytest.fixture(scope="module")
def scorer(tiny_rm_dir):
    return Scorer.from_pretrained(tiny_rm_dir, device="cpu")


def half(question, previous, step):
    return 0.5


def length_reward(question, previous, step):
    return round(len(step) / 100, 4)


async def _fire(app, requests):
    """POST every (path, body bytes, headers) at once through the ASGI transport."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
        out = await asyncio.gather(*[client.post(p, content=b, headers=h) for p, b, h in requests])
    await app.state.batcher.stop()
    return out


JSON = {"content-type": "application/json"}


# ---- §1: lone surrogates, deep nesting; a failing item fails only its own request ------------------


def test_surrogates_and_deep_nesting_are_422_and_spare_the_valid_requests_beside_them(scorer):
    """With the real tokenizer a lone surrogate used to crash the scorer call, failing every
    request batched with it (500 for all); 100k-deep JSON was a RecursionError (500)."""
    valid = [("What is 2 + 3?", ["2 + 3 = 5.", "# Answer\n\n5"]), ("What is 1 + 1?", ["1 + 1 = 2."])]
    want = [score_solutions(scorer, [(q, s)])[0] for q, s in valid]
    bad = [
        b'{"question": "q", "steps": ["a \\ud800 b"]}',  # the escape: valid JSON, not valid text
        b'{"question": "q", "steps": ["\xed\xa0\x80"]}',  # the same surrogate as raw (invalid) UTF-8
        b'{"question": "q", "steps": [], "\\udfff": 1}',  # in a key, which an error message would echo
        b"[" * 100_000 + b"]" * 100_000,
    ]
    app = create_app(scorer, ServeConfig(batch_window_ms=50, max_body_bytes=300_000))
    reqs = [("/v1/score", b, JSON) for b in bad]
    reqs += [("/v1/score", json.dumps({"question": q, "steps": s}).encode(), JSON) for q, s in valid]
    got = asyncio.run(_fire(app, reqs))
    assert [r.status_code for r in got] == [422] * 4 + [200] * 2, [r.text[:200] for r in got]
    assert "lone surrogate ('\\ud800')" in got[0].json()["detail"] and "steps[0]" in got[0].json()["detail"]
    assert "not valid JSON" in got[1].json()["detail"]
    assert "lone surrogate" in got[2].json()["detail"]
    assert "nested too deeply" in got[3].json()["detail"]
    assert "not UTF-8 (invalid continuation byte at byte 29)" in got[1].json()["detail"]
    for r, w in zip(got[4:], want, strict=True):
        assert r.json()["rewards"][0] == pytest.approx(w, abs=1e-5)


def test_a_request_the_scorer_fails_on_fails_alone_and_its_batch_mates_succeed():
    class Fussy(FakeScorer):
        def __init__(self):
            super().__init__(length_reward)
            self.call_sizes = []

        def score_inputs(self, inputs):
            self.call_sizes.append(sum(1 for _, prev, _ in inputs if not prev))  # solutions in the call
            time.sleep(0.01)  # busy, so that the queue fills up
            if any("boom" in cur for _, _, cur in inputs):
                raise RuntimeError("tokenizer exploded (pretend)")
            return super().score_inputs(inputs)

    fake = Fussy()
    app = create_app(fake, ServeConfig(batch_window_ms=50, max_batch=64))
    steps = [["a" * n] for n in range(1, 10)]
    steps.insert(4, ["boom"])
    got = asyncio.run(_fire(app, [("/v1/score", json.dumps({"question": "q", "steps": s}).encode(), JSON)
                                  for s in steps]))  # fmt: skip
    assert [r.status_code for r in got] == [200] * 4 + [500] + [200] * 5
    assert "RuntimeError: tokenizer exploded (pretend)" in got[4].json()["detail"]
    assert [r.json()["rewards"] for i, r in enumerate(got) if i != 4] == [[[n / 100]] for n in range(1, 10)]
    assert max(fake.call_sizes) > 1  # they were batched, and the failing batch retried one by one
    assert fake.call_sizes.count(1) >= 10


def test_bodies_must_be_utf8_and_a_byte_order_mark_is_ignored():
    body = {"question": "q", "steps": ["é"]}
    assert [i.steps for i in parse_request(b"\xef\xbb\xbf" + json.dumps(body).encode(), Limits())] == [["é"]]
    with pytest.raises(RequestError, match="not UTF-8"):
        parse_request(json.dumps(body).encode("utf-16"), Limits())


# ---- §2: tokens per request, per scorer call, the model's context; /health ------------------------


def test_input_tokens_are_counted_with_the_tokenizer_close_to_what_is_scored(scorer):
    items = [("What is 2 + 3? Janet sells 16 duck eggs.", ["First, 2 + 3 = 5.", "Janet sells 16 - 3 - 4 = 9 duck eggs.",
                                                           "The answer is 5. # Answer 5"]),
             ("x" * 3000, ["y" * 2000, "z"])]  # fmt: skip
    est = scorer.input_tokens(items)
    exact = [[len(ids) for ids in scorer.encode_inputs(solution_inputs([(q, steps)]))] for q, steps in items]
    for e_row, x_row in zip(est, exact, strict=True):
        assert e_row == pytest.approx(x_row, abs=5)
    assert est[1] == [scorer.template.max_length] * 2  # fitted inputs never pass max_length


def test_a_request_over_max_tokens_per_request_is_422_naming_the_limit(scorer):
    cfg = ServeConfig(max_tokens_per_request=300)
    with TestClient(create_app(scorer, cfg)) as client:
        small = client.post("/v1/score", json={"question": "What is 2 + 3?", "steps": ["2 + 3 = 5."]})
        assert small.status_code == 200
        # 128 steps of 7,900 characters used to be within limits and hold the worker for minutes.
        big = client.post("/v1/score", json={"question": "q", "steps": ["2 + 3 = 5. " * 20] * 8})
        assert big.status_code == 422 and "max_tokens_per_request=300" in big.json()["detail"]
        texts = client.post("/classify", json={"input": ["2 + 3 = 5. " * 20] * 3})
        assert texts.status_code == 422 and "max_tokens_per_request=300" in texts.json()["detail"]
        assert client.post("/classify", json={"input": "2 + 3 = 5."}).status_code == 200


def test_an_input_longer_than_the_models_context_is_422(scorer):
    with TestClient(create_app(scorer, max_model_len=64)) as client:
        long_text = client.post("/classify", json={"input": "2 + 3 = 5. " * 40})
        assert long_text.status_code == 422 and "context (max_position_embeddings) is 64" in long_text.json()["detail"]
        ids = client.post("/classify", json={"input": list(range(1, 66))})
        assert ids.status_code == 422 and "input[0] has 65 tokens" in ids.json()["detail"]
        # The template's max_length (512) is larger than this pretend context: a fitted input can pass it.
        sol = client.post("/pooling", json={"input": {"question": "q", "steps": ["a", "2 + 3 = 5. " * 40]}})
        assert sol.status_code == 422 and "input[0].steps[1]" in sol.json()["detail"]
    with TestClient(create_app(FakeScorer(half), max_model_len=300)) as client:  # no tokenizer: UTF-8 bytes
        r = client.post("/v1/score", json={"question": "q", "steps": ["é" * 200]})  # 400 bytes
        assert r.status_code == 422 and "[0].steps[0]" in r.json()["detail"]


def test_token_ids_outside_the_vocabulary_are_422_not_a_scorer_crash(scorer):
    vocab = scorer.model.config.vocab_size
    with TestClient(create_app(scorer)) as client:
        for ids in ([vocab], [-1], [[1, 2], [3, 10**12]]):
            r = client.post("/classify", json={"input": ids})
            assert r.status_code == 422 and f"[0, {vocab})" in r.json()["detail"], r.text
        assert client.post("/classify", json={"input": [vocab - 1]}).status_code == 200


def test_the_batcher_keeps_each_scorer_call_within_max_tokens_per_call():
    class Recording(FakeScorer):
        def __init__(self):
            super().__init__(length_reward)
            self.call_tokens = []

        def score_inputs(self, inputs):
            # An input is the last step of the solution (question, previous + [current]).
            self.call_tokens.append(sum(solution_input_tokens(utf8_lengths, [(q, [*prev, cur])])[0][-1]
                                        for q, prev, cur in inputs))  # fmt: skip
            time.sleep(0.01)
            return super().score_inputs(inputs)

    fake = Recording()
    one = sum(solution_input_tokens(utf8_lengths, [("q", ["a" * 100])])[0])  # 188 "tokens" (bytes)
    app = create_app(fake, ServeConfig(batch_window_ms=50, max_batch=64, max_tokens_per_call=3 * one))
    got = asyncio.run(_fire(app, [("/v1/score", json.dumps({"question": "q", "steps": ["a" * 100]}).encode(), JSON)
                                  for _ in range(12)]))  # fmt: skip
    assert [r.json() for r in got] == [{"rewards": [[1.0]]}] * 12
    assert max(fake.call_tokens) <= 3 * one < 4 * one
    assert max(fake.call_tokens) > one  # still batched
    assert app.state.batcher.max_tokens_per_batch == max(fake.call_tokens)


def test_health_is_503_busy_while_one_scorer_call_runs_past_the_threshold():
    release = threading.Event()

    class Stuck(FakeScorer):
        def score_inputs(self, inputs):
            release.wait(10)
            return super().score_inputs(inputs)

    app = create_app(Stuck(half), ServeConfig(health_busy_after_s=0.1), model_name="stuck")

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            idle = await client.get("/health")
            pending = asyncio.ensure_future(client.post("/v1/score", json={"question": "q", "steps": ["a"]}))
            deadline = time.monotonic() + 5
            while (busy := await client.get("/health")).status_code == 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            release.set()
            scored = await pending
            after = await client.get("/health")
        await app.state.batcher.stop()
        return idle, busy, scored, after

    idle, busy, scored, after = asyncio.run(main())
    assert idle.status_code == 200 and idle.json()["status"] == "ok" and idle.json()["current_batch_s"] == 0
    assert busy.status_code == 503 and busy.json()["status"] == "busy" and busy.json()["current_batch_s"] > 0.1
    assert scored.json() == {"rewards": [[0.5]]}
    assert after.status_code == 200 and after.json()["status"] == "ok"


# ---- §3: stalled uploads, clients that go away, uvicorn settings -----------------------------------


async def _asgi_post(app, messages, wait_s=5.0):
    """Call the ASGI app with `messages` as what the client sends, then nothing (a stalled upload);
    returns what the app sent back."""
    sent = []
    queue = list(messages)

    async def receive():
        if queue:
            return queue.pop(0)
        await asyncio.Event().wait()  # the client sends nothing more, ever

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/score", "raw_path": b"/v1/score", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
             "client": ("127.0.0.1", 5555), "server": ("test", 80)}  # fmt: skip
    try:
        await asyncio.wait_for(app(scope, receive, send), wait_s)
    finally:
        await app.state.batcher.stop()
    return sent


def test_a_stalled_upload_gets_408_after_read_timeout_s():
    app = create_app(FakeScorer(half), ServeConfig(read_timeout_s=0.2))
    t0 = time.monotonic()
    sent = asyncio.run(_asgi_post(app, [{"type": "http.request", "body": b'{"question": "q", ', "more_body": True}]))
    assert time.monotonic() - t0 < 3
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert start["status"] == 408 and "read_timeout_s=0.2" in body["detail"]
    assert (b"connection", b"close") in start["headers"]


def test_a_client_that_disconnects_mid_body_is_one_log_line_not_a_traceback(caplog):
    app = create_app(FakeScorer(half))
    messages = [{"type": "http.request", "body": b'{"question": ', "more_body": True}, {"type": "http.disconnect"}]
    with caplog.at_level(logging.DEBUG):
        asyncio.run(_asgi_post(app, messages))
    mine = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(mine) == 1, [r.getMessage() for r in mine]
    assert "went away after sending 13 bytes" in mine[0].getMessage() and mine[0].exc_info is None


def test_run_passes_keep_alive_and_connection_limits_to_uvicorn(monkeypatch, tiny_rm_dir):
    import uvicorn

    from hiprm.serve.app import run

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    run(ServeConfig(model=str(tiny_rm_dir), device="cpu", keep_alive_s=7, max_connections=32))
    assert seen["timeout_keep_alive"] == 7 and seen["limit_concurrency"] == 32
    run(ServeConfig(model=str(tiny_rm_dir), device="cpu"))
    assert seen["limit_concurrency"] is None
    with pytest.raises(ConfigError, match="read_timeout_s: must be > 0"):
        run(ServeConfig(model=str(tiny_rm_dir), read_timeout_s=0))


# ---- §4: a checkpoint without a trained classification head ----------------------------------------


def test_serve_refuses_a_causal_lm_checkpoint_before_listening(monkeypatch, tiny_lm_dir):
    import uvicorn

    from hiprm.serve.app import run

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("served a model with a random head"))
    with pytest.raises(DataError, match="LlamaForCausalLM is not a reward model"):
        run(ServeConfig(model=str(tiny_lm_dir), device="cpu"))


def test_rm_score_refuses_a_causal_lm_checkpoint_with_one_line_and_exit_2(tmp_path, tiny_lm_dir, capsys):
    from hiprm.cli import main
    from hiprm.rm.score_file import run

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"question": "q", "steps": ["a"]}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="architectures"):
        run(ScoreConfig(model=str(tiny_lm_dir), input=str(src), output=str(tmp_path / "out.jsonl"), device="cpu"))
    code = main(["rm", "score", f"model={tiny_lm_dir}", f"input={src}", f"output={tmp_path / 'out2.jsonl'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "is not a reward model" in err, err


def test_a_classifier_config_without_the_head_in_its_weights_is_refused(tmp_path, tiny_lm_dir):
    """config.json says sequence classification, but the weights are a causal LM's: transformers
    would initialise `score` at random (missing keys) and every load would score differently."""
    import shutil

    folder = tmp_path / "relabelled"
    shutil.copytree(tiny_lm_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match=r"score\.weight are not in the checkpoint"):
        Scorer.from_pretrained(folder, device="cpu")


# ---- §5: the malformed-request suite -----------------------------------------------------------------

SUITE_CFG = ServeConfig(batch_window_ms=20, max_items_per_request=4, max_steps_per_item=8, max_chars_per_step=2_000,
                        max_chars_per_question=2_000, max_body_bytes=300_000, max_tokens_per_request=2_000)  # fmt: skip
SUITE_CONTEXT = 256  # pretend max_position_embeddings, under the template's max_length 512
Q, STEP = "What is 2 + 3?", "2 + 3 = 5."
FORM = {"content-type": "application/x-www-form-urlencoded"}


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


MALFORMED = [
    # (endpoint, body, headers, expected status)
    ("/v1/score", b"", JSON, 422),
    ("/v1/score", b"{not json", JSON, 422),
    ("/v1/score", b"\xff\xfe", JSON, 422),
    ("/v1/score", b'"\xed\xa0\x80"', JSON, 422),
    ("/v1/score", b'{"question": "q", "steps": ["a \\ud800 b"]}', JSON, 422),
    ("/v1/score", b'{"question": "\\udfff", "steps": []}', JSON, 422),
    ("/v1/score", b'{"question": "q", "steps": [], "\\ud800": 1}', JSON, 422),
    ("/v1/score", b"[" * 100_000 + b"]" * 100_000, JSON, 422),
    ("/v1/score", b'{"a": ' * 40_000 + b"1" + b"}" * 40_000, JSON, 422),
    ("/v1/score", b'{"question": "q", "steps": [' + b"9" * 5_000 + b"]}", JSON, 422),
    ("/v1/score", b'{"question": "q", "steps": [1e999]}', JSON, 422),
    ("/v1/score", b'{"question": NaN, "steps": []}', JSON, 422),
    ("/v1/score", b"null", JSON, 422),
    ("/v1/score", _j({"question": None, "steps": None}), JSON, 422),
    ("/v1/score", _j({"question": "q", "steps": [None]}), JSON, 422),
    ("/v1/score", _j({"question": "q", "steps": "abc"}), JSON, 422),
    ("/v1/score", _j({"question": ["q"], "steps": []}), JSON, 422),
    ("/v1/score", _j({"question": "q", "steps": [], "extra": 1}), JSON, 422),
    ("/v1/score", _j([{"question": "q", "steps": []}, 5]), JSON, 422),
    ("/v1/score", _j({}), JSON, 422),
    ("/v1/score", _j([[]]), JSON, 422),
    ("/v1/score", _j({"question": "q", "steps": [STEP] * 9}), JSON, 422),
    ("/v1/score", _j({"question": "q", "steps": ["x" * 2_001]}), JSON, 422),
    ("/v1/score", _j({"question": "q" * 2_001, "steps": []}), JSON, 422),
    ("/v1/score", _j([{"question": "q", "steps": []}] * 5), JSON, 422),
    ("/v1/score", _j([{"question": Q, "steps": [STEP * 12] * 8}] * 2), JSON, 422),  # tokens per request
    ("/v1/score", _j({"question": Q, "steps": ["2 + 3 = 5. " * 40]}), JSON, 422),  # over the context
    ("/v1/score", b"x" * 300_001, JSON, 413),
    ("/v1/score", b"question=q&steps=a", FORM, 422),
    ("/v1/score", json.dumps({"question": "q", "steps": []}).encode("utf-16"), JSON, 422),
    ("/classify", _j({"input": 5}), JSON, 422),
    ("/classify", _j({"input": None}), JSON, 422),
    ("/classify", _j({}), JSON, 422),
    ("/classify", _j({"input": []}), JSON, 422),
    ("/classify", _j({"input": [[]]}), JSON, 422),
    ("/classify", _j({"input": [-1]}), JSON, 422),
    ("/classify", _j({"input": [10**12]}), JSON, 422),
    ("/classify", _j({"input": [[1, 2], [3, -5]]}), JSON, 422),
    ("/classify", b'{"input": [1e400]}', JSON, 422),
    ("/classify", _j({"input": [1.5]}), JSON, 422),
    ("/classify", _j({"input": ["a", 1]}), JSON, 422),
    ("/classify", b'{"input": "\\ud800"}', JSON, 422),
    ("/classify", b'{"input": ["ok", "a\\udc00"]}', JSON, 422),
    ("/classify", _j({"input": "2 + 3 = 5. " * 60}), JSON, 422),  # over the context
    ("/classify", _j({"input": list(range(1, SUITE_CONTEXT + 2))}), JSON, 422),
    ("/classify", _j({"model": 5, "input": "a"}), JSON, 422),
    ("/classify", _j({"model": "other", "input": "a"}), JSON, 404),
    ("/classify", b'{"model": "\\ud800", "input": "a"}', JSON, 422),
    ("/classify", _j({"input": {"question": "q", "steps": ["a"], "extra": 1}}), JSON, 422),
    ("/classify", _j({"input": {"question": "q"}}), JSON, 422),
    ("/classify", _j({"input": "a", "use_activation": "maybe"}), JSON, 422),
    ("/classify", _j([]), JSON, 422),
    ("/classify", b'{"input": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", JSON, 422),
    ("/classify", b"input=a", FORM, 422),
    ("/pooling", _j({"task": "embed", "input": {"question": Q, "steps": [STEP]}}), JSON, 422),
    ("/pooling", _j({"task": "token_classify", "input": "text"}), JSON, 422),
    ("/pooling", _j({"task": 7, "input": {"question": Q, "steps": [STEP]}}), JSON, 422),
    ("/pooling", _j({"task": "token_classify", "input": [1, 2, 3]}), JSON, 422),
    ("/pooling", b'{"input": [{"question": "q", "steps": ["\\ud800"]}]}', JSON, 422),
    ("/pooling", _j({"input": {"question": "q", "steps": ["a"] * 1_000}}), JSON, 422),
    ("/pooling", _j({"input": [{"question": Q, "steps": [STEP * 12] * 8}] * 2}), JSON, 422),
    ("/pooling", _j({"input": {"question": None, "steps": [STEP]}}), JSON, 422),
    ("/pooling", b"", JSON, 422),
]
VALID = [("/v1/score", _j({"question": Q, "steps": [STEP, "# Answer\n\n5"]})),
         ("/classify", _j({"input": {"question": Q, "steps": [STEP]}})),
         ("/pooling", _j({"task": "token_classify", "input": [{"question": Q, "steps": [STEP, "# Answer\n\n5"]}]}))]  # fmt: skip


@pytest.fixture(scope="module")
def suite_client(scorer):
    with TestClient(create_app(scorer, SUITE_CFG, max_model_len=SUITE_CONTEXT), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize(("path", "body", "headers", "status"), MALFORMED,
                         ids=[f"{i}-{p}" for i, (p, *_) in enumerate(MALFORMED)])  # fmt: skip
def test_malformed_request_is_a_4xx_with_a_message(suite_client, path, body, headers, status):
    r = suite_client.post(path, content=body, headers=headers)
    assert r.status_code == status, r.text[:300]
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_malformed_requests_sent_together_with_valid_ones_never_500_and_spare_them(scorer):
    want = score_solutions(scorer, [(Q, [STEP, "# Answer\n\n5"])])[0]
    app = create_app(scorer, SUITE_CFG, max_model_len=SUITE_CONTEXT)
    reqs = [(p, b, h) for p, b, h, _ in MALFORMED] + [(p, b, JSON) for p, b in VALID] * 3
    got = asyncio.run(_fire(app, reqs))
    assert [r.status_code for r in got[: len(MALFORMED)]] == [s for *_, s in MALFORMED]
    valid = got[len(MALFORMED) :]
    assert all(r.status_code == 200 for r in valid), [r.text[:200] for r in valid]
    for k in range(0, len(valid), 3):
        assert valid[k].json()["rewards"][0] == pytest.approx(want, abs=1e-5)
        assert valid[k + 1].json()["data"][0]["probs"][1] == pytest.approx(want[0], abs=1e-5)
        assert [row[1] for row in valid[k + 2].json()["data"][0]["data"]] == pytest.approx(want, abs=1e-5)


# ---- §4: nothing to score, and a body far over the limit (issue 25) ---------------------------------


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "holds no solution"),
        ({"question": "", "steps": ["a"]}, "[0].question is empty"),
        ({"question": " \n", "steps": ["a"]}, "[0].question is empty"),
        ([{"question": "q", "steps": ["a"]}, {"question": "q", "steps": ["a", ""]}], "[1].steps[1] is empty"),
        ({"question": "q", "steps": ["a", "\t "]}, "[0].steps[1] is empty"),
    ],
)
def test_nothing_to_score_is_422_naming_what_is_empty(body, fragment):
    with TestClient(create_app(FakeScorer(half))) as client:
        r = client.post("/v1/score", json=body)
    assert r.status_code == 422 and fragment in r.json()["detail"], r.text


def test_a_solution_without_steps_gets_an_empty_reward_list_beside_the_others():
    """Documented: a batch holding an empty generation is scored, not refused."""
    with TestClient(create_app(FakeScorer(half))) as client:
        r = client.post("/v1/score", json=[{"question": "q", "steps": []}, {"question": "q", "steps": ["a"]}])
    assert r.status_code == 200 and r.json() == {"rewards": [[], [0.5]]}


@pytest.mark.parametrize("path", ["/classify", "/pooling"])
@pytest.mark.parametrize(("inp", "fragment"), [([], "input is empty"), ("", "input is empty"),
                                               ({"question": "q", "steps": [""]}, "[0].steps[0] is empty")])  # fmt: skip
def test_classify_and_pooling_with_nothing_to_score_are_422(scorer, path, inp, fragment):
    with TestClient(create_app(scorer)) as client:
        r = client.post(path, json={"input": inp, **({"task": "token_classify"} if path == "/pooling" else {})})
    assert r.status_code == 422 and fragment in r.json()["detail"], r.text
    assert "has no tokens" not in r.json()["detail"]


def test_a_10_mb_body_gets_the_413_over_a_real_socket_not_a_connection_reset(free_tcp_port):
    """uvicorn on 127.0.0.1, a 4 MB limit, a 10 MB body sent whole before the answer is read (as
    http.client, urllib and requests do): declared, and chunked. Answering without reading the
    rest of the body made the client's kernel see a reset ("Connection reset by peer")."""
    import http.client
    import threading

    import uvicorn

    app = create_app(FakeScorer(half), ServeConfig(max_body_bytes=4_000_000))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_tcp_port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        body = b'{"question": "' + b"x" * 10_000_000 + b'", "steps": ["a"]}'

        def post(content, chunked=False) -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", free_tcp_port, timeout=30)
            try:
                conn.request("POST", "/v1/score", body=content, headers={"content-type": "application/json"},
                             encode_chunked=chunked)  # fmt: skip
                r = conn.getresponse()
                return r.status, json.loads(r.read())
            finally:
                conn.close()

        for _ in range(3):  # every time, not by luck of timing
            status, got = post(body)
            assert status == 413 and "the limit is 4000000" in got["detail"]
        status, _ = post((body[k : k + (1 << 20)] for k in range(0, len(body), 1 << 20)), chunked=True)
        assert status == 413
        assert post(json.dumps({"question": "q", "steps": ["a"]}).encode()) == (200, {"rewards": [[0.5]]})
    finally:
        server.should_exit = True
        thread.join(timeout=10)
