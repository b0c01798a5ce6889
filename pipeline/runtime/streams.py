"""``run``'s driver: start one stream worker per source, follow their progress.

The driver never touches frames: each worker (a Ray actor or a worker in this process,
:mod:`pipeline.runtime.placements`) streams on its own and is polled a few times a second for
per-frame summaries (progress bars, the end-of-run report, benchmarks).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

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
    placement: str = "ray"  # where it ran: "ray" or "local" (pipeline.runtime.placements)
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
                on_finished: Callable[[list[StreamReport]], None] | None = None,
                placement: str = "auto") -> list[StreamReport]:
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
        on_finished: called once every stream ended, before its worker is stopped (a CPU meter
            can still read the actors' processes then).
        placement: ``auto``, ``local`` or ``ray`` (:mod:`pipeline.runtime.placements`); a Ray
            placement leaves Ray running for the caller to shut down (``dag.shutdown``).

    Returns:
        One :class:`StreamReport` per source, in input order (``placement`` says where it ran);
        a stream that failed has ``error``.
    """
    from affectstream.pipeline.runtime import placements

    where = placements.make(placements.choose(placement, len(sources)), cfg, len(sources))
    try:
        return _drive(where, sources, cfg, redis_url, on_progress, on_start, max_frames,
                      on_status, on_finished)
    finally:
        where.close()


def _drive(where: Any, sources: list[tuple[str, str]], cfg: PipelineConfig, redis_url: str,
           on_progress: Callable | None, on_start: Callable | None, max_frames: int | None,
           on_status: Callable | None, on_finished: Callable | None) -> list[StreamReport]:
    cfg_json = cfg.model_dump_json()
    reports = [StreamReport(u, s, placement=where.name) for u, s in sources]
    handles: dict[int, Any] = {}
    pooled: set[int] = set()
    opened: dict[int, Any] = {}
    t0 = {}
    # the workers open their sources and load their models while inference is made ready; in
    # the warm cluster, idle pooled actors with their networks loaded serve first
    for i, rep in enumerate(reports):
        handle, opening, from_pool = where.launch(rep.url, rep.session_id, cfg_json, redis_url,
                                                  max_frames)
        if opening is not None:
            opened[i] = opening
        if from_pool:
            pooled.add(i)
            rep.pooled = True
        handles[i], t0[i] = handle, time.time()
    where.prepare()
    started = {}
    for i, handle in list(handles.items()):
        try:
            if i in opened:
                where.get(opened[i])  # a bad source fails here
            info = where.get(where.call(handle, "info"))
            reports[i].total_frames, reports[i].live = info["total_frames"], info["live"]
            started[i] = where.call(handle, "start")
        except where.errors as e:
            reports[i].error = one_line(e)
            where.dispose(handles.pop(i), i in pooled)
    for i, fut in started.items():
        try:
            where.get(fut)
        except where.errors as e:
            reports[i].error = one_line(e)
            where.dispose(handles.pop(i), i in pooled)
    if on_start:
        on_start(reports)
    polls = {i: where.call(h, "poll") for i, h in handles.items()}
    next_status = time.monotonic() + 2.0
    while polls:
        ready = where.wait_one(list(polls.values()), timeout=1.0)
        if on_status is not None and time.monotonic() >= next_status:
            next_status = time.monotonic() + 2.0
            _report_status(where, {i: handles[i] for i in polls}, reports, on_status)
        for fut in ready:
            i = next(k for k, v in polls.items() if v == fut)
            rep = reports[i]
            try:
                prog = where.get(fut)
            except where.errors as e:
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
                polls[i] = where.call(handles[i], "poll")
    if on_finished:
        on_finished(reports)
    for i, handle in handles.items():
        rep = reports[i]
        rep.wall_s = time.time() - t0[i]
        try:
            stats = where.get(where.call(handle, "stats"))
            rep.tracks = stats.pop("tracks")
            rep.source_stats = stats
        except where.errors as e:
            rep.error = rep.error or one_line(e)
        where.dispose(handle, i in pooled)
    return reports


def _report_status(where: Any, handles: dict[int, Any], reports: list[StreamReport],
                   on_status: Callable[[StreamReport, dict], None]) -> None:
    futs = {i: where.call(h, "status") for i, h in handles.items()}
    for i, fut in futs.items():
        try:
            on_status(reports[i], where.get(fut, timeout=5))
        except where.errors:
            pass
