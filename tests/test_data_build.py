"""`hiprm data build` replaces its output folder as a whole (`hiprm.data.build.replace_folder`):
a full disk or a read-only folder is a one-line error that leaves the previous build as it was,
an out_dir that cannot be a folder is refused before any work (`artifacts.prepare_out_dir`), and
so is one holding files the build did not write. The kill -9 case is in tests/test_kill9.py."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

import hiprm.data.build as build
from hiprm.artifacts import StageError, prepare_out_dir
from hiprm.cli import main


@pytest.fixture
def args(shared_data):
    src = shared_data / "prm800k" / "phase1_test.jsonl"
    return ["data", "build", "--kind", "prm", f"input={src}", "val_fraction=0.3", "quiet=true"]


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_write_error_midway_is_one_line_and_leaves_the_old_build(tmp_path, args, monkeypatch, capsys, code):
    out = tmp_path / "d"
    assert main([*args, f"out_dir={out}"]) == 0
    before = files(out)
    real = build.write_jsonl
    calls = []

    def failing(path, rows):  # train.jsonl is written, val.jsonl fails after its first row
        calls.append(Path(path))
        if len(calls) == 1:
            return real(path, rows)

        def cut():
            yield from list(rows)[:1]
            raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Read-only file system")

        return real(path, cut())

    monkeypatch.setattr(build, "write_jsonl", failing)
    capsys.readouterr()
    assert main([*args, "seed=1", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and ("No space left" in err or "Read-only" in err), err
    assert [p.name for p in calls] == ["train.jsonl", "val.jsonl"]
    assert calls[0].parent.name.startswith("d.tmp-")  # written beside, not into, the old build
    assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary left


def test_out_dir_that_cannot_be_a_folder_is_refused_before_any_work(tmp_path, args, capsys, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    read = []
    monkeypatch.setattr(build, "make_examples", lambda *a: read.append(a) or ([], {}))
    for out in (a_file, a_file / "sub", Path("/proc/hiprm-no-such/d")):
        assert main([*args, f"out_dir={out}"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{out}: " in err, err
    assert not read
    assert a_file.read_text() == "keep me"
    with pytest.raises(StageError, match="is a file"):
        prepare_out_dir(a_file)
    assert prepare_out_dir(tmp_path / "new" / "d").is_dir()


def test_out_dir_with_files_the_build_did_not_write_is_refused(tmp_path, args, capsys):
    out = tmp_path / "d"
    assert main([*args, f"out_dir={out}"]) == 0
    before = files(out)
    (out / "notes.txt").write_text("mine")
    assert main([*args, "seed=1", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / 'notes.txt'}: not written by" in err, err
    assert files(out) == {**before, "notes.txt": b"mine"}
    (out / "notes.txt").unlink()
    (out / "checkpoints").mkdir()  # a folder of that name is not an output either
    assert main([*args, "seed=1", f"out_dir={out}"]) == 2
    assert "checkpoints: not written by" in capsys.readouterr().err


def test_rebuild_replaces_the_folder_and_clears_killed_builds_leftovers(tmp_path, args):
    out = tmp_path / "d"
    assert main([*args, f"out_dir={out}"]) == 0
    first = files(out)
    stale = tmp_path / f"d.tmp-{dead_pid()}"
    stale.mkdir()
    (stale / ".train.jsonl.x.tmp").write_text("torn")
    (out / ".val.jsonl.abc.tmp").write_text("torn")  # what an in-place build of an older version left
    other = tmp_path / "d2.tmp-1"  # another out_dir's: not ours to remove
    other.mkdir()
    assert main([*args, "seed=1", f"out_dir={out}"]) == 0
    second = files(out)
    assert sorted(second) == sorted(first) and second["val.jsonl"] != first["val.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "d2.tmp-1"]


def test_old_build_left_aside_by_a_kill_between_the_renames_is_restored(tmp_path, args, capsys):
    """Killed after renaming the old build aside, before renaming the new one in: the next
    build puts the old one back first, so even a rebuild that fails leaves it."""
    out = tmp_path / "d"
    assert main([*args, f"out_dir={out}"]) == 0
    before = files(out)
    out.rename(tmp_path / f"d.old-{dead_pid()}")
    (tmp_path / f"d.tmp-{dead_pid()}").mkdir()
    assert main([*args, "input=/no/such/file.jsonl", f"out_dir={out}"]) == 2
    assert "/no/such/file.jsonl: no such file" in capsys.readouterr().err
    assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_symlinked_out_dir_keeps_its_link(tmp_path, args):
    target = tmp_path / "real"
    assert main([*args, f"out_dir={target}"]) == 0
    link = tmp_path / "link"
    link.symlink_to(target)
    assert main([*args, "seed=1", f"out_dir={link}"]) == 0
    assert link.is_symlink() and (target / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
