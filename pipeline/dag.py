"""The Ray DAG: source -> face-track -> inference (Serve) -> smooth+sink, per stream.

One actor per stateful stage per stream (source, face-track, sink); one shared Serve deployment
for inference. The driver keeps at most ``max_in_flight`` frames of each stream in flight
(backpressure): a slow stage slows the source instead of filling memory. Live sources read ahead in
a thread into a small buffer and drop the oldest frame when the pipeline is behind (counted); files
never drop. A failure in one stream (unreadable source, bad frame) ends or skips that stream only.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from affectstream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

APP_NAME = "affectstream-inference"


# ------------------------------------------------------------------------------------- actors

@ray.remote(num_cpus=0)
class SourceActor:
    """Decodes one source; ``next()`` returns ``(Frame, meta)`` or None at the end."""

    def __init__(self, url: str, session_id: str, cfg: dict, live_buffer: int) -> None:
        from affectstream.operators.decode import VideoSource, is_live

        self.src = VideoSource(url, session_id, **cfg)
        self.live = is_live(url)
        self.dropped = 0
        self._buf: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._done = False
        self._error: BaseException | None = None
        self._it = iter(self.src)
        self._live_buffer = live_buffer
        if self.live:
            # probe now so a dead camera fails at start; read from a fresh connection once the
            # pipeline asks (frames a camera sends meanwhile would be stale)
            self.src._open().close()
            self._first = None
        else:
            self._first = self._pull()  # opens the file now: errors surface at start

    def _pull(self) -> Any:
        fr = next(self._it, None)
        if fr is None:
            return None
        return fr, {"t_wall": time.time(), "decode_ms": self.src.last_decode_ms}

    def _reader(self) -> None:
        try:
            while True:
                item = self._pull()
                with self._cv:
                    if item is None:
                        self._done = True
                        self._cv.notify_all()
                        return
                    if len(self._buf) >= self._live_buffer:
                        self._buf.popleft()
                        self.dropped += 1
                    self._buf.append(item)
                    self._cv.notify_all()
        except BaseException as e:  # reported on the next next()
            with self._cv:
                self._error, self._done = e, True
                self._cv.notify_all()

    def info(self) -> dict:
        return {"total_frames": self.src.total_frames, "fps": self.src.fps, "live": self.live}

    def next(self) -> Any:
        if self._first is not None:
            item, self._first = self._first, None
            return item
        if not self.live:
            return self._pull()
        if not hasattr(self, "_thread"):  # read ahead from the first request on
            self._thread = threading.Thread(target=self._reader, daemon=True)
            self._thread.start()
        with self._cv:
            while not self._buf and not self._done:
                self._cv.wait()
            if self._buf:
                return self._buf.popleft()
            if self._error is not None:
                raise self._error
            return None

    def stats(self) -> dict:
        s = dataclasses.asdict(self.src.stats)
        s["dropped_behind"] = self.dropped
        return s


@ray.remote(num_cpus=0)
class FaceTrackActor:
    """Detect, track, landmarks and crops of one stream's frames, in order."""

    def __init__(self, cfg_json: str, torch_threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, torch_threads))
        from affectstream.operators.facetrack import FaceTrackStage

        cfg = PipelineConfig.model_validate_json(cfg_json)
        self.stage = FaceTrackStage.from_config(cfg)
        self.stage.warmup()

    def ready(self) -> bool:
        return True

    def process(self, item: Any) -> Any:
        if item is None:
            return None
        frame, meta = item
        return self.stage.process(frame, meta)


