"""Files on disk: JSONL reading with errors that name file:line:field, atomic writes, run dirs.

Stages talk to each other only through files. This module is the one place that reads and
writes them:

- `read_jsonl(path)` yields `(line_number, object)` and raises `DataError("file:line: ...")` on
  bad bytes or bad JSON; `skip_bad=True` collects those problems in a `SkipLog` instead.
- `atomic_write(path)` / `write_jsonl(path, rows)` write to a temporary file in the same
  folder and rename it into place, so an interrupted or failed job never leaves a partial file.
- `prepare_out_dir(path)` creates a stage's output folder up front, so a path that is a file
  or cannot be created is a one-line `StageError` naming it before any work.
- `output_lock(path)` / `@locked(...)`: one writer per output. A runner holds an exclusive OS
  lock (`flock`) on `.NAME.lock` beside its output while it runs; a second run on the same output
  is refused with a StageError naming the output and the holder's PID. The kernel drops the lock
  when the holder dies, so a `kill -9` never leaves a stale one.
- `write_files({path: bytes})` writes several outputs all or none (a full disk leaves the old ones).
- `write_meta(dir, ...)` records the resolved config, package version, git sha, config hash
  and input sha256s in `meta.json`, so any artifact can be traced and any stage rerun alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# orjson parses and writes JSONL several times faster than the standard library, which is what
# keeps building the 74k-example HRM set (110 MB) within a few seconds.
import orjson


class DataError(ValueError):
    """Bad input. The message starts with `file:line:` (line omitted when it does not apply)."""

    def __init__(self, path: str | Path, message: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"field '{field}': {message}" if field else message
        super().__init__(f"{where}: {what}")


class StageError(RuntimeError):
    """A job stopped for a reason outside its input (a server that keeps failing, say). The
    message names what failed and where; the CLI prints it as one line and exits 2."""


@dataclass
class SkipLog:
    """Lines skipped under `--skip-bad`: how many, and why (reason -> count, first examples)."""

    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, err: DataError) -> None:
        reason = f"field '{err.field}'" if err.field else str(err).split(": ", 1)[-1][:80]
        self.reasons[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(str(err))

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        if not self.count:
            return "skipped 0 bad lines"
        why = ", ".join(f"{n} x {r}" for r, n in self.reasons.most_common())
        return f"skipped {self.count} bad lines ({why}); first: {self.examples[0]}"


def check_input_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(p, "no such file")
    if p.is_dir():
        raise DataError(p, "is a directory, expected a file")
    if not p.is_file():  # a named pipe or a device: reading it could block forever
        raise DataError(p, "not a regular file")
    return p


def read_text(path: str | Path) -> str:
    """Whole file as UTF-8; bad bytes raise a DataError naming the line they are on."""
    p = check_input_file(path)
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(p, f"not valid UTF-8 (byte {e.start})", line=line) from None


def read_jsonl(path: str | Path, skip_bad: SkipLog | None = None) -> Iterator[tuple[int, Any]]:
    """Yield `(line_number, parsed_object)` for each non-blank line of a JSONL file.

    Bad UTF-8 or bad JSON raises `DataError` naming file and line, unless `skip_bad` is given,
    in which case the line is recorded there and skipped.
    """
    p = check_input_file(path)
    with p.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(p, f"not valid UTF-8 (column {e.start + 1})", line=lineno) from None
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError as e:
                    raise DataError(p, f"invalid JSON: {e.msg} (column {e.colno})", line=lineno) from None
            except DataError as err:
                if skip_bad is None:
                    raise
                skip_bad.add(err)
                continue
            yield lineno, obj


def read_json(path: str | Path) -> Any:
    p = check_input_file(path)
    text = read_text(p)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(p, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from None


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; rename it over `path` only if the block succeeds."""
    with _staged(Path(path), mode, publish=True) as (f, _):
        yield f


