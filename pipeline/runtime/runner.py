"""The session runner: one session's frames -> face track -> batched inference -> timeline -> sink.

Plain Python on asyncio, no Ray: ``affectstream run`` places one runner per stream in a Ray
actor fed by a video source; ``affectstream serve`` places many runners (one per Kafka session)
in each consumer replica; tests drive it with an in-memory source and sink. Whatever the source,
this is the one place that owns the per-session logic:

- **order**: frames are face-tracked one after another (the tracker is stateful) and their points
  are written in submission order, although inference requests of several frames are in flight
  at once;
- **backpressure**: at most ``window`` frames are between :meth:`SessionRunner.submit` and the
  sink; ``submit`` waits when the window is full, so a slow stage slows the source;
- **errors**: a frame whose tracking, inference or timeline step fails is counted and yields no
  points; the session goes on (the same frame fails the same way on a replay);
- **retries**: inference and sink calls go through the injected policies (one outage policy for
  every placement);
- **checkpoints**: with ``snapshot_stage=True`` each result carries the face-track state right
  after its frame, so a caller can store a checkpoint that covers exactly the written frames.

Blocking steps (face tracking, timeline + sink) run on executors given by the placement, so one
consumer can share one face-tracking thread between its sessions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from affectstream.operators.facetrack import FaceTrackStage, TrackedFrame
from affectstream.operators.records import Frame, TimelinePoint
from affectstream.operators.timeline import TimelineBuilder
from affectstream.pipeline.runtime.batch import InferRequest, InferResult

log = logging.getLogger(__name__)

Infer = Callable[[InferRequest], Awaitable[InferResult]]
"""``infer(request) -> awaitable result``: a Serve handle's ``remote``, or in-process inference."""


class Sink(Protocol):
    """Where a session's points go (Redis, a result topic, a list in tests).

    ``write`` must be idempotent for replays (the Redis sink rejects a point whose stream ID is
    not above the track's top and counts it as a duplicate).
    """

    def open(self, session_id: str, source: str, models: str, config_digest: str) -> None: ...

    def write(self, points: list[TimelinePoint]) -> Any:
        """Store points; returns an object with ``written`` and ``duplicates`` counts."""
        ...

    def close(self, session_id: str, status: str) -> None: ...


class SinkOutage(RuntimeError):
    """The sink stayed unreachable beyond the outage tolerance: the session cannot go on.

    Retry policies raise it when they give up; any other error of one write is that frame's
    error (counted, reported, the session goes on).
    """


def call_once(fn: Callable[[], Any]) -> Any:
    """The trivial retry policy: call ``fn`` once (errors propagate)."""
    return fn()


@dataclasses.dataclass
class FrameResult:
    """What the runner did with one submitted frame (handed to ``on_result`` in frame order).

    Attributes:
        seq: the frame's sequence number; ``tag``: whatever the caller submitted with it (e.g. a
            Kafka offset); ``ts_ms`` capture time (epoch ms); ``pts_ms`` media time (ms).
        faces: faces tracked in the frame; ``written``/``duplicates``: points stored / rejected
            as replays.
        track_ids: track ids of the frame's points.
        timings_ms: wall time per step in ms (``detect``, ``track``, ``landmarks``, ``crop``,
            ``fer``/``fer+saliency``, ``au+smooth``, ``sink``, ...), and CPU time of this
            frame's work per placement unit (``facetrack_cpu``, ``inference_cpu`` (its share of
            the batch), ``sink_cpu``: thread CPU ms, immune to other processes' load).
        batch_faces: faces in the inference forward that served this frame (0: no inference);
            ``first_in_batch`` is True for one frame of each forward.
        latency_ms: from the frame's ``t_wall`` (decode or poll time) to the sink's ack.
        error: why the frame yielded no points (``None`` when it was analysed).
        stage_state: face-track snapshot right after this frame (``snapshot_stage=True`` only).
    """

    seq: int
    tag: Any
    ts_ms: int
    pts_ms: int
    faces: int = 0
    written: int = 0
    duplicates: int = 0
    track_ids: tuple[int, ...] = ()
    timings_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    batch_faces: int = 0
    first_in_batch: bool = False
    latency_ms: float = 0.0
    error: str | None = None
    stage_state: dict | None = None


@dataclasses.dataclass
class _Pending:
    tracked: TrackedFrame
    tag: Any
    infer: asyncio.Future | None
    stage_state: dict | None


