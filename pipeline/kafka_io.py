"""Kafka I/O for frame envelope v1 (DESIGN §5): publisher, dead-letter producer, frame consumer,
offset tracking for at-least-once commits. Plain Python (no Ray): the Ray DAG wraps these.

At-least-once contract of :class:`FrameConsumer` + :class:`OffsetTracker`:

1. ``poll()`` registers every message it hands out (good frames *and* dead-lettered ones) as
   in flight on its partition.
2. The caller ``ack()`` s a frame once Redis has acknowledged every timeline point derived from it
   (or at once when it produced no point). Dead-lettered messages are acked by the DLQ producer's
   delivery callback.
3. ``commit()`` commits, per partition, the lowest offset still in flight (or one past the last
   one handed out), so a crash replays exactly the unacknowledged suffix; the Redis sink's explicit
   entry IDs absorb the replayed points.
4. On a rebalance the listener commits what is acknowledged for the revoked partitions before
   they move, then forgets them (a late ack for a revoked partition is ignored).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import itertools
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from affectstream.operators.decode import SourceError, VideoSource, replay  # noqa: F401  (re-exported: publish raises it)
from affectstream.operators.records import Frame
from affectstream.pipeline import metrics
from affectstream.pipeline.config import KafkaConfig
from affectstream.pipeline.envelope import EnvelopeError, FrameEnvelope, Limits, SeqGuard, decode, encode

log = logging.getLogger(__name__)


class KafkaIOError(RuntimeError):
    """A Kafka operation failed (produce not acknowledged, commit failed)."""


class BrokerUnavailable(KafkaIOError):
    """No broker answered at the bootstrap address."""




# --------------------------------------------------------------------------------------------
# client settings


def _supported(cls: type, kw: dict[str, Any]) -> dict[str, Any]:
    """Keep only the settings this kafka-python version knows (2.x and 3.x differ slightly)."""
    known = getattr(cls, "DEFAULT_CONFIG", None)
    return {k: v for k, v in kw.items() if known is None or k in known}


def client_kwargs(cfg: KafkaConfig | None = None, bootstrap: str | None = None) -> dict[str, Any]:
    """Connection settings shared by producers, consumers and admin clients.

    Args:
        cfg: Kafka config: security protocol, SASL mechanism (PLAIN, SCRAM-SHA-256/512) and
            credentials, TLS CA / client certificate / key files.
        bootstrap: overrides ``cfg.bootstrap``.
    """
    cfg = cfg or KafkaConfig()
    kw: dict[str, Any] = {"bootstrap_servers": (bootstrap or cfg.bootstrap).split(","),
                          "security_protocol": cfg.security_protocol}
    if cfg.sasl_username:
        # kafka-python takes the SCRAM credentials in the sasl_plain_* settings too
        kw.update(sasl_mechanism=cfg.sasl_mechanism, sasl_plain_username=cfg.sasl_username,
                  sasl_plain_password=cfg.sasl_password or "")
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_check_hostname"] = cfg.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
            if getattr(cfg, name):
                kw[name] = getattr(cfg, name)
    return kw


def check_broker(bootstrap: str, timeout_s: float = 5.0, **client_kw: Any) -> None:
    """Raise :class:`BrokerUnavailable` unless a broker answers at ``bootstrap`` in time."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    kw = {"bootstrap_servers": bootstrap.split(","), **client_kw,
          "request_timeout_ms": int(timeout_s * 1000) + 1000,
          "bootstrap_timeout_ms": int(timeout_s * 1000),
          "api_version_auto_timeout_ms": int(timeout_s * 1000)}
    try:
        admin = KafkaAdminClient(**_supported(KafkaAdminClient, kw))
    except KafkaError as e:
        raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s "
                                f"({type(e).__name__})") from None
    admin.close()


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int = 1,
                  **client_kw: Any) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    Raises:
        BrokerUnavailable: no broker answered.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    kw = {"bootstrap_servers": bootstrap.split(","), **client_kw}
    try:
        admin = KafkaAdminClient(**_supported(KafkaAdminClient, kw))
    except KafkaError as e:
        raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap} "
                                f"({type(e).__name__})") from None
    try:
        existing = set(admin.list_topics())
        new = [t for t in dict.fromkeys(topics) if t not in existing]
        if new:
            try:
                admin.create_topics([NewTopic(t, partitions, 1) for t in new])
            except TopicAlreadyExistsError:
                pass
        return new
    finally:
        admin.close()


