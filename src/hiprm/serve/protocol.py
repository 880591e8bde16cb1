"""The HTTP scoring protocol: request / response shapes and their validation, with no server.

    POST /v1/score
      body: {"question": str, "steps": [str, ...]}                  one solution, or
            [{"question": str, "steps": [str, ...]}, ...]            several
      200:  {"rewards": [[float, ...], ...]}   one list per solution, in request order, one
                                               reward in [0, 1] per step (step i given steps[:i])
      408:  {"detail": str}   the body did not arrive within read_timeout_s
      413:  {"detail": str}   body larger than max_body_bytes (the server reads and drops up to 64 MiB
                              more so the client gets this answer, then closes the connection)
      422:  {"detail": str}   not UTF-8 JSON, nested too deeply, a lone surrogate in a string, wrong
                              shape, unknown keys, nothing to score (an empty list of solutions,
                              an empty or white-space question or step; /classify's `input: []`
                              or ""), or over a limit (steps per solution, characters
                              per step / question, solutions per request, tokens per request, an
                              input longer than the model's context)
      500:  {"detail": str}   the scorer raised on this request alone (a batch that fails is
                              retried request by request, so one request cannot fail others)

    GET /health
      200:  {"status": "ok", "model": str, "batches": int, "items": int,
             "max_items_per_batch": int, "max_requests_per_batch": int, "queued": int,
             "current_batch_s": float}     seconds the scorer call in progress has run (0: idle)
      503:  the same with "status": "busy": one scorer call has run past health_busy_after_s

    POST /classify, POST /pooling, GET /v1/models: vLLM's pooling API (vLLM 0.32 field names and
    types, `VLLM_SHAPES` below), so clients written for a vLLM reward-model server (verl's reward
    loop posts `{"model", "input", "use_activation": false}` to /classify and reads
    `data[-1].probs[-1]`) work against hiprm unchanged:
      /classify  {"model"?, "input": str | [str] | [int] | [[int]], "use_activation"?: bool}
                 input = formatted reward-model text(s) or token ids, scored as they are;
                 -> {"id": "classify-...", "object": "list", "created", "model",
                     "data": [{"index", "label", "probs": [p_neg, p_pos], "num_classes": 2}],
                     "usage": {"prompt_tokens", "total_tokens", "completion_tokens": 0, ...}}
                 use_activation false: `probs` holds the raw logits (as in vLLM).
                 hiprm extension: "input": {"question", "steps"} (or a list of them) gives one
                 entry per step, step i given steps[:i] (the rewards of /v1/score).
      /pooling   {"model"?, "task": "token_classify", "input": {"question", "steps"} | [...],
                  "use_activation"?} -> {"id": "pool-...", "object": "list", "created", "model",
                  "data": [{"index", "object": "pooling", "data": [[p_neg, p_pos] per step]}],
                  "usage"}: a process reward model's per-step rows, as vLLM answers for one.
      /v1/models {"object": "list", "data": [{"id", "object": "model", "created", "owned_by",
                  "root", "parent", "max_model_len", "permission": []}]}

A single-solution body still gets `rewards` as a list of one list, so clients handle one shape.
A solution with `steps: []` is valid and gets `[]`: a batch holding an empty generation is scored,
not refused.
`parse_request(body, limits)` turns raw bytes into `ScoreItem`s or raises `RequestError` with the
HTTP status to answer; the app calls it, and tests call it directly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError


class ScoreItem(BaseModel):
    """One solution to score."""

    model_config = ConfigDict(extra="forbid", strict=True)

    question: str
    steps: list[str]


class ScoreResponse(BaseModel):
    rewards: list[list[float]]


class SolutionInput(BaseModel):
    """hiprm's structured input for /classify and /pooling: a question and its steps."""

    model_config = ConfigDict(extra="forbid", strict=True)

    question: str
    steps: list[str]


