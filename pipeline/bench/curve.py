"""The streams curve (``affectstream bench-curve``): the same clip as N concurrent streams for
several N, as files (``run``'s placement) or as Kafka sessions at a fixed frame rate each
(``serve``'s), with total frames/s, frame-to-Redis latency, faces per inference forward and CPU
per frame for each N; JSON plus a plot."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

from affectstream.pipeline.config import PipelineConfig

ROW_KEYS = ("frames_per_s", "latency_p50_ms", "latency_p99_ms", "faces_per_batch_mean",
            "cpu_ms_per_frame", "frames_analysed", "warm_cluster")


def run_curve(video: str, cfg: PipelineConfig, redis_url: str, streams: list[int], *,
              kafka: bool = False, bootstrap: str | None = None, fps: float = 10.0,
              max_frames: int | None = None, console: Any = None) -> dict:
    """Run the bench once per N in ``streams`` (each run starts its own Ray or joins the warm
    cluster, as ``bench`` does) and collect one row per N.

    Args:
        video: clip analysed (file).
        cfg: configuration (the service preset for ``kafka``).
        redis_url: Redis (already checked).
        streams: the N values, e.g. ``[1, 2, 4, 8, 16]``.
        kafka: measure Kafka sessions published at ``fps`` frames/s each instead of files.
        bootstrap: Kafka bootstrap (with ``kafka``).
        fps: per-session publish rate with ``kafka``, frames/s.
        max_frames: frames per stream (bounds the run time at large N).

    Returns:
        ``{"mode", "video", "fps", "max_frames", "rows": [{"streams": N, <ROW_KEYS>...}],
        "machine", "config"}``; a key a mode does not measure is None.

    Raises:
        RuntimeError: a run failed (its one-line reason).
    """
    from affectstream.pipeline.bench.kafka import run_kafka_bench
    from affectstream.pipeline.bench.runtime import run_bench

    rows = []
    for n in streams:
        if console is not None:
            console.print(f"bench-curve: {n} stream(s)…", highlight=False)
        t0 = time.monotonic()
        if kafka:
            res = run_kafka_bench(video, cfg, redis_url, bootstrap=bootstrap, fps=fps,
                                  streams=n, max_frames=max_frames, capacity_frames=0)
        else:
            res = run_bench(video, cfg, redis_url, n, max_frames=max_frames)
        s = res["summary"]
        rows.append({"streams": n, **{k: s.get(k) for k in ROW_KEYS},
                     "wall_s": round(time.monotonic() - t0, 2)})
    return {"mode": "kafka" if kafka else "files",
            "video": video if "://" in video else os.path.basename(video),
            "fps": fps if kafka else None, "max_frames": max_frames, "rows": rows,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
            "config": cfg.model_dump(mode="json")}


def plot_curve(curves: list[dict], path: str | Path) -> Path:
    """One figure: total frames/s, p50 latency, faces per forward and CPU per frame against N,
    a line per curve (files, Kafka). Returns the written path (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("frames_per_s", "total frames/s"), ("latency_p50_ms", "p50 frame-to-Redis (ms)"),
              ("faces_per_batch_mean", "faces per inference forward"),
              ("cpu_ms_per_frame", "CPU per frame (ms, all processes)")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), constrained_layout=True)
    for ax, (key, label) in zip(axes, panels):
        for c in curves:
            pts = [(r["streams"], r[key]) for r in c["rows"] if r.get(key) is not None]
            if pts:
                name = c["mode"] + (f" @ {c['fps']:g} fps/stream" if c.get("fps") else "")
                ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ns = sorted({r["streams"] for c in curves for r in c["rows"]})
        ax.set_xticks(ns, [str(n) for n in ns])
        if key == "latency_p50_ms":
            ax.set_yscale("log")
        ax.set_xlabel("concurrent streams N")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"affectstream streams curve ({curves[0]['machine']['cpus']} CPUs)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
