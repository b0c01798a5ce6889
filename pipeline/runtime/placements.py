"""Where ``run`` places its streams: Ray actors sharing a Serve deployment, or this process.

Both placements run the same :class:`~pipeline.runtime.stream_worker.StreamWorker` (source +
session runner) per stream; they differ only in where it lives and what it calls for inference.
The driver (:func:`pipeline.runtime.streams.run_streams`) talks to either through the same few
calls: ``launch`` a stream, ``prepare`` inference, ``call`` a worker method (a future back),
``get`` / ``wait_one`` futures, ``dispose`` a stream, ``close``.

- :class:`RayPlacement`: a loopback-only local Ray, the warm cluster of ``affectstream up`` or the
  cluster of ``RAY_ADDRESS``; one :class:`~pipeline.runtime.stream_actor.StreamActor` per stream,
  inference in the shared Serve deployment (batched across streams; scales out to a cluster).
- :class:`LocalPlacement`: no Ray at all. The workers run on one event loop in this process and
  share a :class:`~pipeline.runtime.local_inference.LocalInference`. It saves the start-up of a
  Ray node and a Serve deployment (~15 s of a cold ``run`` on 2 cores), and costs some frames/s
  in steady state (one process, one GIL): the choice for one stream on one machine.

:func:`choose` picks one for ``placement: auto`` (see ``docs/architecture.md`` for the numbers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import sys
import threading
from typing import Any

from affectstream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

PLACEMENTS = ("auto", "local", "ray")


def choose(requested: str, n_streams: int) -> str:
    """``"local"`` or ``"ray"`` for a run of ``n_streams`` streams.

    ``auto`` places one stream in this process unless there is a Ray cluster to use: one named by
    ``RAY_ADDRESS``, the warm cluster of ``affectstream up``, or one this process already joined.
    Several streams go to Ray (processes of their own, inference batched across them).

    Raises:
        ValueError: ``requested`` is not one of :data:`PLACEMENTS`.
    """
    if requested not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if n_streams != 1 or os.environ.get("RAY_ADDRESS") or _ray_joined():
        return "ray"
    from affectstream.pipeline.runtime.warm import read_state

    return "ray" if read_state() is not None else "local"


def _ray_joined() -> bool:
    """Whether this process is connected to Ray already (without importing Ray)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def make(name: str, cfg: PipelineConfig, n_streams: int) -> RayPlacement | LocalPlacement:
    """The placement called ``name`` (``"local"`` or ``"ray"``, see :func:`choose`), started."""
    return LocalPlacement(cfg, n_streams) if name == "local" else RayPlacement(cfg)


class RayPlacement:
    """One :class:`StreamActor` per stream (a warm pooled one when ``affectstream up`` keeps
    some), inference in the shared Serve deployment. Starts or joins Ray on construction;
    :meth:`close` leaves Ray up (the caller shuts it down: tests share one Ray)."""

    name = "ray"

    def __init__(self, cfg: PipelineConfig) -> None:
        import ray

        from affectstream.pipeline.runtime import dag

        self.ray, self.dag, self.cfg = ray, dag, cfg
        self.errors: tuple[type[BaseException], ...] = (ray.exceptions.RayError,)
        dag.init_ray(cfg)
        self.slots = int(dag.WARM["state"].get("stream_pool", 0)) if "state" in dag.WARM else 0
        self._probe: Any = None
        self._live: list[tuple[Any, bool]] = []  # (actor, pooled) launched and not disposed

    def launch(self, url: str, session_id: str, cfg_json: str, redis_url: str,
               max_frames: int | None) -> tuple[Any, Any, bool]:
        """Start one stream's worker; returns ``(handle, open_future or None, pooled)``."""
        from affectstream.pipeline.runtime.stream_actor import StreamActor
        from affectstream.pipeline.runtime.warm import lease_pooled

        actor = lease_pooled(self.cfg, self.slots) if self.slots else None
        if actor is None:
            actor = StreamActor.remote(url, session_id, cfg_json, redis_url, max_frames)
            self._live.append((actor, False))
            return actor, None, False
        self._probe = self._probe or actor
        self._live.append((actor, True))
        return actor, actor.open.remote(url, session_id, cfg_json, redis_url, max_frames), True

    def prepare(self) -> None:
        """Deploy the inference app (or reuse the warm cluster's)."""
        self.dag.ensure_inference(self.cfg, probe=self._probe)

    def call(self, handle: Any, method: str, *args: Any) -> Any:
        return getattr(handle, method).remote(*args)

    def get(self, fut: Any, timeout: float | None = None) -> Any:
        return self.ray.get(fut, timeout=timeout)

    def wait_one(self, futs: list, timeout: float) -> list:
        return self.ray.wait(futs, num_returns=1, timeout=timeout)[0]

    def dispose(self, handle: Any, pooled: bool) -> None:
        """Stop a stream's actor; a pooled one goes back to the warm pool (killed if it
        cannot)."""
        self._live = [(a, p) for a, p in self._live if a is not handle]
        if pooled:
            try:
                self.ray.get(handle.release.remote(), timeout=30)
                return
            except self.ray.exceptions.RayError:
                pass
        self.ray.kill(handle)

    def close(self) -> None:
        """Stop the streams still running (an interrupted run: they end ``interrupted``, and a
        pooled actor goes back to the warm pool instead of staying leased)."""
        for actor, pooled in list(self._live):
            try:
                self.ray.get(actor.stop.remote(), timeout=10)
            except self.ray.exceptions.RayError as e:
                log.debug("stream actor did not stop: %s", e)
            self.dispose(actor, pooled)


