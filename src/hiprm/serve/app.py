"""HTTP server around a reward model: `POST /v1/score`, `GET /health`, and vLLM's pooling API
(`POST /classify`, `POST /pooling`, `GET /v1/models`); shapes in protocol.py.

Command: `hiprm serve --model runs/rm/hrm/model [--port 8000] [configs/serve.yaml]`

Concurrent requests are scored together: each request's solutions go on an asyncio queue, and a
single worker takes the first waiting request, keeps collecting for up to `batch_window_ms` or
until `max_batch` solutions, and runs `scorer.score_batch` on all of them in a worker thread (the
event loop keeps accepting requests meanwhile). The scorer then sorts and packs the steps by
length, so many small requests cost about as much as one large one.

`create_app(scorer, cfg)` builds the app around any `StepScorer` (a fake one in tests), so the
HTTP layer is tested without a model or a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from hiprm.rm.scorer import StepScorer, reward_from_logits, score_many
from hiprm.serve.protocol import (
    ClassificationData,
    ClassificationResponse,
    ClassifyRequest,
    ErrorResponse,
    HealthResponse,
    Limits,
    ModelCard,
    ModelList,
    PoolingRequest,
    PoolingResponse,
    PoolingResponseData,
    RequestError,
    ScoreItem,
    ScoreResponse,
    SolutionInput,
    UsageInfo,
    parse_request,
    parse_vllm,
    request_inputs,
)

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    """`hiprm serve --model CKPT`: where to listen, how to batch, what a request may hold."""

    model: str = ""
    served_model_name: str = ""  # the name in /v1/models and responses (default: `model`), as vLLM's flag
    host: str = "127.0.0.1"
    port: int = 8000
    batch_window_ms: float = 5.0
    max_batch: int = 64  # solutions per scorer call
    max_items_per_request: int = 64
    max_steps_per_item: int = 128
    max_chars_per_step: int = 8_000
    max_chars_per_question: int = 8_000
    max_body_bytes: int = 4_000_000
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32
    max_tokens_per_batch: int = 16384
    log_level: str = "info"

    def limits(self) -> Limits:
        return Limits(self.max_body_bytes, self.max_items_per_request, self.max_steps_per_item,
                      self.max_chars_per_step, self.max_chars_per_question)


def run_items(scorer: Any, flat: list[tuple[str, Any]]) -> list[Any]:
    """Score a batch of tagged items in as few scorer calls as there are tags:
    ("rewards", (question, steps)) -> one reward per step (`score_batch`);
    ("steps", (question, steps)) -> (logits per step, tokens) (`solution_logits`);
    ("ids", token ids) -> one row of logits (`logits`)."""
    out: list[Any] = [None] * len(flat)
    for tag in ("rewards", "steps", "ids"):
        where = [k for k, (t, _) in enumerate(flat) if t == tag]
        if not where:
            continue
        items = [flat[k][1] for k in where]
        if tag == "rewards":
            results: list[Any] = [list(map(float, r)) for r in score_many(scorer, items)]
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

    def __init__(self, scorer: StepScorer, window_s: float, max_batch: int):
        self.scorer = scorer
        self.window_s = window_s
        self.max_batch = max(1, max_batch)
        self.queue: asyncio.Queue[tuple[list[tuple[str, list[str]]], asyncio.Future]] | None = None
        self.task: asyncio.Task | None = None
        # One thread: the model is not called concurrently, and it keeps torch's threads busy.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hiprm-score")
        self.batches = 0
        self.items = 0
        self.max_items_per_batch = 0
        self.max_requests_per_batch = 0

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

    async def submit(self, items: list[tuple[str, Any]]) -> list[Any]:
        self.start()  # lazily, for ASGI transports that skip the lifespan
        assert self.queue is not None
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((items, fut))
        return await fut

    async def _collect(self, first: tuple[Any, asyncio.Future]) -> tuple[list[tuple[Any, asyncio.Future]], Any]:
        """Jobs for one call, and a job that did not fit (carried to the next call) or None."""
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        jobs, n = [first], len(first[0])
        deadline = loop.time() + self.window_s
        while n < self.max_batch:
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
            if n + len(job[0]) > self.max_batch:
                return jobs, job
            jobs.append(job)
            n += len(job[0])
        return jobs, None

    async def _work(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            first = carry if carry is not None else await self.queue.get()
            jobs, carry = await self._collect(first)
            jobs = [j for j in jobs if not j[1].done()]  # clients that went away
            flat = [it for items, _ in jobs for it in items]
            if not flat:
                for _, fut in jobs:
                    fut.set_result([])
                continue
            self.batches += 1
            self.items += len(flat)
            self.max_items_per_batch = max(self.max_items_per_batch, len(flat))
            self.max_requests_per_batch = max(self.max_requests_per_batch, len(jobs))
            try:
                rewards = await loop.run_in_executor(self.executor, run_items, self.scorer, flat)
            except Exception as e:  # noqa: BLE001 - every waiting request gets the error as a 500
                log.exception("scorer failed on a batch of %d solutions", len(flat))
                for _, fut in jobs:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            k = 0
            for items, fut in jobs:
                if not fut.done():
                    fut.set_result(rewards[k : k + len(items)])
                k += len(items)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it passes `limit` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(scorer: StepScorer, cfg: ServeConfig | None = None, model_name: str = "", served_name: str = "",
               max_model_len: int = 8192, id2label: dict[int, str] | None = None) -> FastAPI:
    """The app around `scorer`. `/v1/score` needs only `score_batch`; the vLLM-style endpoints
    need the Scorer's `logits`, `solution_logits` and `encode_text` (hiprm.rm.scorer.Scorer)."""
    cfg = cfg or ServeConfig()
    started = int(time.time())
    limits = cfg.limits()
    batcher = Batcher(scorer, cfg.batch_window_ms / 1000.0, cfg.max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="hiprm reward model", lifespan=lifespan)
    app.state.batcher = batcher

    @app.post("/v1/score", response_model=ScoreResponse,
              responses={413: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 500: {"model": ErrorResponse}})
    async def score(request: Request) -> Any:
        try:
            items: list[ScoreItem] = parse_request(await _read_body(request, limits.max_body_bytes), limits)
        except RequestError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status)
        try:
            rewards = await batcher.submit([("rewards", (it.question, list(it.steps))) for it in items])
        except Exception as e:  # noqa: BLE001 - the scorer's failure, reported to the client
            return JSONResponse({"detail": f"scorer failed: {type(e).__name__}: {e}"}, status_code=500)
        return ScoreResponse(rewards=rewards)

    served = served_name or model_name
    labels = id2label or {0: "negative", 1: "positive"}

    def rows_out(logits: list[float], activation: bool | None) -> list[float]:
        if activation is False:
            return [float(x) for x in logits]
        p = reward_from_logits(logits)
        return [1.0 - p, p]

    async def vllm_call(request: Request, kind: type[ClassifyRequest]) -> Any:
        """Parse a /classify or /pooling body; returns (request, flat results) or a JSONResponse."""
        try:
            req = parse_vllm(await _read_body(request, limits.max_body_bytes), limits, kind)
        except RequestError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status)
        if req.model not in (None, "", served):
            return JSONResponse({"detail": f"model {req.model!r} is not served here (this server: {served!r})"},
                                status_code=404)  # fmt: skip
        if isinstance(req, PoolingRequest) and req.task not in (None, "token_classify"):
            return JSONResponse({"detail": f"task {req.task!r}: this server offers token_classify"}, status_code=422)
        items: list[tuple[str, Any]] = []
        for x in request_inputs(req):
            if isinstance(x, SolutionInput):
                items.append(("steps", (x.question, list(x.steps))))
            elif kind is PoolingRequest:
                return JSONResponse({"detail": "task token_classify needs hiprm's structured input "
                                               "{question, steps}: a formatted text does not say where steps end"},
                                    status_code=422)  # fmt: skip
            else:
                ids = scorer.encode_text(x) if isinstance(x, str) else list(x)  # type: ignore[attr-defined]
                if not ids or len(ids) > max_model_len:
                    return JSONResponse({"detail": f"input has {len(ids)} tokens; this model takes 1 to "
                                                   f"{max_model_len}"}, status_code=422)  # fmt: skip
                items.append(("ids", ids))
        try:
            return req, items, await batcher.submit(items)
        except Exception as e:  # noqa: BLE001 - the scorer's failure, reported to the client
            return JSONResponse({"detail": f"scorer failed: {type(e).__name__}: {e}"}, status_code=500)

    @app.post("/classify", response_model=ClassificationResponse)
    async def classify(request: Request) -> Any:
        got = await vllm_call(request, ClassifyRequest)
        if isinstance(got, JSONResponse):
            return got
        req, items, results = got
        data, tokens = [], 0
        for (tag, item), res in zip(items, results, strict=True):
            rows = res[0] if tag == "steps" else [res]
            tokens += res[1] if tag == "steps" else len(item)
            for row in rows:
                data.append(ClassificationData(index=len(data), label=labels[int(max(range(len(row)), key=row.__getitem__))],
                                               probs=rows_out(row, req.use_activation), num_classes=len(row)))  # fmt: skip
        return ClassificationResponse(id=f"classify-{uuid.uuid4().hex}", created=int(time.time()), model=served,
                                      data=data, usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens))  # fmt: skip

    @app.post("/pooling", response_model=PoolingResponse)
    async def pooling(request: Request) -> Any:
        got = await vllm_call(request, PoolingRequest)
        if isinstance(got, JSONResponse):
            return got
        req, items, results = got
        data = [PoolingResponseData(index=i, data=[rows_out(r, req.use_activation) for r in rows])
                for i, (rows, _) in enumerate(results)]  # fmt: skip
        tokens = sum(t for _, t in results)
        return PoolingResponse(id=f"pool-{uuid.uuid4().hex}", created=int(time.time()), model=served, data=data,
                               usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens))  # fmt: skip

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=served, created=started, root=model_name or served,
                                         max_model_len=max_model_len)])  # fmt: skip

    @app.get("/health", response_model=HealthResponse)
    async def health() -> HealthResponse:
        return HealthResponse(
            status="ok", model=model_name, batches=batcher.batches, items=batcher.items,
            max_items_per_batch=batcher.max_items_per_batch, max_requests_per_batch=batcher.max_requests_per_batch,
            queued=batcher.queue.qsize() if batcher.queue is not None else 0,
        )

    return app


def run(cfg: ServeConfig) -> None:
    import uvicorn

    from hiprm.config import ConfigError
    from hiprm.rm.scorer import Scorer

    if not cfg.model:
        raise ConfigError("model: required (hiprm serve --model CKPT)")
    scorer = Scorer.from_pretrained(cfg.model, cfg.device, cfg.dtype, cfg.batch_size, cfg.max_tokens_per_batch)
    mc = scorer.model.config
    app = create_app(scorer, cfg, model_name=cfg.model, served_name=cfg.served_model_name or cfg.model,
                     max_model_len=int(getattr(mc, "max_position_embeddings", 8192) or 8192),
                     id2label={int(k): v for k, v in (mc.id2label or {}).items()} or None)  # fmt: skip
    log.info("serving %s on http://%s:%d (POST /v1/score, /classify, /pooling; GET /v1/models, /health)",
             cfg.model, cfg.host, cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
