"""One stream's work in one place: its source (read ahead on a thread) and its
:class:`~pipeline.runtime.runner.SessionRunner`, plain Python (no Ray).

Decode, face tracking, timeline and sink of one stream share one process (measured: each Ray hop
between per-stream stages cost a serialisation of the frame and 1–3 ms; only face crops need to
leave the process). Three threads overlap: the source reads ahead (PyAV releases the GIL while
decoding), face tracking runs LiteRT / torch (they release the GIL in their kernels), and the sink
thread builds the timeline and talks to Redis. ``run`` places one worker per stream either in a
Ray actor (:class:`~pipeline.runtime.stream_actor.StreamActor`, inference = the shared Serve
deployment) or in its own process (:mod:`pipeline.runtime.local_placement`, inference =
:class:`~pipeline.runtime.local_inference.LocalInference`). The driver polls each worker a few
times a second for progress, never per frame.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from typing import Any

from affectstream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)


class _ReadAhead:
    """Frames of a :class:`VideoSource` read on a thread into a bounded buffer.

    Files block the reader when the buffer is full (nothing is dropped); live sources drop the
    oldest buffered frame instead (counted in ``dropped``), so analysis stays near real time.
    """

    def __init__(self, src: Any, live: bool, size: int) -> None:
        self.src, self.live, self.size = src, live, max(1, size)
        self.buf: collections.deque = collections.deque()
        self.cv = threading.Condition()
        self.done = False
        self.error: BaseException | None = None
        self.dropped = 0
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True, name="source")

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop reading (the stream ended early or failed): the thread ends instead of waiting
        for room in the buffer for good, and a waiting :meth:`next` returns None."""
        with self.cv:
            self.closed = True
            self.buf.clear()
            self.cv.notify_all()

    def _read(self) -> None:
        try:
            for frame in self.src:
                item = (frame, {"t_wall": time.time(), "decode_ms": self.src.last_decode_ms})
                with self.cv:
                    if self.live and len(self.buf) >= self.size:
                        self.buf.popleft()
                        self.dropped += 1
                    while not self.live and len(self.buf) >= self.size and not self.closed:
                        self.cv.wait()
                    if self.closed:
                        return
                    self.buf.append(item)
                    self.cv.notify_all()
        except BaseException as e:  # noqa: BLE001  (reported by next())
            self.error = e
        finally:
            with self.cv:
                self.done = True
                self.cv.notify_all()

    def next(self) -> tuple | None:
        """The next ``(Frame, meta)``; None at the end. Raises the source's error, if any."""
        with self.cv:
            while not self.buf and not self.done:
                self.cv.wait()
            if self.buf:
                item = self.buf.popleft()
                self.cv.notify_all()
                return item
        if self.error is not None:
            raise self.error
        return None


@dataclasses.dataclass
class Progress:
    """What a stream actor reports to the driver on each poll (plain data).

    Attributes:
        results: per-frame summaries since the last poll: ``faces``, ``written``,
            ``duplicates``, ``latency_ms``, ``batch_faces``, ``first_in_batch``, ``timings_ms``,
            ``error``.
        done: the stream ended (source exhausted, ``max_frames`` reached, or failed).
        error: the one-line reason the stream failed, or None.
    """

    results: list[dict]
    done: bool
    error: str | None


