"""One Redis outage policy for ``run`` and ``serve``: wait with backoff, visibly, then fail.

Every Redis call whose result the pipeline cannot do without (timeline writes, session meta,
checkpoints) goes through :func:`call_redis`. While Redis is unreachable (connection refused or
reset, timeout, still loading its AOF) the call is retried with exponential backoff and jitter
(0.2 s doubling to at most 5 s) for up to ``redis.outage_tolerance_s`` (default 300 s); the data
of the call (e.g. one frame's timeline points) stays in memory meanwhile, and the stages before
it wait on their bounded in-flight windows, so nothing analysed is lost. Past the tolerance it
raises :class:`RedisOutage` with a one-line reason.

The wait is visible: a ``waiting for Redis`` log line on the first failure and on every retry
after that (rate-limited), the ``affectstream_redis_waiting`` gauge (1 while any call of this
process waits) and :data:`STATE` (``waiting_s``, ``attempts``, ``last_error``), which ``run``
shows in its progress line.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
import tenacity
from prometheus_client import Gauge

log = logging.getLogger(__name__)

T = TypeVar("T")

OUTAGE_ERRORS = (redis.ConnectionError, redis.TimeoutError)
"""Errors that mean "Redis is not reachable right now" (``BusyLoadingError``, raised while
Redis loads its AOF/RDB after a restart, is a ``ConnectionError``)."""

OUTAGE_REPLIES = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "TRYAGAIN", "OOM",
                  "NOREPLICAS")
"""First words of Redis error replies that mean "not now" (a failover, loading, out of memory):
waited out like a lost connection. Any other reply refuses the request itself."""


def is_outage(e: BaseException) -> bool:
    """True for errors that mean Redis is unavailable for a while (not a refused request)."""
    if isinstance(e, OUTAGE_ERRORS):
        return True
    return (isinstance(e, redis.ResponseError)
            and str(e).split(" ", 1)[0].upper() in OUTAGE_REPLIES)


REDIS_WAITING = Gauge("affectstream_redis_waiting",
                      "1 while a call of this process waits for Redis to come back, else 0.")

FIRST_DELAY_S = 0.2
MAX_DELAY_S = 5.0


class RedisOutage(RuntimeError):
    """Redis stayed unreachable longer than the configured tolerance."""


@dataclasses.dataclass
class OutageState:
    """What this process knows about the current Redis outage (thread-safe snapshot)."""

    waiting_since: float | None = None   # time.monotonic() of the first failure; None = fine
    attempts: int = 0
    last_error: str = ""
    waiters: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, Any]:
        """``{"waiting": bool, "waiting_s": float, "attempts": int, "last_error": str}``."""
        with self._lock:
            since = self.waiting_since
            return {"waiting": since is not None,
                    "waiting_s": 0.0 if since is None else round(time.monotonic() - since, 1),
                    "attempts": self.attempts, "last_error": self.last_error}

    def _enter(self) -> None:
        with self._lock:
            self.waiters += 1
            if self.waiting_since is None:
                self.waiting_since = time.monotonic()
            REDIS_WAITING.set(1)

    def _failed(self, err: BaseException) -> None:
        with self._lock:
            self.attempts += 1
            self.last_error = f"{type(err).__name__}: {err}"

    def _leave(self, ok: bool) -> None:
        with self._lock:
            self.waiters -= 1
            if self.waiters <= 0:
                self.waiters = 0
                if ok:
                    self.waiting_since, self.attempts, self.last_error = None, 0, ""
                REDIS_WAITING.set(0)


STATE = OutageState()
"""The outage state of this process (one per Ray actor / replica)."""


def call_redis(fn: Callable[..., T], *args: Any, what: str, tolerance_s: float,
               abort: Callable[[], bool] | None = None, state: OutageState = STATE,
               **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)``, waiting out a Redis outage of up to ``tolerance_s``.

    Args:
        fn: the Redis operation; must be safe to repeat (timeline writes are: stream IDs are
            explicit, so a repeated point is rejected as a duplicate).
        what: what the call does, for log lines ("timeline write").
        tolerance_s: longest wait for Redis, seconds (``redis.outage_tolerance_s``); 0 = one try.
        abort: checked before each retry; True stops waiting (e.g. shutdown) and re-raises.
        state: where the wait is shown (default: this process's :data:`STATE`).

    Returns:
        What ``fn`` returns.

    Raises:
        RedisOutage: Redis was unreachable for ``tolerance_s`` seconds.
        redis.ConnectionError | redis.TimeoutError: ``abort()`` became true while waiting.
        Exception: any other error of ``fn``, at once (it is not an outage).
    """
    try:  # the common case: no tenacity machinery, no state change
        return fn(*args, **kwargs)
    except redis.RedisError as e:
        if not is_outage(e):
            raise
        first = e
    if tolerance_s <= 0:
        raise RedisOutage(f"Redis unreachable during {what} and redis.outage_tolerance_s is 0: "
                          f"{type(first).__name__}: {first}") from first
    state._enter()
    state._failed(first)
    t0 = time.monotonic()
    last_log = [0.0]

    def before_sleep(rs: tenacity.RetryCallState) -> None:
        err = rs.outcome.exception() if rs.outcome is not None else None
        if err is not None:
            state._failed(err)
        now = time.monotonic()
        if now - last_log[0] >= 5.0:
            last_log[0] = now
            log.warning("waiting for Redis (%s): %.0f s of %.0f s, %s", what, now - t0,
                        tolerance_s, state.last_error)

    def aborted(_rs: tenacity.RetryCallState) -> bool:
        return abort is not None and abort()

    log.warning("waiting for Redis (%s): %s: %s", what, type(first).__name__, first)
    last_log[0] = time.monotonic()
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_outage),
        wait=tenacity.wait_exponential_jitter(multiplier=FIRST_DELAY_S, max=MAX_DELAY_S, jitter=0.1),
        stop=tenacity.stop_after_delay(tolerance_s) | tenacity.stop_any(aborted),
        before_sleep=before_sleep, reraise=False)
    ok = False
    try:
        out = retrying(fn, *args, **kwargs)
        ok = True
        log.warning("Redis is back (%s) after %.1f s", what, time.monotonic() - t0)
        return out
    except tenacity.RetryError as e:
        err = e.last_attempt.exception()
        if abort is not None and abort() and err is not None:
            raise err from None
        raise RedisOutage(
            f"Redis unreachable for {time.monotonic() - t0:.0f} s during {what} (tolerance "
            f"redis.outage_tolerance_s = {tolerance_s:g} s): {type(err).__name__}: {err}"
        ) from err
    finally:
        state._leave(ok)
