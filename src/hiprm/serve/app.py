"""HTTP server around a reward model: `POST /v1/score`, `GET /health`, and vLLM's pooling API
(`POST /classify`, `POST /pooling`, `GET /v1/models`); shapes in protocol.py.

Command: `hiprm serve --model runs/rm/hrm/model [--port 8000] [configs/serve.yaml]`

Each request is read (within `read_timeout_s`), parsed and validated alone, then measured in
tokens with the scorer's tokenizer in a thread of its own (`measure`: over the model's context or
`max_tokens_per_request` is a 422), and only then queued. Concurrent requests are scored together
by one worker (batcher.py): up to `max_batch` solutions and `max_tokens_per_call` tokens per
scorer call, a failing call retried request by request. The scorer then sorts and packs the
steps by length, so many small requests cost about as much as one large one.

`create_app(scorer, cfg)` builds the app around any `StepScorer` (a fake one in tests), so the
HTTP layer is tested without a model or a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from hiprm.rm.remote import load_scorer
from hiprm.rm.scorer import Scorer, ScorerSettings, StepScorer, reward_from_logits, solution_input_tokens
from hiprm.serve.batcher import Batcher
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
    check_tokens,
    parse_request,
    parse_vllm,
    request_inputs,
    safe_text,
)

log = logging.getLogger(__name__)


@dataclass
class ServeConfig(ScorerSettings, Limits):
    """`hiprm serve --model CKPT`: where to listen, how to batch, what a request may hold."""

    model: str = ""
    served_model_name: str = ""  # the name in /v1/models and responses (default: `model`), as vLLM's flag
    host: str = "127.0.0.1"
    port: int = 8000
    batch_window_ms: float = 5.0
    max_batch: int = 64  # solutions per scorer call
    max_tokens_per_call: int = 131_072  # tokens (as max_tokens_per_request counts them) per scorer call
    read_timeout_s: float = 30.0  # to receive a whole body; a stalled upload gets 408
    health_busy_after_s: float = 60.0  # /health says 503 "busy" while one scorer call runs longer
    keep_alive_s: int = 5  # uvicorn's timeout_keep_alive: an idle connection closes after it
    max_connections: int = 0  # uvicorn's limit_concurrency (503 beyond it); 0 = no limit
    log_level: str = "info"

    def limits(self) -> Limits:
        return Limits(**{f.name: getattr(self, f.name) for f in fields(Limits)})


def utf8_lengths(texts: list[str]) -> list[int]:
    return [len(t.encode("utf-8")) for t in texts]


@dataclass
class Counting:
    """How requests are measured before they are queued. `inputs`: tokens per input per solution
    (`Scorer.input_tokens`); `encode`: formatted texts -> the token ids the model gets (None: the
    scorer takes no texts); `vocab_size`: token ids must be below it (None: not checked)."""

    inputs: Callable[[list[tuple[str, list[str]]]], list[list[int]]]
    encode: Callable[[list[str]], list[list[int]]] | None = None
    vocab_size: int | None = None

    @classmethod
    def of(cls, scorer: Any) -> Counting:
        """A hiprm Scorer counts with its own tokenizer; any other scorer (a fake in tests) in UTF-8
        bytes, which bound the tokens of byte-level BPE and byte-fallback tokenizers from above."""
        if isinstance(scorer, Scorer):
            return cls(scorer.input_tokens, scorer.encode_texts, int(scorer.model.config.vocab_size))
        return cls(partial(solution_input_tokens, utf8_lengths))


def measure(items: list[tuple[str, Any]], where: list[str], counting: Counting, limits: Limits,
            max_model_len: int) -> tuple[list[tuple[str, Any]], int]:
    """A request's items ready to queue (a ("text", str) becomes ("ids", its token ids)) and its
    tokens, or RequestError(422): an input over the model's context, a token id outside the
    vocabulary, or more than max_tokens_per_request. `where[k]` names item k in messages."""
    out = list(items)
    sols = [k for k, (tag, _) in enumerate(items) if tag in ("rewards", "steps")]
    texts = [k for k, (tag, _) in enumerate(items) if tag == "text"]
    tokens: list[tuple[str, int]] = []
    if sols:
        for k, row in zip(sols, counting.inputs([items[k][1] for k in sols]), strict=True):
            tokens += [(f"{where[k]}.steps[{i}]", n) for i, n in enumerate(row)]
    if texts:
        if counting.encode is None:
            raise RequestError(422, "this server's scorer takes no formatted text; send {question, steps}")
        for k, ids in zip(texts, counting.encode([items[k][1] for k in texts]), strict=True):
            out[k] = ("ids", ids)
    vocab = counting.vocab_size
    for k, (tag, ids) in enumerate(out):
        if tag != "ids":
            continue
        if not ids:
            raise RequestError(422, f"{where[k]} has no tokens; an input needs at least one")
        if vocab is not None and (min(ids) < 0 or max(ids) >= vocab):
            raise RequestError(422, f"{where[k]}: token ids must be in [0, {vocab}); got one of {min(ids)}..{max(ids)}")
        tokens.append((where[k], len(ids)))
    return out, check_tokens(tokens, limits, max_model_len)


DRAIN_BYTES = 64 << 20  # of a body over the limit, read and dropped so that the client hears the 413


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, or RequestError: 413 past `limit` bytes, declared or streamed; 408 when it has
    not all arrived within `timeout_s`. A client that goes away mid-body is one log line.

    A body over the limit is still read (and dropped) up to DRAIN_BYTES more, within `timeout_s`:
    a server that answers and closes while the client is still sending makes the client's
    kernel see a reset, and most clients then report "connection reset" instead of the 413.
    Past that (or a declared length beyond it) the 413 is sent at once."""
    declared = request.headers.get("content-length")
    size_declared = int(declared) if declared is not None and declared.isdigit() else None
    too_large = RequestError(413, f"body is {size_declared if size_declared is not None else 'over'} bytes; "
                                  f"the limit is {limit}")  # fmt: skip
    if size_declared is not None and size_declared > limit + DRAIN_BYTES:
        raise too_large
    over = size_declared is not None and size_declared > limit
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit and not over:
                    over, chunks = True, []
                if over:
                    if size > limit + DRAIN_BYTES:
                        break
                    continue
                chunks.append(chunk)
    except TimeoutError:
        if over:
            raise too_large from None
        raise RequestError(408, f"the body did not arrive within read_timeout_s={timeout_s:g} s "
                                f"({size} bytes came)") from None  # fmt: skip
    except ClientDisconnect:
        if over:
            raise too_large from None
        client = f"{request.client.host}:{request.client.port}" if request.client else "a client"
        log.info("%s went away after sending %d bytes of its %s body", client, size, request.url.path)
        raise RequestError(400, "the client disconnected before sending its whole body") from None
    if over:
        raise too_large
    return b"".join(chunks)


