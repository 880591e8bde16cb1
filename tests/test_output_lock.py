"""One writer per output: every runner that appends, resumes or replaces takes `output_lock`.

Three kinds of test:
- the lock itself (`hiprm.artifacts.output_lock`): exclusive across processes, re-entrant in one,
  released by the kernel when its holder is killed with SIGKILL, removed when a run ends;
- every runner, as the real `hiprm` command, started while another process (this test) holds its
  output's lock: refused with one line naming the output and the holder's PID, exit 2, and
  nothing written;
- two real runs started on one output (`annotate`, `rm score`, `data build`): the second is
  refused while the first runs, and the first's output holds each record once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hiprm.artifacts import StageError, lock_file_for, output_lock, write_jsonl
from tests.killing import ENV, hiprm_cmd, run_to_end
from tests.rm_fixtures import shared_tiny_rm
from tests.test_annotate import _files


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    return shared_tiny_rm(tmp_path_factory, tiny_tokenizer)


def _refused(cmd: list[str], output: Path, holder: int) -> None:
    """Run `cmd` to the end; it must exit 2 with one line naming `output` and the PID `holder`."""
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}, expected 2:\n{proc.stderr[-2000:]}"
    assert err.count("\n") == 0, f"more than one line:\n{err}"
    assert f"another hiprm run (PID {holder})" in err and str(output) in err, err


# ---- the lock ------------------------------------------------------------------------------------


def test_a_second_process_is_refused_naming_the_holder_and_the_lock_goes_when_the_run_ends(tmp_path):
    out = tmp_path / "run"
    probe = [sys.executable, "-c", "import sys; from hiprm.artifacts import output_lock\n"
             f"with output_lock({str(out)!r}): print('got it')"]  # fmt: skip
    with output_lock(out):
        lock = lock_file_for(out)
        assert lock == tmp_path / ".run.lock" and lock.read_text().strip() == str(os.getpid())
        with output_lock(out):  # re-entrant: the quickstart's stages run inside its own lock
            pass
        assert lock.exists()
        proc = subprocess.run(probe, env=ENV, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and f"another hiprm run (PID {os.getpid()})" in proc.stderr
    assert not lock.exists()  # a run that ends leaves no lock file
    proc = subprocess.run(probe, env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "got it" in proc.stdout, proc.stderr


def test_a_lock_held_by_a_process_killed_with_sigkill_is_free_at_once(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from hiprm.artifacts import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
        env=ENV, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StageError, match=f"PID {holder.pid}"):
            with output_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_file_for(out).exists()  # the file stays after a kill -9, the lock does not
    with output_lock(out):
        assert lock_file_for(out).read_text().strip() == str(os.getpid())


def test_two_spellings_of_one_output_share_a_lock(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert lock_file_for(tmp_path / "link") == lock_file_for(tmp_path / "real")
    assert lock_file_for(tmp_path / "a" / ".." / "real") == lock_file_for(tmp_path / "real")


def test_only_rank_0_of_a_launched_run_locks(tmp_path, monkeypatch):
    """Under `accelerate launch` every rank runs the runner; only rank 0 takes the lock."""
    out = tmp_path / "run"
    monkeypatch.setenv("RANK", "1")
    with output_lock(out):
        assert not lock_file_for(out).exists()
    monkeypatch.setenv("RANK", "0")
    with output_lock(out):
        assert lock_file_for(out).exists()


# ---- every runner refuses a locked output ----------------------------------------------------------


def _runner_commands(tmp_path: Path, shared_data: Path, tiny_rm_dir: Path, tiny_lm_dir: Path, tiny_backbone_dir: Path):
    script, data = _files(tmp_path)
    trees = shared_data / "samples" / "openr_samples_math-aps-tree.jsonl"
    prm = shared_data / "prm800k" / "phase1_train.reconstructed.jsonl"
    sols = tmp_path / "solutions.jsonl"
    write_jsonl(sols, [{"question": "What is 1 + 1?", "steps": ["1 + 1 = 2.", "# Answer\n\n2"]}])
    examples = tmp_path / "examples.jsonl"
    write_jsonl(examples, [{"problem_id": "p", "question": "q", "previous_steps": [], "current_step": "a",
                            "label": 1.0, "kind": "prm", "ratings": [1], "source": "t"}])  # fmt: skip
    policy = ["policy.backend=scripted", f"policy.script={script}"]
    o = tmp_path / "outputs"
    return {  # name -> (command, the output it writes)
        "annotate": (["annotate", f"dataset={data}", *policy, "budget=4", f"out_dir={o / 'ann'}"], o / "ann"),
        "eval": (["eval", f"dataset={data}", *policy, "methods=[majority]", "n_values=[1]", f"out_dir={o / 'ev'}"],
                 o / "ev"),
        "eval shard": (["eval", f"dataset={data}", *policy, "methods=[majority]", "n_values=[1]", "shard=1/2",
                        f"out_dir={o / 'ev2'}"], o / "ev2" / "shards" / "1-of-2"),
        "rm score": (["rm", "score", f"model={tiny_rm_dir}", f"input={sols}", f"output={o / 's.jsonl'}"],
                     o / "s.jsonl"),
        "rm eval": (["rm", "eval", f"models=[{tiny_rm_dir}]", f"out={o / 're'}"], o / "re"),
        "rm train": (["rm", "train", f"model.name={tiny_backbone_dir}", f"data.train={examples}", "data.val=null",
                      f"output_dir={o / 'rt'}"], o / "rt"),
        "selftrain": (["selftrain", f"trees={trees}", f"model={tiny_lm_dir}", f"out_dir={o / 'st'}"], o / "st"),
        "rl": (["rl", f"dataset={data}", f"model={tiny_lm_dir}", "outcome_weight=1", "num_generations=2", "batch_size=2",
                "max_steps=1", f"out_dir={o / 'rl'}"], o / "rl"),
        "data build": (["data", "build", "--kind", "prm", f"input={prm}", f"out_dir={o / 'db'}"], o / "db"),
        "data build trees": (["data", "build", "--kind", "hrm", f"trees={trees}", f"out_dir={o / 'dbt'}"],
                             o / "dbt"),
        "data export-trl": (["data", "export-trl", str(examples), f"out={o / 'trl.jsonl'}"], o / "trl.jsonl"),
        "annotate hnc": (["annotate", "hnc", f"trees={trees}", f"out={o / 'hnc.jsonl'}"], o / "hnc.jsonl"),
        "annotate stats": (["annotate", "stats", str(trees), f"out_dir={o / 'stats'}"],
                           o / "stats" / f"{trees.stem}.stats.json"),
        "quickstart": (["quickstart", f"out_dir={o / 'qs'}"], o / "qs"),
        "report": (["report", str(o / "qs")], o / "qs" / "report.md"),
    }


RUNNERS = ["annotate", "eval", "eval shard", "rm score", "rm eval", "rm train", "selftrain", "rl", "data build",
           "data build trees", "data export-trl", "annotate hnc", "annotate stats", "quickstart", "report"]  # fmt: skip


@pytest.mark.parametrize("name", RUNNERS)
def test_every_runner_refuses_an_output_another_process_is_writing(
    name, tmp_path, shared_data, tiny_rm_dir, tiny_lm_dir, tiny_backbone_dir
):
    args, output = _runner_commands(tmp_path, shared_data, tiny_rm_dir, tiny_lm_dir, tiny_backbone_dir)[name]
    with output_lock(output):  # this test process stands for the first run
        _refused(hiprm_cmd(*args), output, os.getpid())
    assert not output.exists(), f"the refused run wrote {output}"


def test_every_runner_is_in_the_lock_test():
    """A new runner that writes must be added to RUNNERS (serve, data stats and rm vllm-command
    write nothing)."""
    from hiprm.cli import COMMANDS

    writers = set(COMMANDS) - {"serve", "data stats", "rm vllm-command"}
    assert writers <= {n.removesuffix(" shard").removesuffix(" trees") for n in RUNNERS}


# ---- two real runs on one output -------------------------------------------------------------------


def _race(cmd: list[str], output: Path, log: Path, timeout: float = 600) -> None:
    """Start `cmd`; once it holds `output`'s lock (its PID is in the lock file), freeze it with
    SIGSTOP so that it is sure to be mid-run, start the same command again and see it refused
    naming the first's PID; then let the first go on and finish (exit 0)."""
    with log.open("wb") as err:
        first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if lock_file_for(output).read_text().strip() == str(first.pid):
                    break
            except FileNotFoundError:
                pass
            assert first.poll() is None, f"the first run ended ({first.returncode}) before it was seen:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)
        try:
            _refused(cmd, output, first.pid)
        finally:
            first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def _unique_lines(path: Path, n: int, key: Callable[[dict], object]) -> None:
    rows = [json.loads(x) for x in path.read_bytes().splitlines()]
    keys = [key(r) for r in rows]
    assert len(rows) == n and len(set(keys)) == n, f"{path}: {len(rows)} records, {len(set(keys))} distinct, {n} wanted"


