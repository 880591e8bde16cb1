"""Rewards from a reward model served elsewhere (vLLM's `/classify` or `/pooling`), the one
scorer loader, and the `vllm serve` command for a checkpoint (`hiprm rm vllm-command`).

    vllm serve runs/rm/hrm/model --runner pooling --served-model-name rm --max-model-len 4096
    scorer = RemoteScorer("http://gpu1:8000", checkpoint="runs/rm/hrm/model")
    scorer.score_inputs([(question, previous_steps, current_step), ...])   # one reward each

    load_scorer("http://gpu1:8000#runs/rm/hrm/model")   # the same, from one config string
    load_scorer("runs/rm/hrm/model", device="cuda")     # the in-process hiprm.rm.scorer.Scorer

Input: (question, previous steps, current step) inputs, as for every `StepScorer`. Output: one
reward in [0, 1] per input, equal to the in-process Scorer's within 1e-5 (tests/test_vllm.py
checks it against the real vLLM CPU server).

seqcls checkpoints (hiprm's own) are read through `/classify`; the other formats
(`hiprm.rm.formats`: Qwen2.5-Math-PRM, Math-Shepherd-style tag PRMs, RLHFlow-style chat PRMs)
through `/pooling`, token ids in, one [P(bad), P(good)] row per step tag (STEP pooling) or per
token (ALL pooling) out; the inputs of one solution are prefixes of each other, so each solution
is sent once, as its longest input, and every step reads its own row. `hiprm rm vllm-command
CKPT` prints the `vllm serve` arguments that make a server answer that way.

For seqcls, each input becomes the text the in-process Scorer scores: `render_fitted` with the checkpoint's
tokenizer and its `hiprm_template` (a long input is fitted here, before it is sent, exactly as in
training), and the server tokenizes it with special tokens, as the Scorer does. So the client
reads the checkpoint folder, but only `config.json` and the tokenizer files: the weights may live
on the GPU machine alone. A copy of those small files is enough when the server's disk is not
shared. Texts go in requests of `batch_size` inputs with `use_activation: true`, `concurrency`
requests in flight; the reward is `data[i].probs[1]`, the softmax's P(positive), as
`reward_from_logits` computes it. `hiprm serve` answers the same requests.

The server is asked once, when the scorer is built, for its models (`GET /v1/models`): the
served name when `model` is not given, and its `max_model_len`, which must hold the template's
`max_length`. A server that cuts inputs shorter would fail or change rewards mid-run.

Failures (`hiprm.http.ServerPool`, the one HTTP client): connection errors, timeouts, 408 / 429 /
5xx are retried with exponential backoff (honouring `Retry-After`); other statuses (a 404 for a wrong model name, a 400 for a malformed
request) fail at once. Either way a `RewardServerError`, a StageError (one line from the CLI,
exit 2), names the server, the status and the body.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiprm.artifacts import StageError
from hiprm.config import ConfigError
from hiprm.http import ServerPool
from hiprm.rm.formats import Encoder, FormatSpec, checkpoint_format, parse_spec
from hiprm.rm.scorer import ScoreInput, Scorer, StepScorer
from hiprm.rm.template import TemplateConfig, fitted_texts

log = logging.getLogger(__name__)


class RewardServerError(StageError):
    """A request to the reward-model server failed for good (the message names the server)."""


class RemoteScorer:
    """A `StepScorer` whose model runs behind a vLLM-style `/classify` endpoint.

    `base_url`: the server's root (`http://host:8000`; a trailing `/v1` is dropped, since vLLM
    serves `/classify` at the root). `model`: the served model name, default the one model the
    server lists. `checkpoint`: the local checkpoint folder for the tokenizer and template,
    default the folder the server reports in `/v1/models` (`root`) when it exists here.
    `batch_size`: inputs per request; `concurrency`: requests in flight; `timeout`: seconds per
    request; `max_retries`: retries per request after the first attempt; `api_key_env`: the
    environment variable holding a bearer token (vLLM's `--api-key`), none by default.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        timeout: float = 300.0,
        batch_size: int = 32,
        concurrency: int = 4,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        api_key_env: str = "",
        spec: FormatSpec | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url: expected http://host:port, got {base_url!r}")
        for key, value in (("batch_size", batch_size), ("concurrency", concurrency)):
            if value < 1:
                raise ConfigError(f"{key}: must be >= 1, got {value}")
        base = base_url.rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.batch_size, self.concurrency = batch_size, concurrency
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.pool = ServerPool([self.base_url], what="reward server", error=RewardServerError, concurrency=concurrency,
                               timeout=timeout, max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
                               headers=headers)  # fmt: skip
        self._lock = threading.Lock()
        self.requests = self.prompt_tokens = 0  # prompt_tokens: the server's `usage`

        card = self._served_model(model)
        self.model: str = card["id"]
        folder = checkpoint if checkpoint else _local_root(card)
        if not folder:
            raise ConfigError(f"checkpoint: {self.base_url} serves {self.model!r} from {card.get('root')!r}, which is "
                              "not a folder here; give the checkpoint folder (its config.json and tokenizer files; "
                              "weights not needed) as checkpoint=FOLDER or in the spec as URL#FOLDER")  # fmt: skip
        self.checkpoint, self.format, self.tokenizer = checkpoint_format(folder, spec or FormatSpec())
        self.template = self.format.template or TemplateConfig(max_length=self.format.max_length)
        self.encoder = Encoder(self.format, self.tokenizer)
        max_len = card.get("max_model_len")
        if isinstance(max_len, int) and max_len < self.format.max_length:
            raise ConfigError(f"model: {self.base_url} serves {self.model!r} with max_model_len {max_len}, but "
                              f"{self.checkpoint} fits inputs to max_length {self.format.max_length} tokens; "
                              f"start the server with --max-model-len {self.format.max_length} or more")  # fmt: skip

    @property
    def retries(self) -> int:
        return self.pool.retries

    def close(self) -> None:
        self.pool.close()

    def __repr__(self) -> str:
        return f"RemoteScorer({self.base_url!r}, model={self.model!r}, checkpoint={str(self.checkpoint)!r})"

    # ---- the StepScorer protocol ------------------------------------------------------------

    def score_inputs(self, inputs: Sequence[ScoreInput]) -> list[float]:
        """P(positive) of each (question, previous, current) input, `batch_size` per request:
        texts to `/classify` (seqcls), else token ids to `/pooling`, one per solution."""
        if self.format.name != "seqcls":
            return self._score_pooling(inputs)
        texts = self.texts(inputs)
        return [p for part in self._map(self._classify, texts) for p in part]

    def _map(self, fn: Any, items: list[Any]) -> list[Any]:
        batches = [items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        if len(batches) <= 1 or self.concurrency == 1:
            return [fn(b) for b in batches]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches))) as pool:
            return list(pool.map(fn, batches))

    def _score_pooling(self, inputs: Sequence[ScoreInput]) -> list[float]:
        """Each input's token ids end at its reward position, and the inputs of one solution are
        prefixes of each other: only the longest ones (the leaves of their trie) are sent, and
        every input reads its row from the leaf that contains it."""
        seqs, reports = self.encoder.encode(inputs)
        self._warn(reports, len(inputs))
        order = sorted(range(len(seqs)), key=lambda i: seqs[i])
        leaf_of = [0] * len(seqs)
        leaves: list[list[int]] = []
        for pos in reversed(range(len(order))):  # an extension sorts right after its prefix
            i = order[pos]
            nxt = order[pos + 1] if pos + 1 < len(order) else None
            if nxt is not None and seqs[nxt][: len(seqs[i])] == seqs[i]:
                leaf_of[i] = leaf_of[nxt]
            else:
                leaf_of[i] = len(leaves)
                leaves.append(seqs[i])
        rows = [r for part in self._map(self._pool, leaves) for r in part]
        return [self._row_at(leaves[leaf_of[i]], rows[leaf_of[i]], len(seqs[i]) - 1) for i in range(len(seqs))]

    def _row_at(self, leaf: list[int], rows: list[list[float]], position: int) -> float:
        """P(good) at `position` of `leaf`: rows for every token (ALL pooling), or for each step
        tag (STEP pooling), the k-th row being the k-th tag's."""
        where = f"{self.base_url}/pooling"
        tag = self.encoder.tag_id
        if len(rows) == len(leaf):
            row = rows[position]
        elif tag >= 0 and len(rows) == sum(t == tag for t in leaf):
            row = rows[sum(t == tag for t in leaf[: position + 1]) - 1]
        else:
            raise RewardServerError(f"{where}: {self.model!r} returned {len(rows)} rows for an input of {len(leaf)} "
                                    f"tokens; hiprm expects a row per token or per step tag (id {tag}) for "
                                    f"format={self.format.label}: start the server with the arguments of "
                                    "hiprm.rm.formats.vllm_args (see docs/public-prms.md)")  # fmt: skip
        if len(row) != 2:
            raise RewardServerError(f"{where}: {self.model!r} returns rows of {len(row)} values; a PRM has 2")
        return float(row[1])

    def texts(self, inputs: Sequence[ScoreInput]) -> list[str]:
        """The reward-model text of each input, fitted as the in-process Scorer fits it (seqcls)."""
        out, reports = fitted_texts(self.tokenizer, inputs, self.template)
        self._warn(reports, len(inputs))
        return out

    def _warn(self, reports: Sequence[Any], n: int) -> None:
        dropped = sum(r.dropped_steps for r in reports)
        truncated = sum(int(r.truncated) for r in reports)
        if dropped or truncated:
            log.warning("inputs over max_length=%d: %d old steps dropped, %d inputs with cut text (of %d just scored)",
                        self.format.max_length, dropped, truncated, n)  # fmt: skip

    # ---- HTTP -------------------------------------------------------------------------------

    def _served_model(self, model: str | None) -> dict[str, Any]:
        """The `/v1/models` card of `model`, or of the only model served when it is None."""
        listing = self.pool.request("GET", "/v1/models")
        cards = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(cards, list) or not all(
            isinstance(c, dict) and isinstance(c.get("id"), str) for c in cards
        ):
            raise RewardServerError(f"{self.base_url}/v1/models: expected {{'data': [{{'id': ...}}]}}, "
                                    f"got {str(listing)[:200]}")  # fmt: skip
        names = [c["id"] for c in cards]
        if model is None and len(cards) == 1:
            return cards[0]
        if model is None:
            raise ConfigError(f"model: {self.base_url} serves {len(names)} models ({', '.join(names) or 'none'}); "
                              "name one")  # fmt: skip
        for c in cards:
            if c["id"] == model:
                return c
        raise ConfigError(
            f"model: {self.base_url} does not serve {model!r}; it serves {', '.join(names) or 'nothing'}"
        )

    def _pool(self, leaves: list[list[int]]) -> list[list[list[float]]]:
        """The rows of each token-id input, from one `/pooling` request."""
        body = self.pool.request("POST", "/pooling", {"model": self.model, "input": leaves, "use_activation": True})
        where = f"{self.base_url}/pooling"
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != len(leaves):
            raise RewardServerError(f"{where}: expected 'data' with {len(leaves)} entries, got {str(body)[:200]}")
        out: list[Any] = [None] * len(leaves)
        for k, d in enumerate(data):
            index = d.get("index", k) if isinstance(d, dict) else None
            rows = d.get("data") if isinstance(d, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(leaves) or not isinstance(rows, list) or not all(
                isinstance(r, list) for r in rows
            ):
                raise RewardServerError(f"{where}: entry {k} is not {{'index', 'data': [[p0, p1], ...]}}: {str(d)[:200]}")
            out[index] = rows
        if any(r is None for r in out):
            raise RewardServerError(f"{where}: the response repeats an index and misses another")
        self._count_usage(body)
        return out

    def _count_usage(self, body: dict[str, Any]) -> None:
        usage = body.get("usage")
        with self._lock:
            self.requests += 1
            if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                self.prompt_tokens += usage["prompt_tokens"]

    def _classify(self, texts: list[str]) -> list[float]:
        """P(positive) of each text, from one `/classify` request."""
        if not texts:
            return []
        body = self.pool.request(
            "POST", "/classify", {"model": self.model, "input": texts, "use_activation": True}
        )
        where = f"{self.base_url}/classify"
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != len(texts):
            raise RewardServerError(
                f"{where}: expected 'data' with {len(texts)} entries, got {str(body)[:200]}"
            )
        rows: list[Any] = [None] * len(texts)
        for k, d in enumerate(data):
            index = d.get("index", k) if isinstance(d, dict) else None
            probs = d.get("probs") if isinstance(d, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(texts) or not isinstance(probs, list):
                raise RewardServerError(f"{where}: entry {k} is not {{'index', 'probs'}}: {str(d)[:200]}")
            if len(probs) != 2 or not all(isinstance(p, (int, float)) for p in probs):
                raise RewardServerError(f"{where}: {self.model!r} returns {str(probs)[:80]} as class probabilities; a "
                                        "reward model has 2 (a checkpoint from `hiprm rm train`, served with --runner pooling)")  # fmt: skip
            rows[index] = float(probs[1])
        if any(r is None for r in rows):
            raise RewardServerError(f"{where}: the response repeats an index and misses another")
        self._count_usage(body)
        return rows


def _local_root(card: dict[str, Any]) -> str | None:
    """The folder the server loaded its model from (vLLM's `root`), when it is one here too."""
    root = card.get("root")
    return root if isinstance(root, str) and (Path(root) / "config.json").is_file() else None


def check_scorer_spec(spec: str) -> None:
    """Before a run starts: a local checkpoint's format resolves (config.json and tokenizer are
    read, no weights), so a wrong pairing fails in a second, naming the checkpoint."""
    location, _, fspec = parse_spec(spec)
    if not location.startswith(("http://", "https://")):
        checkpoint_format(location, fspec)


def load_scorer(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 32,
    max_tokens_per_batch: int = 16384,
    prefix_cache: bool = True,
    checkpoint: str | None = None,
    served_model: str | None = None,
    timeout: float = 300.0,
    concurrency: int = 4,
    max_retries: int = 3,
) -> StepScorer:
    """The scorer a config string names: a checkpoint folder of any format, or a server.

    - `runs/rm/hrm/model`: `Scorer.from_pretrained` with `device`, `dtype`, `batch_size`,
      `max_tokens_per_batch` and `prefix_cache`; the format comes from the checkpoint
      (`hiprm.rm.formats.resolve_format`);
    - `PATH?format=tag&step_tag=%20ки`: options of the format (`hiprm.rm.formats.FormatSpec`),
      needed for a causal-LM PRM (`format=tag` Math-Shepherd, `format=chat` RLHFlow);
    - `http://host:8000#runs/rm/hrm/model`: a `RemoteScorer` on the server, with the checkpoint
      folder after `#` (a URL fragment never reaches the server) or given as `checkpoint`, or
      neither when the server's own model folder exists here; `served_model`, `timeout`,
      `concurrency`, `max_retries`, and `batch_size` as inputs per request. The format decides
      the endpoint: `/classify` for seqcls, `/pooling` (STEP pooling) for token and tag.
    Settings of the other kind are ignored, so one config block serves both.
    """
    location, fragment, fspec = parse_spec(spec)
    if location.startswith(("http://", "https://")):
        if fragment and checkpoint and Path(fragment) != Path(checkpoint):
            raise ConfigError(f"checkpoint: {spec!r} names {fragment!r} after '#' and checkpoint={checkpoint!r}; "
                              "give one")  # fmt: skip
        return RemoteScorer(location, model=served_model, checkpoint=fragment or checkpoint, timeout=timeout,
                            batch_size=batch_size, concurrency=concurrency, max_retries=max_retries,
                            spec=fspec)  # fmt: skip
    if fragment:
        raise ConfigError(f"model: {spec!r}: '#CHECKPOINT' follows a server URL only")
    return Scorer.from_pretrained(location, device=device, dtype=dtype, batch_size=batch_size,
                                  max_tokens_per_batch=max_tokens_per_batch, prefix_cache=prefix_cache,
                                  spec=fspec)  # fmt: skip


@dataclass
class VllmCommandConfig:
    """`hiprm rm vllm-command MODEL [served_name=prm] [max_model_len=N]`: the `vllm serve` command
    that serves a reward-model checkpoint of any format the way hiprm's RemoteScorer reads it."""

    model: str = ""  # a checkpoint folder, with ?format=... options for a causal-LM PRM
    served_name: str = "prm"
    max_model_len: int | None = None  # default: the format's max_length


def vllm_command(cfg: VllmCommandConfig) -> str:
    """Print (and return) the command; `rm eval` / `eval` then take `http://HOST:8000?OPTIONS#MODEL`."""
    import shlex

    from hiprm.rm.formats import vllm_args

    if not cfg.model:
        raise ConfigError("model: required (hiprm rm vllm-command CHECKPOINT[?format=...])")
    location, _, fspec = parse_spec(cfg.model)
    p, fmt, tok = checkpoint_format(location, fspec)
    args = ["vllm", "serve", str(p), "--served-model-name", cfg.served_name,
            "--max-model-len", str(cfg.max_model_len or fmt.max_length), *vllm_args(fmt, tok)]  # fmt: skip
    return " ".join(shlex.quote(a) for a in args)
