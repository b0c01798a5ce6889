"""``run``'s driver: start one :class:`StreamActor` per source, follow their progress.

The driver never touches frames: each actor streams on its own and is polled a few times a
second for per-frame summaries (progress bars, the end-of-run report, benchmarks).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import ray

from affectstream.pipeline.config import PipelineConfig
from affectstream.pipeline.errors import one_line


@dataclasses.dataclass
class StreamReport:
    """What one stream did: counts, per-frame timing samples (ms), error if it failed."""

    url: str
    session_id: str
    frames: int = 0
    frames_with_faces: int = 0
    points: int = 0
    duplicates: int = 0
    errors: int = 0
    tracks: list[int] = dataclasses.field(default_factory=list)
    latencies_ms: list[float] = dataclasses.field(default_factory=list)
    timings_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    batch_faces: list[int] = dataclasses.field(default_factory=list)
    batch_frames: list[int] = dataclasses.field(default_factory=list)  # frame number of each
    source_stats: dict = dataclasses.field(default_factory=dict)
    total_frames: int | None = None
    live: bool = False
    pooled: bool = False  # served by a warm pool actor (``affectstream up``)
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

    def add(self, r: dict, now: float) -> None:
        """Account one frame summary from the actor."""
        self.frames += 1
        self.first_frame_at = self.first_frame_at or now
        self.last_frame_at = now
        self.frames_with_faces += r["faces"] > 0
        self.points += r["written"]
        self.duplicates += r["duplicates"]
        self.errors += r["error"] is not None
        self.latencies_ms.append(r["latency_ms"])
        if r["first_in_batch"] and r["batch_faces"]:
            self.batch_faces.append(r["batch_faces"])
            self.batch_frames.append(self.frames)
        for k, v in r["timings_ms"].items():
            self.timings_ms.setdefault(k, []).append(v)


def run_streams(sources: list[tuple[str, str]], cfg: PipelineConfig, redis_url: str,
                on_progress: Callable[[StreamReport, dict], None] | None = None,
                on_start: Callable[[list[StreamReport]], None] | None = None,
                max_frames: int | None = None,
                on_status: Callable[[StreamReport, dict], None] | None = None,
                on_finished: Callable[[list[StreamReport]], None] | None = None
                ) -> list[StreamReport]:
    """Analyse several sources at once, sharing one inference deployment.

    Args:
        sources: ``(url, session_id)`` pairs.
        cfg: configuration.
        redis_url: Redis to write to (already checked to answer).
        on_progress: called after each frame with (report, frame summary).
        on_start: called once every stream opened (or failed to), with the reports.
        max_frames: stop each stream after this many frames (benchmarks, smoke runs).
        on_status: called about every 2 s with (report, Redis state) for each running stream:
            ``{"waiting": bool, "waiting_s", "attempts", "last_error"}`` (lets the caller show
            "waiting for Redis").
        on_finished: called once every stream ended, before its actor is stopped (a CPU meter
            can still read the actors' processes then).

    Returns:
        One :class:`StreamReport` per source, in input order; a stream that failed has ``error``.
    """
    from affectstream.pipeline.runtime import dag
    from affectstream.pipeline.runtime.stream_actor import StreamActor
    from affectstream.pipeline.runtime.warm import lease_pooled

    dag.init_ray(cfg)
    cfg_json = cfg.model_dump_json()
    reports = [StreamReport(u, s) for u, s in sources]
    actors: dict[int, object] = {}
    pooled: set[int] = set()
    opened: dict[int, object] = {}
    t0 = {}
    slots = int(dag.WARM["state"].get("stream_pool", 0)) if "state" in dag.WARM else 0
    # the stream actors open their sources and load their models while Serve deploys inference;
    # in the warm cluster, idle pooled actors with their networks loaded serve first
    for i, rep in enumerate(reports):
        actor = lease_pooled(cfg, slots) if slots else None
        if actor is not None:
            opened[i] = actor.open.remote(rep.url, rep.session_id, cfg_json, redis_url,
                                          max_frames)
            pooled.add(i)
            rep.pooled = True
        else:
            actor = StreamActor.remote(rep.url, rep.session_id, cfg_json, redis_url,
                                       max_frames)
        actors[i], t0[i] = actor, time.time()
    dag.ensure_inference(cfg, probe=next((actors[i] for i in pooled), None))
    started = {}
    for i, actor in list(actors.items()):
        try:
            if i in opened:
                ray.get(opened[i])  # a bad source fails here
            info = ray.get(actor.info.remote())
            reports[i].total_frames, reports[i].live = info["total_frames"], info["live"]
            started[i] = actor.start.remote()
        except ray.exceptions.RayError as e:
            reports[i].error = one_line(e)
            _dispose(actors.pop(i), i in pooled)
    for i, ref in started.items():
        try:
            ray.get(ref)
        except ray.exceptions.RayError as e:
            reports[i].error = one_line(e)
            _dispose(actors.pop(i), i in pooled)
    if on_start:
        on_start(reports)
    polls = {i: a.poll.remote() for i, a in actors.items()}
    next_status = time.monotonic() + 2.0
    while polls:
        ready, _ = ray.wait(list(polls.values()), num_returns=1, timeout=1.0)
        if on_status is not None and time.monotonic() >= next_status:
            next_status = time.monotonic() + 2.0
            _report_status({i: actors[i] for i in polls}, reports, on_status)
        for ref in ready:
            i = next(k for k, v in polls.items() if v == ref)
            rep = reports[i]
            try:
                prog = ray.get(ref)
            except ray.exceptions.RayError as e:
                rep.error = rep.error or one_line(e)
                del polls[i]
                continue
            now = time.time()
            for r in prog.results:
                rep.add(r, now)
                if on_progress:
                    on_progress(rep, r)
            if prog.done:
                rep.error = rep.error or prog.error
                del polls[i]
            else:
                polls[i] = actors[i].poll.remote()
    if on_finished:
        on_finished(reports)
    for i, actor in actors.items():
        rep = reports[i]
        rep.wall_s = time.time() - t0[i]
        try:
            stats = ray.get(actor.stats.remote())
            rep.tracks = stats.pop("tracks")
            rep.source_stats = stats
        except ray.exceptions.RayError as e:
            rep.error = rep.error or one_line(e)
        _dispose(actor, i in pooled)
    return reports


def _dispose(actor: object, pooled: bool) -> None:
    """Stop a stream's actor; a pooled one goes back to the warm pool (killed if it cannot)."""
    if pooled:
        try:
            ray.get(actor.release.remote(), timeout=30)  # type: ignore[attr-defined]
            return
        except ray.exceptions.RayError:
            pass
    ray.kill(actor)


def _report_status(actors: dict[int, object], reports: list[StreamReport],
                   on_status: Callable[[StreamReport, dict], None]) -> None:
    refs = {i: a.status.remote() for i, a in actors.items()}  # type: ignore[attr-defined]
    for i, ref in refs.items():
        try:
            on_status(reports[i], ray.get(ref, timeout=5))
        except ray.exceptions.RayError:
            pass