@contextlib.contextmanager
def _staged(path: Path, mode: str, publish: bool) -> Iterator[tuple[Any, str]]:
    """A temporary file beside `path` (the same folder, so a rename is atomic), yielded with its
    name. When the block succeeds it is flushed, fsynced, made 0644 and, with `publish`, renamed
    over `path`; when anything fails it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; artifacts are meant to be shared like any other output.
        os.chmod(tmp, 0o644)
        if publish:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# --- one writer per output -----------------------------------------------------------------

_HELD: dict[str, list[int]] = {}  # lock file -> [fd, depth] of the locks this process holds


def lock_file_for(path: str | Path) -> Path:
    """Where the lock of output `path` (a file or a folder) lives: `.NAME.lock` beside it, with
    symbolic links resolved, so two spellings of one output share a lock, and a folder that a
    run replaces whole (`data build`) keeps its lock.

    >>> lock_file_for("/tmp/runs/annotate").as_posix()
    '/tmp/runs/.annotate.lock'
    """
    p = Path(os.path.realpath(path))
    return p.parent / f".{p.name}.lock"


def _launch_rank() -> int:
    """This process's rank under `accelerate launch` / torchrun (0 alone): only rank 0 locks, the
    other ranks of the same run write where rank 0 tells them."""
    for var in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


@contextlib.contextmanager
def output_lock(path: str | Path | None) -> Iterator[None]:
    """Hold an exclusive lock on output `path` for the block; another process holding it is a
    StageError: `OUT: another hiprm run (PID N) is writing this output; ...`.

    The lock is `flock` on `lock_file_for(path)`, which holds the holder's PID. The kernel
    releases it when the holder exits or is killed, so no stale lock survives a `kill -9` (the
    file may stay; the next run takes it over); a run that ends removes it. Re-entrant
    within a process (the quickstart's stages run inside its own lock). On a filesystem without
    locks (some NFS, Lustre and FUSE mounts) a warning says that nothing stops a second writer,
    and the run goes on. An empty `path` (a config the runner will refuse) locks nothing.
    """
    if not path or _launch_rank() != 0:
        yield
        return
    lock = lock_file_for(path)
    key = str(lock)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    made = [d for d in (lock.parent, *lock.parent.parents) if not os.path.lexists(d)]  # deepest first
    try:
        fd = _acquire(lock, path)
        if fd is None:  # a filesystem without locks: warned
            yield
            return
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
            with contextlib.suppress(OSError):
                os.unlink(lock)  # while still held: a run waiting on this file sees it replaced and retries
            os.close(fd)  # releases the lock
    finally:
        for d in made:  # folders made for the lock and left empty by a failed run go again
            try:
                os.rmdir(d)
            except OSError:
                break


def _acquire(lock: Path, path: str | Path) -> int | None:
    """The fd of `lock`, flocked by this process; StageError if another process holds it; None
    where the filesystem has no locks. A holder unlinks the file as it lets go, so a lock taken
    on a file that is no longer at `lock` (or was replaced there) is dropped and taken again."""
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except (FileExistsError, NotADirectoryError):
            blocker = next((d for d in (lock.parent, *lock.parent.parents) if os.path.lexists(d) and not d.is_dir()),
                           lock.parent)  # fmt: skip
            raise StageError(f"{path}: {blocker} is in the way: a file or a broken link, not a folder") from None
        except OSError as e:
            raise StageError(f"{path}: cannot create the output's lock file {lock}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):  # ENOLCK, EOPNOTSUPP, ENOSYS: no locks here
                logging.getLogger(__name__).warning(
                    "%s: this filesystem does not support file locks (%s); nothing stops a second run "
                    "from writing the same output", lock, e.strerror or e)
                os.close(fd)
                return None
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StageError(f"{path}: another hiprm run (PID {holder}) is writing this output; wait for it "
                             f"to finish or choose another output") from None  # fmt: skip
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only the PID is not shown
            pass
        return fd


def locked(output_of: Callable[[Any], str | Path | None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a runner `run(cfg, ...)` so that it runs under `output_lock(output_of(cfg))`.

        @locked(lambda cfg: cfg.out_dir)
        def run(cfg: AnnotateConfig) -> Path: ...

    A run that fails on an output folder it created leaves no empty folder behind (a bad input,
    a full disk): either the previous output is there, or nothing.
    """

    def wrap(run: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(run)
        def run_locked(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            out = output_of(cfg)
            existed = bool(out) and os.path.lexists(out)
            with output_lock(out):
                try:
                    return run(cfg, *args, **kwargs)
                except BaseException:
                    if out and not existed and _launch_rank() == 0:
                        with contextlib.suppress(OSError):
                            os.rmdir(out)  # only if empty
                    raise

        return run_locked

    return wrap


def prepare_out_dir(path: str | Path) -> Path:
    """Create the output folder `path` (and its parents) if needed and return it, checked.

    What would otherwise surface as a traceback after the work is done (a file of that name, a
    parent that is a file, a place where nothing can be created such as /proc, no write
    permission) is a StageError naming the path, raised before the work starts.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise StageError(f"{p}: is a file, expected an output folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StageError(f"{p}: cannot create the output folder: {e.strerror or e}") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise StageError(f"{p}: the output folder is not writable")
    try:  # root passes os.access everywhere; /proc or a read-only mount only fail a real write
        with tempfile.NamedTemporaryFile(dir=p, prefix=".hiprm-probe-"):
            pass
    except OSError as e:
        raise StageError(f"{p}: cannot write in the output folder: {e.strerror or e}") from None
    return p


def check_output_file(path: str | Path, key: str) -> Path:
    """`path` as the Path of an output file, or ConfigError when a folder is there."""
    from hiprm.config import ConfigError

    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{key}: {p} is a folder; give the path of a file")
    return p


def write_files(contents: dict[Path, bytes]) -> None:
    """Write several files all or none: each goes to a temporary beside it first, and only when
    every one is written (and fsynced) are they renamed into place. A full disk or a bad folder
    leaves the previous files as they were and no temporary behind."""
    staged: list[str] = []
    try:
        for path, data in contents.items():
            with _staged(path, "wb", publish=False) as (f, tmp):
                f.write(data)
            staged.append(tmp)
    except BaseException:
        for tmp in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    for tmp, path in zip(staged, contents, strict=True):
        os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    """Write rows (dicts or objects with `to_dict`) atomically; returns the count written."""
    n = 0
    with atomic_write(path, "wb") as f:
        for row in rows:
            d = row.to_dict() if hasattr(row, "to_dict") else row
            f.write(orjson.dumps(d, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY))
            n += 1
    return n


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one line and flush it (metrics, resumable sample logs). A first line that cannot
    be written (a full disk) leaves no empty file; a torn later one is `read_appended`'s to cut."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    new = not p.exists()
    try:
        with p.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
    except OSError:
        if new:
            with contextlib.suppress(OSError):
                p.unlink()
        raise


def read_appended(path: str | Path) -> list[Any]:
    """Records of an append-only JSONL file (a resumable stage's output), with one torn-tail rule.

    A job killed mid-write leaves at most its last line incomplete. That line has no newline
    after it: if it does not parse it is cut off (its record is redone); if it parses (the kill
    came between the record and its newline) the newline is added, so the next append cannot
    glue two records together. A bad line anywhere else is an error, never skipped.
    """
    import logging

    p = Path(path)
    if not p.is_file():
        return []
    data = p.read_bytes()
    lines = data.split(b"\n")
    out = []
    for k, raw in enumerate(lines):
        if not raw.strip():
            continue
        last = k == len(lines) - 1  # no newline after it
        try:
            out.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            if last:
                logging.getLogger(__name__).warning(
                    "%s:%d: dropping a partly written last line; its record is redone", p, k + 1
                )
                with atomic_write(p, "wb") as f:
                    f.write(b"\n".join(lines[:k]) + (b"\n" if k else b""))
                break
            raise DataError(
                p, "invalid JSON (not the last line, so not an interrupted write)", line=k + 1
            ) from None
        if last:
            with p.open("ab") as f:
                f.write(b"\n")
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity_diff(old: dict[str, Any], new: dict[str, Any], operational: Iterable[str] = ()) -> list[str]:
    """The fields (dotted) in which two run configs differ, less the `operational` ones.

    >>> identity_diff({"model": "a", "io": {"batch": 8}}, {"model": "b", "io": {"batch": 16}}, ["io.batch"])
    ["model: 'a' -> 'b'"]
    """
    skip = set(operational)
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in skip and a.get(k) != b.get(k)]  # fmt: skip


def check_resumable(
    run_dir: str | Path,
    config: dict[str, Any],
    output: str,
    operational: Iterable[str] = (),
    inputs: Iterable[str | Path] = (),
) -> None:
    """Refuse to resume `run_dir/output` when the run that wrote it had another identity.

    The identity is the resolved config (less the `operational` keys, which change speed, not
    results, e.g. batch sizes) and the sha256 of every input file. Raises ConfigError naming
    each field that changed; a folder without `output` starts fresh. A meta.json left by a
    start that failed before writing any record does not block a corrected rerun.
    """
    from hiprm.config import ConfigError

    d = Path(run_dir)
    meta_path = d / "meta.json"
    out = d / output
    if not meta_path.is_file() or not out.is_file() or out.stat().st_size == 0:
        return
    meta = read_json(meta_path)
    diff = identity_diff(meta.get("config", {}), config, operational)
    old_inputs = meta.get("inputs", {})
    for p in inputs:
        if Path(p).is_file() and str(p) in old_inputs and old_inputs[str(p)] != sha256_file(p):
            diff.append(f"input {p}: contents changed since the run started")
    if diff:
        raise ConfigError(
            f"{d} holds a run with another identity ({'; '.join(diff)}); use a new out_dir or the old settings"
        )


def start_or_resume(
    run_dir: str | Path,
    output: str,
    config: dict[str, Any],
    ids: Iterable[str],
    id_field: str = "problem_id",
    operational: Iterable[str] = (),
    inputs: Iterable[str | Path] = (),
    **meta: Any,
) -> set[str]:
    """The resume step of every append-only stage: refuse a folder that holds another run
    (`check_resumable`), record this run's `meta.json`, and return the ids whose record is
    already in `run_dir/output` (read with the torn-tail rule), so the caller does the rest."""
    import logging

    d = prepare_out_dir(run_dir)
    inputs = list(inputs)
    check_resumable(d, config, output, operational, inputs=inputs)
    done = {r[id_field] for r in read_appended(d / output)}
    write_meta(d, config, inputs=inputs, **meta)
    ids = list(ids)
    left = sum(1 for i in ids if i not in done)
    logging.getLogger(__name__).info(
        "%d items, %d already done, %d to go -> %s", len(ids), len(ids) - left, left, d / output
    )
    return done


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_fingerprint(path: str | Path) -> str:
    """What identifies a model folder's weights: a hash of each config / weight file's name,
    size and first and last MiB, so a model retrained at the same path differs (reading whole
    multi-GB files at every start would cost more than the check is worth). "" if `path` is not
    a folder (a served or hub model is identified by its name). A scorer spec's options
    (`FOLDER?format=tag`, `hiprm.rm.formats`) are not part of the folder's name."""
    folder = Path(str(path).partition("?")[0]).expanduser()
    if not folder.is_dir():
        return ""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), 2)
                    h.update(fh.read())
    return h.hexdigest()[:16]


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hiprm")
    except PackageNotFoundError:
        return "0+unknown"


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def write_meta(
    out_dir: str | Path,
    config: dict[str, Any],
    inputs: Iterable[str | Path] = (),
    **extra: Any,
) -> Path:
    """Write `meta.json` (and `config.yaml`) describing how the artifacts in `out_dir` were made."""
    import yaml

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    meta = {
        "package": "hiprm",
        "version": package_version(),
        "git_sha": git_sha(),
        "config": config,
        "config_hash": config_hash(config),
        "inputs": {str(p): sha256_file(p) for p in inputs if Path(p).is_file()},
        **extra,
    }
    write_json(d / "meta.json", meta)
    with atomic_write(d / "config.yaml") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    return d / "meta.json"
