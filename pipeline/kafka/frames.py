"""The frame consumer of envelope v1 (DESIGN §5). Plain Python (no Ray); client settings live in
:mod:`~affectstream.pipeline.kafka.client`, the publisher in :mod:`~affectstream.pipeline.kafka.publish`,
dead letters and offsets in :mod:`~affectstream.pipeline.kafka.offsets`.

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
from collections.abc import Iterable
from typing import Any

import numpy as np

from affectstream.operators.records import Frame
from affectstream.pipeline import metrics
from affectstream.pipeline.config import KafkaConfig
from affectstream.pipeline.kafka.client import BrokerUnavailable, KafkaIOError, _supported, client_kwargs, make_producer
from affectstream.pipeline.kafka.offsets import DeadLetter, OffsetTracker
from affectstream.pipeline.kafka.envelope import EnvelopeError, FrameEnvelope, Limits, SeqGuard, decode

log = logging.getLogger(__name__)


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
        attempts: poison-pill counter (:class:`pipeline.kafka.poison.DeliveryAttempts`, or any object
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
