"""RemoteScorer against a fake vLLM `/classify` server (http.server in a thread, real sockets):
the texts it sends are the in-process Scorer's inputs, batches come back in order, busy servers
are retried, failures name the server; and against hiprm's own server (uvicorn in a thread, the
tiny reward model) its rewards equal the in-process Scorer's. The real vLLM server: test_vllm.py."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hiprm.config import ConfigError
from hiprm.rm.remote import RemoteScorer, RewardServerError, load_scorer
from hiprm.rm.scorer import Scorer, StepScorer, score_solutions
from tests.rm_fixtures import shared_tiny_rm

Q = "What is 2 + 3? Janet sells 16 duck eggs."
LONG = "Janet sells 16 - 3 - 4 = 9 duck eggs a day and makes 9 * 2 = $18 every day. " * 12
INPUTS = [
    (Q, [], "First, 2 + 3 = 5."),  # a first step: no previous-reasoning block
    (Q, ["First, 2 + 3 = 5."], "The answer is 5. # Answer 5"),
    (Q, [LONG, LONG, "x = 7"], "The answer is 5."),  # over max_length=512: old steps dropped
    (Q, [], LONG * 3),  # over it with no previous steps: the current step's tail is cut
    ("Short?", ["a", "b"], "c"),
    (Q, ["First, 2 + 3 = 5."], "\\frac{1}{2} + \\sqrt{4} = \\boxed{2.5}"),
    ("", [], ""),
]


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    return shared_tiny_rm(tmp_path_factory, tiny_tokenizer)


def fake_prob(text: str) -> float:
    return (len(text) % 97) / 97


class FakeVLLM:
    """`GET /v1/models` and `POST /classify` as vLLM answers them; P(positive) = fake_prob(text).
    `script`: what to do with the next /classify requests before answering properly: an HTTP
    status to answer with, or "sleep" (answer after 1 s, past the client's timeout)."""

    def __init__(self, root: str = "/nowhere/model", max_model_len: int = 2048, classes: int = 2):
        self.script: list[int | str] = []
        self.bodies: list[dict] = []  # the /classify requests received, in order
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, obj) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path != "/v1/models":
                    return self._send(404, {"error": "not found"})
                card = {"id": "rm", "object": "model", "root": root, "max_model_len": max_model_len}
                self._send(200, {"object": "list", "data": [card]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.bodies.append(body)
                    step = fake.script.pop(0) if fake.script else None
                if step == "sleep":
                    time.sleep(1.0)
                elif step is not None:
                    return self._send(step, {"error": {"message": f"scripted {step}"}})
                if self.path != "/classify" or body.get("model") != "rm":
                    return self._send(
                        404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}
                    )
                rows = []
                for i, t in enumerate(body["input"]):
                    p = fake_prob(t)
                    probs = [1 - p, p] + [0.0] * (classes - 2)
                    rows.append({"index": i, "label": "LABEL_1", "probs": probs, "num_classes": classes})
                n = sum(len(t) for t in body["input"])
                self._send(200, {"object": "list", "model": "rm", "data": rows[::-1],  # any order: by index
                                 "usage": {"prompt_tokens": n, "total_tokens": n}})  # fmt: skip

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeVLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _remote(fake: FakeVLLM, folder, **kw) -> RemoteScorer:
    kw = {"backoff": 0.01, **kw}
    return RemoteScorer(fake.url, checkpoint=folder, **kw)


def test_sends_the_scorers_fitted_texts_in_batches_and_keeps_the_order(tiny_rm_dir, caplog):
    scorer = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    with FakeVLLM() as fake, caplog.at_level(logging.WARNING):
        remote = _remote(fake, tiny_rm_dir, batch_size=3, concurrency=2)
        got = remote.score_inputs(INPUTS)
    assert "max_length=512: 1 old steps dropped, 1 inputs with cut text (of 7 just scored)" in caplog.text
    assert isinstance(remote, StepScorer) and remote.model == "rm"
    texts = remote.texts(INPUTS)
    # What the in-process Scorer runs through its model, token for token (fitting included).
    assert [scorer.encode_text(t) for t in texts] == scorer.encode_inputs(INPUTS)
    # Batches of 3 in input order (two in flight: they may arrive in any order).
    assert sorted(b["input"] for b in fake.bodies) == sorted([texts[0:3], texts[3:6], texts[6:]])
    assert all(b["use_activation"] is True and b["model"] == "rm" for b in fake.bodies)
    assert got == [fake_prob(t) for t in texts] and len(set(got)) == len(got)  # distinct: the order shows
    assert remote.requests == 3 and remote.prompt_tokens == sum(len(t) for t in texts)


def test_score_solutions_through_the_remote_scorer(tiny_rm_dir):
    with FakeVLLM() as fake:
        remote = _remote(fake, tiny_rm_dir, batch_size=2)
        got = score_solutions(remote, [(Q, ["a", "b", "c"]), ("Empty", []), ("Short?", ["d"])])
        assert [len(r) for r in got] == [3, 0, 1]
        assert got[0] == [
            fake_prob(t) for t in remote.texts([(Q, [], "a"), (Q, ["a"], "b"), (Q, ["a", "b"], "c")])
        ]
        assert remote.score_inputs([]) == []
        assert len(fake.bodies) == 2  # 4 inputs, 2 per request; none for the empty call


def test_busy_server_is_retried(tiny_rm_dir):
    with FakeVLLM() as fake:
        remote = _remote(fake, tiny_rm_dir, batch_size=8, timeout=0.5)
        fake.script = [503, 429, "sleep"]  # a 503, a 429 with Retry-After, a request that times out
        got = remote.score_inputs(INPUTS)
    assert got == [fake_prob(t) for t in remote.texts(INPUTS)]
    assert remote.retries == 3 and len(fake.bodies) == 4 and remote.requests == 1


def test_gives_up_naming_the_server_status_and_attempts(tiny_rm_dir):
    with FakeVLLM() as fake:
        remote = _remote(fake, tiny_rm_dir, max_retries=2)
        fake.script = [503] * 5
        with pytest.raises(RewardServerError) as e:
            remote.score_inputs(INPUTS[:2])
        assert str(e.value) == (f"reward server {fake.url}/classify: HTTP 503: "
                                '{"error": {"message": "scripted 503"}} (gave up after 3 attempts)')  # fmt: skip
        assert len(fake.bodies) == 3
        fake.script = [400]  # the request is wrong, not the server: no retry
        with pytest.raises(RewardServerError, match=r"/classify: HTTP 400: .*scripted 400"):
            remote.score_inputs(INPUTS[:2])
        assert len(fake.bodies) == 4


def test_unreachable_server_is_named(tiny_rm_dir):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RewardServerError, match=rf"^reward server http://127.0.0.1:{port}/v1/models: connection "
                       r"failed \(ConnectError.*gave up after 2 attempts\)$"):  # fmt: skip
        RemoteScorer(f"http://127.0.0.1:{port}/v1", checkpoint=tiny_rm_dir, max_retries=1, backoff=0.01)