class SessionRunner:
    """Runs one session's frames through the stages, in order, with a bounded window.

    Args:
        session_id: the session (Redis key, track-id namespace).
        stage: the session's own :class:`FaceTrackStage` (networks may be shared, the tracker
            must not).
        builder: the session's own :class:`TimelineBuilder` (smoother, AU baselines).
        infer: batched inference, see :data:`Infer`.
        sink: where points go, see :class:`Sink`.
        window: frames in flight between :meth:`submit` and the sink (>= 1).
        track_pool: executor for face tracking (one thread keeps per-stream CPU work serial).
        sink_pool: executor for timeline building and sink writes.
        infer_retry: async policy wrapping one inference call; default: one attempt.
        sink_retry: policy wrapping one blocking sink call (``fn() -> result``); default: one
            attempt. Pass the shared outage policy so Redis down waits instead of failing.
        on_result: called on the event loop with each :class:`FrameResult`, in frame order.
        snapshot_stage: attach the face-track state after each frame (checkpoints).
        saliency_interval_ms: media time between two saliency maps of one track; frames in
            between carry the track's last map. 0 = a map on every frame.
    """

    def __init__(self, session_id: str, stage: FaceTrackStage, builder: TimelineBuilder,
                 infer: Infer, sink: Sink, *, window: int = 8,
                 track_pool: concurrent.futures.Executor | None = None,
                 sink_pool: concurrent.futures.Executor | None = None,
                 infer_retry: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]] | None = None,
                 sink_retry: Callable[[Callable[[], Any]], Any] = call_once,
                 on_result: Callable[[FrameResult], None] | None = None,
                 snapshot_stage: bool = False, saliency_interval_ms: int = 0) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.session_id = session_id
        self.stage = stage
        self.builder = builder
        self._infer = infer
        self.sink = sink
        self._own_pools = track_pool is None or sink_pool is None
        self._track_pool = track_pool or concurrent.futures.ThreadPoolExecutor(1, "runner-track")
        self._sink_pool = sink_pool or concurrent.futures.ThreadPoolExecutor(1, "runner-sink")
        self._infer_retry = infer_retry
        self._sink_retry = sink_retry
        self._on_result = on_result
        self._snapshot = snapshot_stage
        self._sal_interval = saliency_interval_ms
        self._sal_asked: dict[int, int] = {}        # track -> pts_ms of the last map requested
        self._sal_last: dict[int, np.ndarray] = {}  # track -> last map received (6,)
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=window)
        self._writer: asyncio.Task | None = None
        self.tracks: set[int] = set()
        self.counts = {"frames": 0, "points": 0, "duplicates": 0, "errors": 0}

    # -- lifecycle --
    async def open(self, source: str, models: str = "", config_digest: str = "") -> None:
        """Register the session with the sink (status running) and start the writer."""
        await self._in(self._sink_pool, self._sink_retry,
                       lambda: self.sink.open(self.session_id, source, models, config_digest))
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def submit(self, frame: Frame, meta: dict | None = None, tag: Any = None) -> None:
        """Face-track one frame and queue it for inference and writing.

        Waits while ``window`` frames are in flight. ``meta``: ``{"t_wall": epoch s,
        "decode_ms": ms}`` from the source; ``tag`` comes back in the frame's result.
        """
        if self._writer is None:
            raise RuntimeError("SessionRunner.open() must be awaited before submit()")
        if self._writer.done():  # the writer died: surface its error instead of queueing
            self._writer.result()
        tracked, state = await self._in(self._track_pool, self._track, frame, meta or {})
        fut = None
        if len(tracked.faces):
            req = InferRequest(tracked.crops, tracked.points01, self._saliency_mask(tracked))
            fut = asyncio.ensure_future(self._infer_once(req))
        await self._queue.put(_Pending(tracked, tag, fut, state))

    async def drain(self) -> None:
        """Wait until every submitted frame is written (the writer keeps running)."""
        await self._queue.join()

    async def close(self, status: str = "ended") -> None:
        """Write what is queued, stop the writer and mark the session ``status`` in the sink."""
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
        await self._in(self._sink_pool, self._sink_retry,
                       lambda: self.sink.close(self.session_id, status))
        if self._own_pools:
            self._track_pool.shutdown(wait=False)
            self._sink_pool.shutdown(wait=False)

    # -- steps --
    @staticmethod
    async def _in(pool: concurrent.futures.Executor, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def _track(self, frame: Frame, meta: dict) -> tuple[TrackedFrame, dict | None]:
        c0 = time.thread_time()
        tracked = self.stage.process(frame, meta)
        tracked.timings_ms["facetrack_cpu"] = (time.thread_time() - c0) * 1000
        return tracked, (self.stage.snapshot() if self._snapshot else None)

    def _saliency_mask(self, t: TrackedFrame) -> np.ndarray | None:
        """Faces due for a fresh saliency map (the track's first frame, then every interval)."""
        for tid in t.ended_tracks:
            self._sal_asked.pop(tid, None)
        if self._sal_interval <= 0:
            return None
        mask = np.zeros(len(t.faces), bool)
        for i, tid in enumerate(t.faces.track_id.tolist()):
            last = self._sal_asked.get(tid)
            if last is None or t.pts_ms - last >= self._sal_interval:
                mask[i] = True
                self._sal_asked[tid] = t.pts_ms
        return mask

    def _held_saliency(self, t: TrackedFrame, sal: np.ndarray | None) -> np.ndarray | None:
        """Rows not computed this frame (NaN) take the track's last map."""
        for tid in t.ended_tracks:
            self._sal_last.pop(tid, None)
        if sal is None:
            return None
        sal = sal.copy()
        for i, tid in enumerate(t.faces.track_id.tolist()):
            if np.isnan(sal[i]).any():
                last = self._sal_last.get(tid)
                if last is not None:
                    sal[i] = last
            else:
                self._sal_last[tid] = sal[i]
        return None if np.isnan(sal).any() else sal

    async def _infer_once(self, req: InferRequest) -> InferResult | BaseException:
        try:
            if self._infer_retry is not None:
                return await self._infer_retry(lambda: self._infer(req))
            return await self._infer(req)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001  (reported on the frame, the session goes on)
            return e

    async def _write_loop(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if item is None:
                    return
                res = await item.infer if item.infer is not None else None
                result = await self._in(self._sink_pool, self._write, item, res)
                if self._on_result is not None:
                    self._on_result(result)
            finally:
                self._queue.task_done()

    def _write(self, item: _Pending, res: InferResult | BaseException | None) -> FrameResult:
        c0 = time.thread_time()
        out = self._write_points(item, res)
        out.timings_ms["sink_cpu"] = (time.thread_time() - c0) * 1000
        return out

    def _write_points(self, item: _Pending, res: InferResult | BaseException | None
                      ) -> FrameResult:
        t = item.tracked
        out = FrameResult(t.seq, item.tag, t.ts_ms, t.pts_ms, faces=len(t.faces),
                          timings_ms=dict(t.timings_ms), stage_state=item.stage_state)
        self.builder.end_tracks(t.ended_tracks)
        points: list[TimelinePoint] = []
        try:
            if t.error:
                raise RuntimeError(t.error)
            if isinstance(res, BaseException):
                raise RuntimeError(f"inference failed: {type(res).__name__}: {res}")
            if res is not None:
                out.timings_ms.update(res.timings_ms)
                out.batch_faces, out.first_in_batch = res.batch_faces, res.first_in_batch
                probs, sal, au = res.probs, self._held_saliency(t, res.saliency), res.au
            else:
                probs = np.zeros((0, len(self.builder.labels)), np.float32)
                sal = au = None
            t0 = time.perf_counter()
            points = self.builder.build(self.session_id, t.ts_ms, t.pts_ms, t.faces, probs, sal,
                                        au)
            out.timings_ms["au+smooth"] = (time.perf_counter() - t0) * 1000
        except Exception as e:  # noqa: BLE001  (one bad frame never stops the session)
            log.warning("%s: frame %d yields no points: %s", self.session_id, t.seq, e)
            out.error = str(e) or type(e).__name__
            self.counts["errors"] += 1
        t0 = time.perf_counter()
        if points:
            try:
                wr = self._sink_retry(lambda: self.sink.write(points))
                out.written, out.duplicates = wr.written, wr.duplicates
            except SinkOutage:
                raise
            except Exception as e:  # noqa: BLE001  (e.g. a point the store refuses)
                log.warning("%s: frame %d not stored: %s", self.session_id, t.seq, e)
                out.error = f"sink: {type(e).__name__}: {e}"
                self.counts["errors"] += 1
                points = []
        out.timings_ms["sink"] = (time.perf_counter() - t0) * 1000
        out.track_ids = tuple(p.track_id for p in points)
        out.latency_ms = (time.time() - t.t_wall) * 1000
        self.tracks.update(out.track_ids)
        self.counts["frames"] += 1
        self.counts["points"] += out.written
        self.counts["duplicates"] += out.duplicates
        return out
