"""The Kafka service: consumer actors + shared inference + sink + query API (DESIGN §4–§7).

``affectstream serve`` (and the KubeRay ``RayService``, through ``pipeline.api:build_app``) runs
one Ray Serve application, ``affectstream``, with three deployments:

* ``QueryAPI`` — the FastAPI query API (HTTP ingress), :mod:`pipeline.api`;
* ``Inference`` — batched FER / AU / saliency, shared by every session, :mod:`pipeline.inference`;
* ``KafkaIngest`` — ``kafka.consumers`` replicas, each running one :class:`KafkaStream`: a member
  of the consumer group ``kafka.group_id`` that owns some partitions of ``kafka.topic``.

A :class:`KafkaStream` keeps one face-track stage and one timeline builder per session (sessions
are message keys, so a session stays on one partition and reaches one consumer in order). Each
session runs two coroutines: *track* (face detection, tracking, landmarks and crops on the
actor's CPU thread, then the inference request is sent) and *write* (awaits the inference
results in frame order, smooths, writes to Redis, produces to ``kafka.result_topic`` when set,
checkpoints). Up to ``max_in_flight`` frames of a session are between the two, so inference of
one frame overlaps face-tracking of the next; many sessions run concurrently.

Delivery: at-least-once from Kafka, exactly-once in Redis. Offsets are committed only below
frames whose points Redis acknowledged *and* whose session state is checkpointed
(:mod:`pipeline.checkpoint` explains the scheme); the committed prefix is also committed when
partitions are revoked (:class:`pipeline.kafka_io.FrameConsumer`). After a crash or a rebalance
the next owner restores each session from its checkpoint, skips frames the checkpoint covers and
recomputes the rest from the same state: same track ids, same timestamps, so Redis rejects the
replayed points and none is lost or doubled.

Any failure on one message sends that message to ``kafka.dlq_topic`` with the reason in the
``error`` header and the partition goes on: a malformed envelope (the reasons of
:mod:`pipeline.envelope`, refused by :class:`~pipeline.kafka_io.FrameConsumer`), and while it is
analysed ``track_error`` (face-tracking raised), ``inference_error`` (the models raised three
times), ``timeline_error`` (smoothing / point building raised), ``store_error`` (Redis refused
its points, e.g. an invalid stream id, or its session cannot be opened), ``partition_mismatch``
(a session's frames on two partitions), ``internal_error`` (decoding raised unexpectedly) and
``poison_pill`` (its processing began ``kafka.max_delivery_attempts`` times and the consumer
crashed each time, :mod:`pipeline.poison`). A Redis *outage* (connection lost, LOADING, OOM,
READONLY, ...) is not a message failure: the session waits and retries.

Memory: decoded images polled and not yet face-tracked count against
``kafka.max_inflight_frame_bytes`` per consumer; at the budget the consumer pauses its
partitions (``KafkaConsumer.pause``) and resumes below it, and a poll never asks for more
max-size frames than the budget has room for.

Metrics: the consumer actors push their Prometheus registry to Redis once a second and the API's
``/metrics`` renders the cluster-wide totals (:mod:`pipeline.metrics_agg`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import dataclasses
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from affectstream.pipeline import metrics
from affectstream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

APP_NAME = "affectstream"
"""Serve application name of the service (the k8s serveConfigV2 uses the same)."""

RESULT_SCHEMA = "affect.point.v1"
"""``schema`` header of the messages on ``kafka.result_topic``."""

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

Infer = Callable[[Any], Awaitable[Any]]
"""``infer(InferRequest) -> awaitable InferResult`` (a Serve handle's ``remote`` or a local
stand-in)."""


# --------------------------------------------------------------------------------------------
# the consumer


@dataclasses.dataclass
class _Item:
    """One frame between the track and the write coroutine of its session."""

    frame: Any             # pipeline.kafka_io.ConsumedFrame
    tracked: Any           # operators.facetrack.TrackedFrame
    infer: asyncio.Future | None
    stage_blob: bytes      # face-track state right after this frame (for a checkpoint)


_COUNTS = ("frames", "points", "duplicates", "skipped", "checkpoints", "errors")


class _Session:
    """In-memory state of one session in one consumer."""

    def __init__(self, sid: str, tp: Any, stage: Any, builder: Any, max_in_flight: int) -> None:
        self.sid = sid
        self.tp = tp
        self.source = f"{tp.topic}:{tp.partition}"
        self.stage = stage
        self.builder = builder
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue(maxsize=max_in_flight)
        self.held = 0              # frames routed here and not yet written / skipped
        self.held_bytes = 0        # decoded image bytes routed here, not yet face-tracked
        self.broken: str | None = None  # the session could not be opened: its frames -> DLQ
        self.last_offset = -1      # newest offset routed here
        self.skip_upto = -1        # frames at or below this are covered by the checkpoint
        self.pending: list[int] = []  # offsets written, not yet covered by a checkpoint
        self.last_item: _Item | None = None
        self.last_ckpt = time.monotonic()
        self.last_frame_at = time.monotonic()
        self.results_unflushed = False
        self.received: dict[int, float] = {}  # offset -> epoch s when polled
        self.dead = False
        self.task: asyncio.Task | None = None
        # keys fixed up front: stats() may copy it while the sink thread increments
        self.counts: collections.Counter[str] = collections.Counter(dict.fromkeys(_COUNTS, 0))


def point_json(p: Any) -> dict[str, Any]:
    """A timeline point as the JSON body of a result-topic message (NaN -> null)."""
    def num(x: float | None) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    box = [float(v) for v in p.bbox_xyxy]
    return {"session_id": p.session_id, "track_id": p.track_id, "ts_ms": p.ts_ms,
            "pts_ms": p.pts_ms, "emotion": p.emotion, "emotion_probs": p.emotion_probs,
            "au_intensity": p.au_intensity,
            "bbox_xyxy": None if any(math.isnan(v) for v in box) else box,
            "det_score": num(p.det_score), "saliency": p.saliency, "valence": num(p.valence),
            "arousal": num(p.arousal)}


_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)

class _Attempts:
    """:class:`pipeline.poison.DeliveryAttempts` of a consumer with Redis outages waited out
    (what :class:`pipeline.kafka_io.FrameConsumer` and the session pipelines call)."""

    def __init__(self, store: Any, retry: Callable) -> None:
        self.store = store
        self._retry = retry

    def begin(self, topic: Any, partition: int | None = None, offset: int | None = None) -> int:
        if partition is None:  # a ConsumedFrame
            topic, partition, offset = topic.topic, topic.partition, topic.offset
        return self._retry("poison-pill count", self.store.begin, topic, partition, offset)

    def step_done(self, topic: str, partition: int, offset: int) -> None:
        self._retry("poison-pill count", self.store.step_done, topic, partition, offset)

    def finish(self, topic: Any, partition: int | None = None, offset: int | None = None) -> None:
        if partition is None:
            topic, partition, offset = topic.topic, topic.partition, topic.offset
        self._retry("poison-pill count", self.store.finish, topic, partition, offset)


def _retryable(e: BaseException) -> bool:
    """Inference errors worth retrying: the replica died, is restarting or is overloaded (not an
    exception raised by the inference code itself)."""
    import ray

    return not isinstance(e, ray.exceptions.RayTaskError)


class KafkaStream:
    """One Kafka consumer of the service with per-session analysis state (module docstring).

    Plain Python around asyncio; :class:`KafkaIngest` runs one per Serve replica. Blocking work
    runs on single-thread executors: ``kafka`` (every call on the consumer), ``facetrack``
    (detection, tracking, landmarks, crops), ``sink`` (smoothing, Redis writes, checkpoints,
    result produce) and ``metrics`` (the push to Redis).

    Args:
        cfg: configuration (``kafka``, ``redis``, ``detect``, ``track``, ``smooth``, ...).
        redis_url: Redis for timelines, checkpoints and metrics.
        infer: sends one frame's crops to inference, see :data:`Infer`.
        instance: name of this consumer in logs, metrics and the Kafka client id.
        torch_threads: intra-op threads for face-tracking (default ``inference.torch_threads``
            or 1).
        consumer_kw: extra ``KafkaConsumer`` settings.

    Redis unreachable is waited for with backoff up to ``redis.outage_tolerance_s`` (the session
    waits, nothing is skipped; :mod:`pipeline.redis_retry`), inference unreachable is retried
    with backoff; a broker that does not answer at start is retried until ``stop``.
    """

    def __init__(self, cfg: PipelineConfig, redis_url: str, infer: Infer, *,
                 instance: str | None = None, torch_threads: int | None = None,
                 consumer_kw: dict[str, Any] | None = None) -> None:
        import redis
        import torch

        from affectstream.operators.analyze import FaceAnalyzer
        from affectstream.operators.facetrack import FaceTrackStage
        from affectstream.pipeline.checkpoint import CheckpointStore, load_key
        from affectstream.pipeline.metrics_agg import RedisMetricsPusher
        from affectstream.pipeline.poison import DeliveryAttempts
        from affectstream.pipeline.redis_store import RedisSink, connect

        self.cfg = cfg
        self.k = cfg.kafka
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self._infer = infer
        self._consumer_kw = dict(consumer_kw or {})
        threads = torch_threads or cfg.inference.torch_threads or 1
        torch.set_num_threads(threads)
        self.labels = tuple(FaceAnalyzer.card_for(cfg.inference.fer_model).label_names)
        self._base = FaceTrackStage.from_config(cfg)  # detector + landmarker shared by sessions
        self._base.warmup()
        rc = cfg.redis
        # no PING here: Redis down at start is retried like Redis down later
        self.redis = connect(redis_url, rc.password, socket_timeout=10, socket_connect_timeout=5)
        self.sink = RedisSink(self.redis, rc.key_prefix, rc.maxlen, rc.retention_ms,
                              rc.session_ttl_s)
        self.ckpts = CheckpointStore(
            redis.Redis.from_url(redis_url, password=rc.password, decode_responses=False,
                                 socket_timeout=10, socket_connect_timeout=5),
            rc.key_prefix, ttl_s=rc.session_ttl_s, key=load_key(cfg.kafka.checkpoint_key_file))
        self.attempts = _Attempts(DeliveryAttempts(self.redis, rc.key_prefix), self._retry)
        self.pusher = RedisMetricsPusher(self.redis, rc.key_prefix, instance=self.instance)
        self._models = cfg.inference.fer_model + "," + cfg.inference.au_model
        self._digest = cfg.digest()
        self.consumer: Any = None
        self.results: Any = None
        self._sessions: dict[str, _Session] = {}
        self._closing: dict[str, asyncio.Task] = {}
        self._pools = {name: concurrent.futures.ThreadPoolExecutor(1, f"ingest-{name}")
                       for name in ("kafka", "facetrack", "sink", "metrics")}
        self._push_fut: concurrent.futures.Future | None = None
        self._pools["facetrack"].submit(torch.set_num_threads, threads).result()
        self._abort = False
        self._fatal: BaseException | None = None
        self._paused = False
        self._held_bytes = 0  # decoded image bytes polled and not yet face-tracked
        self._frame_bytes_max = cfg.kafka.max_pixels * 3  # the largest frame polling may bring
        self.frame_log: collections.deque[tuple] | None = None  # see record_frames()
        self.totals: collections.Counter[str] = collections.Counter(
            dict.fromkeys(_COUNTS + ("dead_lettered",), 0))
        self.state = "starting"

    # -- executors --
    async def _run_in(self, pool: str, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pools[pool], fn, *args)

    def _retry(self, what: str, fn: Callable, *args: Any) -> Any:
        """Call ``fn`` under the shared Redis outage policy (:mod:`pipeline.redis_retry`):
        waits up to ``redis.outage_tolerance_s``, then raises ``RedisOutage`` (the session
        fails, the consumer loop ends and Serve restarts the replica from the last commit)."""
        from affectstream.pipeline.redis_retry import call_redis

        return call_redis(fn, *args, what=f"{self.instance}: {what}",
                          tolerance_s=self.cfg.redis.outage_tolerance_s,
                          abort=lambda: self._abort)

    # -- lifecycle --
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then drain, checkpoint, commit and leave the group.

        Raises:
            Exception: an unexpected failure of a session pipeline (a bug); the caller should
                restart the consumer, which resumes from the committed offsets.
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
        if self._fatal is not None:
            raise self._fatal

    async def _warm_inference(self, stop: asyncio.Event) -> None:
        """One empty request: the inference deployment answers before the first frame."""
        from affectstream.pipeline.inference import InferRequest

        h, w = self._base.crop.size
        req = InferRequest(np.zeros((0, h, w), np.uint8), None)
        delay = 0.5
        while not stop.is_set():
            try:
                await self._infer(req)
                return
            except Exception as e:  # noqa: BLE001  (the deployment may still be starting)
                log.warning("%s: inference not reachable yet (%s: %s)", self.instance,
                            type(e).__name__, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _make_consumer(self) -> Any:
        from affectstream.pipeline.kafka_io import FrameConsumer, make_producer

        kw = {"max_poll_interval_ms": self.k.max_poll_interval_ms,
              "fetch_max_wait_ms": self.k.fetch_max_wait_ms, **self._consumer_kw}
        consumer = FrameConsumer(self.k, client_id=f"affectstream-{self.instance}",
                                 consumer_kw=kw, attempts=self.attempts)
        if self.k.result_topic and self.results is None:
            self.results = make_producer(cfg=self.k)
        return consumer

    async def _connect(self, stop: asyncio.Event) -> None:
        from affectstream.pipeline.kafka_io import BrokerUnavailable

        delay = 1.0
        while not stop.is_set():
            try:
                self.consumer = await self._run_in("kafka", self._make_consumer)
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
        while not stop.is_set() and self._fatal is None:
            held = sum(s.held for s in self._sessions.values())
            room = k.max_inflight_frame_bytes - self._held_bytes
            want_pause = held >= k.max_buffered_frames or room <= 0
            if want_pause or self._paused:
                await self._run_in("kafka", self._pause, want_pause)
            # a poll may bring max_pixels-sized frames only: it never decodes past the budget
            budget = max(1, min(64, k.max_buffered_frames - held,
                                room // self._frame_bytes_max))
            try:
                frames = await self._run_in("kafka", self.consumer.poll, 100, budget)
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
                    self._push_fut = self._pools["metrics"].submit(self._push_metrics)
            if now >= due["lag"]:
                due["lag"] = now + 5.0
                await self._run_in("kafka", self._lag)
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
        from affectstream.pipeline.kafka_io import KafkaIOError

        try:
            await self._run_in("kafka", self.consumer.commit)
        except KafkaIOError as e:
            log.warning("%s: %s", self.instance, e)

    def _push_metrics(self) -> None:
        try:
            self.pusher.push()
        except Exception as e:  # noqa: BLE001  (metrics never stop the stream)
            log.warning("%s: metrics push failed (%s: %s)", self.instance, type(e).__name__, e)

    # -- routing --
    def _route(self, f: Any, assigned: set) -> None:
        if f.tp not in assigned:  # revoked since this poll fetched it: its next owner reads it
            return
        sid = f.envelope.session_id
        s = self._sessions.get(sid)
        if s is not None and s.tp != f.tp:
            self._dead_letter(f, "partition_mismatch",
                              f"session {sid!r} is on {s.source}; message on "
                              f"{f.topic}:{f.partition} (key it by session_id)")
            return
        if s is not None and f.offset <= s.last_offset:
            # the partition was re-assigned and re-read from the committed offset
            self._drop(s, f"offset {f.offset} re-delivered")
            s = None
        if s is None:
            s = self._start_session(sid, f.tp)
        s.last_offset = f.offset
        s.last_frame_at = time.monotonic()
        s.held += 1
        s.held_bytes += f.image.nbytes
        self._held_bytes += f.image.nbytes
        s.received[f.offset] = time.time()
        s.inbox.put_nowait(f)

    def _dead_letter(self, f: Any, reason: str, detail: str) -> None:
        rec = types.SimpleNamespace(topic=f.topic, partition=f.partition, offset=f.offset,
                                    key=f.envelope.session_id.encode(), value=b"",
                                    headers=f.envelope.headers())
        fut = self.consumer.dead_letter.send(rec, reason, detail)
        self.totals["dead_lettered"] += 1
        fut.add_callback(lambda _md: self.consumer.ack(f))

    def _new_stage(self) -> Any:
        from affectstream.operators.facetrack import FaceTrackStage

        b = self._base
        return FaceTrackStage(b.detector, copy.deepcopy(b.tracker), b.landmarker, b.crop,
                              b.min_face_px, b.min_presence, b.detect_interval_ms)

    def _new_builder(self) -> Any:
        from affectstream.operators.smoothing import Smoother
        from affectstream.operators.timeline import TimelineBuilder

        s = self.cfg.smooth
        return TimelineBuilder(Smoother(s.emotion_half_life_ms, s.au_min_cutoff_hz, s.au_beta,
                                        s.au_d_cutoff_hz, s.label_hysteresis, s.reset_gap_ms),
                               self.labels)

    def _start_session(self, sid: str, tp: Any) -> _Session:
        s = _Session(sid, tp, self._new_stage(), self._new_builder(), self.cfg.max_in_flight)
        prev = self._closing.pop(sid, None)
        s.task = asyncio.get_running_loop().create_task(self._session_main(s, prev))
        self._sessions[sid] = s
        return s

    def _drop(self, s: _Session, why: str) -> None:
        """Forget a session now (its partition moved, or it is being re-read); its unfinished
        frames are not acknowledged, so they are read again from the committed offset."""
        log.info("%s: session %s dropped (%s)", self.instance, s.sid, why)
        s.dead = True
        self._held_bytes -= s.held_bytes
        s.held_bytes = 0
        if self._sessions.get(s.sid) is s:
            del self._sessions[s.sid]
        if s.task is not None:
            s.task.cancel()
            self._closing[s.sid] = s.task
            s.task.add_done_callback(lambda t, sid=s.sid: self._forget_closing(sid, t))

    def _forget_closing(self, sid: str, task: asyncio.Task) -> None:
        if self._closing.get(sid) is task:
            del self._closing[sid]

    def _evict_idle(self, now: float) -> None:
        for s in list(self._sessions.values()):
            if s.held == 0 and now - s.last_frame_at > self.k.session_idle_s:
                del self._sessions[s.sid]
                s.inbox.put_nowait(None)
                t = asyncio.get_running_loop().create_task(self._retire(s))
                self._closing[s.sid] = t
                t.add_done_callback(lambda t, sid=s.sid: self._forget_closing(sid, t))

    async def _retire(self, s: _Session) -> None:
        """Let an idle session checkpoint and end (status ``ended``); its keys get the session
        TTL. A later frame of the session resumes it (status ``running``)."""
        await asyncio.wait([s.task])
        if not s.task.cancelled() and s.task.exception() is None:
            await self._run_in("sink", self._retry, "end session", self.sink.end_session,
                               s.sid, "ended")
            log.info("%s: session %s idle; state freed", self.instance, s.sid)

    # -- per-session pipeline --
    async def _session_main(self, s: _Session, prev: asyncio.Task | None) -> None:
        try:
            if prev is not None:
                await asyncio.wait([prev])
            try:
                await self._run_in("sink", self._open_session, s)
            except Exception as e:  # noqa: BLE001  (not an outage: _retry waits those out)
                log.error("%s: session %s cannot be opened (%s: %s); its frames go to the DLQ",
                          self.instance, s.sid, type(e).__name__, e)
                s.broken = f"{type(e).__name__}: {e}"
            await asyncio.gather(self._track_loop(s), self._write_loop(s))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug: restart the consumer (replays from the last commit)
            log.exception("%s: session %s failed", self.instance, s.sid)
            self._fatal = self._fatal or e

    def _open_session(self, s: _Session) -> None:
        from affectstream.pipeline.checkpoint import (CheckpointError, reject, restore_builder,
                                                      restore_stage)

        ck = self._retry("load checkpoint", self.ckpts.load, s.sid)
        if ck is not None and ck.source == s.source:
            try:
                restore_stage(s.stage, ck.stage)
                restore_builder(s.builder, ck.builder)
                s.skip_upto = ck.offset
                log.info("%s: session %s resumes after %s@%d", self.instance, s.sid, ck.source,
                         ck.offset)
            except Exception as e:  # noqa: BLE001  (a state that does not fit: start blank)
                reason = e.reason if isinstance(e, CheckpointError) else "restore"
                reject(s.sid, reason, f"{type(e).__name__}: {e}"[:200])
                s.stage, s.builder = self._new_stage(), self._new_builder()
        elif ck is not None:
            log.warning("%s: session %s was on %s and is now on %s: starting blank",
                        self.instance, s.sid, ck.source, s.source)
        self._retry("start session", self.sink.start_session, s.sid, f"kafka:{s.tp.topic}",
                    self._models, self._digest)
        self._retry("persist keys", self._persist_keys, s.sid)

    def _persist_keys(self, sid: str) -> None:
        """Clear the TTL an idle period put on the session's keys (it is streaming again)."""
        k = self.sink.k
        p = self.redis.pipeline(transaction=False)
        p.persist(k.tracks(sid))
        for t in self.redis.zrange(k.tracks(sid), 0, -1):
            p.persist(k.track(sid, int(t)))
        p.execute()

    async def _track_loop(self, s: _Session) -> None:
        from affectstream.pipeline.inference import InferRequest

        while True:
            f = await s.inbox.get()
            if f is None:
                await s.outbox.put(None)
                return
            if s.broken is not None:
                self._release(s, f)
                s.held -= 1
                self._dead_letter(f, "store_error", f"session cannot be opened: {s.broken}")
                continue
            if f.offset <= s.skip_upto:
                self._release(s, f)  # covered by the checkpoint: points already stored
                s.received.pop(f.offset, None)
                s.held -= 1
                s.counts["skipped"] += 1
                self.totals["skipped"] += 1
                metrics.REPLAY_SKIPPED.inc()
                self.consumer.ack(f)
                continue
            try:
                tracked, blob = await self._run_in("facetrack", self._track, s, f)
            except Exception as e:  # noqa: BLE001  (one frame never stops the session)
                log.exception("%s: face-tracking %s@%d of %s failed", self.instance, f.topic,
                              f.offset, s.sid)
                self._release(s, f)
                s.held -= 1
                self._dead_letter(f, "track_error", f"{type(e).__name__}: {e}")
                await self._run_in("sink", self.attempts.finish, f)
                continue
            self._release(s, f)
            f = dataclasses.replace(f, image=_NO_IMAGE)  # the crops are all that is needed now
            fut = None
            if len(tracked.faces):
                fut = asyncio.ensure_future(
                    self._infer_retry(InferRequest(tracked.crops, tracked.points01)))
            await s.outbox.put(_Item(f, tracked, fut, blob))

    def _release(self, s: _Session, f: Any) -> None:
        """The frame's decoded image leaves the in-flight byte budget."""
        if not s.dead:
            s.held_bytes -= f.image.nbytes
            self._held_bytes -= f.image.nbytes

    def _track(self, s: _Session, f: Any) -> tuple[Any, bytes]:
        from affectstream.pipeline.checkpoint import snapshot_stage

        self.attempts.begin(f)  # a crash from here on is counted
        e = f.envelope
        frame = f.to_frame(None if e.pts_ms is not None else e.ts_ms)
        tracked = s.stage.process(frame, {"t_wall": time.time(), "decode_ms": 0.0})
        return tracked, snapshot_stage(s.stage)

    async def _infer_retry(self, req: Any) -> Any:
        delay, failures = 0.5, 0
        while True:
            try:
                return await self._infer(req)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                failures += 1
                if not _retryable(e) and failures >= 3:
                    log.error("%s: inference failed on a frame 3 times (%s); it goes to the "
                              "DLQ", self.instance, e)
                    return None
                if self._abort:  # shutting down: the frame is read again by the next owner
                    raise asyncio.CancelledError
                log.warning("%s: inference failed (%s: %s); retrying in %.1f s", self.instance,
                            type(e).__name__, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _write_loop(self, s: _Session) -> None:
        interval = self.k.checkpoint_interval_ms / 1000
        while True:
            if s.pending:
                wait = max(0.0, s.last_ckpt + interval - time.monotonic())
                try:
                    item = await asyncio.wait_for(s.outbox.get(), wait)
                except TimeoutError:  # nothing new for a while: cover what is written
                    await self._checkpoint(s)
                    continue
            else:
                item = await s.outbox.get()
            if item is None:
                if s.pending:
                    await self._checkpoint(s)
                return
            res = await item.infer if item.infer is not None else None
            written = await self._run_in("sink", self._write, s, item, res)
            s.held -= 1
            if not written:  # dead-lettered: the DLQ delivery acknowledges it
                continue
            s.pending.append(item.frame.offset)
            s.last_item = item
            if time.monotonic() - s.last_ckpt >= interval:
                await self._checkpoint(s)

    def _write(self, s: _Session, item: _Item, res: Any) -> bool:
        """Build, store (and produce) one frame's points; False when it went to the DLQ."""
        tracked = item.tracked
        timings = dict(tracked.timings_ms)
        timings.pop("decode", None)
        recv = s.received.pop(item.frame.offset, None)
        if recv is not None:  # publish -> polled here; polled -> face-tracking starts
            timings["kafka"] = max(0.0, recv * 1000 - tracked.ts_ms)
            timings["queued"] = max(0.0, (tracked.t_wall - recv) * 1000)
        points: list = []
        fail: tuple[str, str] | None = None
        if len(tracked.faces) and res is None:
            fail = ("inference_error", "inference failed 3 times on this frame")
        else:
            try:
                if res is not None:
                    timings.update(res.timings_ms)
                    probs, sal, au = res.probs, res.saliency, res.au
                else:
                    probs = np.zeros((0, len(self.labels)), np.float32)
                    sal = au = None
                s.builder.end_tracks(tracked.ended_tracks)
                t0 = time.perf_counter()
                points = s.builder.build(s.sid, tracked.ts_ms, tracked.pts_ms, tracked.faces,
                                         probs, sal, au)
                timings["au+smooth"] = (time.perf_counter() - t0) * 1000
            except Exception as e:  # noqa: BLE001  (one bad frame never stops the session)
                log.exception("%s: frame %s@%d of %s failed", self.instance, item.frame.topic,
                              item.frame.offset, s.sid)
                fail = ("timeline_error", f"{type(e).__name__}: {e}")
        if tracked.error:
            s.counts["errors"] += 1
            self.totals["errors"] += 1
        t0 = time.perf_counter()
        if fail is None:
            try:
                wr = self._retry("Redis write", self.sink.write, points)
            except Exception as e:  # noqa: BLE001  (Redis refused this frame's points, e.g. an
                # invalid stream id; an outage is waited out by _retry and never lands here)
                if self._abort:
                    raise
                fail = ("store_error", f"{type(e).__name__}: {e}")
        if fail is not None:
            log.warning("%s: %s@%d of %s dead-lettered (%s: %s)", self.instance,
                        item.frame.topic, item.frame.offset, s.sid, *fail)
            s.counts["errors"] += 1
            self.totals["errors"] += 1
            self._dead_letter(item.frame, *fail)
            self.attempts.finish(item.frame)
            return False
        self.attempts.finish(item.frame)
        now = time.time()
        timings["sink"] = (time.perf_counter() - t0) * 1000
        if self.results is not None and points:
            self._produce(s, points)
        e2e = now * 1000 - tracked.ts_ms
        if self.frame_log is not None:
            self.frame_log.append((s.sid, tracked.ts_ms, round(e2e, 3), len(points),
                                   {k: round(v, 3) for k, v in timings.items()}))
        s.counts["frames"] += 1
        s.counts["points"] += wr.written
        s.counts["duplicates"] += wr.duplicates
        self.totals["frames"] += 1
        self.totals["points"] += wr.written
        self.totals["duplicates"] += wr.duplicates
        metrics.FRAMES_ANALYSED.inc()
        metrics.FACES.inc(len(points))
        metrics.POINTS_WRITTEN.inc(wr.written)
        metrics.POINTS_DUPLICATE.inc(wr.duplicates)
        if res is not None and res.first_in_batch:
            metrics.BATCH_SIZE.observe(res.batch_faces)
        for k, v in timings.items():
            metrics.STAGE_LATENCY_MS.labels(stage=k).observe(v)
        metrics.STAGE_LATENCY_MS.labels(stage="publish_to_redis").observe(max(0.0, e2e))
        return True

    def _produce(self, s: _Session, points: list) -> None:
        key = s.sid.encode()
        for p in points:
            headers = [("schema", RESULT_SCHEMA.encode()), ("session_id", key),
                       ("track_id", str(p.track_id).encode()), ("ts_ms", str(p.ts_ms).encode())]
            fut = self.results.send(self.k.result_topic, key=key,
                                    value=json.dumps(point_json(p)).encode(), headers=headers)
            fut.add_errback(lambda e: log.error("result produce failed: %s", e))
        s.results_unflushed = True

    async def _checkpoint(self, s: _Session) -> None:
        offsets = list(s.pending)
        await self._run_in("sink", self._save_checkpoint, s, s.last_item)
        if not s.dead:
            for o in offsets:
                self.consumer.ack(s.tp, o)
        del s.pending[:len(offsets)]
        s.last_ckpt = time.monotonic()

    def _save_checkpoint(self, s: _Session, item: _Item) -> None:
        from affectstream.pipeline.checkpoint import Checkpoint, snapshot_builder

        t0 = time.perf_counter()
        if s.results_unflushed:  # result messages acknowledged before their offsets move on
            self.results.flush(timeout=30)
            s.results_unflushed = False
        e = item.frame.envelope
        ck = Checkpoint(s.source, item.frame.offset, e.seq, e.ts_ms, item.stage_blob,
                        snapshot_builder(s.builder))
        self._retry("checkpoint", self.ckpts.save, s.sid, ck)
        s.counts["checkpoints"] += 1
        self.totals["checkpoints"] += 1
        metrics.CHECKPOINTS.inc()
        metrics.STAGE_LATENCY_MS.labels(stage="checkpoint").observe(
            (time.perf_counter() - t0) * 1000)

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
                self._abort = True
                for t in late:
                    t.cancel()
                await asyncio.wait(late, timeout=5)
        self._abort = True
        self._sessions.clear()
        try:
            await self._run_in("kafka", self.consumer.close)
        except Exception as e:  # noqa: BLE001
            log.warning("%s: closing the consumer failed: %s", self.instance, e)
        if self.results is not None:
            await self._run_in("kafka", self.results.close, 10)
        metrics.SESSIONS_ACTIVE.set(0)
        try:
            await asyncio.wait_for(self._run_in("metrics", self._push_metrics), 10)
        except TimeoutError:
            pass
        for p in self._pools.values():
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
            "held_bytes": self._held_bytes, "paused": self._paused,
            "assignment": sorted(f"{tp.topic}:{tp.partition}" for tp in c.assignment())
            if c is not None else [],
            "sessions": {sid: dict(s.counts, held=s.held) for sid, s in self._sessions.items()},
            **dict(self.totals)}
        if c is not None:
            out.update(polled=c.stats.polled, dead_lettered=c.stats.dead_lettered
                       + self.totals["dead_lettered"], commits=c.stats.commits)
        if frames:
            out["frames_log"] = list(self.frame_log or ())
        from affectstream.pipeline.redis_retry import STATE

        out["redis"] = STATE.snapshot()  # {"waiting": True, "waiting_s": ...} during an outage
        return out


