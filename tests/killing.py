"""Kill -9 a real `hiprm` process mid-run, for the resume tests of every stage.

`kill_when(cmd, ready)` starts `cmd` (usually `hiprm_cmd(...)`: `python -m hiprm.cli ...`), polls
`ready()` every 10 ms and sends SIGKILL the moment it is true: no handler, no `finally`, no
flush runs in the killed process, as after an OOM kill or a pulled plug (minus the page cache).
It fails if the process ended on its own before that, so a test cannot pass by never killing.
`complete_lines(path)` is the usual `ready` of a stage that appends records: how many
newline-terminated lines a file has; `checkpoint_saved(folder)` that of a Trainer run.
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

# One thread per process: the machine is shared, and float reductions then run in one fixed
# order in every process, so a resumed run can be compared bit for bit with an uninterrupted one.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip


def hiprm_cmd(*args: str) -> list[str]:
    """`hiprm ARGS...` run by this interpreter (the venv's), as a user would type it."""
    return [sys.executable, "-m", "hiprm.cli", *args]


def run_to_end(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `cmd` to completion; a failure shows the end of its stderr."""
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd[3:5])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def kill_when(cmd: list[str], ready: Callable[[], bool], log: Path, timeout: float = 120) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds; its stderr goes to `log`."""
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if proc.poll() is not None:
                    raise AssertionError(f"the process ended ({proc.returncode}) before it could be killed:\n"
                                         f"{log.read_text(errors='replace')[-3000:]}")  # fmt: skip
                if time.monotonic() > deadline:
                    raise AssertionError(f"not ready after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")
                time.sleep(0.01)
            still_running = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert still_running, f"the process finished before the kill:\n{log.read_text(errors='replace')[-3000:]}"
    assert proc.returncode == -signal.SIGKILL


def complete_lines(path: Path) -> int:
    """Newline-terminated lines of `path` (0 if it does not exist yet)."""
    try:
        return Path(path).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def checkpoint_saved(checkpoint: Path) -> Callable[[], bool]:
    """True once Trainer has written the checkpoint's trainer_state.json, its last file, whole
    (it exists a moment before its text is in it)."""

    def ready() -> bool:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return True
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    return ready