def _steps_once(run_dir: Path) -> None:
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "done", meta.get("status")
    steps = [json.loads(x).get("step") for x in (run_dir / "metrics.jsonl").read_bytes().splitlines()]
    train = [r for r in (json.loads(x) for x in (run_dir / "metrics.jsonl").read_bytes().splitlines()) if "loss" in r]
    assert steps and len({r["step"] for r in train}) == len(train), "a training step logged twice"


@pytest.fixture
def race_inputs(tmp_path, shared_data, tiny_rm_dir, tiny_lm_dir, tiny_backbone_dir):
    from tests.test_eval_run import _texts
    from tests.test_kill9 import _solutions
    from tests.test_rm_train import toy_examples

    script, _ = _files(tmp_path)
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"question": f"What is {i}+{i}? (4+5 style)", "answer": "9"}) + "\n"
                            for i in range(300)))  # fmt: skip
    problems = [(f"[p{i}] What is {i % 9}+{i % 5}?", str(i % 9 + i % 5)) for i in range(150)]
    eval_data = tmp_path / "eval_problems.jsonl"
    write_jsonl(eval_data, [{"q": q, "a": a} for q, a in problems])
    eval_script = tmp_path / "eval_script.json"
    eval_script.write_text(json.dumps({"rules": {q: _texts(q.split()[-1][:-1], a) for q, a in problems}}))
    openr = [json.loads(x) for x in (shared_data / "samples" / "openr_samples_math-aps-tree.jsonl").read_text().splitlines()]
    trees = tmp_path / "trees.jsonl"  # 1,200 distinct OpenR trees: a second or two of HNC
    trees.write_text("".join(json.dumps({**t, "question": f"{t['question']} (copy {k})"}) + "\n"
                             for k in range(400) for t in openr))  # fmt: skip
    examples = tmp_path / "examples.jsonl"
    write_jsonl(examples, [{"problem_id": f"p{i}", "question": f"q{i}", "previous_steps": ["s1", "s2"],
                            "previous_labels": [1.0, 1.0], "current_step": "a", "label": float(i % 2), "kind": "prm",
                            "ratings": [1], "source": "t"} for i in range(100_000)])  # fmt: skip
    rm_train = tmp_path / "rm_train.jsonl"
    write_jsonl(rm_train, toy_examples(40, seed=0))
    return {"script": script, "many": many, "eval_data": eval_data, "eval_script": eval_script, "trees": trees,
            "examples": examples, "rm_train": rm_train, "sols": _solutions(tmp_path / "solutions.jsonl", 600),
            "rm": tiny_rm_dir, "lm": tiny_lm_dir, "backbone": tiny_backbone_dir, "shared": shared_data}  # fmt: skip


