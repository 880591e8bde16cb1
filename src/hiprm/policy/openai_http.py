"""Policy over any OpenAI-compatible `/v1/completions` server: vLLM, SGLang, llama.cpp, ...

    policy = OpenAIPolicy(base_url="http://127.0.0.1:8000/v1", model="Qwen2.5-7B-Instruct")
    policy.generate(prompts, SamplingParams(n=8, stop=["# END!"], max_tokens=1024))

Requests go through `hiprm.http.ServerPool`, the one HTTP client (shared with the remote reward
scorer). What it does for you:
- bounded concurrency (`concurrency` requests in flight per server, one worker thread each);
- retries with exponential backoff (+ jitter, honouring `Retry-After`) on 429, 5xx, timeouts and
  connection errors; other 4xx fail at once. Every error names the URL and the HTTP status;
- servers that ignore `n` (llama.cpp's servers return one choice) are asked again for the missing
  samples, each request with its own seed so the samples differ;
- stop strings are re-applied on the client (`cut_at_stop`) so every backend returns the same
  shape of text. vLLM's `include_stop_str_in_output` is sent so the stop string comes back; for a
  server that drops it but says which one matched (`stop_reason`), it is put back. A server that
  drops it silently (llama-cpp-python) cannot tell a step delimiter from end-of-sequence, which
  step-level search needs: use `server_stops=False` there, so the server generates up to
  `max_tokens` and the client cuts at the first stop string (costs the tokens past the stop).
- several servers (`base_url` a list, e.g. one vLLM per GPU node): each request goes to the
  healthy server with the fewest requests in flight, at most `concurrency` per server; a request
  that fails on one server (connection error, timeout, 429 / 5xx) is retried at once on another,
  and a server that failed sits out a growing pause and is named in a warning. Only when every
  server keeps failing does the call raise, naming each server's last error.
The API key is read from the environment variable named by `api_key_env` (default
OPENAI_API_KEY); a local server needs none.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from hiprm.artifacts import StageError
from hiprm.http import ServerPool
from hiprm.policy.protocol import Sample, SamplingParams, cut_at_stop

log = logging.getLogger(__name__)

class PolicyServerError(StageError):
    """A request to the policy server failed for good (the message names URL and status)."""


class OpenAIPolicy:
    """Client for an OpenAI-compatible completions endpoint.

    `base_url` ends in `/v1`; `model` is the served model name; `tokenizer` (optional, a local HF
    folder or embedded model name) makes `count_tokens` exact, otherwise it estimates 4 characters
    per token. `transport` is for tests (`httpx.MockTransport`).
    """

    # generate() may be called from several threads at once (the in-flight bound is per server,
    # shared by all calls), and overlapping calls keep a server busy: see `Policy`.
    concurrent = True

    def __init__(
        self,
        base_url: str | list[str] = "http://127.0.0.1:8000/v1",
        model: str = "default",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        tokenizer: str = "",
        extra_body: dict[str, Any] | None = None,
        server_stops: bool = True,
        transport: httpx.BaseTransport | None = None,
    ):
        bases = [base_url] if isinstance(base_url, str) else list(base_url)
        if not bases or not all(isinstance(b, str) and b.strip() for b in bases):
            raise ValueError(f"base_url: expected a URL or a non-empty list of URLs, got {base_url!r}")
        self.model = model
        self.concurrency = max(1, concurrency)
        self.extra_body = dict(extra_body or {})
        self.server_stops = server_stops
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.pool = ServerPool(bases, what="policy server", error=PolicyServerError, concurrency=self.concurrency,
                               timeout=timeout, max_retries=max_retries, backoff=backoff, max_backoff=max_backoff,
                               headers=headers, transport=transport)  # fmt: skip
        self.url = self.pool.describe("/completions")
        self._tokenizer = None
        if tokenizer:
            from transformers import AutoTokenizer

            from hiprm.policy.hf import resolve_policy_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_policy_model(tokenizer))
        self.token_counts_exact = self._tokenizer is not None
        self._lock = threading.Lock()
        self.tokens_generated = 0  # from the server's `usage`, when it reports it
        self.requests = 0
        self._warned_stop = False

    @property
    def retries(self) -> int:
        return self.pool.retries

    def close(self) -> None:
        self.pool.close()

    def render_chat(self, user_text: str) -> str:
        # /v1/completions takes raw text, as in the paper; serve an instruct model's template
        # yourself (or use a base model) if you want one.
        return user_text

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        return math.ceil(len(text) / 4)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[list[str]]:
        if not prompts:
            return []
        jobs = list(enumerate(prompts))
        with ThreadPoolExecutor(max_workers=min(self.concurrency * len(self.pool.bases), len(jobs))) as pool:
            return list(pool.map(lambda job: self._samples_for(job[0], job[1], params), jobs))

    def _samples_for(self, index: int, prompt: str, params: SamplingParams) -> list[str]:
        """`params.n` samples for one prompt, asking again while the server returns fewer."""
        texts: list[str] = []
        rounds = 0
        while len(texts) < params.n:
            need = params.n - len(texts)
            # Distinct seeds per prompt and round: a server that ignores `n` and is asked again
            # with the same seed would return the same sample.
            base = params.seed_for(index)
            seed = (
                None
                if base is None
                else (base * 1_000_003 + (0 if params.seeds else index) * 1009 + rounds) % 2**31
            )
            # Greedy samples are all the same, and vLLM rejects n > 1 at temperature 0 ("n must
            # be 1 when using greedy sampling"): ask for one and repeat it.
            if params.temperature == 0:
                choices, used = self._request(prompt, params, 1, seed)
                if not choices:
                    raise PolicyServerError(f"{self.url}: response had no choices (model {self.model!r})")
                return [Sample(self._choice_text(choices[0], params), used)] * params.n
            choices, used = self._request(prompt, params, need, seed)
            if not choices:
                raise PolicyServerError(f"{self.url}: response had no choices (model {self.model!r})")
            # The server's `usage` counts the whole request: it is one sample's count when the
            # request returned one (a server that ignores `n`, or n = 1).
            each = used if len(choices) == 1 else None
            texts.extend(Sample(self._choice_text(c, params), each) for c in choices[:need])
            rounds += 1
            if rounds > params.n + 3:
                raise PolicyServerError(
                    f"{self.url}: still {params.n - len(texts)} samples short after {rounds} requests"
                )
        return texts

    def _choice_text(self, choice: dict[str, Any], params: SamplingParams) -> str:
        text = choice.get("text")
        if not isinstance(text, str):
            raise PolicyServerError(f"{self.url}: choice without a 'text' string: {str(choice)[:200]}")
        text, matched = cut_at_stop(text, params.stop, params.include_stop)
        if matched is None and params.include_stop and params.stop:
            reason = choice.get("stop_reason")
            if isinstance(reason, str) and reason in params.stop:
                text += reason
            elif "stop_reason" in choice:
                # The server says which stop ended the sample (vLLM); null = end-of-sequence, so
                # no stop string was dropped and there is nothing to warn about.
                pass
            elif self.server_stops and choice.get("finish_reason") == "stop" and not self._warned_stop:
                # Stopped by a stop string or by end-of-sequence: this server does not say which.
                self._warned_stop = True
                log.warning(
                    "%s: server dropped the stop string and did not say which one matched, so a step "
                    "delimiter cannot be told from end-of-sequence; use server_stops=False "
                    "(policy.server_stops=false) with this server",
                    self.url,
                )
        return text

    def _request(
        self, prompt: str, params: SamplingParams, n: int, seed: int | None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The response's choices in index order, and the server's completion tokens (None if
        it reports none)."""
        payload: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "n": n,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            **self.extra_body,
        }
        if params.stop and self.server_stops:
            payload["stop"] = list(params.stop)
            payload["include_stop_str_in_output"] = params.include_stop
        if seed is not None:
            payload["seed"] = seed
        data = self.pool.request("POST", "/completions", payload)
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list):
            raise PolicyServerError(f"{self.url}: response has no 'choices' list: {str(data)[:200]}")
        usage = data.get("usage") or {}
        used = usage.get("completion_tokens") if isinstance(usage, dict) else None
        used = used if isinstance(used, int) and not isinstance(used, bool) else None
        with self._lock:
            self.requests += 1
            if used is not None:
                self.tokens_generated += used
        return sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0), used