class _LocalStream:
    """A worker being built (``ready``: future of the :class:`StreamWorker`)."""

    def __init__(self, ready: concurrent.futures.Future) -> None:
        self.ready = ready


class LocalPlacement:
    """Every stream's worker in this process, on one event loop thread, sharing one batched
    in-process inference. The expression model loads on a thread while the workers load their
    face-track networks and open their sources.

    Args:
        cfg: configuration (``inference`` builds the models).
        n_streams: how many streams will be launched (threads for building them).
    """

    name = "local"
    errors: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, cfg: PipelineConfig, n_streams: int) -> None:
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="local-placement")
        self._thread.start()
        self._pool = concurrent.futures.ThreadPoolExecutor(1 + max(1, n_streams), "local-build")
        self._inference = self._pool.submit(self._load_inference, n_streams)
        self._streams: list[_LocalStream] = []

    def _load_inference(self, n_streams: int) -> Any:
        from affectstream.operators.analyze import FaceAnalyzer
        from affectstream.pipeline.runtime.batch import warm_up
        from affectstream.pipeline.runtime.local_inference import LocalInference

        i = self.cfg.inference
        analyzer = FaceAnalyzer(i.fer_model, i.saliency, i.au_model, i.device, i.half)
        warm_up(analyzer)
        wait = i.batch_wait_timeout_s if n_streams == 1 else i.batch_wait_multi_s
        return LocalInference(analyzer, i.max_batch_size, batch_wait_s=wait or 0.0)

    def _build(self, url: str, session_id: str, cfg_json: str, redis_url: str,
               max_frames: int | None) -> Any:
        from affectstream.pipeline.runtime.stream_worker import StreamWorker

        worker = StreamWorker(url, session_id, cfg_json, redis_url, max_frames)
        worker.use_inference(self._inference.result())
        return worker

    def launch(self, url: str, session_id: str, cfg_json: str, redis_url: str,
               max_frames: int | None) -> tuple[Any, Any, bool]:
        """Start building one stream's worker; returns ``(handle, None, False)`` (a bad source
        fails at the first :meth:`call`)."""
        handle = _LocalStream(self._pool.submit(self._build, url, session_id, cfg_json,
                                                redis_url, max_frames))
        self._streams.append(handle)
        return handle, None, False

    def prepare(self) -> None:
        """Wait for the models (their load errors surface here)."""
        self._inference.result()

    def call(self, handle: _LocalStream, method: str, *args: Any) -> concurrent.futures.Future:
        async def go() -> Any:
            worker = await asyncio.wrap_future(handle.ready)
            out = getattr(worker, method)(*args)
            return await out if inspect.isawaitable(out) else out

        return asyncio.run_coroutine_threadsafe(go(), self.loop)

    def get(self, fut: concurrent.futures.Future, timeout: float | None = None) -> Any:
        return fut.result(timeout)

    def wait_one(self, futs: list, timeout: float) -> list:
        done, _ = concurrent.futures.wait(futs, timeout,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        return list(done)

    async def _cancel_rest(self) -> None:
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:  # polls, the inference batcher: nothing is left to wait for them
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def dispose(self, handle: _LocalStream, pooled: bool) -> None:
        """Stop a stream's worker if it still runs, and drop it (its source is closed)."""
        self._streams = [h for h in self._streams if h is not handle]
        if handle.ready.done() and handle.ready.exception() is None:
            self.call(handle, "stop").result(30)
            self.call(handle, "release").result(30)

    def close(self) -> None:
        """Stop what still runs (an interrupted run: its streams end ``interrupted``), then the
        event loop and the inference thread."""
        try:
            for handle in list(self._streams):
                self.dispose(handle, False)
            asyncio.run_coroutine_threadsafe(self._cancel_rest(), self.loop).result(30)
        except (concurrent.futures.TimeoutError, RuntimeError) as e:
            log.warning("local placement: streams did not stop in time: %s", e)
        if self._inference.done() and self._inference.exception() is None:
            self._inference.result().close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self._pool.shutdown(wait=False)