def test_refuses_what_would_change_rewards(tiny_rm_dir):
    with FakeVLLM(max_model_len=256) as fake:  # the checkpoint fits inputs to 512 tokens
        with pytest.raises(ConfigError, match="max_model_len 256, .*max_length 512 .*--max-model-len 512"):
            _remote(fake, tiny_rm_dir)
    with FakeVLLM() as fake:
        with pytest.raises(ConfigError, match="does not serve 'policy'; it serves rm"):
            _remote(fake, tiny_rm_dir, model="policy")
        with pytest.raises(ConfigError, match="is not a folder here; give the checkpoint folder"):
            RemoteScorer(fake.url)  # the server's root does not exist on this machine
    with FakeVLLM(classes=3) as fake:
        with pytest.raises(RewardServerError, match="as class probabilities; a reward model has 2"):
            _remote(fake, tiny_rm_dir).score_inputs(INPUTS[:1])


def test_load_scorer_by_spec(tiny_rm_dir):
    with FakeVLLM() as fake:
        remote = load_scorer(f"{fake.url}#{tiny_rm_dir}", batch_size=5, device="cuda")  # device: ignored
        assert isinstance(remote, RemoteScorer)
        assert (remote.base_url, remote.checkpoint, remote.batch_size) == (fake.url, tiny_rm_dir, 5)
        assert load_scorer(fake.url + "/v1", checkpoint=str(tiny_rm_dir)).checkpoint == tiny_rm_dir
        with pytest.raises(ConfigError, match="give one"):
            load_scorer(f"{fake.url}#{tiny_rm_dir}", checkpoint="/elsewhere")
    with FakeVLLM(root=str(tiny_rm_dir)) as fake:  # the server's own folder, readable here
        assert load_scorer(fake.url).checkpoint == tiny_rm_dir
    local = load_scorer(str(tiny_rm_dir), device="cpu", batch_size=3)
    assert isinstance(local, Scorer) and local.batch_size == 3


