"""Dead-letter producer and per-partition offset tracking for at-least-once commits
(DESIGN §5; the contract is described in :mod:`affectstream.pipeline.kafka.frames`)."""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Hashable, Iterable
from typing import Any

from affectstream.pipeline import metrics

log = logging.getLogger(__name__)


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
            reason: machine-readable reason (:class:`~pipeline.kafka.envelope.EnvelopeError.reason`).
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
