"""``affectstream bench --kafka``: the service measured end to end through Kafka.

A client publishes a clip at its frame rate (real time) into a fresh topic while the service
(the same deployments ``affectstream serve`` runs) analyses it; every frame's envelope ``ts_ms``
is the wall clock when it was published, and the consumer notes when Redis acknowledged its
points, so ``written - ts_ms`` is the publish-to-Redis latency. A second phase publishes a
backlog as fast as possible and measures how many frames per second the service drains
(its capacity, to compare with the rate it has to keep up with).
"""

from __future__ import annotations

import os
import platform
import threading
import time
import uuid
from typing import Any

import numpy as np

from pipeline.config import PipelineConfig


def _stats(v: list[float]) -> dict[str, float]:
    a = np.asarray(v, np.float64)
    if not a.size:
        return {"mean": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": int(a.size)}


def _clip_frames(video: str, fps: float | None, max_frames: int | None,
                 jpeg_quality: int = 90) -> tuple[list[tuple[int, bytes]], int, int]:
    """``[(pts_ms, JPEG bytes)]`` of the clip resampled to ``fps``, encoded ahead of time (the
    publisher's pacing must not wait on the encoder), and the frame size."""
    from pipeline.envelope import encode_image
    from pipeline.kafka_io import iter_sampled, open_video

    container, stream = open_video(video)
    try:
        out, h, w = [], 0, 0
        for pts, bgr in iter_sampled(container, stream, fps, max_frames):
            h, w = bgr.shape[:2]
            out.append((pts, encode_image(bgr, "jpeg", jpeg_quality, bgr=True)))
        return out, w, h
    finally:
        container.close()


def _publish(producer: Any, topic: str, sessions: list[str], frames: list[tuple[int, bytes]],
             w: int, h: int, fps: float | None, sent: list[int]) -> None:
    """Send frame i of every session at ``t0 + i / fps`` (as fast as possible when ``fps`` is
    None), each stamped with the wall clock as it is sent."""
    from pipeline.envelope import encode

    t0 = time.monotonic()
    for i, (pts, jpeg) in enumerate(frames):
        if fps:
            delay = t0 + i / fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for sid in sessions:
            k, v, hd = encode(sid, i, int(time.time() * 1000), data=jpeg, pts_ms=pts, width=w,
                              height=h)
            producer.send(topic, key=k, value=v, headers=hd)
            sent[0] += 1
    producer.flush(60)


def _wait_frames(svc: Any, sessions: set[str], n: int, timeout_s: float) -> list[tuple]:
    """Poll the consumers until ``n`` frames of ``sessions`` are in their frame logs."""
    deadline = time.monotonic() + timeout_s
    rows: list[tuple] = []
    while time.monotonic() < deadline:
        rows = [tuple(r) for st in svc.stats(frames=True) for r in st["frames_log"]
                if r[0] in sessions]
        if len(rows) >= n:
            break
        time.sleep(0.5)
    return rows


def run_kafka_bench(video: str, cfg: PipelineConfig, redis_url: str, *,
                    bootstrap: str | None = None, fps: float = 15.0, streams: int = 1,
                    max_frames: int | None = None, capacity_frames: int = 300,
                    console: Any = None) -> dict:
    """Publish ``video`` at ``fps`` (``streams`` sessions at once) through the running service
    and measure end-to-end frames/s and publish-to-Redis latency.

    Runs the service of ``affectstream serve`` in this process's Ray (local, or ``RAY_ADDRESS``)
    on a fresh topic and consumer group (``<kafka.topic>.bench-<id>``), so a bench never reads
    or commits anything of a real deployment; the topics are deleted afterwards.

    Args:
        video: clip to publish (file).
        cfg: configuration (``kafka.consumers``, inference, ... as for the service).
        redis_url: Redis to write to (already checked to answer).
        bootstrap: Kafka bootstrap (default ``kafka.bootstrap``).
        fps: publish rate per session, frames/s of media time (the clip is resampled to it).
        streams: sessions published at once.
        max_frames: frames per session (default: the whole clip).
        capacity_frames: frames of the backlog phase (0 = skip it).
        console: rich console for progress lines, or None.

    Returns:
        JSON-able dict: ``summary`` (frames/s, latency p50/p99 ms, capacity, ...), ``latency_ms``,
        ``stages_ms`` (per-frame time per stage), ``machine``, ``config``.

    Raises:
        pipeline.kafka_io.BrokerUnavailable: no broker answers.
        RuntimeError: the service did not analyse every published frame in time.
    """
    from pipeline import dag
    from pipeline.kafka_io import client_kwargs, ensure_topics, make_producer
    from pipeline.service import start_service
    from tests_free_port import free_port  # noqa: F401  (placeholder, replaced below)

    raise NotImplementedError
