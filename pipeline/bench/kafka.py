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

from affectstream.pipeline.config import PipelineConfig


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
    from affectstream.pipeline.kafka.envelope import encode_image
    from affectstream.pipeline.kafka.publish import sampled_frames

    out, h, w = [], 0, 0
    for fr in sampled_frames(video, fps, max_frames):
        h, w = fr.image.shape[:2]
        out.append((fr.pts_ms, encode_image(fr.image, "jpeg", jpeg_quality)))
    return out, w, h


def _publish(producer: Any, topic: str, sessions: list[str], frames: list[tuple[int, bytes]],
             w: int, h: int, fps: float | None, sent: list[int]) -> None:
    """Send frame i of every session at ``t0 + i / fps`` (as fast as possible when ``fps`` is
    None), each stamped with the wall clock as it is sent."""
    from affectstream.pipeline.kafka.envelope import encode

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
        pipeline.kafka.frames.BrokerUnavailable: no broker answers.
        RuntimeError: the service did not analyse every published frame in time.
    """
    from affectstream.pipeline.runtime import dag
    from affectstream.pipeline.kafka.client import client_kwargs, ensure_topics, make_producer
    from affectstream.pipeline.service.lifecycle import start_service

    def say(msg: str) -> None:
        if console is not None:
            console.print(msg, highlight=False)

    tag = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    boot = bootstrap or cfg.kafka.bootstrap
    topic = f"{cfg.kafka.topic}.bench-{tag}"
    data = cfg.model_dump()
    data["kafka"].update(bootstrap=boot, topic=topic, dlq_topic=topic + ".dlq",
                         result_topic=None, group_id=f"{cfg.kafka.group_id}-bench-{tag}")
    data["redis"]["url"] = redis_url
    data["api"]["port"] = _free_port()
    bcfg = PipelineConfig.model_validate(data)
    frames, w, h = _clip_frames(video, fps, max_frames)
    if len(frames) < 2:
        raise RuntimeError(f"{video}: fewer than 2 frames at {fps:g} frames/s")
    ckw = {k: v for k, v in client_kwargs(bcfg.kafka).items() if k != "bootstrap_servers"}
    ensure_topics(boot, [topic], max(streams, bcfg.kafka.consumers), **ckw)
    say(f"bench --kafka: starting the service ({bcfg.kafka.consumers} consumer(s)) on topic "
        f"{topic} @ {boot}…")
    t = time.monotonic()
    svc = start_service(bcfg)
    startup_s = time.monotonic() - t
    sessions = [f"bench-{tag}-{i}" for i in range(streams)]
    try:
        svc.call_consumers("record_frames", 100_000)
        producer = make_producer(boot, bcfg.kafka, linger_ms=0)  # no batching delay
        try:
            warm = [f"bench-{tag}-warm"]  # group joined, first inference calls done
            _publish(producer, topic, warm, frames[:10], w, h, None, [0])
            if len(_wait_frames(svc, set(warm), min(10, len(frames)), 300)) < min(10, len(frames)):
                raise RuntimeError("the service did not analyse the warm-up frames in 300 s")
            n = len(frames) * streams
            say(f"bench --kafka: publishing {len(frames)} frames ({w}x{h}) x {streams} "
                f"session(s) at {fps:g} frames/s each…")
            sent = [0]
            from affectstream.pipeline.bench.cpu import CpuMeter

            meter = CpuMeter()
            cpu0 = meter.sample()
            th = threading.Thread(target=_publish, daemon=True, args=(
                producer, topic, sessions, frames, w, h, fps, sent))
            th.start()
            rows = _wait_frames(svc, set(sessions), n, len(frames) / fps + 300)
            cpu_ms_per_frame = 1000 * (meter.sample() - cpu0) / max(1, len(rows))
            th.join(60)
            if len(rows) < n:
                raise RuntimeError(f"only {len(rows)} of {n} published frames were analysed")
            cap_rows: list[tuple] = []
            if capacity_frames:
                dur = frames[-1][0] + (frames[-1][0] - frames[-2][0])
                backlog = [(p + rep * dur, jpg) for rep in range(capacity_frames // len(frames)
                                                                  + 1)
                           for p, jpg in frames][:capacity_frames]
                cap_sid = [f"bench-{tag}-backlog"]
                say(f"bench --kafka: backlog of {len(backlog)} frames, as fast as possible…")
                _publish(producer, topic, cap_sid, backlog, w, h, None, [0])
                cap_rows = _wait_frames(svc, set(cap_sid), len(backlog), 600)
        finally:
            producer.close(10)
    finally:
        try:
            svc.stop()
        finally:
            dag.shutdown()
            _delete_topics(boot, [topic, topic + ".dlq"], ckw)
            _end_sessions(redis_url, cfg, sessions + [f"bench-{tag}-warm",
                                                      f"bench-{tag}-backlog"])
    res = _report(video, cfg, bcfg, fps, streams, rows, cap_rows, startup_s)
    res["summary"]["cpu_ms_per_frame"] = cpu_ms_per_frame
    return res


def _report(video: str, cfg: PipelineConfig, bcfg: PipelineConfig, fps: float, streams: int,
            rows: list[tuple], cap_rows: list[tuple], startup_s: float) -> dict:
    rows = sorted(rows, key=lambda r: r[1])
    lat = [r[2] for r in rows]
    written = [r[1] + r[2] for r in rows]
    span_s = (max(written) - rows[0][1]) / 1000
    e2e_fps = len(rows) / span_s if span_s > 0 else 0.0
    tail = lat[-max(1, len(lat) // 10):]
    lat_s, tail_s = _stats(lat), _stats(tail)
    asked = fps * streams
    capacity = 0.0
    if len(cap_rows) >= 2:
        cw = [r[1] + r[2] for r in cap_rows]
        capacity = (len(cw) - 1) / max((max(cw) - min(cw)) / 1000, 1e-9)
    keeps_up = e2e_fps >= 0.95 * asked and tail_s["p99"] < 1000
    stage: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r[4].items():
            stage.setdefault(k, []).append(v)
    summary: dict[str, Any] = {
        "frames_analysed": float(len(rows)),
        "publish_frames_per_s": asked,
        "frames_per_s": e2e_fps,
        "latency_p50_ms": lat_s["p50"],
        "latency_p99_ms": lat_s["p99"],
        "latency_max_ms": lat_s["max"],
        "latency_last10pct_p99_ms": tail_s["p99"],
        "keeps_up": keeps_up,
        "faces_per_frame_mean": float(np.mean([r[3] for r in rows])),
        "startup_s": startup_s,
    }
    if cap_rows:
        summary["capacity_frames_per_s"] = capacity
    return {
        "video": video if "://" in video else os.path.basename(video), "mode": "kafka",
        "streams": streams, "fps": fps, "consumers": bcfg.kafka.consumers,
        "summary": summary, "latency_ms": lat_s, "latency_last10pct_ms": tail_s,
        "stages_ms": {k: _stats(v) for k, v in stage.items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "config": cfg.model_dump(mode="json"),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _delete_topics(bootstrap: str, topics: list[str], ckw: dict[str, Any]) -> None:
    try:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","), **ckw)
        try:
            admin.delete_topics(topics)
        finally:
            admin.close()
    except Exception:  # noqa: BLE001  (best effort: a broker may refuse deletes)
        pass


def _end_sessions(redis_url: str, cfg: PipelineConfig, sessions: list[str]) -> None:
    try:
        from affectstream.pipeline.store.redis_store import RedisSink, connect

        sink = RedisSink(connect(redis_url, cfg.redis.password), cfg.redis.key_prefix,
                         session_ttl_s=cfg.redis.session_ttl_s)
        for sid in sessions:
            if sink.r.exists(sink.k.meta(sid)):
                sink.end_session(sid, "ended")
    except Exception:  # noqa: BLE001
        pass
