"""Where the per-problem work of `annotate` and `eval` runs: in this process, in threads, or on Ray.

    for result in map_unordered(work, items, executor="ray", ray_address="auto"):
        append(result)

`work(item) -> result` is a module-level function (so Ray can ship it) that does one unit (a
problem, or a chunk of problems) and returns a JSON-able record; `map_unordered` yields the
records as units finish, in any order. The caller appends each record to its output file the
moment it arrives, so a unit is written once, when it is complete, whichever worker did it:

- `local`: one unit after another in this process;
- `threads`: `workers` units at once in this process (for policies behind a server, where the
  waiting is on HTTP);
- `ray`: one Ray task per unit on a Ray cluster (`ray_address`; empty = start a local Ray with
  the dashboard and usage statistics off). A worker that dies mid-unit (killed, OOM, node lost)
  has its task retried by Ray (`max_retries`), and the unit is still written once. Ray is an
  optional extra (`pip install 'hiprm[ray]'`) imported only here and only for `ray`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

EXECUTORS = ("local", "threads", "ray")


def map_unordered(
    work: Callable[[Any], Any],
    items: Iterable[Any],
    executor: str = "local",
    workers: int = 4,
    ray_address: str = "",
    max_retries: int = 3,
) -> Iterator[Any]:
    if executor == "local":
        for item in items:
            yield work(item)
    elif executor == "threads":
        yield from _threads(work, list(items), max(1, workers))
    elif executor == "ray":
        yield from _ray(work, list(items), ray_address, max_retries, max(1, workers))
    else:
        raise ValueError(f"executor {executor!r} is not one of {list(EXECUTORS)}")


def _threads(work: Callable[[Any], Any], items: list[Any], workers: int) -> Iterator[Any]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = set()
        queue = iter(items)
        for item in queue:
            pending.add(pool.submit(work, item))
            if len(pending) >= workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(work, nxt))


def ray_init(address: str = "", num_cpus: int | None = None) -> Any:
    """Connect to a Ray cluster (or start a local one) once per process."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("executor=ray needs Ray: pip install 'hiprm[ray]' (ray==2.60.*)") from None
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs: dict[str, Any] = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    return ray


def _ray(
    work: Callable[[Any], Any], items: list[Any], address: str, max_retries: int, workers: int
) -> Iterator[Any]:
    ray = ray_init(address, num_cpus=workers if not address else None)
    task = ray.remote(max_retries=max_retries, retry_exceptions=False)(work)
    pending = [task.remote(item) for item in items]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            try:
                yield ray.get(ref)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.OutOfMemoryError) as e:  # fmt: skip
                from hiprm.artifacts import StageError

                raise StageError(f"a Ray worker died {max_retries + 1} times on one unit of work ({type(e).__name__}); "
                                 "finished units are kept: rerun to resume") from None  # fmt: skip
