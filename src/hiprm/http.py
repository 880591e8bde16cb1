"""THE HTTP client for the servers hiprm talks to: policy servers (`hiprm.policy.openai_http`)
and reward-model servers (`hiprm.rm.remote`), one or several of each.

    pool = ServerPool(["http://gpu1:8000/v1", "http://gpu2:8000/v1"], what="policy server",
                      error=PolicyServerError, concurrency=8)
    body = pool.request("POST", "/completions", {"model": ..., "prompt": ...})   # the JSON of a 200

What every caller gets:
- at most `concurrency` requests in flight per server; each request goes to the healthy server
  with the fewest in flight (then the fewest sent, so servers that answer at once still share);
- retries on what a busy or restarting server answers (429, 5xx, 408 / 409 / 425, timeouts,
  connection errors), first at once on a server not yet tried for this request, then after an
  exponential backoff with jitter (`backoff * 2**attempt`, capped at `max_backoff`, times a
  random factor in [0.5, 1)), honouring `Retry-After`; other 4xx fail at once;
- a server that failed sits out a growing pause and is named in a warning (with several servers);
- every error names the URL and the HTTP status, and `error` (the caller's StageError subclass)
  is what it raises: `{what} URL: HTTP 503: ... (gave up after N attempts)`, or with several
  servers `every {what} failed (gave up after N attempts): URL: ...; URL: ...`.
Only httpx; no server library is imported. No torch: a shared noun at the bottom of the package.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import httpx

from hiprm.artifacts import StageError

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def backoff_delay(attempt: int, backoff: float, max_backoff: float, retry_after: float | None,
                  rng: random.Random | None = None) -> float:  # fmt: skip
    """Seconds to wait before retry `attempt + 1`: exponential with jitter, at least the server's
    `Retry-After` (capped at `max_backoff` either way).

    >>> backoff_delay(3, 1.0, 30.0, None, random.Random(0)) <= 8.0
    True
    >>> backoff_delay(0, 1.0, 30.0, 12.0)
    12.0
    """
    delay = min(max_backoff, backoff * 2**attempt) * (0.5 + (rng or random).random() / 2)
    if retry_after is not None:
        delay = min(max_backoff, max(delay, retry_after))
    return delay


def retry_after(r: httpx.Response) -> float | None:
    """The `Retry-After` header in seconds, or None (absent, or an HTTP date)."""
    value = r.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class ServerPool:
    """Requests to one service on one or more servers (`bases`: URLs without the path), with the
    bounds, failover and retries above. Thread-safe: many threads may call `request` at once."""

    def __init__(
        self,
        bases: list[str],
        *,
        what: str,
        error: type[StageError],
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.bases = [b.rstrip("/") for b in bases]
        self.what, self.error = what, error
        self.concurrency = max(1, concurrency)
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self._inflight = dict.fromkeys(self.bases, 0)
        self._sent = dict.fromkeys(self.bases, 0)
        self._down_until = dict.fromkeys(self.bases, 0.0)
        self._failures = dict.fromkeys(self.bases, 0)
        self._slots = {b: threading.BoundedSemaphore(self.concurrency) for b in self.bases}
        self._lock = threading.Lock()
        self.retries = 0
        self.client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=self.concurrency * len(self.bases)),
            transport=transport,
        )

    def close(self) -> None:
        self.client.close()

    def describe(self, path: str = "") -> str:
        """The URL (one server) or `N servers (URL, ...)`, for messages."""
        urls = [b + path for b in self.bases]
        return urls[0] if len(urls) == 1 else f"{len(urls)} servers ({', '.join(urls)})"

    def _pick(self, tried: set[str]) -> str:
        """The healthy server with the fewest requests in flight (one not tried for this request
        if there is one); when all are pausing after failures, the one back soonest."""
        now = time.monotonic()
        with self._lock:
            fresh = [b for b in self.bases if b not in tried] or self.bases
            healthy = [b for b in fresh if self._down_until[b] <= now] or [min(fresh, key=self._down_until.get)]
            base = min(healthy, key=lambda b: (self._inflight[b], self._sent[b], self.bases.index(b)))
            self._inflight[base] += 1
            self._sent[base] += 1
        return base

    def _mark(self, base: str, ok: bool, why: str = "", url: str = "") -> None:
        with self._lock:
            self._inflight[base] -= 1
            if ok:
                self._failures[base] = 0
                return
            self._failures[base] += 1
            self._down_until[base] = time.monotonic() + min(self.max_backoff, self.backoff * 2 ** (self._failures[base] - 1))
            first = self._failures[base] == 1
        if first and len(self.bases) > 1:
            log.warning("%s %s failed (%s); its requests go to the other servers", self.what, url or base, why)

    def request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """The JSON body of a 200 answer to `method base+path`, retried and failed over as above."""
        last: dict[str, str] = {}
        tried: set[str] = set()
        for attempt in range(self.max_retries + 1):
            wait_for: float | None = None
            base = self._pick(tried)
            tried.add(base)
            url = base + path
            with self._slots[base]:
                try:
                    r = self.client.request(method, url, json=payload)
                except httpx.TimeoutException as e:
                    last[url] = f"timed out ({type(e).__name__})"
                except httpx.TransportError as e:
                    last[url] = f"connection failed ({type(e).__name__}: {e})"
                else:
                    if r.status_code == 200:
                        self._mark(base, True)
                        try:
                            return r.json()
                        except ValueError:
                            raise self.error(f"{self.what} {url}: HTTP 200 but the body is not JSON: "
                                             f"{r.text[:200]!r}") from None  # fmt: skip
                    last[url] = f"HTTP {r.status_code}: {r.text[:300]}"
                    if r.status_code not in RETRY_STATUS:
                        self._mark(base, True)  # the request is wrong, not the server
                        raise self.error(f"{self.what} {url}: {last[url]}")
                    wait_for = retry_after(r)
            self._mark(base, False, last[url], url)
            if attempt == self.max_retries:
                break
            with self._lock:
                self.retries += 1
            if len(tried) < len(self.bases):
                continue  # another server has not been tried for this request: go there now
            tried.clear()
            delay = backoff_delay(attempt, self.backoff, self.max_backoff, wait_for)
            log.debug("%s: %s; retry %d in %.2fs", url, last[url], attempt + 1, delay)
            time.sleep(delay)
        attempts = f"gave up after {self.max_retries + 1} attempts"
        if len(self.bases) == 1:
            ((url, why),) = last.items()
            raise self.error(f"{self.what} {url}: {why} ({attempts})")
        raise self.error(f"every {self.what} failed ({attempts}): " + "; ".join(f"{u}: {m}" for u, m in last.items()))
