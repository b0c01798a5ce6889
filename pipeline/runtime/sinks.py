"""Sink adapters for the session runner: Redis (timelines), with the shared outage policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from affectstream.operators.records import TimelinePoint
from affectstream.pipeline.config import PipelineConfig
from affectstream.pipeline.redis_store import RedisSink, WriteResult, connect


class RedisSessionSink:
    """:class:`~affectstream.pipeline.runtime.runner.Sink` over :class:`RedisSink`.

    Args:
        sink: the Redis writer (key layout DESIGN §6, idempotent stream IDs).
    """

    def __init__(self, sink: RedisSink) -> None:
        self.redis = sink

    def open(self, session_id: str, source: str, models: str = "", config_digest: str = "") -> None:
        self.redis.start_session(session_id, source, models, config_digest)

    def write(self, points: list[TimelinePoint]) -> WriteResult:
        return self.redis.write(points)

    def close(self, session_id: str, status: str = "ended") -> None:
        self.redis.end_session(session_id, status)


def redis_session_sink(redis_url: str, cfg: PipelineConfig
                       ) -> tuple[RedisSessionSink, Callable[[Callable[[], Any]], Any]]:
    """The Redis sink of a session and the retry policy its calls go through."""
    from affectstream.pipeline.runtime.runner import call_once

    rc = cfg.redis
    sink = RedisSink(connect(redis_url, rc.password, socket_timeout=10, socket_connect_timeout=5),
                     rc.key_prefix, rc.maxlen, rc.retention_ms, rc.session_ttl_s)
    return RedisSessionSink(sink), call_once
