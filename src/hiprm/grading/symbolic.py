"""Symbolic answer equality (math-verify / sympy) under a hard wall-clock limit.

Input: two `clean`ed LaTeX answers and a time limit in seconds; output: True, False, or None
when the limit was hit. Parsing and comparing run in one long-lived child process, talking JSON
lines over its stdin/stdout. A signal alarm cannot stop sympy inside a single C-level big-integer
operation ("10^{10^{10}}") and only works in the main thread, so on overrun the child is killed
and a new one started on the next call. This works from any thread (calls are serialised by a
lock) and in forked or daemonic pool workers (each process starts its own child). The child
caps its address space so a runaway expression fails fast instead of swapping. Answers that are
obviously too costly (power towers, giant exponents or factorials, very long strings) skip the
symbolic step altogether. Text is only ever parsed as LaTeX, never evaluated as code.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_SYMBOLIC_CHARS = 600
_STARTUP_SECONDS = 120.0  # importing sympy + antlr on a loaded 2-core machine can be slow
_CHILD_MEMORY_BYTES = 3 * 1024**3
# Power towers ("a^{b^{c}}", "9^9^9"), exponents of 6+ digits, factorials of 5+ digits or of
# a power ("(10^{10})!"), Knuth arrows.
_COSTLY = re.compile(
    r"\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\^\s*\{?\s*\d{6,}|\d{5,}\s*!|\^\s*\{?\s*\d+\s*\}?\s*[)}]\s*!|\\uparrow"
)
_WORKER_SOURCE = "from hiprm.grading.symbolic import serve; serve()"


def too_costly(answer: str) -> bool:
    """True for answers whose symbolic evaluation could explode; they are compared as strings."""
    return len(answer) > MAX_SYMBOLIC_CHARS or _COSTLY.search(answer) is not None


def symbolic_equal(pred: str, ref: str, timeout: float) -> bool | None:
    """math-verify equality of two cleaned answers; None if it did not finish in `timeout` s."""
    if timeout <= 0 or too_costly(pred) or too_costly(ref):
        return None
    return _worker().check(pred, ref, timeout)


class _Worker:
    """Owner of the child process; restarts it after a timeout or crash."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._lock = threading.Lock()

    def check(self, pred: str, ref: str, timeout: float) -> bool | None:
        with self._lock:
            try:
                self._ensure_started()
                request = {"pred": pred, "ref": ref, "soft": max(1, int(timeout / 2))}
                self._proc.stdin.write((json.dumps(request) + "\n").encode())
                self._proc.stdin.flush()
                line = self._read_line(time.monotonic() + timeout)
            except (OSError, ValueError, RuntimeError) as error:
                logger.warning("symbolic worker failed (%s); restarting it", error)
                self.stop()
                return None
            if line is None:
                logger.info("symbolic check over %.1fs; killing the worker", timeout)
                self.stop()
                return None
            return bool(json.loads(line)["equal"])

    def stop(self) -> None:
        proc, self._proc, self._buffer = self._proc, None, b""
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _ensure_started(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        src_dir = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_dir, env.get("PYTHONPATH")) if p)
        self._buffer = b""
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        if self._read_line(time.monotonic() + _STARTUP_SECONDS) != "ready":
            self.stop()
            raise RuntimeError("symbolic worker did not start")

    def _read_line(self, deadline: float) -> str | None:
        """One line from the child, or None at the deadline; raises if the child died."""
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError("symbolic worker exited")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


_WORKERS: dict[int, _Worker] = {}
_WORKERS_LOCK = threading.Lock()


def _worker() -> _Worker:
    # Keyed by pid: a forked process must not share its parent's child or pipes.
    with _WORKERS_LOCK:
        pid = os.getpid()
        if pid not in _WORKERS:
            _WORKERS[pid] = _Worker()
        return _WORKERS[pid]


@atexit.register
def shutdown() -> None:
    """Stop this process's symbolic worker (also done at interpreter exit)."""
    worker = _WORKERS.get(os.getpid())
    if worker is not None:
        worker.stop()


# --- child side ----------------------------------------------------------------------------


def serve() -> None:
    """Child main loop: read {"pred", "ref", "soft"} lines, answer {"equal": bool} lines."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the protocol
    _limit_memory()
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from math_verify import LatexExtractionConfig, parse
    from math_verify.errors import TimeoutException

    # Warm the parser caches; also shows math-verify's one-off "timeout disabled" warning, muted.
    parse("$1$", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)
    protocol.write(b"ready\n")
    for line in sys.stdin.buffer:
        request = json.loads(line)
        try:
            equal = _verify(request["pred"], request["ref"], int(request["soft"]))
        except (Exception, TimeoutException):  # MemoryError and RecursionError are Exceptions too
            equal = False
        protocol.write((json.dumps({"equal": equal}) + "\n").encode())


def _verify(pred: str, ref: str, soft_timeout: int) -> bool:
    """math-verify comparison; gold = ref. The soft alarm keeps the child alive on slow sympy calls."""
    from math_verify import LatexExtractionConfig, parse, verify

    # LaTeX extraction only: math-verify's plain-expression mode goes through sympy's
    # parse_expr, which eval()s its input, and answers must never run as code.
    latex_only = [LatexExtractionConfig()]
    gold = parse(f"${ref}$", extraction_config=latex_only, parsing_timeout=soft_timeout)
    target = parse(f"${pred}$", extraction_config=latex_only, parsing_timeout=soft_timeout)
    if not gold or not target:
        return False
    gold, target = _unify_symbols(gold, target)
    return verify(gold, target, timeout_seconds=soft_timeout)


def _unify_symbols(gold: list, target: list) -> tuple[list, list]:
    """Give same-named symbols the same assumptions on both sides.

    latex2sympy marks "i" real in "1+5i" but not in "\\frac{5}{13}i", and sympy then treats
    the two as different symbols, so "-\\frac{1+5i}{13}" would not equal "-\\frac{1}{13}-\\frac{5}{13}i".
    """
    from sympy import Basic, Symbol

    exprs = [e for e in (*gold, *target) if isinstance(e, Basic)]
    symbols = set().union(*(e.free_symbols for e in exprs)) if exprs else set()
    names = [s.name for s in symbols if isinstance(s, Symbol)]
    clashing = {n for n in names if names.count(n) > 1}
    if not clashing:
        return gold, target
    mapping = {s: Symbol(s.name) for s in symbols if isinstance(s, Symbol) and s.name in clashing}

    def plain(items: list) -> list:
        return [e.xreplace(mapping) if isinstance(e, Basic) else e for e in items]

    return plain(gold), plain(target)


def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (_CHILD_MEMORY_BYTES, _CHILD_MEMORY_BYTES))
    except (ImportError, ValueError, OSError):  # not POSIX, or a lower hard limit already set
        pass
