"""A full disk is one line and exit 2 for every writer, and leaves the previous output or nothing.

Each test mounts a small tmpfs (root only; skipped with the reason where mounting is not
allowed), fills it with a filler file until the kernel says ENOSPC, and runs the real `hiprm`
command with its output on that filesystem:
- a fresh output: exit 2, one line saying the disk is full, and no file left behind (no partial
  file, no temporary, no empty output folder);
- an earlier output (`data build`, `annotate hnc`, `annotate stats`, `data export-trl`, which
  replace what they write): every file of it as it was, byte for byte;
- an append-only output cut short by the full disk (`rm score`): freeing space and rerunning the
  same command gives the records of a run that never failed.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from hiprm.artifacts import write_jsonl
from tests.killing import ENV, hiprm_cmd, run_to_end
from tests.rm_fixtures import shared_tiny_rm
from tests.test_annotate import _files


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tiny_tokenizer):
    return shared_tiny_rm(tmp_path_factory, tiny_tokenizer)


@pytest.fixture
def disk(tmp_path):
    """An 8 MiB tmpfs at tmp_path/disk, unmounted after the test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int = 0) -> Path:
    """Write a filler file until the filesystem is full, then free `leave` bytes of it."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for block in (65536, 512):  # then the last partial block
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    if leave:
        os.truncate(filler, max(filler.stat().st_size - leave, 0))
    return filler


def files_under(mnt: Path) -> dict[str, bytes]:
    """Every file below `mnt` but the filler, with its bytes (hidden temporaries and locks too)."""
    return {str(p.relative_to(mnt)): p.read_bytes() for p in sorted(mnt.rglob("*"))
            if p.is_file() and p.name != "filler"}  # fmt: skip


def dirs_under(mnt: Path) -> list[str]:
    return sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.is_dir())


def _disk_full(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    err = [x for x in proc.stderr.strip().splitlines() if x.startswith("hiprm ")]
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "No space left on device" in err[0], err[0]
    return err[0]


@pytest.fixture
def inputs(tmp_path, shared_data, tiny_rm_dir, tiny_lm_dir, tiny_backbone_dir):
    script, data = _files(tmp_path)
    sols = tmp_path / "solutions.jsonl"
    write_jsonl(sols, [{"question": f"What is {i} + 1?", "steps": [f"{i} + 1 = {i + 1}.", f"# Answer\n\n{i + 1}"]}
                       for i in range(40)])  # fmt: skip
    prm800k = tmp_path / "prm800k.jsonl"  # 40 rated solutions: a build that fits the small disk
    with (shared_data / "prm800k" / "phase1_train.reconstructed.jsonl").open() as f:
        prm800k.write_text("".join(next(f) for _ in range(40)))
    examples = tmp_path / "examples.jsonl"
    write_jsonl(examples, [{"problem_id": f"p{i}", "question": f"q{i}", "previous_steps": [], "current_step": "a",
                            "label": float(i % 2), "kind": "prm", "ratings": [1], "source": "t"} for i in range(8)])  # fmt: skip
    return {
        "policy": ["policy.backend=scripted", f"policy.script={script}"], "data": data, "sols": sols,
        "examples": examples, "trees": shared_data / "samples" / "openr_samples_math-aps-tree.jsonl",
        "prm800k": prm800k, "rm": tiny_rm_dir,
        "lm": tiny_lm_dir, "backbone": tiny_backbone_dir, "shared": shared_data,
    }  # fmt: skip


def _command(name: str, i: dict, out: Path) -> list[str]:
    return {
        "annotate": ["annotate", f"dataset={i['data']}", *i["policy"], "budget=4", "progress=false", f"out_dir={out}"],
        "eval": ["eval", f"dataset={i['data']}", *i["policy"], "methods=[majority]", "n_values=[1]",
                 "progress=false", f"out_dir={out}"],
        "rm score": ["rm", "score", f"model={i['rm']}", f"input={i['sols']}", "device=cpu", f"output={out / 's.jsonl'}"],
        "rm eval": ["rm", "eval", f"models=[{i['rm']}]", f"data_dir={i['shared']}", "prm800k_limit=4", "limit=8",
                    "processbench_splits=[gsm8k]", "bootstrap=20", "device=cpu", "prmbench_limit=1", f"out={out}"],
        "rm train": ["rm", "train", f"model.name={i['backbone']}", f"data.train={i['examples']}", "data.val=null",
                     "optim.batch_size=4", "optim.epochs=1", f"output_dir={out}"],
        "selftrain": ["selftrain", f"trees={i['trees']}", f"model={i['lm']}", "min_mc=0", "max_steps=1", f"out_dir={out}"],
        "data build": ["data", "build", "--kind", "hrm", f"input={i['prm800k']}", "quiet=true", f"out_dir={out}"],
        "data build trees": ["data", "build", "--kind", "hrm", f"trees={i['trees']}", "quiet=true", f"out_dir={out}"],
        "data export-trl": ["data", "export-trl", str(i["examples"]), f"out={out / 'trl.jsonl'}"],
        "annotate hnc": ["annotate", "hnc", f"trees={i['trees']}", "quiet=true", f"out={out / 'hnc.jsonl'}"],
        "annotate stats": ["annotate", "stats", str(i["trees"]), f"out_dir={out}"],
    }[name]  # fmt: skip


WRITERS = ["annotate", "eval", "rm score", "rm eval", "rm train", "selftrain", "data build", "data build trees",
           "data export-trl", "annotate hnc", "annotate stats"]  # fmt: skip


@pytest.mark.parametrize("name", WRITERS)
def test_a_full_disk_is_one_line_and_leaves_nothing(name, disk, inputs):
    fill(disk)
    _disk_full(hiprm_cmd(*_command(name, inputs, disk / "out")))
    assert files_under(disk) == {} and dirs_under(disk) in ([], ["out"])
    if name not in ("rm score", "annotate hnc", "data export-trl", "annotate stats"):  # their out is a file's folder
        assert dirs_under(disk) == [], "an empty output folder was left"


@pytest.mark.parametrize("name", ["data build", "data build trees", "annotate hnc", "annotate stats",
                                  "data export-trl"])  # fmt: skip
def test_a_full_disk_leaves_the_previous_output_as_it_was(name, disk, inputs):
    cmd = hiprm_cmd(*_command(name, inputs, disk / "out"))
    run_to_end(cmd)
    before = files_under(disk)
    assert before
    fill(disk)
    _disk_full([*cmd, "seed=1"] if name.startswith(("data build", "annotate hnc")) else cmd)
    assert files_under(disk) == before


@pytest.mark.slow
def test_rm_score_cut_short_by_a_full_disk_resumes_to_the_records_of_a_run_that_never_failed(
    disk, tmp_path, tiny_rm_dir
):
    from tests.test_kill9 import _solutions

    src = _solutions(tmp_path / "solutions.jsonl", 600)
    args = [f"model={tiny_rm_dir}", f"input={src}", "device=cpu", "chunk_size=16"]
    ref = tmp_path / "ref.jsonl"
    run_to_end(hiprm_cmd("rm", "score", *args, f"output={ref}"))
    size = ref.stat().st_size
    out = disk / "scored.jsonl"
    filler = fill(disk, leave=size // 2)
    _disk_full(hiprm_cmd("rm", "score", *args, f"output={out}"))
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and 0 < partial.stat().st_size < size  # cut short, kept for the rerun
    filler.unlink()
    run_to_end(hiprm_cmd("rm", "score", *args, f"output={out}"))
    lines = out.read_bytes().splitlines()
    assert lines == ref.read_bytes().splitlines() and len(set(lines)) == 600
    assert json.loads(lines[-1])["id"] == 599