# --------------------------------------------------------------------------------------------
# Serve deployments

try:
    from ray import serve
except ImportError:  # pragma: no cover
    serve = None  # type: ignore[assignment]

if serve is not None:

    @serve.deployment(name="KafkaIngest", ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=16, graceful_shutdown_timeout_s=40,
                      graceful_shutdown_wait_loop_s=0.5, health_check_period_s=5,
                      health_check_timeout_s=60)
    class KafkaIngest:
        """One Kafka consumer of the service per replica (``num_replicas = kafka.consumers``).

        Args:
            config / overrides: as for :class:`pipeline.api.QueryAPI` (resolved in the replica).
            inference: handle of the ``Inference`` deployment of the same application.
        """

        async def __init__(self, config: str | None = None,
                           overrides: dict[str, Any] | None = None,
                           inference: Any = None) -> None:
            import ray

            from affectstream.pipeline.api import _resolve
            from affectstream.pipeline.ray_net import serve_replica_on_loopback

            serve_replica_on_loopback()
            cfg = _resolve(config, overrides or {})
            try:
                from ray.serve._private.constants import SERVE_NAMESPACE
            except ImportError:  # pragma: no cover
                SERVE_NAMESPACE = "serve"  # noqa: N806
            self.actor_name = ray.get_runtime_context().get_actor_name()
            self.namespace = SERVE_NAMESPACE  # where Serve keeps its replica actors
            self.inference = inference
            self.worker = await asyncio.to_thread(
                KafkaStream, cfg, cfg.redis.url or DEFAULT_REDIS_URL, self._infer)
            self.stop = asyncio.Event()
            self.task = asyncio.get_running_loop().create_task(self.worker.run(self.stop))

        async def _infer(self, req: Any) -> Any:
            return await self.inference.remote(req)

        async def stats(self, frames: bool = False) -> dict[str, Any]:
            """This replica's :meth:`KafkaStream.stats` plus its Ray actor name and namespace
            (``ray.get_actor(name, namespace=...)`` finds it)."""
            return {**self.worker.stats(frames), "actor_name": self.actor_name,
                    "namespace": self.namespace}

        async def record_frames(self, n: int) -> dict[str, Any]:
            """:meth:`KafkaStream.record_frames`; returns ``{"actor_name": ...}``."""
            self.worker.record_frames(n)
            return {"actor_name": self.actor_name}

        async def check_health(self) -> None:
            if self.task.done():
                exc = None if self.task.cancelled() else self.task.exception()
                raise RuntimeError(f"Kafka consumer loop ended: {exc!r}")

        async def __del__(self) -> None:  # Serve's graceful shutdown: drain, commit, leave
            self.stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=35)
            except Exception as e:  # noqa: BLE001
                log.warning("KafkaIngest shutdown: %s", e)