class ClassifyRequest(BaseModel):
    """vLLM's ClassificationCompletionRequest fields that change results; vLLM's other optional
    fields (user, truncate_prompt_tokens, priority, ...) are accepted and ignored. `task` is
    /pooling's (only "token_classify" is served)."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: list[int] | list[list[int]] | str | list[str] | SolutionInput | list[SolutionInput]
    use_activation: bool | None = None
    add_special_tokens: bool = True


class PoolingRequest(ClassifyRequest):
    task: str | None = None


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: None = None


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: UsageInfo


class PoolingResponseData(BaseModel):
    index: int
    object: str = "pooling"
    data: list[list[float]]


class PoolingResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: list[PoolingResponseData]
    usage: UsageInfo


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "hiprm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[dict] = []


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


def load_body(body: bytes, limits: Limits) -> Any:
    """The parsed JSON of a request body, or RequestError: 413 over the size limit, 422 not
    UTF-8 JSON (RFC 8259; UTF-16 is refused), nested too deeply, or a string that is not text.

    >>> load_body(b'{"steps": ["a \\\\ud800 b"]}', Limits())
    Traceback (most recent call last):
    hiprm.serve.protocol.RequestError: at steps[0]: a lone surrogate ('\\ud800') is not text; send valid Unicode
    """
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"body is {len(body)} bytes; the limit is {limits.max_body_bytes}")
    try:
        # Decoded here, strictly: json.loads(bytes) would let UTF-8-encoded surrogates through.
        # A leading byte order mark is ignored, as RFC 8259 allows.
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RequestError(422, f"body is not valid JSON: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        raw = json.loads(text)
    except RecursionError:
        raise RequestError(422, "body is not valid JSON for this API: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer of over 4300 digits
        raise RequestError(422, f"body is not valid JSON: {e}") from None
    if "\\u" in text:  # only an escape can put a lone surrogate in a str now
        _check_unicode(raw)
    return raw


def _check_unicode(raw: Any) -> None:
    """RequestError(422) naming the first string (or key) holding a lone surrogate: the tokenizer
    and the JSON encoder of the response would both fail on it. A loop, not recursion: nesting is
    bounded only by json's recursion limit."""
    todo: list[tuple[Any, str]] = [(raw, "")]
    while todo:
        x, where = todo.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError as e:
                raise RequestError(422, f"at {where or 'body'}: a lone surrogate ({ascii(x[e.start])}) is not text; "
                                        "send valid Unicode") from None  # fmt: skip
        elif isinstance(x, list):
            todo += [(v, f"{where}[{i}]") for i, v in reversed(list(enumerate(x)))]
        elif isinstance(x, dict):
            for k, v in reversed(list(x.items())):
                todo += [(v, f"{where}.{k}" if where else k), (k, f"{where} key {ascii(k)}")]


def request_inputs(req: ClassifyRequest) -> list[Any]:
    """The request's inputs one by one: a text, a token-id list or a SolutionInput each
    (`input` may be one of them or a list of them).

    >>> request_inputs(ClassifyRequest(input=[1, 2])), request_inputs(ClassifyRequest(input=["a", "b"]))
    ([[1, 2]], ['a', 'b'])
    """
    inp = req.input
    return list(inp) if isinstance(inp, list) and inp and not isinstance(inp[0], int) else [inp]


def parse_vllm(body: bytes, limits: Limits, kind: type[ClassifyRequest]) -> ClassifyRequest:
    """A /classify or /pooling body -> its request model, or RequestError(413 | 422)."""
    raw = load_body(body, limits)
    try:
        req = kind.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise RequestError(422, f"at {'.'.join(str(p) for p in first['loc']) or 'body'}: {first['msg']}") from None
    inputs = request_inputs(req)
    if req.input == [] or req.input == "":
        raise RequestError(422, "input is empty; send a text, a list of token ids, {question, steps}, "
                                "or a non-empty list of them")  # fmt: skip
    if len(inputs) > limits.max_items_per_request:
        raise RequestError(422, f"{len(inputs)} inputs in one request; the limit is {limits.max_items_per_request}")
    max_chars = limits.max_chars_per_step * limits.max_steps_per_item
    for i, t in enumerate(inputs):
        if isinstance(t, str) and len(t) > max_chars:
            raise RequestError(422, f"input[{i}] has {len(t)} characters; the limit is {max_chars}")
    structured = [ScoreItem(question=x.question, steps=x.steps) for x in inputs if isinstance(x, SolutionInput)]
    if structured:
        check_limits(structured, limits)
    return req


class ErrorResponse(BaseModel):
    detail: str


class HealthResponse(BaseModel):
    status: str  # "ok", or "busy" (503) while one scorer call has run past health_busy_after_s
    model: str
    batches: int
    items: int
    max_items_per_batch: int
    max_requests_per_batch: int
    queued: int
    current_batch_s: float = 0.0  # how long the scorer call in progress has run; 0 when idle


@dataclass
class Limits:
    """What one request may contain; anything over a limit is a 413 (body) or 422 (content).
    The one home of these keys: `hiprm serve`'s config inherits them."""

    max_body_bytes: int = 4_000_000
    max_items_per_request: int = 64
    max_steps_per_item: int = 128
    max_chars_per_step: int = 8_000
    max_chars_per_question: int = 8_000
    max_tokens_per_request: int = 32_768  # tokens of all its inputs, each scored alone (usage.prompt_tokens)


