"""One Kafka session on the session runner: checkpoints, acks, dead letters and retry policies.

:class:`KafkaSession` is the Kafka *source adapter* of
:class:`~affectstream.pipeline.runtime.runner.SessionRunner`: the consumer
(:mod:`pipeline.kafka.stream`) routes a session's frames to its inbox; the session restores its
state from the checkpoint, skips frames the checkpoint covers, counts each frame's delivery
attempt (:mod:`pipeline.kafka.poison`) and submits it to the runner, which tracks, infers, builds the
timeline and writes the points (Redis, and the result topic through a
:class:`~affectstream.pipeline.runtime.result_sink.TeeSink`). In frame order, the runner hands
back each frame's result: a failed one goes to the DLQ with its ``error_kind`` as reason; a
written one waits for a checkpoint, which covers exactly the written frames (the face-track state
right after the frame, ``snapshot_stage=True``), and only then is its offset acknowledged.

Redis outages and inference restarts are waited out by the consumer's retry policies
(:mod:`pipeline.kafka.retry`), never blamed on a frame.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from typing import Any

from affectstream.pipeline import metrics
from affectstream.pipeline.runtime.runner import FrameResult, SessionRunner, SinkOutage

log = logging.getLogger(__name__)

COUNTS = ("frames", "points", "duplicates", "skipped", "checkpoints", "errors")
"""Per-session and per-consumer counters (:meth:`KafkaStream.stats`)."""


@dataclasses.dataclass(frozen=True)
class Msg:
    """A frame's Kafka identity, without its image (the runner's ``tag``; dead letters).

    Attributes:
        tp: ``TopicPartition``; topic / partition / offset: the message's position.
        envelope: its validated metadata. nbytes: its decoded image's size, bytes.
        received: epoch s when polled. t_wall: epoch s when face-tracking was queued.
    """

    tp: Any
    topic: str
    partition: int
    offset: int
    envelope: Any
    nbytes: int
    received: float
    t_wall: float = 0.0


class KafkaSession:
    """In-memory state and the task of one session in one consumer (module docstring).

    Args:
        owner: the :class:`~affectstream.pipeline.kafka.stream.KafkaStream` (its config, pools, stores, sink, retry policies, DLQ and acks).
        sid: session id. tp: the partition its frames come from.
    """

    def __init__(self, owner: Any, sid: str, tp: Any) -> None:
        self.owner = owner
        self.sid = sid
        self.tp = tp
        self.source = f"{tp.topic}:{tp.partition}"
        self.inbox: asyncio.Queue = asyncio.Queue()  # (ConsumedFrame, polled at) or None
        self.runner: SessionRunner | None = None
        self.held = 0              # frames routed here and not yet written / skipped / DLQ'd
        self.held_bytes = 0        # decoded image bytes routed here, not yet face-tracked
        self.broken: str | None = None  # the session could not be opened: its frames -> DLQ
        self.last_offset = -1      # newest offset routed here
        self.skip_upto = -1        # frames at or below this are covered by the checkpoint
        self.pending: list[int] = []  # offsets written, not yet covered by a checkpoint
        self.last: FrameResult | None = None  # newest written frame (its stage state)
        self.last_ckpt = time.monotonic()
        self.last_frame_at = time.monotonic()
        self.end_status: str | None = None  # "ended" when retired idle; None: leave as is
        self.dead = False
        self.task: asyncio.Task | None = None
        # keys fixed up front: stats() may copy it while the sink thread increments
        self.counts: collections.Counter[str] = collections.Counter(dict.fromkeys(COUNTS, 0))

    # -- the consumer's side --
    def route(self, f: Any) -> None:
        """Queue a polled frame (a :class:`pipeline.kafka.frames.ConsumedFrame`)."""
        self.last_offset = f.offset
        self.last_frame_at = time.monotonic()
        self.held += 1
        self.held_bytes += f.image.nbytes
        self.owner.held_bytes += f.image.nbytes
        self.inbox.put_nowait((f, time.time()))

    def _release(self, nbytes: int) -> None:
        """A frame's decoded image leaves the in-flight byte budget."""
        if not self.dead:
            self.held_bytes -= nbytes
            self.owner.held_bytes -= nbytes

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] += n
        self.owner.totals[key] += n

    # -- the session task --
    async def main(self, prev: asyncio.Task | None) -> None:
        """Open, feed the runner until the inbox says stop, checkpoint and close."""
        o = self.owner
        try:
            if prev is not None:
                await asyncio.wait([prev])
            await self._open()
            await self._feed()
        except asyncio.CancelledError:
            if self.runner is not None:
                await self.runner.abort()
            raise
        except SinkOutage as e:
            if self.runner is not None:
                await self.runner.abort()
            if not o.retry.abort:
                log.exception("%s: session %s failed", o.instance, self.sid)
                o.fatal = o.fatal or e
            else:
                log.info("%s: session %s stopped (%s); unfinished frames are read again",
                         o.instance, self.sid, e)
        except Exception as e:  # a bug: restart the consumer (replays from the last commit)
            log.exception("%s: session %s failed", o.instance, self.sid)
            o.fatal = o.fatal or e

    async def _open(self) -> None:
        o = self.owner
        stage, builder = await o.run_in("sink", self._restore)
        runner = SessionRunner(
            self.sid, stage, builder, o.infer, o.sink, window=o.cfg.max_in_flight,
            track_pool=o.pools["facetrack"], sink_pool=o.pools["sink"],
            infer_retry=o.retry.infer, sink_retry=o.retry, on_result=self._on_result,
            on_tracked=lambda m: self._release(m.nbytes), snapshot_stage=True,
            saliency_interval_ms=o.cfg.inference.saliency_interval_ms)
        try:
            await runner.open(f"kafka:{self.tp.topic}", o.models, o.digest)
        except SinkOutage:
            raise
        except Exception as e:  # noqa: BLE001  (not an outage: the retry waits those out)
            log.error("%s: session %s cannot be opened (%s: %s); its frames go to the DLQ",
                      o.instance, self.sid, type(e).__name__, e)
            self.broken = f"{type(e).__name__}: {e}"
            return
        self.runner = runner

    def _restore(self) -> tuple[Any, Any]:
        """The session's face-track stage and timeline builder, from its checkpoint when one
        of this partition exists (sink thread)."""
        from affectstream.pipeline.kafka.checkpoint import (CheckpointError, reject, restore_builder,
                                                      restore_stage)
        from affectstream.pipeline.runtime.parts import new_builder, new_stage

        o = self.owner
        stage, builder = new_stage(o.cfg, o.base), new_builder(o.cfg, o.labels)
        ck = o.retry.call("load checkpoint", o.ckpts.load, self.sid)
        if ck is not None and ck.source == self.source:
            try:
                restore_stage(stage, ck.stage)
                restore_builder(builder, ck.builder)
                self.skip_upto = ck.offset
                log.info("%s: session %s resumes after %s@%d", o.instance, self.sid, ck.source,
                         ck.offset)
            except Exception as e:  # noqa: BLE001  (a state that does not fit: start blank)
                reason = e.reason if isinstance(e, CheckpointError) else "restore"
                reject(self.sid, reason, f"{type(e).__name__}: {e}"[:200])
                stage, builder = new_stage(o.cfg, o.base), new_builder(o.cfg, o.labels)
        elif ck is not None:
            log.warning("%s: session %s was on %s and is now on %s: starting blank",
                        o.instance, self.sid, ck.source, self.source)
        return stage, builder

    async def _feed(self) -> None:
        o = self.owner
        interval = o.cfg.kafka.checkpoint_interval_ms / 1000
        while True:
            if self.pending or self.held:
                wait = max(0.0, self.last_ckpt + interval - time.monotonic()) if self.pending \
                    else interval
                try:
                    item = await asyncio.wait_for(self.inbox.get(), wait)
                except TimeoutError:  # nothing new for a while: cover what is written
                    if self.pending and self.runner is not None:
                        await self.runner.drain()
                        await self.checkpoint()
                    continue
            else:
                item = await self.inbox.get()
            if item is None:
                break
            (f, polled), item = item, None  # only ``f`` refers to the image from here on
            msg = Msg(f.tp, f.topic, f.partition, f.offset, f.envelope, f.image.nbytes, polled)
            if self.broken is not None or f.offset <= self.skip_upto:
                self._release(msg.nbytes)
                self.held -= 1
                if self.broken is not None:
                    o.dead_letter(msg, "store_error", f"session cannot be opened: {self.broken}")
                else:  # covered by the checkpoint: its points are stored already
                    self._count("skipped")
                    metrics.REPLAY_SKIPPED.inc()
                    o.consumer.ack(msg.tp, msg.offset)
                continue
            await o.run_in("facetrack", o.attempts.begin, msg)  # a crash from here on counts
            msg = dataclasses.replace(msg, t_wall=time.time())
            pts = None if f.envelope.pts_ms is not None else f.envelope.ts_ms
            meta = {"t_wall": msg.t_wall, "decode_ms": 0.0}
            # ``f`` is rebound before the call runs: the runner holds the only reference to the
            # image and drops it right after tracking
            await self.runner.submit(f.to_frame(pts), meta, (f := msg))
        if self.runner is not None:
            await self.runner.drain()
            await self.checkpoint()
            await self.runner.close(self.end_status)

    # -- results, in frame order (the runner awaits this before writing the next frame) --
    async def _on_result(self, r: FrameResult) -> None:
        o, msg = self.owner, r.tag
        self.held -= 1
        if r.error_kind is not None:
            log.warning("%s: %s@%d of %s dead-lettered (%s: %s)", o.instance, msg.topic,
                        msg.offset, self.sid, r.error_kind, r.error)
            self._count("errors")
            o.dead_letter(msg, r.error_kind, r.error or r.error_kind)
            await o.run_in("sink", o.attempts.finish, msg)
            return
        await o.run_in("sink", o.attempts.finish, msg)
        self._account(r, msg)
        self.pending.append(msg.offset)
        self.last = r
        if time.monotonic() - self.last_ckpt >= o.cfg.kafka.checkpoint_interval_ms / 1000:
            await self.checkpoint()

    def _account(self, r: FrameResult, msg: Msg) -> None:
        """Counters, Prometheus metrics and the frame log of a written frame."""
        o = self.owner
        timings = dict(r.timings_ms)
        timings.pop("decode", None)
        timings["kafka"] = max(0.0, msg.received * 1000 - r.ts_ms)  # publish -> polled here
        timings["queued"] = max(0.0, (msg.t_wall - msg.received) * 1000)  # polled -> tracking
        e2e = time.time() * 1000 - r.ts_ms
        if o.frame_log is not None:
            o.frame_log.append((self.sid, r.ts_ms, round(e2e, 3), len(r.track_ids),
                                {k: round(v, 3) for k, v in timings.items()}))
        self._count("frames")
        self._count("points", r.written)
        self._count("duplicates", r.duplicates)
        metrics.FRAMES_ANALYSED.inc()
        metrics.FACES.inc(len(r.track_ids))
        metrics.POINTS_WRITTEN.inc(r.written)
        metrics.POINTS_DUPLICATE.inc(r.duplicates)
        if r.first_in_batch and r.batch_faces:
            metrics.BATCH_SIZE.observe(r.batch_faces)
        for k, v in timings.items():
            metrics.STAGE_LATENCY_MS.labels(stage=k).observe(v)
        metrics.STAGE_LATENCY_MS.labels(stage="publish_to_redis").observe(max(0.0, e2e))

    # -- checkpoints --
    async def checkpoint(self) -> None:
        """Store the state after the newest written frame, then acknowledge the frames it
        covers (called in frame order, or with the runner drained)."""
        if not self.pending or self.last is None:
            return
        offsets, last = list(self.pending), self.last
        await self.owner.run_in("sink", self._save, last)
        if not self.dead:
            for off in offsets:
                self.owner.consumer.ack(self.tp, off)
        del self.pending[:len(offsets)]
        self.last_ckpt = time.monotonic()

    def _save(self, r: FrameResult) -> None:
        from affectstream.pipeline.kafka.checkpoint import Checkpoint, encode_state, snapshot_builder

        o, msg = self.owner, r.tag
        t0 = time.perf_counter()
        o.sink.flush()  # result messages acknowledged before their offsets move on
        ck = Checkpoint(self.source, msg.offset, msg.envelope.seq, msg.envelope.ts_ms,
                        encode_state(r.stage_state), snapshot_builder(self.runner.builder))
        o.retry.call("checkpoint", o.ckpts.save, self.sid, ck)
        self._count("checkpoints")
        metrics.CHECKPOINTS.inc()
        metrics.STAGE_LATENCY_MS.labels(stage="checkpoint").observe(
            (time.perf_counter() - t0) * 1000)
