"""The server's one scoring worker: concurrent requests gathered into few scorer calls.

Each request's items (solutions, token-id inputs) and its token count go on an asyncio queue
(`Batcher.submit`). The worker takes the first waiting request, keeps collecting for up to
`window_s` or until `max_batch` items or `max_tokens` tokens, and runs `run_items` on all of
them in one worker thread (the event loop keeps accepting requests meanwhile). A request never
waits on more than one call of `max_tokens` ahead of it; a request larger than `max_tokens`
runs alone.

A call that raises is retried request by request, so only the request it fails on gets the
error and the others still get their results (an item that crashes the tokenizer or the model
cannot fail whoever shared its batch). `running_s()` says how long the call in progress has run,
for /health.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hiprm.rm.scorer import StepScorer, score_solutions

log = logging.getLogger(__name__)

Job = tuple[list[tuple[str, Any]], int, asyncio.Future]  # (tagged items, tokens, the request's result)


def run_items(scorer: Any, flat: list[tuple[str, Any]]) -> list[Any]:
    """Score a batch of tagged items in as few scorer calls as there are tags:
    ("rewards", (question, steps)) -> one reward per step (`score_solutions`);
    ("steps", (question, steps)) -> (logits per step, tokens) (`solution_logits`);
    ("ids", token ids) -> one row of logits (`logits`)."""
    out: list[Any] = [None] * len(flat)
    for tag in ("rewards", "steps", "ids"):
        where = [k for k, (t, _) in enumerate(flat) if t == tag]
        if not where:
            continue
        items = [flat[k][1] for k in where]
        if tag == "rewards":
            results: list[Any] = [list(map(float, r)) for r in score_solutions(scorer, items)]
        elif tag == "steps":
            rows, tokens = scorer.solution_logits(items)
            results = list(zip(rows, tokens, strict=True))
        else:
            results = scorer.logits(items)
        for k, r in zip(where, results, strict=True):
            out[k] = r
    return out


class Batcher:
    """Queue + one worker: gathers concurrent requests into one scorer call per kind of item."""

    def __init__(self, scorer: StepScorer, window_s: float, max_batch: int, max_tokens: int = 1 << 62):
        self.scorer = scorer
        self.window_s = window_s
        self.max_batch = max(1, max_batch)
        self.max_tokens = max(1, max_tokens)
        self.queue: asyncio.Queue[Job] | None = None
        self.task: asyncio.Task | None = None
        # One thread: the model is not called concurrently, and it keeps torch's threads busy.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hiprm-score")
        self.batches = 0
        self.items = 0
        self.max_items_per_batch = 0
        self.max_requests_per_batch = 0
        self.max_tokens_per_batch = 0
        self.call_started: float | None = None  # time.monotonic() when the call in progress began

    def start(self) -> None:
        if self.task is None or self.task.done():
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        self.executor.shutdown(wait=False, cancel_futures=True)

    def running_s(self) -> float:
        """Seconds the scorer call in progress has run; 0.0 when the worker is idle."""
        started = self.call_started
        return 0.0 if started is None else time.monotonic() - started

    async def submit(self, items: list[tuple[str, Any]], tokens: int = 0) -> list[Any]:
        self.start()  # lazily, for ASGI transports that skip the lifespan
        assert self.queue is not None
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((items, tokens, fut))
        return await fut

    async def _collect(self, first: Job) -> tuple[list[Job], Job | None]:
        """Jobs for one call, and a job that did not fit (carried to the next call) or None."""
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        jobs, n, tokens = [first], len(first[0]), first[1]
        deadline = loop.time() + self.window_s
        while n < self.max_batch and tokens < self.max_tokens:
            left = deadline - loop.time()
            if left <= 0:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
            else:
                # Not asyncio.wait_for: on Python 3.11 it can drop a result that arrives just as
                # the timeout fires, which would leave that request waiting forever.
                getter = asyncio.ensure_future(self.queue.get())
                await asyncio.wait({getter}, timeout=left)
                if not getter.done():
                    getter.cancel()
                try:
                    job = await getter
                except asyncio.CancelledError:
                    if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise  # the worker itself is being stopped
                    break
            if n + len(job[0]) > self.max_batch or tokens + job[1] > self.max_tokens:
                return jobs, job
            jobs.append(job)
            n += len(job[0])
            tokens += job[1]
        return jobs, None

    async def _call(self, flat: list[tuple[str, Any]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        self.call_started = time.monotonic()
        try:
            return await loop.run_in_executor(self.executor, run_items, self.scorer, flat)
        finally:
            self.call_started = None

    async def _work(self) -> None:
        assert self.queue is not None
        carry = None
        while True:
            first = carry if carry is not None else await self.queue.get()
            jobs, carry = await self._collect(first)
            jobs = [j for j in jobs if not j[2].done()]  # clients that went away
            flat = [it for items, _, _ in jobs for it in items]
            if not flat:
                for _, _, fut in jobs:
                    fut.set_result([])
                continue
            self.batches += 1
            self.items += len(flat)
            self.max_items_per_batch = max(self.max_items_per_batch, len(flat))
            self.max_requests_per_batch = max(self.max_requests_per_batch, len(jobs))
            self.max_tokens_per_batch = max(self.max_tokens_per_batch, sum(t for _, t, _ in jobs))
            try:
                results = await self._call(flat)
            except Exception as e:  # noqa: BLE001 - isolated below, then reported to the client
                if len(jobs) == 1:
                    self._fail(jobs[0], e)
                    continue
                log.warning("scorer failed on a batch of %d requests (%s: %s); retrying them one by one",
                            len(jobs), type(e).__name__, e)  # fmt: skip
                await self._one_by_one(jobs)
                continue
            k = 0
            for items, _, fut in jobs:
                if not fut.done():
                    fut.set_result(results[k : k + len(items)])
                k += len(items)

    async def _one_by_one(self, jobs: list[Job]) -> None:
        for job in jobs:
            items, _, fut = job
            if fut.done():
                continue
            try:
                result = await self._call(items)
            except Exception as e:  # noqa: BLE001 - this request's own failure
                self._fail(job, e)
            else:
                if not fut.done():
                    fut.set_result(result)

    @staticmethod
    def _fail(job: Job, e: Exception) -> None:
        log.error("scorer failed on a request of %d items", len(job[0]), exc_info=e)
        if not job[2].done():
            job[2].set_exception(e)
