"""Prometheus metrics of the pipeline (prometheus_client, default registry).

Names follow Prometheus conventions: ``affectstream_`` prefix, ``_total`` added to counters by
the client, units in the name (``_ms``). Other modules import the objects and increment them;
:func:`render` produces the text exposition served at ``/metrics``.

Note: prometheus_client metrics are per process. Under Ray every actor is its own process, so a
counter incremented in a consumer actor shows up in *that* process's registry, not in the API
replica's ``/metrics``. The Kafka consumer actors therefore push their registry to Redis
(:mod:`pipeline.metrics.aggregate`), and ``/metrics`` renders the cluster-wide totals from there.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram
from prometheus_client import disable_created_metrics, generate_latest

disable_created_metrics()  # no *_created series: they double the exposition for little use

FRAMES_IN = Counter(
    "affectstream_frames_in", "Frames received from a source (file, RTSP, Kafka), before sampling.")
FRAMES_ANALYSED = Counter(
    "affectstream_frames_analysed", "Frames that went through detection and inference.")
FRAMES_DROPPED = Counter(
    "affectstream_frames_dropped", "Live-source frames dropped because the pipeline was behind.")
FACES = Counter("affectstream_faces", "Faces analysed (one per track per analysed frame).")
DLQ_MESSAGES = Counter(
    "affectstream_dlq_messages", "Kafka messages sent to the dead-letter topic, by reason.",
    ["reason"])
POINTS_WRITTEN = Counter(
    "affectstream_timeline_points_written", "Timeline points acknowledged by Redis.")
POINTS_DUPLICATE = Counter(
    "affectstream_timeline_points_duplicate", "Replayed timeline points rejected by Redis.")
BATCH_SIZE = Histogram(
    "affectstream_inference_batch_size", "Faces per batched inference forward.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
STAGE_LATENCY_MS = Histogram(
    "affectstream_stage_latency_ms", "Wall time of one stage call, milliseconds.", ["stage"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000))
CHECKPOINTS = Counter(
    "affectstream_session_checkpoints",
    "Per-session tracker/smoother state checkpoints written to Redis by Kafka consumers.")
CHECKPOINTS_REJECTED = Counter(
    "affectstream_checkpoints_rejected",
    "Session checkpoints ignored (unreadable, foreign format or version, bad signature); the "
    "session started blank.", ["reason"])
REPLAY_SKIPPED = Counter(
    "affectstream_frames_replay_skipped",
    "Re-delivered Kafka frames skipped because a session checkpoint already covers them.")
SESSIONS_ACTIVE = Gauge(
    "affectstream_sessions_active", "Sessions with in-memory state in Kafka consumers.")
CONSUMER_LAG = Gauge(
    "affectstream_consumer_lag_messages",
    "Kafka messages behind the partition end (approximate on brokers whose end offsets are).",
    ["topic", "partition"])


def render() -> tuple[bytes, str]:
    """The default registry in the Prometheus text format: ``(body, content type)``."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