@ray.remote(num_cpus=0)
class SinkActor:
    """Calls inference for each frame, then smooths and writes to Redis strictly in frame order."""

    def __init__(self, cfg_json: str, redis_url: str, session_id: str, source: str,
                 labels: tuple[str, ...]) -> None:
        from affectstream.operators.smoothing import Smoother
        from affectstream.operators.timeline import TimelineBuilder
        from affectstream.pipeline.redis_store import RedisSink, connect

        cfg = PipelineConfig.model_validate_json(cfg_json)
        self.cfg = cfg
        self.session_id = session_id
        self.sink = RedisSink(connect(redis_url, cfg.redis.password), cfg.redis.key_prefix,
                              cfg.redis.maxlen, cfg.redis.retention_ms, cfg.redis.session_ttl_s)
        self._redis("session start", self.sink.start_session, session_id, source,
                    cfg.inference.fer_model + "," + cfg.inference.au_model, cfg.digest())
        s = cfg.smooth
        self.builder = TimelineBuilder(
            Smoother(s.emotion_half_life_ms, s.au_min_cutoff_hz, s.au_beta, s.au_d_cutoff_hz,
                     s.label_hysteresis, s.reset_gap_ms), labels)
        self.handle = None
        self._next_seq = 0
        self._cv: asyncio.Condition | None = None
        self.tracks: set[int] = set()

    async def process(self, tracked: Any, ticket: int) -> dict:
        """Analyse and write one frame; ``ticket`` is the driver's contiguous submission number
        for this stream (frame ``seq`` may have gaps where a live source dropped frames)."""
        from affectstream.pipeline.inference import InferRequest

        if tracked is None:
            return {"eos": True}
        if self._cv is None:
            self._cv = asyncio.Condition()
        if self.handle is None:
            from ray import serve

            logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its import set INFO
            self.handle = serve.get_deployment_handle("Inference", app_name=APP_NAME)
        res = None
        if len(tracked.faces):
            res = await self.handle.remote(InferRequest(tracked.crops, tracked.points01))
        async with self._cv:  # strict frame order for the stateful smoother and the stream IDs
            try:  # a frame lost upstream must not stall the stream forever
                await asyncio.wait_for(self._cv.wait_for(lambda: self._next_seq >= ticket),
                                       timeout=60 + self.cfg.redis.outage_tolerance_s)
            except TimeoutError:
                log.error("%s: frame ticket %d never arrived; skipping ahead", self.session_id,
                          self._next_seq)
            try:  # off the event loop: status() answers while a write waits for Redis
                return await asyncio.to_thread(self._write, tracked, res)
            finally:
                self._next_seq = ticket + 1
                self._cv.notify_all()

    def _write(self, tracked: Any, res: Any) -> dict:
        t0 = time.perf_counter()
        timings = dict(tracked.timings_ms)
        if res is not None:
            timings.update(res.timings_ms)
            probs, sal, au = res.probs, res.saliency, res.au
        else:
            probs, sal, au = np.zeros((0, len(self.builder.labels)), np.float32), None, None
        self.builder.end_tracks(tracked.ended_tracks)
        t_au = time.perf_counter()
        points = self.builder.build(self.session_id, tracked.ts_ms, tracked.pts_ms, tracked.faces,
                                    probs, sal, au)
        timings["au+smooth"] = (time.perf_counter() - t_au) * 1000
        t_w = time.perf_counter()
        wr = self._write_retry(points)
        timings["sink"] = (time.perf_counter() - t_w) * 1000
        self.tracks.update(p.track_id for p in points)
        del t0
        return {"eos": False, "seq": tracked.seq, "faces": len(points), "written": wr.written,
                "duplicates": wr.duplicates, "latency_ms": (time.time() - tracked.t_wall) * 1000,
                "timings_ms": timings, "batch_faces": 0 if res is None else res.batch_faces}

    def _write_retry(self, points: list) -> Any:
        return self._redis("timeline write", self.sink.write, points)

    def _redis(self, what: str, fn: Callable, *args: Any) -> Any:
        from affectstream.pipeline.redis_retry import call_redis

        return call_redis(fn, *args, what=what, tolerance_s=self.cfg.redis.outage_tolerance_s)

    def status(self) -> dict:
        """This sink's Redis outage state (:meth:`pipeline.redis_retry.OutageState.snapshot`)."""
        from affectstream.pipeline.redis_retry import STATE

        return STATE.snapshot()

    async def ready(self) -> bool:
        """Connect to the Serve deployment and make one empty call (routing warm-up, ~2 s)."""
        from ray import serve

        from affectstream.pipeline.inference import InferRequest

        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its import set INFO
        if self.handle is None:
            self.handle = serve.get_deployment_handle("Inference", app_name=APP_NAME)
        await self.handle.remote(InferRequest(np.zeros((0, 1, 1), np.uint8), None))
        return True

    def finish(self, status: str = "ended") -> dict:
        self._redis("session end", self.sink.end_session, self.session_id, status)
        return {"tracks": sorted(self.tracks)}


# ------------------------------------------------------------------------------------- driver

