"""Retry policies of the Kafka consumer: Redis outages waited out, inference restarts retried.

:class:`OutageRetry` waits out Redis outages (connection lost, LOADING, OOM, READONLY, ...) for
as long as they last, so an outage never dead-letters a frame; while the consumer shuts down it
raises :class:`~pipeline.runtime.runner.SinkOutage` instead, so a session stops without blaming
any frame (they are read again by the next owner). :meth:`OutageRetry.infer` retries inference
while the replica died or restarts, and gives up after 3 failures of the model code itself (the
frame then goes to the DLQ as ``inference_error``). :class:`Attempts` is the poison-pill counter
(:mod:`pipeline.kafka.poison`) behind the same Redis policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from affectstream.pipeline.runtime.runner import SinkOutage

log = logging.getLogger(__name__)

def _retryable(e: BaseException) -> bool:
    """Inference errors worth retrying: the replica died, is restarting or is overloaded (not an
    exception raised by the inference code itself)."""
    import ray

    return not isinstance(e, ray.exceptions.RayTaskError)


class OutageRetry:
    """The consumer's retry policies (module docstring). Set :attr:`abort` when shutting down.

    Args:
        instance: consumer name for the logs.
        tolerance_s: longest Redis outage waited out (``redis.outage_tolerance_s``).
    """

    def __init__(self, instance: str, tolerance_s: float = 300.0) -> None:
        self.instance = instance
        self.tolerance_s = tolerance_s
        self.abort = False

    def __call__(self, fn: Callable[[], Any]) -> Any:
        """The runner's ``sink_retry``: ``fn()`` with Redis outages waited out."""
        return self.call("Redis write", fn)

    def call(self, what: str, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` under the shared Redis outage policy.

        Raises:
            SinkOutage: an outage while shutting down, or Redis unreachable longer than
                ``tolerance_s`` (the consumer fails and Serve restarts it from the last commit;
                nothing acknowledged is lost).
            Exception: what ``fn`` raised when it is not an outage (e.g. WRONGTYPE).
        """
        from affectstream.pipeline.store.redis_retry import RedisOutage, call_redis, is_outage

        try:
            return call_redis(fn, *args, what=f"{self.instance}: {what}",
                              tolerance_s=self.tolerance_s, abort=lambda: self.abort)
        except RedisOutage as e:  # the session stops; no frame is blamed
            raise SinkOutage(str(e)) from e
        except Exception as e:
            if self.abort and is_outage(e):
                raise SinkOutage(f"{what}: Redis unavailable while shutting down ({e})") from e
            raise

    async def infer(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """The runner's ``infer_retry`` (raises after 3 failures of the model code itself)."""
        delay, failures = 0.5, 0
        while True:
            try:
                return await fn()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                failures += 1
                if not _retryable(e) and failures >= 3:
                    log.error("%s: inference failed on a frame 3 times (%s); it goes to the "
                              "DLQ", self.instance, e)
                    raise
                if self.abort:  # shutting down: the frame is read again by the next owner
                    raise SinkOutage("inference unavailable while shutting down") from e
                log.warning("%s: inference failed (%s: %s); retrying in %.1f s", self.instance,
                            type(e).__name__, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


class Attempts:
    """:class:`pipeline.kafka.poison.DeliveryAttempts` with Redis outages waited out (what
    :class:`pipeline.kafka.frames.FrameConsumer` and the sessions call); ``begin``/``finish`` take
    ``(topic, partition, offset)`` or one object with those attributes."""

    def __init__(self, store: Any, retry: OutageRetry) -> None:
        self.store = store
        self._retry = retry

    def begin(self, topic: Any, partition: int | None = None, offset: int | None = None) -> int:
        if partition is None:
            topic, partition, offset = topic.topic, topic.partition, topic.offset
        return self._retry.call("poison-pill count", self.store.begin, topic, partition, offset)

    def step_done(self, topic: str, partition: int, offset: int) -> None:
        self._retry.call("poison-pill count", self.store.step_done, topic, partition, offset)

    def finish(self, topic: Any, partition: int | None = None, offset: int | None = None) -> None:
        if partition is None:
            topic, partition, offset = topic.topic, topic.partition, topic.offset
        self._retry.call("poison-pill count", self.store.finish, topic, partition, offset)