def service_deployments(cfg: PipelineConfig, config: str | None,
                        overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``Inference`` and ``KafkaIngest`` deployments of the service, bound (for
    :func:`pipeline.api.build_app`). ``config``/``overrides`` travel to the replicas, which
    resolve them in their own environment; ``cfg`` (resolved by the caller) sizes them."""
    from affectstream.pipeline.inference import Inference

    i = cfg.inference
    inference = Inference.options(
        num_replicas=i.num_replicas, max_ongoing_requests=max(8, 2 * i.max_batch_size),
        user_config={"max_batch_size": i.max_batch_size,
                     "batch_wait_timeout_s": i.batch_wait_timeout_s},
    ).bind(i.fer_model, i.saliency, i.au_model, i.device, i.half, i.torch_threads or 1,
           i.max_batch_size, i.batch_wait_timeout_s)
    ingest = KafkaIngest.options(num_replicas=cfg.kafka.consumers).bind(
        config, overrides, inference=inference)
    return {"inference": inference, "ingest": ingest}


# --------------------------------------------------------------------------------------------
# local service (``affectstream serve``)


@dataclasses.dataclass
class Service:
    """A running service started by :func:`start_service` in this Ray cluster.

    Attributes:
        cfg: its configuration.
        app_name: Serve application name.
        url: base URL of the HTTP API.
    """

    cfg: PipelineConfig
    app_name: str
    url: str
    secrets_dir: str | None = None

    def ingest_handle(self) -> Any:
        return serve.get_deployment_handle("KafkaIngest", app_name=self.app_name)

    def call_consumers(self, method: str, *args: Any, timeout_s: float = 30.0
                       ) -> list[dict[str, Any]]:
        """Call a :class:`KafkaIngest` method on every consumer replica. Serve routes each call
        to one replica, so this calls until every replica answered (told apart by
        ``actor_name``) or ``timeout_s`` passed."""
        h = self.ingest_handle()
        seen: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < self.cfg.kafka.consumers and time.monotonic() < deadline:
            r = getattr(h, method).remote(*args).result(timeout_s=timeout_s)
            seen[r["actor_name"]] = r
        return list(seen.values())

    def stats(self, frames: bool = False, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """:meth:`KafkaIngest.stats` of every consumer replica."""
        return self.call_consumers("stats", frames, timeout_s=timeout_s)

    def stop(self) -> None:
        """Delete the application: consumers drain, checkpoint, commit and leave the group."""
        try:
            serve.delete(self.app_name)
        finally:
            if self.secrets_dir:
                import shutil

                shutil.rmtree(self.secrets_dir, ignore_errors=True)


def _quiet() -> dict[str, Any]:
    return {"log_level": "WARNING", "enable_access_log": False}


def start_service(cfg: PipelineConfig, *, app_name: str = APP_NAME,
                  create_topics: bool = True) -> Service:
    """Start Ray (or join ``RAY_ADDRESS``), Serve's HTTP proxy on ``api.host:api.port`` and the
    service application; returns once every deployment is running.

    Args:
        cfg: configuration (already resolved: CLI flags and environment applied).
        app_name: Serve application name.
        create_topics: create ``kafka.topic`` (``kafka.consumers`` partitions), the DLQ and the
            result topic when they do not exist.

    Raises:
        pipeline.api.ApiConfigError: the API would bind beyond loopback without a token.
        pipeline.kafka_io.BrokerUnavailable: ``create_topics`` and no broker answers.
    """
    from affectstream.pipeline import dag
    from affectstream.pipeline.api import build_app, check_bind

    check_bind(cfg.api.host, cfg.api.auth_token)
    if create_topics:
        from affectstream.pipeline.kafka_io import client_kwargs, ensure_topics

        k = cfg.kafka
        ckw = {kk: v for kk, v in client_kwargs(k).items() if kk != "bootstrap_servers"}
        ensure_topics(k.bootstrap, [k.topic], max(1, k.consumers), **ckw)
        ensure_topics(k.bootstrap, [t for t in (k.dlq_topic, k.result_topic) if t], 1, **ckw)
    dag.init_ray(cfg)
    serve.start(http_options={"host": cfg.api.host, "port": cfg.api.port},
                proxy_location="HeadOnly", logging_config=_quiet())
    # secrets reach the replicas as 0600 files in a private directory (this machine's local
    # cluster), never as deployment arguments; a joined cluster's nodes use their own env/files
    import tempfile

    from affectstream.pipeline.config import without_secrets, write_secrets_dir

    args: dict[str, Any] = {"config_json": without_secrets(cfg).model_dump_json(),
                            "host": cfg.api.host}
    sdir = None
    if not os.environ.get("RAY_ADDRESS"):
        sdir = tempfile.mkdtemp(prefix="affectstream-secrets-")
        if write_secrets_dir(cfg, sdir):
            args["secrets_dir"] = sdir
    try:
        serve.run(build_app(args), name=app_name, route_prefix="/", logging_config=_quiet())
    except BaseException:
        if sdir:
            import shutil

            shutil.rmtree(sdir, ignore_errors=True)
        raise
    host = "127.0.0.1" if cfg.api.host in ("0.0.0.0", "::") else cfg.api.host
    return Service(cfg, app_name, f"http://{host}:{cfg.api.port}", sdir)


def run_service(cfg: PipelineConfig, *, on_ready: Callable[[Service], None] | None = None
                ) -> None:
    """Run the service until SIGINT or SIGTERM, then shut it down cleanly (consumers drain,
    checkpoint and commit; Ray stops if this process started it).

    Args:
        cfg: configuration.
        on_ready: called once the service runs (e.g. to print where it listens).
    """
    from affectstream.pipeline import dag

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("signal %d: shutting down", signum)
        stop.set()

    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, on_signal) for s in sigs}
    try:
        svc = start_service(cfg)
        for s in sigs:  # Ray may have installed its own handlers meanwhile
            signal.signal(s, on_signal)
        if on_ready is not None:
            on_ready(svc)
        while not stop.wait(0.5):
            for s in sigs:  # Ray's late-starting threads may install native handlers: take back
                signal.signal(s, on_signal)
        svc.stop()
    finally:
        dag.shutdown()
        for s, h in old.items():
            signal.signal(s, h)
