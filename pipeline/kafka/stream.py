"""The service's Kafka consumer: polling, backpressure, routing to sessions, commits, metrics.

One :class:`KafkaStream` runs in each ``KafkaIngest`` replica (:mod:`pipeline.service.lifecycle`): a member
of the consumer group ``kafka.group_id`` that owns some partitions of ``kafka.topic``. It routes
each polled frame by ``session_id`` (the message key: a session stays on one partition and
reaches one consumer in order) to that session's :class:`~pipeline.kafka.session.KafkaSession`,
which runs the frames through the shared session runner
(:class:`~pipeline.runtime.runner.SessionRunner`): the per-session logic (tracking, batched
inference, timeline, sink, ordering, errors) is the one ``affectstream run`` uses.

Delivery: at-least-once from Kafka, exactly-once in Redis. Offsets are committed only below
frames whose points Redis acknowledged *and* whose session state is checkpointed
(:mod:`pipeline.kafka.checkpoint`); the committed prefix is also committed when partitions are
revoked (:class:`pipeline.kafka.frames.FrameConsumer`). After a crash or a rebalance the next owner
restores each session from its checkpoint, skips frames it covers and recomputes the rest from
the same state: same track ids, same timestamps, so Redis rejects the replayed points.

Any failure on one message sends it to ``kafka.dlq_topic`` with the reason in the ``error``
header and the partition goes on: a malformed envelope (refused by ``FrameConsumer``), and while
it is analysed the runner's ``error_kind``: ``track_error``, ``inference_error`` (the models
raised three times), ``timeline_error``, ``store_error`` (Redis refused its points, e.g. an
invalid stream id, or its session cannot be opened); ``partition_mismatch`` (a session's frames
on two partitions), ``internal_error`` (decoding raised unexpectedly) and ``poison_pill`` (its
processing began ``kafka.max_delivery_attempts`` times and the consumer crashed each time,
:mod:`pipeline.kafka.poison`). A Redis *outage* is not a message failure: the session waits.

Memory: decoded images polled and not yet face-tracked count against
``kafka.max_inflight_frame_bytes``; at the budget the consumer pauses its partitions and resumes
below it, and a poll never asks for more max-size frames than the budget has room for.

Metrics: the Prometheus registry is pushed to Redis once a second and the API's ``/metrics``
renders the cluster-wide totals (:mod:`pipeline.metrics.aggregate`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import socket
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from affectstream.pipeline import metrics
from affectstream.pipeline.config import PipelineConfig
from affectstream.pipeline.kafka.retry import Attempts, OutageRetry
from affectstream.pipeline.kafka.session import COUNTS, KafkaSession
from affectstream.pipeline.runtime.sinks import RedisSessionSink

log = logging.getLogger(__name__)

Infer = Callable[[Any], Awaitable[Any]]
"""``infer(InferRequest) -> awaitable InferResult`` (a Serve handle's ``remote`` or a local
stand-in)."""


class KafkaStream:
    """One Kafka consumer of the service with per-session analysis state (module docstring).

    Plain Python around asyncio. Blocking work runs on single-thread executors: ``kafka`` (every
    call on the consumer), ``facetrack`` (detection, tracking, landmarks, crops of every
    session), ``sink`` (timelines, Redis writes, checkpoints, result produce) and ``metrics``.

    Args:
        cfg: configuration (``kafka``, ``redis``, ``detect``, ``track``, ``smooth``, ...).
        redis_url: Redis for timelines, checkpoints and metrics.
        infer: sends one frame's crops to inference, see :data:`Infer`.
        instance: name of this consumer in logs, metrics and the Kafka client id.
        torch_threads: intra-op threads for face-tracking (default ``inference.torch_threads``
            or 1).
        consumer_kw: extra ``KafkaConsumer`` settings.

    Redis or inference unreachable are retried with backoff (the session waits, nothing is
    skipped); a broker that does not answer at start is retried until ``stop``.
    """

    def __init__(self, cfg: PipelineConfig, redis_url: str, infer: Infer, *,
                 instance: str | None = None, torch_threads: int | None = None,
                 consumer_kw: dict[str, Any] | None = None) -> None:
        import redis
        import torch

        from affectstream.operators.analyze import FaceAnalyzer
        from affectstream.pipeline.kafka.checkpoint import CheckpointStore, load_key
        from affectstream.pipeline.metrics.aggregate import RedisMetricsPusher
        from affectstream.pipeline.kafka.poison import DeliveryAttempts
        from affectstream.pipeline.store.redis_store import RedisSink, connect
        from affectstream.pipeline.runtime.parts import new_stage

        self.cfg = cfg
        self.k = cfg.kafka
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self.infer = infer
        self._consumer_kw = dict(consumer_kw or {})
        threads = torch_threads or cfg.inference.torch_threads or 1
        torch.set_num_threads(threads)
        self.labels = tuple(FaceAnalyzer.card_for(cfg.inference.fer_model).label_names)
        self.base = new_stage(cfg)  # detector + landmarker shared by the sessions
        self.base.warmup()
        rc = cfg.redis
        # no PING here: Redis down at start is retried like Redis down later
        self.redis = connect(redis_url, rc.password, socket_timeout=10, socket_connect_timeout=5)
        self.store = RedisSink(self.redis, rc.key_prefix, rc.maxlen, rc.retention_ms,
                               rc.session_ttl_s)
        self.ckpts = CheckpointStore(
            redis.Redis.from_url(redis_url, password=rc.password, decode_responses=False,
                                 socket_timeout=10, socket_connect_timeout=5),
            rc.key_prefix, ttl_s=rc.session_ttl_s, key=load_key(cfg.kafka.checkpoint_key_file))
        self.retry = OutageRetry(self.instance, cfg.redis.outage_tolerance_s)
        self.attempts = Attempts(DeliveryAttempts(self.redis, rc.key_prefix), self.retry)
        self.pusher = RedisMetricsPusher(self.redis, rc.key_prefix, instance=self.instance)
        self.models = cfg.inference.fer_model + "," + cfg.inference.au_model
        self.digest = cfg.digest()
        self.consumer: Any = None
        self.results: Any = None  # result-topic producer
        self.sink: Any = None     # the sessions' sink (Redis [+ result topic]), see _connect
        self._sessions: dict[str, KafkaSession] = {}
        self._closing: dict[str, asyncio.Task] = {}
        self.pools = {name: concurrent.futures.ThreadPoolExecutor(1, f"ingest-{name}")
                      for name in ("kafka", "facetrack", "sink", "metrics")}
        self._push_fut: concurrent.futures.Future | None = None
        self.pools["facetrack"].submit(torch.set_num_threads, threads).result()
        self.fatal: BaseException | None = None
        self._paused = False
        self.held_bytes = 0  # decoded image bytes polled and not yet face-tracked
        self._frame_bytes_max = cfg.kafka.max_pixels * 3  # the largest frame polling may bring
        self.frame_log: collections.deque[tuple] | None = None  # see record_frames()
        self.totals: collections.Counter[str] = collections.Counter(
            dict.fromkeys(COUNTS + ("dead_lettered",), 0))
        self.state = "starting"

    async def run_in(self, pool: str, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` on one of the consumer's single-thread executors."""
        return await asyncio.get_running_loop().run_in_executor(self.pools[pool], fn, *args)

    # -- lifecycle --
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain, checkpoint, commit and leave the group.

        Raises:
            Exception: an unexpected failure of a session (a bug); the caller should restart
                the consumer, which resumes from the committed offsets.
        """
        await self._warm_inference(stop)
        if not stop.is_set():
            await self._connect(stop)
        if self.consumer is None:
            self.state = "stopped"
            return
        self.state = "consuming"
        try:
            await self._consume(stop)
        finally:
            self.state = "stopping"
            await self._shutdown()
            self.state = "stopped"
        if self.fatal is not None:
            raise self.fatal

    async def _warm_inference(self, stop: asyncio.Event) -> None:
        """One empty request: the inference deployment answers before the first frame."""
        from affectstream.pipeline.runtime.batch import InferRequest

        h, w = self.base.crop.size
        req = InferRequest(np.zeros((0, h, w), np.uint8), None)
        delay = 0.5
        while not stop.is_set():
            try:
                await self.infer(req)
                return
            except Exception as e:  # noqa: BLE001  (the deployment may still be starting)
                log.warning("%s: inference not reachable yet (%s: %s)", self.instance,
                            type(e).__name__, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _make_consumer(self) -> Any:
        from affectstream.pipeline.kafka.client import make_producer
        from affectstream.pipeline.kafka.frames import FrameConsumer
        from affectstream.pipeline.runtime.result_sink import ResultTopicSink, TeeSink

        kw = {"max_poll_interval_ms": self.k.max_poll_interval_ms,
              "fetch_max_wait_ms": self.k.fetch_max_wait_ms, **self._consumer_kw}
        consumer = FrameConsumer(self.k, client_id=f"affectstream-{self.instance}",
                                 consumer_kw=kw, attempts=self.attempts)
        if self.k.result_topic and self.results is None:
            self.results = make_producer(cfg=self.k)
        redis_sink = RedisSessionSink(self.store)
        self.sink = (TeeSink(redis_sink, ResultTopicSink(self.results, self.k.result_topic))
                     if self.results is not None else TeeSink(redis_sink))
        return consumer

    async def _connect(self, stop: asyncio.Event) -> None:
        from affectstream.pipeline.kafka.client import BrokerUnavailable

        delay = 1.0
        while not stop.is_set():
            try:
                self.consumer = await self.run_in("kafka", self._make_consumer)
                log.info("%s: consuming %s as group %s", self.instance, self.k.topic,
                         self.k.group_id)
                return
            except BrokerUnavailable as e:
                log.warning("%s: %s; retrying in %.0f s", self.instance, e, delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)

    async def _consume(self, stop: asyncio.Event) -> None:
        k = self.k
        now = time.monotonic()
        due = {"commit": now, "push": now, "lag": now + 5, "sweep": now + 2}
        while not stop.is_set() and self.fatal is None:
            held = sum(s.held for s in self._sessions.values())
            room = k.max_inflight_frame_bytes - self.held_bytes
            want_pause = held >= k.max_buffered_frames or room <= 0
            if want_pause or self._paused:
                await self.run_in("kafka", self._pause, want_pause)
            # a poll may bring max_pixels-sized frames only: it never decodes past the budget
            budget = max(1, min(64, k.max_buffered_frames - held,
                                room // self._frame_bytes_max))
            try:
                frames = await self.run_in("kafka", self.consumer.poll, 100, budget)
            except Exception as e:  # noqa: BLE001  (broker hiccup: the client reconnects)
                log.warning("%s: poll failed (%s: %s)", self.instance, type(e).__name__, e)
                await asyncio.sleep(1.0)
                continue
            assigned = self.consumer.assignment()
            for s in list(self._sessions.values()):
                if s.tp not in assigned:
                    self._drop(s, "partition revoked")
            for f in frames:
                self._route(f, assigned)
            now = time.monotonic()
            if now >= due["commit"]:
                due["commit"] = now + k.commit_interval_ms / 1000
                await self._commit()
            if now >= due["push"]:
                due["push"] = now + 1.0
                metrics.SESSIONS_ACTIVE.set(len(self._sessions))
                if self._push_fut is None or self._push_fut.done():  # never queue up pushes
                    self._push_fut = self.pools["metrics"].submit(self._push_metrics)
            if now >= due["lag"]:
                due["lag"] = now + 5.0
                await self.run_in("kafka", self._lag)
            if now >= due["sweep"]:
                due["sweep"] = now + 2.0
                self._evict_idle(now)

    def _pause(self, pause: bool) -> None:
        kc = self.consumer.consumer
        if pause:
            for tp in self.consumer.assignment():
                try:
                    kc.pause(tp)
                except Exception:  # noqa: BLE001  (not assigned any more)
                    pass
        else:
            kc.resume(*kc.paused())
        self._paused = pause

    def _lag(self) -> None:
        metrics.CONSUMER_LAG.clear()  # partitions moved elsewhere must not keep a stale value
        try:
            self.consumer.lag()
        except Exception as e:  # noqa: BLE001
            log.debug("lag failed: %s", e)

    async def _commit(self) -> None:
        from affectstream.pipeline.kafka.client import KafkaIOError

        try:
            await self.run_in("kafka", self.consumer.commit)
        except KafkaIOError as e:
            log.warning("%s: %s", self.instance, e)

    def _push_metrics(self) -> None:
        try:
            self.pusher.push()
        except Exception as e:  # noqa: BLE001  (metrics never stop the stream)
            log.warning("%s: metrics push failed (%s: %s)", self.instance, type(e).__name__, e)

    # -- routing and sessions --
    def _route(self, f: Any, assigned: set) -> None:
        if f.tp not in assigned:  # revoked since this poll fetched it: its next owner reads it
            return
        sid = f.envelope.session_id
        s = self._sessions.get(sid)
        if s is not None and s.tp != f.tp:
            self.dead_letter(f, "partition_mismatch",
                             f"session {sid!r} is on {s.source}; message on "
                             f"{f.topic}:{f.partition} (key it by session_id)")
            return
        if s is not None and f.offset <= s.last_offset:
            # the partition was re-assigned and re-read from the committed offset
            self._drop(s, f"offset {f.offset} re-delivered")
            s = None
        if s is None:
            s = KafkaSession(self, sid, f.tp)
            prev = self._closing.pop(sid, None)
            s.task = asyncio.get_running_loop().create_task(s.main(prev))
            self._sessions[sid] = s
        s.route(f)

    def dead_letter(self, f: Any, reason: str, detail: str) -> None:
        """Send one frame's message to the DLQ (``f``: a ``ConsumedFrame`` or a
        :class:`~pipeline.kafka.session.Msg`); it is acknowledged once the DLQ has it."""
        rec = types.SimpleNamespace(topic=f.topic, partition=f.partition, offset=f.offset,
                                    key=f.envelope.session_id.encode(), value=b"",
                                    headers=f.envelope.headers())
        fut = self.consumer.dead_letter.send(rec, reason, detail)
        self.totals["dead_lettered"] += 1
        fut.add_callback(lambda _md: self.consumer.ack(f.tp, f.offset))

    def _drop(self, s: KafkaSession, why: str) -> None:
        """Forget a session now (its partition moved, or it is being re-read); its unfinished
        frames are not acknowledged, so they are read again from the committed offset."""
        log.info("%s: session %s dropped (%s)", self.instance, s.sid, why)
        s.dead = True
        self.held_bytes -= s.held_bytes
        s.held_bytes = 0
        if self._sessions.get(s.sid) is s:
            del self._sessions[s.sid]
        if s.task is not None:
            s.task.cancel()
            self._closing_add(s)

    def _closing_add(self, s: KafkaSession) -> None:
        self._closing[s.sid] = s.task

        def forget(t: asyncio.Task, sid: str = s.sid) -> None:
            if self._closing.get(sid) is t:
                del self._closing[sid]

        s.task.add_done_callback(forget)

    def _evict_idle(self, now: float) -> None:
        """Sessions without frames for ``kafka.session_idle_s`` checkpoint and end (status
        ``ended``, their keys get the session TTL); a later frame resumes them."""
        for s in list(self._sessions.values()):
            if s.held == 0 and now - s.last_frame_at > self.k.session_idle_s:
                del self._sessions[s.sid]
                s.end_status = "ended"
                s.inbox.put_nowait(None)
                self._closing_add(s)
                log.info("%s: session %s idle; state freed", self.instance, s.sid)

    # -- shutdown --
    async def _shutdown(self, drain_s: float = 20.0) -> None:
        sessions = list(self._sessions.values())
        for s in sessions:
            s.inbox.put_nowait(None)
        tasks = [s.task for s in sessions if s.task is not None]
        tasks += list(self._closing.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=drain_s)
            if late:
                log.warning("%s: %d session(s) did not drain in %.0f s; their unfinished frames "
                            "will be read again", self.instance, len(late), drain_s)
                self.retry.abort = True
                for t in late:
                    t.cancel()
                await asyncio.wait(late, timeout=5)
        self.retry.abort = True
        self._sessions.clear()
        try:
            await self.run_in("kafka", self.consumer.close)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: closing the consumer failed: %s", self.instance, e)
        if self.results is not None:
            await self.run_in("kafka", self.results.close, 10)
        metrics.SESSIONS_ACTIVE.set(0)
        try:
            await asyncio.wait_for(self.run_in("metrics", self._push_metrics), 10)
        except TimeoutError:
            pass
        for p in self.pools.values():
            p.shutdown(wait=False)

    def record_frames(self, n: int) -> None:
        """Keep a log of the last ``n`` frames written (0 = stop): ``(session_id, ts_ms,
        publish-to-Redis ms, points, {stage: ms})`` each, for benchmarks (:meth:`stats`)."""
        self.frame_log = collections.deque(maxlen=n) if n > 0 else None

    def stats(self, frames: bool = False) -> dict[str, Any]:
        """Counters of this consumer (JSON-able): state, partitions, totals, per session; with
        ``frames`` also the frame log of :meth:`record_frames`."""
        c = self.consumer
        out: dict[str, Any] = {
            "instance": self.instance, "state": self.state, "pid": os.getpid(),
            "held_bytes": self.held_bytes, "paused": self._paused,
            "assignment": sorted(f"{tp.topic}:{tp.partition}" for tp in c.assignment())
            if c is not None else [],
            "sessions": {sid: dict(s.counts, held=s.held) for sid, s in self._sessions.items()},
            **dict(self.totals)}
        if c is not None:
            out.update(polled=c.stats.polled, dead_lettered=c.stats.dead_lettered
                       + self.totals["dead_lettered"], commits=c.stats.commits)
        from affectstream.pipeline.store.redis_retry import STATE

        out["redis"] = STATE.snapshot()  # {"waiting": True, "waiting_s": ...} during an outage
        if frames:
            out["frames_log"] = list(self.frame_log or ())
        return out
