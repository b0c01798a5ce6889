"""The Redis sink of the session runner, and the outage policy its calls go through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from affectstream.operators.records import TimelinePoint
from affectstream.pipeline.config import PipelineConfig
from affectstream.pipeline.store.redis_store import RedisSink, WriteResult, connect


class RedisSessionSink:
    """:class:`~affectstream.pipeline.runtime.runner.Sink` over :class:`RedisSink` (key layout
    DESIGN §6, idempotent stream IDs). Opening a session (a start or a resume) also clears the
    TTL an ended or idle period put on its keys.

    Args:
        store: the Redis writer.
    """

    def __init__(self, store: RedisSink) -> None:
        self.store = store

    def open(self, session_id: str, source: str, models: str = "", config_digest: str = "") -> None:
        self.store.start_session(session_id, source, models, config_digest)
        k, r = self.store.k, self.store.r
        p = r.pipeline(transaction=False)
        p.persist(k.tracks(session_id))
        for t in r.zrange(k.tracks(session_id), 0, -1):
            p.persist(k.track(session_id, int(t)))
        p.execute()

    def write(self, points: list[TimelinePoint]) -> WriteResult:
        return self.store.write(points)

    def close(self, session_id: str, status: str = "ended") -> None:
        self.store.end_session(session_id, status)


def outage_policy(cfg: PipelineConfig, what: str = "timeline write"
                  ) -> Callable[[Callable[[], Any]], Any]:
    """The runner's ``sink_retry``: ``fn()`` with a Redis outage waited out for up to
    ``redis.outage_tolerance_s`` (:func:`pipeline.store.redis_retry.call_redis`, visible as "waiting
    for Redis"); past it :class:`~pipeline.runtime.runner.SinkOutage` ends the session."""
    from affectstream.pipeline.store.redis_retry import RedisOutage, call_redis
    from affectstream.pipeline.runtime.runner import SinkOutage

    def retry(fn: Callable[[], Any]) -> Any:
        try:
            return call_redis(fn, what=what, tolerance_s=cfg.redis.outage_tolerance_s)
        except RedisOutage as e:
            raise SinkOutage(str(e)) from e

    return retry


def redis_session_sink(redis_url: str, cfg: PipelineConfig
                       ) -> tuple[RedisSessionSink, Callable[[Callable[[], Any]], Any]]:
    """The Redis sink of a ``run`` session and the outage policy its calls go through."""
    rc = cfg.redis
    sink = RedisSink(connect(redis_url, rc.password, socket_timeout=10, socket_connect_timeout=5),
                     rc.key_prefix, rc.maxlen, rc.retention_ms, rc.session_ttl_s)
    return RedisSessionSink(sink), outage_policy(cfg)
