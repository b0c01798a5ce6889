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
- **errors**: a frame whose tracking, inference, timeline or sink step fails is counted, yields
  no points and says why in its result (``error``, ``error_kind``); the session goes on (the same
  frame fails the same way on a replay). :class:`SinkOutage` from a retry policy is no frame's
  fault: it ends the session and no frame is blamed;
- **retries**: inference and sink calls go through the injected policies (one outage policy for
  every placement);
- **checkpoints**: with ``snapshot_stage=True`` each result carries the face-track state right
  after its frame, so a caller can store a checkpoint that covers exactly the written frames;
  ``on_result`` may be a coroutine function, awaited before the next frame is written, so such a
  checkpoint (and the timeline builder's state it includes) is taken in frame order;
- **memory**: the runner drops its reference to a frame's image right after tracking and tells
  the caller (``on_tracked``), so a source can account decoded bytes until then only.

Blocking steps (face tracking, timeline + sink) run on executors given by the placement, so one
consumer can share one face-tracking thread between its sessions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from affectstream.operators.facetrack import FaceTrackStage, TrackedFrame
from affectstream.operators.records import Frame, TimelinePoint
from affectstream.operators.timeline import TimelineBuilder
from affectstream.pipeline.runtime.batch import InferRequest, InferResult
from affectstream.pipeline.runtime.saliency_rate import SaliencyRate

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
    """The sink stayed unreachable beyond the outage tolerance, or the placement is shutting
    down in the middle of a retry: the session cannot go on, and no frame is to blame.

    Retry policies (sink or inference) raise it when they give up on an outage; any other error
    of one call is that frame's error (counted, reported, the session goes on).
    """


ERROR_KINDS = ("track_error", "inference_error", "timeline_error", "store_error")
"""Values of :attr:`FrameResult.error_kind`: the step that failed."""


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
        error_kind: the step that failed, one of :data:`ERROR_KINDS` (``None`` when analysed).
        stage_state: face-track snapshot right after this frame, a private copy
            (``snapshot_stage=True`` only; None when tracking raised).
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
    error_kind: str | None = None
    stage_state: dict | None = None


@dataclasses.dataclass
class _Pending:
    tracked: TrackedFrame
    tag: Any
    infer: asyncio.Future | None
    stage_state: dict | None
    track_error: str | None = None  # tracking raised (the stage's own errors are in ``tracked``)


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
        on_result: called on the event loop with each :class:`FrameResult`, in frame order; when
            it returns an awaitable, the next frame is written only after it completes.
        on_tracked: called on the event loop with a frame's ``tag`` once its tracking step is
            over (whatever the outcome); the runner holds no reference to its image any more.
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
                 on_result: Callable[[FrameResult], Awaitable[None] | None] | None = None,
                 on_tracked: Callable[[Any], None] | None = None,
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
        self._on_tracked = on_tracked
        self._snapshot = snapshot_stage
        self._saliency = SaliencyRate(saliency_interval_ms)
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

        Raises:
            SinkOutage (or the error that stopped the writer): the session cannot go on.
        """
        if self._writer is None:
            raise RuntimeError("SessionRunner.open() must be awaited before submit()")
        if self._writer.done():  # the writer died: surface its error instead of queueing
            self._writer.result()
        meta = meta or {}
        head = (frame.session_id, frame.seq, frame.ts_ms, frame.pts_ms)
        try:
            tracked, state = await self._in(self._track_pool, self._track, frame, meta)
            err = None
        except Exception as e:  # noqa: BLE001  (reported on the frame, the session goes on)
            log.warning("%s: face-tracking frame %d raised: %s", self.session_id, frame.seq, e)
            tracked, state, err = None, None, f"{type(e).__name__}: {e}"
        del frame  # the image is not needed any more: let it go before waiting for the window
        if self._on_tracked is not None:
            self._on_tracked(tag)
        if tracked is None:
            tracked = _failed(*head, meta)
        fut = None
        if len(tracked.faces):
            req = InferRequest(tracked.crops, tracked.points01, self._saliency.mask(tracked),
                               tracked.landmarks3d, stream=self.session_id)
            fut = asyncio.ensure_future(self._infer_once(req))
        await self._put(_Pending(tracked, tag, fut, state, err))

    async def _put(self, item: _Pending) -> None:
        if not self._queue.full():
            self._queue.put_nowait(item)
            return
        put = asyncio.ensure_future(self._queue.put(item))
        await asyncio.wait([put, self._writer], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():  # the writer died while we waited for room
            put.cancel()
            self._writer.result()
            raise RuntimeError(f"{self.session_id}: the writer stopped")

    async def drain(self) -> None:
        """Wait until every submitted frame is written (the writer keeps running).

        Raises:
            SinkOutage (or the error that stopped the writer): the session cannot go on.
        """
        if self._writer is None:
            return
        join = asyncio.ensure_future(self._queue.join())
        await asyncio.wait([join, self._writer], return_when=asyncio.FIRST_COMPLETED)
        if not join.done():
            join.cancel()
            self._writer.result()

    async def close(self, status: str | None = "ended") -> None:
        """Write what is queued, stop the writer and mark the session ``status`` in the sink.

        Args:
            status: the session's final status; None leaves the sink's session as it is (the
                session goes on elsewhere, e.g. a Kafka partition moved to another consumer).

        Raises:
            SinkOutage (or the error that stopped the writer): what is queued was not written.
        """
        try:
            if self._writer is not None:
                if not self._writer.done():
                    await self._put(None)
                await self._writer
            if status is not None:
                await self._in(self._sink_pool, self._sink_retry,
                               lambda: self.sink.close(self.session_id, status))
        finally:
            if self._own_pools:
                self._track_pool.shutdown(wait=False)
                self._sink_pool.shutdown(wait=False)

    async def abort(self) -> None:
        """Stop at once: queued frames are neither written nor reported (their source reads
        them again), the session's status in the sink is left as it is."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.wait([self._writer])
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None and item.infer is not None:
                item.infer.cancel()
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
        # a private copy: the live state goes on changing with the next frames
        return tracked, (copy.deepcopy(self.stage.snapshot()) if self._snapshot else None)

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
                if isinstance(res, SinkOutage):
                    raise res
                result = await self._in(self._sink_pool, self._write, item, res)
                if self._on_result is not None:
                    done = self._on_result(result)
                    if inspect.isawaitable(done):
                        await done
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
        if item.track_error or t.error:
            self._fail(out, "track_error", item.track_error or t.error)
        elif isinstance(res, BaseException):
            self._fail(out, "inference_error", f"inference failed: {type(res).__name__}: {res}")
        else:
            try:
                if res is not None:
                    out.timings_ms.update(res.timings_ms)
                    out.batch_faces, out.first_in_batch = res.batch_faces, res.first_in_batch
                    probs, sal, au = res.probs, self._saliency.fill(t, res.saliency), res.au
                else:
                    probs = np.zeros((0, len(self.builder.labels)), np.float32)
                    sal = au = None
                t0 = time.perf_counter()
                points = self.builder.build(
                    self.session_id, t.ts_ms, t.pts_ms, t.faces, probs, sal, au,
                    au_presence=getattr(res, "au_presence", None), pose=getattr(res, "pose", None),
                    gaze=getattr(res, "gaze", None), landmarks3d=t.landmarks3d)
                out.timings_ms["au+smooth"] = (time.perf_counter() - t0) * 1000
            except Exception as e:  # noqa: BLE001  (one bad frame never stops the session)
                self._fail(out, "timeline_error", f"{type(e).__name__}: {e}")
        t0 = time.perf_counter()
        if points:
            try:
                wr = self._sink_retry(lambda: self.sink.write(points))
                out.written, out.duplicates = wr.written, wr.duplicates
            except SinkOutage:
                raise
            except Exception as e:  # noqa: BLE001  (e.g. a point the store refuses)
                self._fail(out, "store_error", f"sink: {type(e).__name__}: {e}")
                points = []
        out.timings_ms["sink"] = (time.perf_counter() - t0) * 1000
        out.track_ids = tuple(p.track_id for p in points)
        out.latency_ms = (time.time() - t.t_wall) * 1000
        self.tracks.update(out.track_ids)
        self.counts["frames"] += 1
        self.counts["points"] += out.written
        self.counts["duplicates"] += out.duplicates
        return out

    def _fail(self, out: FrameResult, kind: str, error: str) -> None:
        log.warning("%s: frame %d yields no points (%s): %s", self.session_id, out.seq, kind,
                    error)
        out.error, out.error_kind = error or kind, kind
        self.counts["errors"] += 1


def _failed(session_id: str, seq: int, ts_ms: int, pts_ms: int, meta: dict) -> TrackedFrame:
    """An empty tracked frame standing in for one whose tracking raised."""
    from affectstream.operators.records import Faces

    return TrackedFrame(session_id, seq, ts_ms, pts_ms, Faces.empty(),
                        np.zeros((0, 1, 1), np.uint8), np.zeros((0, 468, 2), np.float32), [], {},
                        float(meta.get("t_wall", time.time())))