def _race_case(name: str, i: dict, o: Path) -> tuple[list[str], Path, Callable[[], None]]:
    """(command, its output, the check that the finished output holds each record once)."""
    if name == "annotate":
        return (["annotate", f"dataset={i['many']}", "mode=mcts", "budget=30", "children=3", "batch_problems=1",
                 "policy.backend=scripted", f"policy.script={i['script']}", "progress=false", f"out_dir={o}"], o,
                lambda: _unique_lines(o / "trees.jsonl", 300, lambda r: r["problem_id"]))  # fmt: skip
    if name == "eval":
        return (["eval", f"dataset={i['eval_data']}", "question_field=q", "answer_field=a",
                 "methods=[majority,orm,prm-min]", "n_values=[1,2,4]", f"orm={i['rm']}", f"prm={i['rm']}",
                 "rm.device=cpu", "policy.backend=scripted", f"policy.script={i['eval_script']}", "progress=false",
                 f"out_dir={o}"], o, lambda: _unique_lines(o / "problems.jsonl", 150, lambda r: r["problem_id"]))  # fmt: skip
    if name == "rm score":
        out = o / "scored.jsonl"
        return (["rm", "score", f"model={i['rm']}", f"input={i['sols']}", "device=cpu", "chunk_size=16",
                 f"output={out}"], out, lambda: _unique_lines(out, 600, lambda r: r["id"]))  # fmt: skip

    def rm_eval_check() -> None:
        rows = [json.loads(x) for x in (o / "rewards.jsonl").read_bytes().splitlines()]
        keys = [(r["model"], r["task"], r["key"]) for r in rows]
        assert rows and len(set(keys)) == len(keys) and (o / "rm_eval.json").is_file()

    if name == "rm eval":
        return (["rm", "eval", f"models=[{i['rm']}]", f"data_dir={i['shared']}", "prm800k_limit=10", "limit=48",
                 "processbench_splits=[gsm8k,math]", "bootstrap=50", "device=cpu", "prmbench_limit=2", f"out={o}"], o,
                rm_eval_check)  # fmt: skip
    if name == "rm train":
        return (["rm", "train", f"model.name={i['backbone']}", f"data.train={i['rm_train']}", "data.val=null",
                 "optim.batch_size=4", "optim.epochs=2", "logging_steps=1", f"output_dir={o}"], o,
                lambda: _steps_once(o))  # fmt: skip
    if name == "selftrain":
        return (["selftrain", f"trees={i['shared'] / 'samples' / 'openr_samples_math-aps-tree.jsonl'}",
                 f"model={i['lm']}", "max_length=2048", "batch_size=2", "max_steps=6", "min_mc=0.4", "logging_steps=1",
                 f"out_dir={o}"], o, lambda: _steps_once(o))  # fmt: skip

    def build_check() -> None:
        meta = json.loads((o / "meta.json").read_text())
        for split in ("train", "val"):
            assert len((o / f"{split}.jsonl").read_bytes().splitlines()) == meta["counts"][split]

    if name == "data build":
        return (["data", "build", "--kind", "hrm", f"input={i['shared'] / 'prm800k' / 'phase1_train.reconstructed.jsonl'}",
                 "quiet=true", f"out_dir={o}"], o, build_check)  # fmt: skip
    if name == "annotate hnc":
        out = o / "hnc.jsonl"
        return (["annotate", "hnc", f"trees={i['trees']}", "quiet=true", f"out={out}"], out,
                lambda: _unique_lines(out, 1200, lambda r: r["problem_id"]))  # fmt: skip
    if name == "annotate stats":
        out = o / "trees.stats.json"
        return (["annotate", "stats", str(i["trees"]), f"out_dir={o}"], out,
                lambda: json.loads(out.read_text())["problems"] == 1200 or pytest.fail("stats of another input"))  # fmt: skip
    if name == "data export-trl":
        out = o / "trl.jsonl"
        return (["data", "export-trl", str(i["examples"]), f"out={out}"], out,
                lambda: _unique_lines(out, 100_000, lambda r: r["prompt"]))  # fmt: skip
    raise KeyError(name)


RACES = ["annotate", "eval", "rm score", "rm eval", "rm train", "selftrain", "data build", "annotate hnc",
         "annotate stats", "data export-trl"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", RACES)
def test_a_second_real_run_is_refused_while_the_first_runs_and_nothing_is_written_twice(name, race_inputs, tmp_path):
    """Two real `hiprm` processes on one output, the first frozen mid-run while the second starts.
    (`quickstart` takes minutes; it runs the stages above under its own lock, which the
    held-lock test checks.)"""
    args, output, check = _race_case(name, race_inputs, tmp_path / "out")
    _race(hiprm_cmd(*args), output, tmp_path / "first.log")
    check()
    run_to_end(hiprm_cmd(*args))  # and a rerun afterwards resumes or redoes without adding anything
    check()