class StreamWorker:
    """Source + :class:`SessionRunner` of one stream (see the module docstring).

    Args:
        url: file path, ``rtsp://`` URL or webcam device; None builds an idle pooled actor
            (networks loaded, no stream) for the warm cluster, leased with :meth:`lease`,
            given a stream with :meth:`open` and returned with :meth:`release`.
        session_id: the session the stream writes.
        cfg_json: :class:`PipelineConfig` as JSON (no secrets: resolved here from the env).
        redis_url: Redis for the timeline.
        max_frames: stop after this many frames (benchmarks, smoke runs).
        pool_key: (pooled actors) what a run must match to lease this actor.

    Raises (from the constructor, so a bad source fails at start):
        SourceError: missing file, unreadable container, unreachable stream.
    """

    def __init__(self, url: str | None, session_id: str | None, cfg_json: str,
                 redis_url: str | None, max_frames: int | None = None,
                 pool_key: str | None = None) -> None:
        import torch

        from affectstream.operators.analyze import FaceAnalyzer
        from affectstream.pipeline.runtime.parts import new_stage

        cfg = PipelineConfig.model_validate_json(cfg_json)
        torch.set_num_threads(max(1, cfg.inference.torch_threads or 1))
        # the expression model's canonical labels (the driver resolves none: it loads no torch)
        labels = tuple(FaceAnalyzer.card_for(cfg.inference.fer_model).label_names)
        self.cfg, self.labels, self.key = cfg, labels, pool_key
        self.leased = url is not None
        self._infer: Any = None
        self.runner: Any = None
        self._task: asyncio.Task | None = None
        if url is not None:  # a bad source fails before the models load
            self._open_source(url, session_id or url, max_frames)
        self.base = new_stage(cfg)  # the networks, loaded once; each stream copies a blank tracker
        self.base.warmup()
        if url is not None:
            if redis_url is None:
                raise ValueError("a stream needs a redis_url")
            self._open_stream(redis_url)

    # -- the warm pool (``affectstream up``): one idle actor with loaded networks per slot --
    def lease(self, key: str) -> bool:
        """Take this idle pooled actor for one stream if it was built for ``key`` (the same
        face-track settings and code: :func:`pipeline.runtime.warm.pool_key`)."""
        if self.leased or self.key is None or key != self.key:
            return False
        self.leased = True
        return True

    def pool_info(self) -> dict:
        """``{"key": str | None, "leased": bool}`` (the warm pool's bookkeeping)."""
        return {"key": self.key, "leased": self.leased}

    def open(self, url: str, session_id: str, cfg_json: str, redis_url: str,
             max_frames: int | None = None) -> None:
        """Open a stream on a leased pooled actor: the run's own settings for the source, the
        timeline and the sink; a blank tracker on the loaded networks.

        Raises:
            SourceError: missing file, unreadable container, unreachable stream.
            RuntimeError: the actor was not leased first.
        """
        if not self.leased:
            raise RuntimeError("lease() this pooled actor before open()")
        self.cfg = PipelineConfig.model_validate_json(cfg_json)
        self._open_source(url, session_id, max_frames)
        self._open_stream(redis_url)

    def release(self) -> None:
        """Back to the pool once the stream ended: drop its state, keep the networks."""
        if self._task is not None and not self._task.done():
            raise RuntimeError("the stream is still running")
        self.src = self.stage = self.builder = self.sink = self.runner = None
        self._reader = self._task = self._it = self._first = None  # closes the container
        self.leased = False

    async def inference(self) -> Any:
        """The batched inference this stream calls: ``infer(InferRequest) -> awaitable
        InferResult`` (:data:`pipeline.runtime.runner.Infer`). Here the one given with
        :meth:`use_inference` (the in-process placement); :class:`StreamActor` connects to the
        shared Serve deployment instead.

        Raises:
            RuntimeError: no inference was given.
        """
        if self._infer is None:
            raise RuntimeError("no inference attached: call use_inference() first")
        return self._infer

    def use_inference(self, infer: Any) -> None:
        """Use ``infer`` (e.g. a :class:`~pipeline.runtime.local_inference.LocalInference`
        shared by the streams of this process) for the next :meth:`start`."""
        self._infer = infer

    def _open_source(self, url: str, session_id: str, max_frames: int | None) -> None:
        from affectstream.operators.decode import VideoSource, is_live

        self.url, self.session_id = url, session_id
        self.src = VideoSource(url, session_id, max_frames=max_frames,
                               **self.cfg.decode.model_dump())
        self.live = is_live(url)
        if self.live:  # probe now so a dead camera fails at start; read later on a fresh connection
            self.src._open().close()
            self._first = None
        else:
            self._it = iter(self.src)
            self._first = next(self._it, None)  # opens the file now: errors surface at start

    def _open_stream(self, redis_url: str) -> None:
        from affectstream.pipeline.runtime.parts import new_builder, new_stage
        from affectstream.pipeline.runtime.sinks import redis_session_sink

        self.stage = new_stage(self.cfg, base=self.base)
        self.builder = new_builder(self.cfg, self.labels)
        self.sink, self.sink_retry = redis_session_sink(redis_url, self.cfg)
        self._results: list[dict] = []
        self._done = False
        self._error: str | None = None
        self._task: asyncio.Task | None = None
        self._reader: Any = None
        self.runner = None

    def info(self) -> dict:
        """``{"total_frames": int | None, "fps": float | None, "live": bool}``."""
        return {"total_frames": self.src.expected_frames() if not self.live else None,
                "fps": self.src.fps, "live": self.live}

    async def start(self) -> None:
        """Connect to inference, open the session and start streaming (returns at once)."""
        from affectstream.pipeline.runtime.runner import SessionRunner

        infer = await self.inference()
        self.runner = SessionRunner(
            self.session_id, self.stage, self.builder, infer, self.sink,
            window=self.cfg.max_in_flight, sink_retry=self.sink_retry,
            saliency_interval_ms=self.cfg.inference.saliency_interval_ms,
            on_result=self._collect)
        await self.runner.open(self.url, self.cfg.inference.fer_model + "," +
                               self.cfg.inference.au_model, self.cfg.digest())
        self._task = asyncio.get_running_loop().create_task(self._stream())

    def _collect(self, r: Any) -> None:
        self._results.append({"faces": r.faces, "written": r.written, "duplicates": r.duplicates,
                              "latency_ms": r.latency_ms, "batch_faces": r.batch_faces,
                              "first_in_batch": r.first_in_batch, "timings_ms": r.timings_ms,
                              "error": r.error})

    async def _stream(self) -> None:
        from affectstream.pipeline.errors import one_line

        status = "ended"
        try:
            if self._first is not None:  # a file: keep reading the opened iterator
                first, it = self._first, self._it
                self._first = None
                src = _Chain(first, it, self.src)
            else:
                src = self.src
            reader = _ReadAhead(src, self.live, self.cfg.max_in_flight * 2)
            self._reader = reader
            reader.start()
            loop = asyncio.get_running_loop()
            while True:
                item = await loop.run_in_executor(None, reader.next)
                if item is None:
                    break
                await self.runner.submit(item[0], item[1])
        except Exception as e:  # noqa: BLE001  (this stream fails alone)
            status, self._error = "failed", one_line(e)
        except asyncio.CancelledError:  # stop(): what is written stays, the rest is dropped
            status, self._error = "interrupted", "interrupted"
            await self.runner.abort()
            raise
        finally:
            if self._reader is not None:  # a failed or stopped stream leaves no reader waiting
                self._reader.close()
            try:
                if status == "interrupted":
                    self.sink.close(self.session_id, status)
                else:
                    await self.runner.close(status)
            except Exception as e:  # noqa: BLE001
                self._error = self._error or one_line(e)
            self._done = True

    async def stop(self) -> None:
        """Stop a running stream at once (the user interrupted the run): frames in flight are
        dropped, points already written stay, the session's status becomes ``interrupted``."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def poll(self) -> Progress:
        """Results since the last poll; waits up to 0.2 s for something new."""
        for _ in range(20):
            if self._results or self._done:
                break
            await asyncio.sleep(0.01)
        out, self._results = self._results, []
        return Progress(out, self._done and not self._results, self._error)

    def status(self) -> dict:
        """This actor's Redis outage state: ``{"waiting", "waiting_s", "attempts",
        "last_error"}`` (:mod:`pipeline.store.redis_retry`); answers while a write waits."""
        from affectstream.pipeline.store.redis_retry import STATE

        return STATE.snapshot()

    def stats(self) -> dict:
        """Source statistics (decoded, corrupt, reconnects, dropped_behind) and track ids."""
        s = dataclasses.asdict(self.src.stats)
        s["dropped_behind"] = getattr(getattr(self, "_reader", None), "dropped", 0)
        s["tracks"] = sorted(self.runner.tracks) if self.runner is not None else []
        return s


class _Chain:
    """Iterate ``first`` then the rest of an already-started iterator, exposing the source's
    ``last_decode_ms`` (the read-ahead reports it per frame)."""

    def __init__(self, first: Any, it: Any, src: Any) -> None:
        self.first, self.it, self.src = first, it, src

    @property
    def last_decode_ms(self) -> float:
        return self.src.last_decode_ms

    def __iter__(self):
        yield self.first
        yield from self.it
