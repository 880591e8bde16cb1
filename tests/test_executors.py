"""Executors for `annotate` and `eval`: Ray and threads give the files the local executor gives,
and a Ray worker killed mid-problem is retried with the problem written once."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hiprm.annotate.run import AnnotateConfig
from hiprm.annotate.run import run as annotate
from hiprm.artifacts import read_appended
from hiprm.config import load_config
from hiprm.executors import map_unordered
from hiprm.search.run import EvalConfig
from hiprm.search.run import run as evaluate

ray = pytest.importorskip("ray", reason="executor=ray needs the ray extra")

TEXTS = [
    "# Step 1\nWe add 4 and 5.\n\n# Step 2\n4+5=9.\n\n# Answer\n\n9\n# END!",
    "# Step 1\nWe add 4 and 5.\n\n# Step 2\n4+5=8.\n\n# Answer\n\n8\n# END!",
    "# Step 1\nFour plus five.\n\n# Step 2\nThat is nine.\n\n# Answer\n\n9\n# END!",
]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()


def _data(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"rules": {"4+5": TEXTS}}))
    data = tmp_path / "p.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Problem {i}: what is 4+5?", "answer": "9"}) + "\n" for i in range(n)
        )
    )
    return script, data


def _no_time(path: Path) -> dict[str, dict]:
    out = {}
    for rec in read_appended(path):
        rec.get("cost", {}).pop("seconds", None)
        for key in ("rm_seconds", "policy_seconds"):
            rec.get("cost", {}).pop(key, None)
        # a local run's batch shares its calls among its problems; other executors run one at a time
        for key in ("batch_problems", "generate_calls", "rm_calls", "rm_inputs"):
            rec.get("cost", {}).pop(key, None)
        assert rec["problem_id"] not in out, "a problem written twice"
        out[rec["problem_id"]] = rec
    return out


def test_map_unordered_threads_and_local():
    assert sorted(map_unordered(lambda x: x * x, range(10), executor="threads", workers=3)) == [
        x * x for x in range(10)
    ]
    assert list(map_unordered(lambda x: -x, [1, 2], executor="local")) == [-1, -2]
    with pytest.raises(ValueError, match="not one of"):
        list(map_unordered(abs, [1], executor="spark"))


def test_annotate_on_ray_writes_the_local_trees(tmp_path, ray_local):
    script, data = _data(tmp_path)
    args = [f"dataset={data}", "mode=mcts", "budget=8", "children=3", "batch_problems=2", "policy.backend=scripted",
            f"policy.script={script}", "progress=false"]  # fmt: skip
    local = annotate(load_config(AnnotateConfig, None, [*args, f"out_dir={tmp_path / 'local'}"]))
    remote = annotate(
        load_config(AnnotateConfig, None, [*args, f"out_dir={tmp_path / 'ray'}", "executor=ray"])
    )
    assert _no_time(remote) == _no_time(local) and len(_no_time(local)) == 6


@pytest.mark.parametrize("executor", ["threads", "ray"])
def test_eval_executors_write_the_local_records(tmp_path, ray_local, executor):
    script, data = _data(tmp_path)
    args = [f"dataset={data}", "methods=[majority,pass]", "n_values=[1,2]", "subsamples=2", "policy.backend=scripted",
            f"policy.script={script}", "progress=false", "workers=3"]  # fmt: skip
    local = evaluate(load_config(EvalConfig, None, [*args, f"out_dir={tmp_path / 'local'}"]))
    other = evaluate(
        load_config(EvalConfig, None, [*args, f"out_dir={tmp_path / executor}", f"executor={executor}"])
    )
    assert _no_time(other / "problems.jsonl") == _no_time(local / "problems.jsonl")


# --- a Ray worker killed mid-problem --------------------------------------------------------------


class _SlowServer(BaseHTTPRequestHandler):
    """An OpenAI-compatible stub that answers after a delay, with texts chosen by (prompt, seed)."""

    delay = 0.0

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        choices = []
        for i in range(body.get("n", 1)):
            h = hashlib.sha256(f"{body['prompt']}|{body.get('seed')}|{i}".encode()).digest()
            choices.append(
                {"index": i, "text": TEXTS[h[0] % len(TEXTS)], "finish_reason": "stop", "stop_reason": None}
            )
        data = json.dumps({"choices": choices}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _kill_one_worker(name: str, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        out = subprocess.run(["pgrep", "-f", f"ray::{name}"], capture_output=True, text=True).stdout.split()
        if out:
            pid = int(out[0])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_a_killed_ray_worker_is_retried_and_its_problems_written_once(tmp_path, ray_local):
    _SlowServer.delay = 0.3
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        _, data = _data(tmp_path, n=4)
        args = [f"dataset={data}", "mode=bfs", "children=2", "max_depth=3", "batch_problems=2", "policy.backend=openai",
                f"policy.base_url={url}", "policy.model=m", "policy.max_retries=0", "progress=false"]  # fmt: skip
        local = annotate(load_config(AnnotateConfig, None, [*args, f"out_dir={tmp_path / 'local'}"]))
        killed: list[int] = []
        stop = threading.Event()
        killer = threading.Thread(target=_kill_one_worker, args=("annotate_chunk", killed, stop), daemon=True)
        killer.start()
        remote = annotate(
            load_config(AnnotateConfig, None, [*args, f"out_dir={tmp_path / 'ray'}", "executor=ray"])
        )
        stop.set()
        assert killed, "no Ray worker was running a chunk to kill"
        assert _no_time(remote) == _no_time(local) and len(_no_time(local)) == 4
    finally:
        server.shutdown()
