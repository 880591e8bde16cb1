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
from pathlib import Path

import pytest

from hiprm.artifacts import StageError, lock_file_for, output_lock, read_appended, write_jsonl
from tests.killing import ENV, complete_lines, hiprm_cmd, run_to_end
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
        "data build": (["data", "build", "--kind", "prm", f"input={prm}", f"out_dir={o / 'db'}"], o / "db"),
        "data build trees": (["data", "build", "--kind", "hrm", f"trees={trees}", f"out_dir={o / 'dbt'}"],
                             o / "dbt"),
        "data export-trl": (["data", "export-trl", str(examples), f"out={o / 'trl.jsonl'}"], o / "trl.jsonl"),
        "annotate hnc": (["annotate", "hnc", f"trees={trees}", f"out={o / 'hnc.jsonl'}"], o / "hnc.jsonl"),
        "annotate stats": (["annotate", "stats", str(trees), f"out_dir={o / 'stats'}"],
                           o / "stats" / f"{trees.stem}.stats.json"),
        "quickstart": (["quickstart", f"out_dir={o / 'qs'}"], o / "qs"),
    }


RUNNERS = ["annotate", "eval", "eval shard", "rm score", "rm eval", "rm train", "selftrain", "data build",
           "data build trees", "data export-trl", "annotate hnc", "annotate stats", "quickstart"]  # fmt: skip


@pytest.mark.parametrize("name", RUNNERS)
def test_every_runner_refuses_an_output_another_process_is_writing(
    name, tmp_path, shared_data, tiny_rm_dir, tiny_lm_dir, tiny_backbone_dir
):
    args, output = _runner_commands(tmp_path, shared_data, tiny_rm_dir, tiny_lm_dir, tiny_backbone_dir)[name]
    with output_lock(output):  # this test process stands for the first run
        _refused(hiprm_cmd(*args), output, os.getpid())
    assert not output.exists(), f"the refused run wrote {output}"


def test_every_runner_is_in_the_lock_test():
    """A new runner that writes must be added to RUNNERS (serve and data stats write nothing)."""
    from hiprm.cli import COMMANDS

    writers = set(COMMANDS) - {"serve", "data stats"}
    assert writers <= {n.removesuffix(" shard").removesuffix(" trees") for n in RUNNERS}


# ---- two real runs on one output -------------------------------------------------------------------


def _start_and_wait_for_lock(cmd: list[str], output: Path, log: Path) -> subprocess.Popen:
    """Start `cmd` and return once it holds `output`'s lock (its PID is in the lock file)."""
    err = log.open("wb")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while True:
        try:
            if lock_file_for(output).read_text().strip() == str(proc.pid):
                return proc
        except FileNotFoundError:
            pass
        assert proc.poll() is None, f"the first run ended ({proc.returncode}) before it was seen:\n{log.read_text()}"
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.01)


def test_two_annotate_runs_on_one_out_dir_write_each_problem_once(tmp_path):
    script, _ = _files(tmp_path)
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"question": f"What is {i}+{i}? (4+5 style)", "answer": "9"}) + "\n"
                            for i in range(300)))  # fmt: skip
    out = tmp_path / "out"
    cmd = hiprm_cmd("annotate", f"dataset={many}", "mode=mcts", "budget=30", "children=3", "batch_problems=1",
                    "policy.backend=scripted", f"policy.script={script}", "progress=false", f"out_dir={out}")  # fmt: skip
    first = _start_and_wait_for_lock(cmd, out, tmp_path / "first.log")
    try:
        _refused(cmd, out, first.pid)
        assert first.poll() is None, "the first run ended before the second was refused: the test proved nothing"
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    ids = [t["problem_id"] for t in read_appended(out / "trees.jsonl")]
    assert len(ids) == 300 and len(set(ids)) == 300
    run_to_end(cmd)  # and a rerun after it resumes: nothing left to do, nothing added
    assert complete_lines(out / "trees.jsonl") == 300


@pytest.mark.slow
def test_two_rm_score_runs_on_one_output_score_each_solution_once(tmp_path, tiny_rm_dir):
    from tests.test_kill9 import _solutions

    src = _solutions(tmp_path / "solutions.jsonl", 600)
    out = tmp_path / "scored.jsonl"
    cmd = hiprm_cmd("rm", "score", f"model={tiny_rm_dir}", f"input={src}", "device=cpu", "chunk_size=16",
                    f"output={out}")  # fmt: skip
    first = _start_and_wait_for_lock(cmd, out, tmp_path / "first.log")
    try:
        _refused(cmd, out, first.pid)
        assert first.poll() is None, "the first run ended before the second was refused: the test proved nothing"
        assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    lines = out.read_bytes().splitlines()
    assert len(lines) == 600 and len(set(lines)) == 600
    assert [json.loads(x)["id"] for x in lines] == list(range(600))