@dataclasses.dataclass
class StreamReport:
    """What one stream did: counts, per-frame timing samples (ms), error if it failed."""

    url: str
    session_id: str
    frames: int = 0
    frames_with_faces: int = 0
    points: int = 0
    duplicates: int = 0
    tracks: list[int] = dataclasses.field(default_factory=list)
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    timings_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    batch_faces: list[int] = dataclasses.field(default_factory=list)
    source_stats: dict = dataclasses.field(default_factory=dict)
    total_frames: int | None = None
    live: bool = False
    error: str | None = None
    wall_s: float = 0.0
    first_frame_at: float | None = None
    last_frame_at: float | None = None

    @property
    def fps(self) -> float:
        """Frames analysed per second between the first and the last result (startup excluded)."""
        if not self.first_frame_at or not self.last_frame_at or self.frames < 2:
            return 0.0
        return (self.frames - 1) / max(self.last_frame_at - self.first_frame_at, 1e-9)


def init_ray(cfg: PipelineConfig) -> None:
    """Start a local Ray bound to loopback, or join the cluster of ``RAY_ADDRESS``.

    Local cluster (no ``RAY_ADDRESS``): every Ray process (GCS, raylet, object manager, workers,
    dashboard agent, runtime-env agent, metrics export) listens on 127.0.0.1 only, and no
    dashboard runs. That is Ray's own single-machine mode (``node_ip_address=127.0.0.1`` with
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which turns Ray's 127.0.0.1 -> "reachable IP"
    rewrite off). Token auth is off only there (nothing beyond this machine can connect), unless
    ``RAY_AUTH_MODE`` is set explicitly.

    Joining a cluster (``RAY_ADDRESS`` set, e.g. ``ray://head:10001`` or ``auto``): token auth
    is on (``RAY_AUTH_MODE=token`` unless set; the token comes from ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, as for any Ray client).

    Raises:
        pipeline.ray_net.RayAuthError: ``RAY_ADDRESS`` names a non-loopback cluster and ``RAY_AUTH_MODE=disabled``.
    """
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                          "logging_level": logging.WARNING, "configure_logging": True}
    address = os.environ.get("RAY_ADDRESS", "").strip()
    from affectstream.pipeline.ray_net import check_cluster_auth, loopback_only_ray

    if address:
        check_cluster_auth(address, os.environ)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    else:
        loopback_only_ray()
        kw["num_cpus"] = cfg.ray_num_cpus or os.cpu_count()
        kw["_node_ip_address"] = "127.0.0.1"
    ray.init(**kw)


def start_inference(cfg: PipelineConfig) -> Any:
    """Deploy (or reuse) the shared Inference Serve app without an HTTP proxy; returns a handle."""
    from ray import serve

    from affectstream.pipeline.inference import Inference

    quiet = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(proxy_location="Disabled", logging_config=quiet)
    i = cfg.inference
    n = i.num_replicas if i.num_replicas != "auto" else 1
    app = Inference.options(num_replicas=n, logging_config=quiet,
                            max_ongoing_requests=max(8, 2 * i.max_batch_size)).bind(
        i.fer_model, i.saliency, i.au_model, i.device, i.half, i.torch_threads or 1,
        i.max_batch_size, i.batch_wait_timeout_s)
    return serve.run(app, name=APP_NAME, route_prefix=None, logging_config=quiet)


