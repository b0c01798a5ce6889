"""Publishing a video to Kafka as frame envelopes v1 (DESIGN §5): `affectstream publish`,
optionally paced by PTS (``realtime``) and looped."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable
import logging
import re
import time
from pathlib import Path
from typing import Any

from affectstream.operators.decode import SourceError, VideoSource, replay  # noqa: F401  (re-exported: publish raises it)
from affectstream.pipeline.kafka.envelope import FrameEnvelope, encode
from affectstream.pipeline.config import KafkaConfig
from affectstream.pipeline.kafka.client import KafkaIOError, check_broker, client_kwargs, ensure_topics, make_producer

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# publisher

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


@dataclasses.dataclass
class PublishStats:
    """Outcome of :func:`publish`.

    Attributes:
        session_id: session the frames were published under.
        frames: messages acknowledged by the broker.
        bytes: encoded image bytes sent.
        first_seq / last_seq: sequence numbers used (``last_seq`` = ``first_seq - 1`` if none).
        first_ts_ms / last_ts_ms: capture times of the first and last frame, epoch ms.
        width / height: frame size in pixels.
        elapsed_s: wall time from opening the source to the last acknowledgement.
    """

    session_id: str
    frames: int = 0
    bytes: int = 0
    first_seq: int = 0
    last_seq: int = -1
    first_ts_ms: int | None = None
    last_ts_ms: int | None = None
    width: int = 0
    height: int = 0
    elapsed_s: float = 0.0

    @property
    def frames_per_s(self) -> float:
        """Publish rate, frames per second of wall time."""
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0


def sampled_frames(source: str | Path, fps: float | None = None, max_frames: int | None = None,
                   rtsp_transport: str = "tcp", open_timeout_s: float = 10.0,
                   start_ts_ms: int = 0) -> VideoSource:
    """The video reader every Kafka producer and test uses: :class:`operators.decode.VideoSource`
    at full resolution, resampled to ``fps`` by media time (``None`` = every frame), stopping
    after ``max_frames``. Iterate it for :class:`operators.records.Frame` (RGB); ``ts_ms`` is
    ``start_ts_ms + pts_ms``.

    Raises:
        FileNotFoundError: a local path that does not exist.
        SourceError: when iterated, if the source cannot be opened or decoded.
    """
    src = str(source)
    if not _URL.match(src) and not Path(src).is_file():
        raise FileNotFoundError(f"no such video file: {src}")
    return VideoSource(src, "publish", analysis_fps=fps, rtsp_transport=rtsp_transport,
                       open_timeout_s=open_timeout_s, reconnect_max_tries=0,
                       max_width=1 << 30, start_ts_ms=start_ts_ms, max_frames=max_frames)


def publish(source: str | Path, bootstrap: str = "127.0.0.1:9092", topic: str = "affect.frames",
            session: str | None = None, fps: float | None = None, jpeg_quality: int = 90, *,
            max_frames: int | None = None, start_seq: int = 0, start_ts_ms: int | None = None,
            progress: Callable[[int, int | None], None] | None = None,
            create_topic: bool = True, partitions: int = 1, cfg: KafkaConfig | None = None,
            producer: Any = None, rtsp_transport: str = "tcp", open_timeout_s: float = 10.0,
            flush_timeout_s: float = 60.0, realtime: bool = False,
            loop: bool = False) -> PublishStats:
    """Publish a video file or RTSP stream to Kafka as envelope-v1 JPEG frames.

    Frames are resampled to ``fps`` by presentation time; ``ts_ms`` = ``start_ts_ms`` (default:
    wall clock when the first frame is read) + the frame's media time, so capture times follow the
    PTS, not the publishing speed. Messages are keyed by ``session`` and batched by the producer.

    Args:
        source: video file path or stream URL (``rtsp://...``).
        bootstrap: ``host:port[,host:port]``.
        topic: frame topic.
        session: session id (default: file stem + UTC time, e.g. ``clip-20250101T120000``).
        fps: frames per second of media time to publish; None = every frame.
        jpeg_quality: 1–100.
        max_frames: stop after this many frames.
        start_seq: first ``seq``.
        start_ts_ms: capture time of media time 0, epoch ms.
        progress: called as ``progress(frames_sent, expected_total_or_None)`` after each frame.
        create_topic: create ``topic`` (``partitions`` partitions) if missing.
        partitions: partitions of a newly created topic.
        cfg: Kafka config for security settings and ``max_message_bytes``.
        producer: an existing ``KafkaProducer`` to use (not closed here).
        rtsp_transport: ``tcp`` or ``udp``.
        open_timeout_s: timeout opening a stream, seconds.
        flush_timeout_s: how long to wait for the final acknowledgements, seconds.
        realtime / loop: replay the file as a live camera: paced by PTS, looping with media
            time continuing (:func:`operators.decode.replay`; ``max_frames`` bounds all passes).

    Returns:
        :class:`PublishStats`.

    Raises:
        FileNotFoundError: a local path that does not exist.
        SourceError: the source cannot be opened/decoded.
        BrokerUnavailable: no broker answered.
        KafkaIOError: some frames were not acknowledged (the count is in the message).
    """
    t_start = time.perf_counter()
    src = str(source)
    if not _URL.match(src) and not Path(src).is_file():
        raise FileNotFoundError(f"no such video file: {src}")
    if session is None:
        stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(src.split("?")[0]).stem or "stream")
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        session = f"{stem.lstrip('._-')[:100] or 'stream'}-{stamp}"
    FrameEnvelope(session_id=session, seq=start_seq, ts_ms=0, codec="jpeg")  # validate early
    cfg = cfg or KafkaConfig(bootstrap=bootstrap, topic=topic)
    ckw = {k: v for k, v in client_kwargs(cfg, bootstrap).items() if k != "bootstrap_servers"}
    own = producer is None
    if own:
        check_broker(bootstrap, timeout_s=min(open_timeout_s, 10.0), **ckw)
    if create_topic:
        ensure_topics(bootstrap, [topic], partitions, **ckw)
    reader = sampled_frames(src, fps, None if loop else max_frames, rtsp_transport, open_timeout_s)
    frames = replay(reader, realtime, loop, max_frames)
    first = next(frames, None)  # opens the source: errors surface before producing anything
    if own:
        producer = make_producer(bootstrap, cfg)
    stats = PublishStats(session_id=session, first_seq=start_seq, last_seq=start_seq - 1)
    failures: list[BaseException] = []
    lock = threading.Lock()

    def on_error(exc: BaseException) -> None:
        with lock:
            failures.append(exc)

    total = max_frames if loop else reader.expected_frames()
    try:
        seq = start_seq
        for fr in itertools.chain([first] if first is not None else [], frames):
            if start_ts_ms is None:
                start_ts_ms = int(time.time() * 1000)
            pts_ms, rgb = fr.pts_ms, fr.image
            ts = start_ts_ms + pts_ms
            key, value, headers = encode(session, seq, ts, rgb, pts_ms=pts_ms,
                                         jpeg_quality=jpeg_quality)
            producer.send(topic, key=key, value=value, headers=headers).add_errback(on_error)
            if stats.first_ts_ms is None:
                stats.first_ts_ms = ts
                stats.height, stats.width = rgb.shape[:2]
            stats.last_ts_ms = ts
            stats.last_seq = seq
            stats.frames += 1
            stats.bytes += len(value)
            seq += 1
            if failures:
                break
            if progress is not None:
                progress(stats.frames, total)
        producer.flush(timeout=flush_timeout_s)
    finally:
        if own:
            producer.close(timeout=5)
    stats.elapsed_s = time.perf_counter() - t_start
    if failures:
        stats.frames -= len(failures)
        raise KafkaIOError(f"{len(failures)} frame(s) of session {session!r} were not "
                           f"acknowledged by the broker: {type(failures[0]).__name__}: "
                           f"{failures[0]}")
    return stats