def test_same_rewards_as_the_in_process_scorer_through_hiprm_serve(tiny_rm_dir):
    from hiprm.serve.app import create_app
    from tests.test_serve import _ServerThread

    scorer = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    want = scorer.score_inputs(INPUTS)
    assert max(want) - min(want) > 0.05  # rewards that differ, or equality would prove little
    with _ServerThread(create_app(scorer, served_name="rm", max_model_len=512)) as base:
        got = RemoteScorer(base, checkpoint=tiny_rm_dir, batch_size=3).score_inputs(INPUTS)
    assert got == pytest.approx(want, abs=1e-5)


def test_rm_eval_and_eval_score_through_a_server_named_by_url(tiny_rm_dir, tmp_path, shared_data):
    """`models=[http://HOST:PORT#CKPT]` (rm eval) and `prm=...` (eval) go to the server: every
    reward in rm eval's cache is the fake server's P(positive) of the fitted text."""
    from hiprm.rm import evaluate
    from hiprm.search.run import EvalConfig as SearchConfig
    from hiprm.search.run import _build_scorers, resolve_methods

    with FakeVLLM() as fake:
        spec = f"{fake.url}#{tiny_rm_dir}"
        cfg = evaluate.RMEvalConfig(models=[spec], out=str(tmp_path / "out"), data_dir=str(shared_data),
                                  prm800k_limit=1, processbench_splits=[], prmbench_dir="", bootstrap=10)  # fmt: skip
        evaluate.run(cfg)
        assert fake.bodies, "rm eval never called the server"
        sent = [t for b in fake.bodies for t in b["input"]]
        cached = [r for line in (tmp_path / "out" / "rewards.jsonl").read_text().splitlines()
                  for r in json.loads(line)["rewards"]]  # fmt: skip
        assert sorted(cached) == pytest.approx(sorted(fake_prob(t) for t in sent))
        search = SearchConfig(prm=spec, methods=["prm-step"])
        assert isinstance(_build_scorers(search, resolve_methods(search))["prm"], RemoteScorer)


def test_rm_score_takes_a_served_model_as_every_runner_does(tiny_rm_dir, tmp_path, capsys):
    """`hiprm rm score model=http://HOST:PORT#CKPT` scores through the server (load_scorer, the
    one scorer loader): the same rewards as the checkpoint scored in process."""
    from hiprm.artifacts import write_jsonl
    from hiprm.cli import main
    from hiprm.serve.app import create_app
    from tests.test_serve import _ServerThread

    src = tmp_path / "solutions.jsonl"
    write_jsonl(src, [{"question": "What is 2 + 3?", "steps": ["2 + 3 = 5.", "# Answer\n\n5"]},
                      {"question": "What is 7 * 6?", "steps": ["7 * 6 = 48.", "So 48.", "# Answer\n\n48"]}])  # fmt: skip
    assert main(["rm", "score", f"model={tiny_rm_dir}", f"input={src}", "device=cpu",
                 f"output={tmp_path / 'local.jsonl'}"]) == 0  # fmt: skip
    scorer = Scorer.from_pretrained(tiny_rm_dir, device="cpu")
    with _ServerThread(create_app(scorer, served_name="rm", max_model_len=512)) as base:
        assert main(["rm", "score", f"model={base}#{tiny_rm_dir}", f"input={src}",
                     f"output={tmp_path / 'served.jsonl'}"]) == 0  # fmt: skip
    local, served = ([json.loads(x)["step_rewards"] for x in (tmp_path / n).read_text().splitlines()]
                     for n in ("local.jsonl", "served.jsonl"))  # fmt: skip
    assert [len(r) for r in served] == [2, 3]
    assert [x for r in served for x in r] == pytest.approx([x for r in local for x in r], abs=1e-5)


def test_serve_refuses_a_url_as_its_model(capsys):
    from hiprm.cli import main

    assert main(["serve", "model=http://127.0.0.1:9#x"]) == 2
    assert "is a server; `hiprm serve` serves a checkpoint folder" in capsys.readouterr().err