def make_producer(bootstrap: str | None = None, cfg: KafkaConfig | None = None,
                  **overrides: Any) -> Any:
    """A ``KafkaProducer`` tuned for image messages: acks=all, batching (``linger_ms`` 10,
    ``batch_size`` 1 MiB), requests large enough for ``cfg.max_message_bytes``.

    Raises:
        BrokerUnavailable: no broker answered.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    cfg = cfg or KafkaConfig()
    kw: dict[str, Any] = {
        **client_kwargs(cfg, bootstrap), "acks": "all", "linger_ms": 10,
        "batch_size": 1 << 20, "buffer_memory": 64 << 20,
        "max_request_size": cfg.max_message_bytes + (1 << 16),
        "request_timeout_ms": 15000, "bootstrap_timeout_ms": 10000,
        "api_version_auto_timeout_ms": 10000, **overrides}
    try:
        return KafkaProducer(**_supported(KafkaProducer, kw))
    except KafkaError as e:
        raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap or cfg.bootstrap} "
                                f"({type(e).__name__}: {e})") from None


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


# --------------------------------------------------------------------------------------------
# dead letters


class DeadLetter:
    """Produces a refused message to the dead-letter topic: same key and value, its original
    headers plus ``error`` (reason), ``error_detail``, ``source_topic``, ``source_partition``,
    ``source_offset``. Counts per reason (also in ``affectstream_dlq_messages_total``).

    A value larger than ``max_value_bytes`` (e.g. the ``too_many_bytes`` case) is dropped from the
    copy, which then carries ``value_dropped=<original length>`` instead.

    Args:
        producer: a ``KafkaProducer`` (thread-safe; may be shared).
        topic: dead-letter topic.
        max_value_bytes: largest value copied, bytes.
    """

    def __init__(self, producer: Any, topic: str = "affect.frames.dlq",
                 max_value_bytes: int = 900 * 1024) -> None:
        self.producer = producer
        self.topic = topic
        self.max_value_bytes = max_value_bytes
        self.counts: collections.Counter[str] = collections.Counter()

    def send(self, record: Any, reason: str, detail: str = "", *, count: bool = True) -> Any:
        """Send one dead letter; returns the producer's future.

        Args:
            record: a ``ConsumerRecord`` (``topic, partition, offset, key, value, headers``).
            reason: machine-readable reason (:class:`~pipeline.envelope.EnvelopeError.reason`).
            detail: human-readable explanation (truncated to 500 characters).
            count: count it (False for a retry of a failed send).
        """
        value = record.value
        headers = list(record.headers or [])
        headers += [("error", reason.encode()), ("error_detail", detail[:500].encode()),
                    ("source_topic", str(record.topic).encode()),
                    ("source_partition", str(record.partition).encode()),
                    ("source_offset", str(record.offset).encode())]
        if value is not None and len(value) > self.max_value_bytes:
            headers.append(("value_dropped", str(len(value)).encode()))
            value = b""
        fut = self.producer.send(self.topic, key=record.key, value=value, headers=headers)
        if count:
            self.counts[reason] += 1
            metrics.DLQ_MESSAGES.labels(reason=reason).inc()
        return fut


# --------------------------------------------------------------------------------------------
# offsets


class OffsetTracker:
    """Per-partition in-flight offsets; yields the commit point below which all are acked.

    Offsets of one partition must be tracked in increasing order (as the consumer delivers them);
    acks may come in any order and from any thread. Partitions are any hashable key (kafka's
    ``TopicPartition`` in practice).

    The committable offset of a partition is the lowest offset still in flight, or one past the
    highest offset tracked when nothing is in flight — Kafka's convention that the committed
    offset is the next message to read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[Hashable, collections.deque[int]] = {}
        self._acked: dict[Hashable, set[int]] = {}
        self._next: dict[Hashable, int] = {}
        self._committed: dict[Hashable, int] = {}

    def track(self, tp: Hashable, offset: int) -> None:
        """Register ``offset`` of partition ``tp`` as handed out, not yet acknowledged.

        Raises:
            ValueError: ``offset`` not above the last tracked offset of ``tp``.
        """
        with self._lock:
            nxt = self._next.get(tp)
            if nxt is not None and offset < nxt:
                raise ValueError(f"{tp}: offset {offset} tracked after {nxt - 1}")
            self._pending.setdefault(tp, collections.deque()).append(offset)
            self._acked.setdefault(tp, set())
            self._next[tp] = offset + 1

    def ack(self, tp: Hashable, offset: int) -> bool:
        """Mark ``offset`` of ``tp`` acknowledged; False if it is not in flight (unknown, already
        acked, or its partition was revoked)."""
        with self._lock:
            pend = self._pending.get(tp)
            if pend is None or not pend or offset < pend[0] or offset >= self._next[tp]:
                return False
            acked = self._acked[tp]
            if offset in acked:
                return False
            if offset == pend[0]:
                pend.popleft()
                while pend and pend[0] in acked:
                    acked.discard(pend.popleft())
                return True
            # offsets may have gaps (compaction, transaction markers): only tracked ones count
            acked.add(offset)
            return True

    def in_flight(self, tp: Hashable | None = None) -> int:
        """Messages handed out and not acknowledged (of ``tp``, or of all partitions)."""
        with self._lock:
            tps = [tp] if tp is not None else list(self._pending)
            return sum(len(self._pending.get(t, ())) - len(self._acked.get(t, ())) for t in tps)

    def _point(self, tp: Hashable) -> int | None:
        pend = self._pending.get(tp)
        if pend:
            return pend[0]
        return self._next.get(tp)

    def committable(self, tps: Iterable[Hashable] | None = None) -> dict[Hashable, int]:
        """``{tp: offset}`` that may be committed now and is beyond the last commit marked by
        :meth:`mark_committed` (partitions without progress are left out)."""
        with self._lock:
            out = {}
            for tp in (list(self._next) if tps is None else tps):
                p = self._point(tp)
                if p is not None and p > self._committed.get(tp, -1):
                    out[tp] = p
            return out

    def mark_committed(self, offsets: dict[Hashable, int]) -> None:
        """Record that ``offsets`` were committed to the broker."""
        with self._lock:
            for tp, off in offsets.items():
                if tp in self._next:
                    self._committed[tp] = max(off, self._committed.get(tp, -1))

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Drop all state of these partitions (revoked); later acks for them are ignored."""
        with self._lock:
            for tp in tps:
                for d in (self._pending, self._acked, self._next, self._committed):
                    d.pop(tp, None)

    def partitions(self) -> list[Hashable]:
        """Partitions with state."""
        with self._lock:
            return list(self._next)


# --------------------------------------------------------------------------------------------
# consumer


@dataclasses.dataclass(frozen=True)
class ConsumedFrame:
    """A validated, decoded frame and where it came from.

    Attributes:
        envelope: the message's metadata.
        image: (H, W, 3) uint8 RGB.
        topic / partition / offset: the message's position (ack with ``(partition, offset)``).
    """

    envelope: FrameEnvelope
    image: np.ndarray
    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> Any:
        """kafka ``TopicPartition`` of the message."""
        from kafka.structs import TopicPartition

        return TopicPartition(self.topic, self.partition)

    def to_frame(self, pts_ms: int | None = None) -> Frame:
        """As an :class:`operators.records.Frame`; ``pts_ms`` from the header unless given
        (0 when neither)."""
        e = self.envelope
        pts = pts_ms if pts_ms is not None else (e.pts_ms if e.pts_ms is not None else 0)
        return Frame(e.session_id, e.seq, e.ts_ms, pts, self.image)


@dataclasses.dataclass
class ConsumerStats:
    """Counters of one :class:`FrameConsumer`: messages polled, frames delivered, dead letters,
    dead letters whose DLQ produce failed and was retried, commits made."""

    polled: int = 0
    frames: int = 0
    dead_lettered: int = 0
    dlq_retries: int = 0
    commits: int = 0


def _make_listener(owner: FrameConsumer) -> Any:
    """A rebalance listener committing acknowledged offsets of revoked partitions.

    kafka-python >= 3 runs listeners on its IO thread, where a blocking commit is refused, so an
    async listener awaits the commit there; 2.x calls the sync listener inside ``poll()``.
    """
    import kafka

    if hasattr(kafka, "AsyncConsumerRebalanceListener"):

        class _AsyncCommitOnRevoke(kafka.AsyncConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):  # noqa: ANN001
                offsets = owner._prepare_revoke(revoked)
                if offsets:
                    try:
                        await owner._consumer.commit_async(offsets)
                        owner._after_commit(offsets)
                    except Exception as e:  # noqa: BLE001  (logged; replay covers it)
                        log.warning("commit on revocation failed (%s): %s", type(e).__name__, e)
                owner._finish_revoke(revoked)

            async def on_partitions_assigned(self, assigned):  # noqa: ANN001
                owner._on_assigned(assigned)

            async def on_partitions_lost(self, lost):  # noqa: ANN001
                owner._finish_revoke(lost)

        return _AsyncCommitOnRevoke()

    class _CommitOnRevoke(kafka.ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):  # noqa: ANN001
            offsets = owner._prepare_revoke(revoked)
            if offsets:
                try:
                    owner._consumer.commit(offsets)
                    owner._after_commit(offsets)
                except Exception as e:  # noqa: BLE001
                    log.warning("commit on revocation failed (%s): %s", type(e).__name__, e)
            owner._finish_revoke(revoked)

        def on_partitions_assigned(self, assigned):  # noqa: ANN001
            owner._on_assigned(assigned)

    return _CommitOnRevoke()


class FrameConsumer:
    """Consumes envelope-v1 frames with manual, at-least-once commits (module docstring).

    Args:
        cfg: Kafka config: ``bootstrap``, ``topic``, ``dlq_topic``, ``group_id``, timeouts, limits.
        group_id: overrides ``cfg.group_id``.
        client_id: kafka client id (logs, broker metrics).
        auto_offset_reset: where a group without a committed offset starts.
        max_poll_records: most messages one :meth:`poll` returns.
        dead_letter: DLQ producer to use; default: one made from ``cfg`` (closed by :meth:`close`).
        check_seq: refuse duplicate / out-of-order ``seq`` per session (:class:`SeqGuard`).
        consumer_kw: extra ``KafkaConsumer`` settings.
        attempts: poison-pill counter (:class:`pipeline.poison.DeliveryAttempts`, or any object
            with its ``begin`` / ``step_done`` / ``finish``); each message is counted before it
            is decoded, and one counted more than ``cfg.max_delivery_attempts`` times is
            dead-lettered as ``poison_pill``. None: no poison-pill rule.

    Raises:
        BrokerUnavailable: no broker answered.
    """

    def __init__(self, cfg: KafkaConfig, *, group_id: str | None = None,
                 client_id: str = "affectstream-frames", auto_offset_reset: str = "earliest",
                 max_poll_records: int = 64, dead_letter: DeadLetter | None = None,
                 check_seq: bool = True, consumer_kw: dict[str, Any] | None = None,
                 attempts: Any = None) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self.cfg = cfg
        self.limits = Limits.from_config(cfg)
        self.tracker = OffsetTracker()
        self.seq_guard = SeqGuard() if check_seq else None
        self.stats = ConsumerStats()
        self.attempts = attempts
        self._assigned: set[Any] = set()
        self._dlq_failed: collections.deque[tuple[Any, str, str]] = collections.deque()
        kw: dict[str, Any] = {
            **client_kwargs(cfg), "group_id": group_id or cfg.group_id, "client_id": client_id,
            "enable_auto_commit": False, "auto_offset_reset": auto_offset_reset,
            "session_timeout_ms": cfg.session_timeout_ms,
            "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
            "max_poll_records": max_poll_records,
            "max_partition_fetch_bytes": max(1 << 20, cfg.max_message_bytes + (1 << 16)),
            "fetch_max_bytes": max(50 << 20, 2 * cfg.max_message_bytes),
            **(consumer_kw or {})}
        try:
            self._consumer = KafkaConsumer(**_supported(KafkaConsumer, kw))
        except KafkaError as e:
            raise BrokerUnavailable(f"no Kafka broker answered at {cfg.bootstrap} "
                                    f"({type(e).__name__}: {e})") from None
        self._own_dlq = dead_letter is None
        try:
            self.dead_letter = dead_letter or DeadLetter(
                make_producer(cfg=cfg), cfg.dlq_topic,
                max_value_bytes=min(cfg.max_message_bytes, 900 * 1024))
        except BaseException:
            self._consumer.close()
            raise
        self._consumer.subscribe([cfg.topic], listener=_make_listener(self))

    # -- rebalance hooks (called by the listener) --
    def _prepare_revoke(self, revoked: Iterable[Any]) -> dict[Any, Any]:
        from kafka.structs import OffsetAndMetadata

        offs = self.tracker.committable(list(revoked))
        return {tp: OffsetAndMetadata(o, "", -1) if len(OffsetAndMetadata._fields) == 3
                else OffsetAndMetadata(o, "") for tp, o in offs.items()}

    def _after_commit(self, offsets: dict[Any, Any]) -> None:
        self.tracker.mark_committed({tp: om.offset for tp, om in offsets.items()})
        self.stats.commits += 1

    def _finish_revoke(self, revoked: Iterable[Any]) -> None:
        revoked = set(revoked)
        self.tracker.forget(revoked)
        self._assigned -= revoked
        if self.seq_guard is not None:
            self.seq_guard.reset()

    def _on_assigned(self, assigned: Iterable[Any]) -> None:
        self._assigned |= set(assigned)
        if self.seq_guard is not None:
            self.seq_guard.reset()

    # -- public API --
    @property
    def consumer(self) -> Any:
        """The underlying ``KafkaConsumer`` (for ``seek``, ``assignment`` ...)."""
        return self._consumer

    def assignment(self) -> set[Any]:
        """Partitions this consumer owns: assigned and not revoked, as the rebalance listener saw
        it (kafka-python's own ``assignment()`` still lists revoked partitions until the next
        assignment arrives)."""
        return set(self._assigned)

    def _dead_letter(self, rec: Any, reason: str, detail: str, retry: bool = False) -> None:
        from kafka.structs import TopicPartition

        tp = TopicPartition(rec.topic, rec.partition)
        fut = self.dead_letter.send(rec, reason, detail, count=not retry)
        if retry:
            self.stats.dlq_retries += 1
        else:
            self.stats.dead_lettered += 1

        def ok(_md: Any) -> None:
            self.tracker.ack(tp, rec.offset)

        def failed(exc: BaseException) -> None:
            log.warning("DLQ produce of %s:%d@%d failed (%s); will retry", rec.topic,
                        rec.partition, rec.offset, exc)
            self._dlq_failed.append((rec, reason, detail))

        fut.add_callback(ok)
        fut.add_errback(failed)

    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[ConsumedFrame]:
        """Fetch messages; refused ones go to the DLQ, good ones are returned decoded.

        Every returned frame is in flight until :meth:`ack`. Frames of one partition come in
        offset order.

        Args:
            timeout_ms: longest wait for messages, ms.
            max_records: cap on messages fetched by this call.
        """
        for _ in range(len(self._dlq_failed)):
            rec, reason, detail = self._dlq_failed.popleft()
            self._dead_letter(rec, reason, detail, retry=True)
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[ConsumedFrame] = []
        for tp, records in batches.items():
            for rec in records:
                self.stats.polled += 1
                try:
                    self.tracker.track(tp, rec.offset)
                except ValueError:  # position moved backwards (seek / offset reset): start over
                    log.warning("%s: offset went back to %d; dropping its in-flight state", tp,
                                rec.offset)
                    self.tracker.forget([tp])
                    self.tracker.track(tp, rec.offset)
                if self.attempts is not None:
                    n = self.attempts.begin(rec.topic, rec.partition, rec.offset)
                    if n > self.cfg.max_delivery_attempts:
                        self.attempts.finish(rec.topic, rec.partition, rec.offset)
                        self._dead_letter(rec, "poison_pill", f"processing began {n - 1} times "
                                          "and never finished (its consumer crashed)")
                        continue
                try:
                    env, img = decode(rec.key, rec.value, rec.headers, self.limits,
                                      self.seq_guard, getattr(rec, "timestamp", None))
                except Exception as e:  # noqa: BLE001  (never let one message stop the stream)
                    if isinstance(e, EnvelopeError):
                        self._dead_letter(rec, e.reason, e.detail)
                    else:
                        self._dead_letter(rec, "internal_error", f"{type(e).__name__}: {e}")
                    if self.attempts is not None:
                        self.attempts.finish(rec.topic, rec.partition, rec.offset)
                    continue
                if self.attempts is not None:
                    self.attempts.step_done(rec.topic, rec.partition, rec.offset)
                out.append(ConsumedFrame(env, img, rec.topic, rec.partition, rec.offset))
        self.stats.frames += len(out)
        if out:
            metrics.FRAMES_IN.inc(len(out))
        return out

    def ack(self, frame: ConsumedFrame | Any, offset: int | None = None) -> bool:
        """Acknowledge a frame (or a ``TopicPartition`` and ``offset``): everything derived from it
        is safely stored. Thread-safe. False if it was not in flight."""
        if isinstance(frame, ConsumedFrame):
            return self.tracker.ack(frame.tp, frame.offset)
        if offset is None:
            raise ValueError("ack(tp, offset) needs an offset")
        return self.tracker.ack(frame, offset)

    def commit(self, timeout_ms: int | None = None) -> dict[Any, int]:
        """Commit the acknowledged prefix of every assigned partition (synchronous).

        Returns:
            ``{TopicPartition: offset}`` committed (empty if nothing advanced).

        Raises:
            KafkaIOError: the broker refused or the commit timed out (nothing is lost: the
                same offsets are committed by the next successful call).
        """
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata

        assigned = self.assignment()
        offs = {tp: o for tp, o in self.tracker.committable().items() if tp in assigned}
        if not offs:
            return {}
        three = len(OffsetAndMetadata._fields) == 3
        payload = {tp: OffsetAndMetadata(o, "", -1) if three else OffsetAndMetadata(o, "")
                   for tp, o in offs.items()}
        try:
            self._consumer.commit(payload, **({"timeout_ms": timeout_ms} if timeout_ms else {}))
        except KafkaError as e:
            raise KafkaIOError(f"offset commit failed ({type(e).__name__}: {e})") from None
        self.tracker.mark_committed(offs)
        self.stats.commits += 1
        return offs

    def lag(self) -> dict[Any, int]:
        """Messages behind the end of each assigned partition (approximate on tansu); also sets
        the ``affectstream_consumer_lag_messages`` gauge."""
        assigned = list(self.assignment())
        if not assigned:
            return {}
        ends = self._consumer.end_offsets(assigned)
        out = {}
        for tp in assigned:
            lag = max(0, int(ends.get(tp, 0)) - int(self._consumer.position(tp)))
            out[tp] = lag
            metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
        return out

    def close(self, commit: bool = True, timeout_s: float = 10.0) -> None:
        """Flush the DLQ producer, commit the acknowledged prefix (if ``commit``) and leave the
        group."""
        try:
            self.dead_letter.producer.flush(timeout=timeout_s)
            if commit:
                try:
                    self.commit()
                except KafkaIOError as e:
                    log.warning("final commit failed: %s", e)
        finally:
            self._consumer.close()
            if self._own_dlq:
                self.dead_letter.producer.close(timeout=timeout_s)

    def __enter__(self) -> FrameConsumer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