def run_streams(sources: list[tuple[str, str]], cfg: PipelineConfig, redis_url: str,
                on_progress: Callable[[StreamReport, dict], None] | None = None,
                on_start: Callable[[list[StreamReport]], None] | None = None,
                max_frames: int | None = None,
                on_status: Callable[[StreamReport, dict], None] | None = None
                ) -> list[StreamReport]:
    """Analyse several sources at once, sharing one inference deployment.

    Args:
        sources: ``(url, session_id)`` pairs.
        cfg: configuration.
        redis_url: Redis to write to (already checked to answer).
        on_progress: called after each frame with (report, frame result).
        on_start: called once every stream opened (or failed to), with the reports.
        max_frames: stop each stream after this many frames (benchmarks, smoke runs).
        on_status: called with (report, sink Redis state) while a stream's results stall, every
            ~2 s: ``{"waiting": bool, "waiting_s", "attempts", "last_error"}``
            (:mod:`pipeline.redis_retry`); lets the caller show "waiting for Redis".

    Returns:
        One :class:`StreamReport` per source, in input order; a stream that failed has ``error``.
    """
    from affectstream.operators.analyze import FaceAnalyzer

    init_ray(cfg)
    start_inference(cfg)
    labels = tuple(FaceAnalyzer.card_for(cfg.inference.fer_model).label_names)
    cfg_json = cfg.model_dump_json()
    dec = cfg.decode.model_dump()
    reports = [StreamReport(u, s) for u, s in sources]
    streams: list[dict] = []
    threads = cfg.inference.torch_threads or 1
    for rep in reports:
        try:
            src = SourceActor.remote(rep.url, rep.session_id, dec, cfg.max_in_flight)
            info = ray.get(src.info.remote())
        except ray.exceptions.RayActorError as e:
            rep.error = _short_error(e)
            continue
        rep.total_frames, rep.live = info["total_frames"], info["live"]
        ft = FaceTrackActor.remote(cfg_json, threads)
        sink = SinkActor.remote(cfg_json, redis_url, rep.session_id, rep.url, labels)
        streams.append({"rep": rep, "src": src, "ft": ft, "sink": sink, "inflight": [],
                        "eos": False, "submitted": 0, "t0": time.time()})
    # every actor has loaded its models before the first frame is requested (a live source would
    # otherwise read ahead into a pipeline that is not there yet)
    for s in list(streams):
        try:
            ray.get([s["ft"].ready.remote(), s["sink"].ready.remote()])
        except ray.exceptions.RayError as e:
            s["rep"].error = _short_error(e)
            streams.remove(s)
    if on_start:
        on_start(reports)
    ref_owner: dict[Any, dict] = {}
    next_status = time.monotonic() + 2.0
    while any(not s["eos"] or s["inflight"] for s in streams):
        for s in streams:
            while (not s["eos"] and len(s["inflight"]) < cfg.max_in_flight
                   and (max_frames is None or s["submitted"] < max_frames)):
                ref = s["sink"].process.remote(s["ft"].process.remote(s["src"].next.remote()),
                                               s["submitted"])
                s["inflight"].append(ref)
                ref_owner[ref] = s
                s["submitted"] += 1
            if max_frames is not None and s["submitted"] >= max_frames:
                s["eos"] = True
        pending = [r for s in streams for r in s["inflight"]]
        if not pending:
            break
        ready, _ = ray.wait(pending, num_returns=1, timeout=1.0)
        if on_status is not None and time.monotonic() >= next_status:
            next_status = time.monotonic() + 2.0
            _report_status(streams, on_status)
        for ref in ready:
            s = ref_owner.pop(ref)
            s["inflight"].remove(ref)
            rep = s["rep"]
            try:
                out = ray.get(ref)
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as e:
                rep.error = _short_error(e)
                s["eos"] = True
                continue
            if out["eos"]:
                s["eos"] = True
                continue
            rep.frames += 1
            now = time.time()
            rep.first_frame_at = rep.first_frame_at or now
            rep.last_frame_at = now
            rep.frames_with_faces += out["faces"] > 0
            rep.points += out["written"]
            rep.duplicates += out["duplicates"]
            rep.latencies_ms.append(out["latency_ms"])
            if out["batch_faces"]:
                rep.batch_faces.append(out["batch_faces"])
            for k, v in out["timings_ms"].items():
                rep.timings_ms.setdefault(k, []).append(v)
            if on_progress:
                on_progress(rep, out)
    for s in streams:
        rep = s["rep"]
        rep.wall_s = time.time() - s["t0"]
        try:
            rep.source_stats = ray.get(s["src"].stats.remote())
            fin = ray.get(s["sink"].finish.remote("failed" if rep.error else "ended"))
            rep.tracks = fin["tracks"]
        except ray.exceptions.RayError as e:
            rep.error = rep.error or _short_error(e)
        for a in ("src", "ft", "sink"):
            ray.kill(s[a])
    return reports


def _report_status(streams: list[dict], on_status: Callable[[StreamReport, dict], None]) -> None:
    """Ask each live stream's sink for its Redis state (answers while a write waits)."""
    live = [s for s in streams if not s["eos"] or s["inflight"]]
    refs = [s["sink"].status.remote() for s in live]
    for s, ref in zip(live, refs):
        try:
            on_status(s["rep"], ray.get(ref, timeout=5))
        except ray.exceptions.RayError:
            pass


def _short_error(e: BaseException) -> str:
    """The innermost error's one-line message (Ray wraps remote errors in long tracebacks)."""
    cause = getattr(e, "cause", None) or e
    msg = str(cause).strip().splitlines()
    line = msg[-1] if msg else type(cause).__name__
    return f"{type(cause).__name__}: {line}" if not line.startswith(type(cause).__name__) else line


def shutdown() -> None:
    """Tear down Ray started by this process (its Serve apps go with it)."""
    ray.shutdown()
