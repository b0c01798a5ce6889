"""Sink adapters beside Redis: the Kafka result topic, and a tee that writes to several sinks.

The service writes each point to Redis (the timeline, idempotent) and, when
``kafka.result_topic`` is set, produces it to that topic too: ``TeeSink(redis, ResultTopicSink)``
is the session runner's sink there. The result topic is at-least-once: a replayed frame's points
are produced again (consumers deduplicate by ``(session_id, track_id, ts_ms)``).
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from affectstream.operators.records import TimelinePoint
from affectstream.pipeline.runtime.memory import WriteCounts

log = logging.getLogger(__name__)

RESULT_SCHEMA = "affect.point.v1"
"""``schema`` header of the messages on ``kafka.result_topic``."""


def point_json(p: TimelinePoint) -> dict[str, Any]:
    """A timeline point as the JSON body of a result-topic message (NaN -> null)."""
    def num(x: float | None) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    box = [float(v) for v in p.bbox_xyxy]
    return {"session_id": p.session_id, "track_id": p.track_id, "ts_ms": p.ts_ms,
            "pts_ms": p.pts_ms, "emotion": p.emotion, "emotion_probs": p.emotion_probs,
            "au_intensity": p.au_intensity,
            "bbox_xyxy": None if any(math.isnan(v) for v in box) else box,
            "det_score": num(p.det_score), "saliency": p.saliency, "valence": num(p.valence),
            "arousal": num(p.arousal), "au_presence": p.au_presence, "yaw": num(p.yaw),
            "pitch": num(p.pitch), "roll": num(p.roll), "gaze_yaw": num(p.gaze_yaw),
            "gaze_pitch": num(p.gaze_pitch),
            "landmarks": None if p.landmarks is None else p.landmarks.tolist()}


class ResultTopicSink:
    """Produces each point as one JSON message (key = session id, headers ``schema``,
    ``session_id``, ``track_id``, ``ts_ms``) to a Kafka topic.

    Sends are asynchronous; :meth:`flush` waits until the broker acknowledged every message
    sent so far (the service flushes before a checkpoint lets offsets move on).

    Args:
        producer: a ``KafkaProducer`` (thread-safe; may be shared by sessions).
        topic: the result topic.
    """

    def __init__(self, producer: Any, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._unflushed = False

    def open(self, session_id: str, source: str, models: str = "", config_digest: str = "") -> None:
        pass

    def write(self, points: list[TimelinePoint]) -> WriteCounts:
        for p in points:
            key = p.session_id.encode()
            headers = [("schema", RESULT_SCHEMA.encode()), ("session_id", key),
                       ("track_id", str(p.track_id).encode()), ("ts_ms", str(p.ts_ms).encode())]
            fut = self.producer.send(self.topic, key=key, value=json.dumps(point_json(p)).encode(),
                                     headers=headers)
            fut.add_errback(lambda e: log.error("result produce failed: %s", e))
        self._unflushed = self._unflushed or bool(points)
        return WriteCounts(len(points), 0)

    def close(self, session_id: str, status: str = "ended") -> None:
        pass

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait for the broker to acknowledge what was sent (no-op when nothing was)."""
        if self._unflushed:
            self.producer.flush(timeout=timeout_s)
            self._unflushed = False


class TeeSink:
    """Writes to a primary sink, then to the others.

    The primary's result (``written``/``duplicates``) is the tee's; an error of the primary
    stops the write before the others see the points (so a retried write reaches them once).

    Args:
        primary: the sink of record (Redis).
        others: further sinks (the result topic).
    """

    def __init__(self, primary: Any, *others: Any) -> None:
        self.primary = primary
        self.others = others

    def open(self, session_id: str, source: str, models: str = "", config_digest: str = "") -> None:
        for s in (self.primary, *self.others):
            s.open(session_id, source, models, config_digest)

    def write(self, points: list[TimelinePoint]) -> Any:
        res = self.primary.write(points)
        for s in self.others:
            s.write(points)
        return res

    def close(self, session_id: str, status: str = "ended") -> None:
        for s in (self.primary, *self.others):
            s.close(session_id, status)

    def flush(self, timeout_s: float = 30.0) -> None:
        """Flush every sink that buffers (:meth:`ResultTopicSink.flush`)."""
        for s in (self.primary, *self.others):
            if hasattr(s, "flush"):
                s.flush(timeout_s)