def refuse(e: RequestError) -> JSONResponse:
    # The rest of a body we stopped reading may still be on the wire: close rather than keep alive.
    unread = e.status in (408, 413)
    return JSONResponse({"detail": e.message}, status_code=e.status, headers={"connection": "close"} if unread else None)


def scorer_failed(e: Exception) -> JSONResponse:
    return JSONResponse({"detail": safe_text(f"scorer failed: {type(e).__name__}: {e}")}, status_code=500)


def create_app(scorer: StepScorer, cfg: ServeConfig | None = None, model_name: str = "", served_name: str = "",
               max_model_len: int = 8192, id2label: dict[int, str] | None = None) -> FastAPI:
    """The app around `scorer`. `/v1/score` needs only `score_inputs`; the vLLM-style endpoints
    need the Scorer's `logits`, `solution_logits` and `encode_texts` (hiprm.rm.scorer.Scorer)."""
    cfg = cfg or ServeConfig()
    started = int(time.time())
    limits = cfg.limits()
    batcher = Batcher(scorer, cfg.batch_window_ms / 1000.0, cfg.max_batch, cfg.max_tokens_per_call)
    counting = Counting.of(scorer)
    # Its own thread: tokenizing a large request must neither block the event loop nor wait
    # behind the scorer call in progress.
    count_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hiprm-count")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()
        count_executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="hiprm reward model", lifespan=lifespan)
    app.state.batcher = batcher

    async def measured(items: list[tuple[str, Any]], where: list[str]) -> tuple[list[tuple[str, Any]], int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(count_executor, measure, items, where, counting, limits, max_model_len)

    async def body_of(request: Request) -> bytes:
        return await read_body(request, limits.max_body_bytes, cfg.read_timeout_s)

    errors = {s: {"model": ErrorResponse} for s in (408, 413, 422, 500)}

    @app.post("/v1/score", response_model=ScoreResponse, responses=errors)  # type: ignore[arg-type]
    async def score(request: Request) -> Any:
        try:
            items: list[ScoreItem] = parse_request(await body_of(request), limits)
            flat, tokens = await measured([("rewards", (it.question, list(it.steps))) for it in items],
                                          [f"[{n}]" for n in range(len(items))])  # fmt: skip
        except RequestError as e:
            return refuse(e)
        try:
            rewards = await batcher.submit(flat, tokens)
        except Exception as e:  # noqa: BLE001 - the scorer's failure, reported to the client
            return scorer_failed(e)
        return ScoreResponse(rewards=rewards)

    served = served_name or model_name
    labels = id2label or {0: "negative", 1: "positive"}
    fmt = getattr(getattr(scorer, "format", None), "label", "")  # texts are hiprm's seqcls template only

    def rows_out(logits: list[float], activation: bool | None) -> list[float]:
        if activation is False:
            return [float(x) for x in logits]
        p = reward_from_logits(logits)
        return [1.0 - p, p]

    async def vllm_call(request: Request, kind: type[ClassifyRequest]) -> Any:
        """Parse a /classify or /pooling body; returns (request, items, results) or a JSONResponse."""
        try:
            req = parse_vllm(await body_of(request), limits, kind)
        except RequestError as e:
            return refuse(e)
        if req.model not in (None, "", served):
            return JSONResponse({"detail": safe_text(f"model {req.model!r} is not served here (this server: {served!r})")},
                                status_code=404)  # fmt: skip
        if isinstance(req, PoolingRequest) and req.task not in (None, "token_classify"):
            return refuse(RequestError(422, f"task {req.task!r}: this server offers token_classify"))
        items: list[tuple[str, Any]] = []
        for x in request_inputs(req):
            if isinstance(x, SolutionInput):
                items.append(("steps", (x.question, list(x.steps))))
            elif kind is PoolingRequest:
                return refuse(RequestError(422, "task token_classify needs hiprm's structured input "
                                                "{question, steps}: a formatted text does not say where steps end"))
            elif fmt not in ("", "seqcls"):
                return refuse(RequestError(422, f"this reward model reads steps in the {fmt} format: send hiprm's "
                                                "structured input {question, steps}, not a formatted text"))
            else:
                items.append(("text", x) if isinstance(x, str) else ("ids", list(x)))
        try:
            items, tokens = await measured(items, [f"input[{i}]" for i in range(len(items))])
        except RequestError as e:
            return refuse(e)
        try:
            return req, items, await batcher.submit(items, tokens)
        except Exception as e:  # noqa: BLE001 - the scorer's failure, reported to the client
            return scorer_failed(e)

    @app.post("/classify", response_model=ClassificationResponse, responses=errors)  # type: ignore[arg-type]
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

    @app.post("/pooling", response_model=PoolingResponse, responses=errors)  # type: ignore[arg-type]
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

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health() -> Any:
        # A worker stuck on one call answers nobody; a load balancer should hear that, not "ok".
        # Rounded before the comparison, so the reported seconds always agree with the status
        # (0.1002 s against a 0.1 s threshold was "busy" while reporting current_batch_s 0.1).
        running = round(batcher.running_s(), 3)
        busy = running > cfg.health_busy_after_s
        body = HealthResponse(
            status="busy" if busy else "ok", model=model_name, batches=batcher.batches, items=batcher.items,
            max_items_per_batch=batcher.max_items_per_batch, max_requests_per_batch=batcher.max_requests_per_batch,
            queued=batcher.queue.qsize() if batcher.queue is not None else 0, current_batch_s=running,
        )
        return JSONResponse(body.model_dump(), status_code=503 if busy else 200)

    return app


def run(cfg: ServeConfig) -> None:
    import uvicorn

    from hiprm.config import ConfigError

    if not cfg.model:
        raise ConfigError("model: required (hiprm serve --model CKPT)")
    for key in ("max_batch", "max_tokens_per_call", "max_tokens_per_request", "read_timeout_s", "health_busy_after_s"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}: must be > 0, got {getattr(cfg, key)}")
    if cfg.model.startswith(("http://", "https://")):
        raise ConfigError(f"model: {cfg.model} is a server; `hiprm serve` serves a checkpoint folder")
    scorer = load_scorer(cfg.model, **cfg.scorer_kwargs())
    mc = scorer.model.config
    app = create_app(scorer, cfg, model_name=cfg.model, served_name=cfg.served_model_name or cfg.model,
                     max_model_len=int(getattr(mc, "max_position_embeddings", 8192) or 8192),
                     id2label={int(k): v for k, v in (mc.id2label or {}).items()} or None)  # fmt: skip
    log.info("serving %s on http://%s:%d (POST /v1/score, /classify, /pooling; GET /v1/models, /health)",
             cfg.model, cfg.host, cfg.port)
    # Bodies time out in read_body; idle keep-alive connections and the number of open ones are
    # uvicorn's to bound.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_keep_alive=cfg.keep_alive_s,
                limit_concurrency=cfg.max_connections or None)  # fmt: skip
