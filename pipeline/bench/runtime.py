"""``affectstream bench``: the main job on a real clip, every frame analysed, measured."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np

from affectstream.pipeline.config import PipelineConfig


def _stats(v: list[float]) -> dict[str, float]:
    a = np.asarray(v, np.float64)
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "n": int(a.size)}


def run_bench(video: str, cfg: PipelineConfig, redis_url: str, streams: int = 1,
              console: Any = None, max_frames: int | None = None, placement: str = "ray") -> dict:
    """Run ``streams`` copies of ``video`` through the full DAG into Redis and measure.

    ``max_frames`` bounds each stream (needed for live streams, which never end);
    ``placement``: ``local`` or ``ray`` (:mod:`pipeline.runtime.placements`; the CLI resolves
    ``auto``).

    The first ``warmup`` frames of each stream (model load, JIT warm-up) are excluded from the
    rates and stage times; the frames/s is frames analysed after warm-up over the wall time they
    took, all streams together.

    Returns:
        JSON-able dict: ``summary`` (frames/s, latency p50/p99 ms, ...), ``stages_ms`` (per-stage
        mean/p50/p99 per frame), ``machine`` and ``config``.
    """
    from affectstream.pipeline.runtime.streams import run_streams

    tag = time.strftime("%Y%m%d-%H%M%S")
    sources = [(video, f"bench-{tag}-{i}") for i in range(streams)]
    warmup = 10
    marks: dict[str, float] = {}

    from affectstream.pipeline.bench.cpu import CpuMeter
    from affectstream.pipeline.runtime.warm import read_state

    warm_state = None if os.environ.get("RAY_ADDRESS") or placement == "local" else read_state()
    meter = CpuMeter(warm_state["temp_dir"] if warm_state else None)
    done = {"frames": 0}

    def on_progress(rep: Any, res: dict) -> None:
        done["frames"] += 1
        now = time.time()
        if rep.frames == warmup:
            if "t_warm" not in marks:
                marks["t_warm"], marks["cpu_warm"], marks["f_warm"] = now, meter.sample(), done["frames"]
                marks["t_cpu"] = now
            marks["n_warm"] = marks.get("n_warm", 0) + warmup
        marks["t_last"] = now
        if "t_warm" in marks and now - marks["t_cpu"] >= 0.5:  # psutil scan: not per frame
            sample_cpu()

    def sample_cpu(_reports: Any = None) -> None:
        # also once at the end, while the stream actors still live (a short clip may end
        # within the first 0.5 s after the warm-up)
        if "t_warm" in marks:
            marks["t_cpu"], marks["cpu_last"], marks["f_last"] = (
                time.time(), meter.sample(), done["frames"])

    if console:
        rate = cfg.decode.analysis_fps
        console.print(f"bench: {streams} stream(s) of {video} "
                      f"({'every frame' if not rate else f'{rate:g} frames/s analysed'}; "
                      f"placement {placement})…")
    try:
        reports = run_streams(sources, cfg, redis_url, on_progress, max_frames=max_frames,
                              on_finished=sample_cpu, placement=placement)
    finally:
        if placement != "local":
            from affectstream.pipeline.runtime import dag

            dag.shutdown()
    errors = [r.error for r in reports if r.error]
    if errors:
        raise RuntimeError(f"bench stream failed: {errors[0]}")
    frames = sum(r.frames for r in reports)
    warm_frames = frames - marks.get("n_warm", 0)
    elapsed = marks.get("t_last", 0) - marks.get("t_warm", 0)
    stage: dict[str, list[float]] = {}
    lat: list[float] = []
    batch: list[int] = []
    for r in reports:
        for k, v in r.timings_ms.items():
            stage.setdefault(k, []).extend(v[warmup:])
        lat.extend(r.latencies_ms[warmup:])
        # forwards that served frames after the warm-up (one forward serves several frames)
        batch.extend(f for f, n in zip(r.batch_faces, r.batch_frames) if n > warmup)
    lat_s = _stats(lat)
    summary = {
        "frames_analysed": float(frames),
        "frames_per_s": warm_frames / elapsed if elapsed > 0 else 0.0,
        "latency_p50_ms": lat_s["p50"],
        "latency_p99_ms": lat_s["p99"],
        "faces_per_batch_mean": float(np.mean(batch)) if batch else 0.0,
        "points_written": float(sum(r.points for r in reports)),
        "tracks": float(sum(len(r.tracks) for r in reports)),
        "cpu_ms_per_frame": (1000 * (marks["cpu_last"] - marks["cpu_warm"])
                             / (marks["f_last"] - marks["f_warm"])
                             if marks.get("f_last", 0) > marks.get("f_warm", 0)
                             else float("nan")),
        "warm_cluster": bool(warm_state),
        "placement": placement,
        "frames_dropped_behind": float(
            sum(r.source_stats.get("dropped_behind", 0) for r in reports)),
    }
    if cfg.decode.analysis_fps:
        summary["analysis_fps"] = float(cfg.decode.analysis_fps)
    return {
        "video": video if "://" in video else os.path.basename(video), "streams": streams, "summary": summary,
        "stages_ms": {k: _stats(v) for k, v in stage.items() if v},
        "latency_ms": lat_s,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "config": cfg.model_dump(mode="json"),
    }