def safe_text(message: str) -> str:
    """`message` with any lone surrogate escaped, so a JSON response can always be encoded.

    >>> safe_text("bad: \\ud800")
    'bad: \\\\ud800'
    """
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


class RequestError(Exception):
    """A request the server refuses: `status` is the HTTP code, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(safe_text(message))
        self.status = status
        self.message = safe_text(message)


def check_tokens(tokens: Sequence[tuple[str, int]], limits: Limits, max_model_len: int) -> int:
    """The request's tokens (the sum over its inputs), or RequestError(422) naming an input longer
    than the model's context or a total over `max_tokens_per_request`.
    `tokens`: (where, tokens) per input.

    >>> check_tokens([("[0].steps[0]", 10), ("[0].steps[1]", 30)], Limits(max_tokens_per_request=40), 100)
    40
    >>> check_tokens([("input[0]", 101)], Limits(), 100)
    Traceback (most recent call last):
    hiprm.serve.protocol.RequestError: input[0] has 101 tokens; the model's context (max_position_embeddings) is 100
    """
    for where, n in tokens:
        if n > max_model_len:
            raise RequestError(422, f"{where} has {n} tokens; the model's context (max_position_embeddings) "
                                    f"is {max_model_len}")  # fmt: skip
    total = sum(n for _, n in tokens)
    if total > limits.max_tokens_per_request:
        raise RequestError(422, f"the request holds {total} tokens (its inputs scored one by one); the limit is "
                                f"max_tokens_per_request={limits.max_tokens_per_request}")  # fmt: skip
    return total


_REQUEST = TypeAdapter(ScoreItem | list[ScoreItem])


def _where(loc: tuple) -> str:
    # Pydantic names union branches ("ScoreItem", "list[ScoreItem]"); keep only the data path.
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("ScoreItem" in p))]
    return ".".join(parts) or "body"


def parse_request(body: bytes, limits: Limits) -> list[ScoreItem]:
    """Validate a request body; raises RequestError(413 | 422, message).

    >>> [i.steps for i in parse_request(b'{"question": "q", "steps": ["a", "b"]}', Limits())]
    [['a', 'b']]
    >>> parse_request(b'[]', Limits())
    Traceback (most recent call last):
    hiprm.serve.protocol.RequestError: the request holds no solution; send {question, steps} or a non-empty list of them
    """
    raw = load_body(body, limits)
    try:
        parsed = _REQUEST.validate_python(raw)
    except ValidationError as e:
        errs = e.errors()
        # A list body fails the single-object branch too; report the branch that matches the shape.
        want = "list[ScoreItem]" if isinstance(raw, list) else "ScoreItem"
        errs = [x for x in errs if not x["loc"] or x["loc"][0] == want] or errs
        first = errs[0]
        raise RequestError(
            422,
            f"expected {{question: str, steps: [str]}} or a list of them; at {_where(first['loc'])}: {first['msg']}"
            + (f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""),
        ) from None
    items = parsed if isinstance(parsed, list) else [parsed]
    check_limits(items, limits)
    return items


def check_limits(items: list[ScoreItem], limits: Limits) -> None:
    """RequestError(422) for a request with no solution, an empty (or white-space) question or
    step, or content over a limit. A solution with no steps is valid: its rewards are `[]`.

    >>> check_limits([ScoreItem(question="q", steps=["a", " "])], Limits())
    Traceback (most recent call last):
    hiprm.serve.protocol.RequestError: [0].steps[1] is empty; every step needs text to be scored
    """
    if not items:
        raise RequestError(422, "the request holds no solution; send {question, steps} or a non-empty list of them")
    for n, item in enumerate(items):
        if not item.question.strip():
            raise RequestError(422, f"[{n}].question is empty; a step is scored given its question")
        for i, s in enumerate(item.steps):
            if not s.strip():
                raise RequestError(422, f"[{n}].steps[{i}] is empty; every step needs text to be scored")
    if len(items) > limits.max_items_per_request:
        raise RequestError(422, f"{len(items)} solutions in one request; the limit is {limits.max_items_per_request}")
    for n, item in enumerate(items):
        if len(item.question) > limits.max_chars_per_question:
            raise RequestError(422, f"[{n}].question has {len(item.question)} characters; "
                                    f"the limit is {limits.max_chars_per_question}")
        if len(item.steps) > limits.max_steps_per_item:
            raise RequestError(422, f"[{n}].steps has {len(item.steps)} steps; the limit is {limits.max_steps_per_item}")
        for i, s in enumerate(item.steps):
            if len(s) > limits.max_chars_per_step:
                raise RequestError(422, f"[{n}].steps[{i}] has {len(s)} characters; "
                                        f"the limit is {limits.max_chars_per_step}")
