"""Per-session state checkpoints in Redis: what makes a Kafka replay come out the same.

A session's timeline depends on state carried from frame to frame: the tracker (track ids,
Kalman filters), the face-track stage's detect-then-follow state, the smoother and the geometric
AU baselines. Redis rejects a replayed point only when it has the *same* ``(track_id, ts_ms)``,
so a replay that restarted that state from scratch could number a face differently and write it
twice under two track ids. The service therefore saves, about once a second per session, a
checkpoint of that state together with the Kafka position of the last frame it covers, and
acknowledges a frame to the offset tracker only once a checkpoint covers it:

1. frames are processed in offset order per session; a frame's points are written to Redis
   before any checkpoint that covers it is written;
2. a checkpoint ``(source = topic:partition, offset o, state after frame o)`` is written with a
   compare-and-set that never lets a session's checkpoint go back (:meth:`CheckpointStore.save`);
3. only then are the frames up to ``o`` acknowledged, so the committed offset never passes the
   newest checkpoint of any session of that partition;
4. a consumer that (re)starts a session loads its checkpoint, skips re-delivered frames at or
   below ``o`` (their points are in Redis already) and continues from the saved state; the
   frames between the checkpoint and the commit point are recomputed from the same state, give
   the same track ids and timestamps, and Redis rejects their points as duplicates.

The state is pickled (it is the operators' own objects). Anyone who can write these Redis keys
can make a consumer unpickle their bytes: keep Redis private to the service (DESIGN §6).
"""

from __future__ import annotations

import dataclasses
import pickle
import time
from typing import Any

STATE_VERSION = 1


# --------------------------------------------------------------------------------------------
# operator state <-> bytes


def snapshot_stage(stage: Any) -> bytes:
    """The per-session state of a :class:`operators.facetrack.FaceTrackStage` (tracker, last
    detection time, faces being followed), pickled. The shared detector and landmarker hold no
    per-session state and are not included."""
    return pickle.dumps(stage.snapshot(), protocol=5)


def restore_stage(stage: Any, blob: bytes) -> None:
    """Put a :func:`snapshot_stage` state into a freshly built stage."""
    stage.restore(pickle.loads(blob))


def snapshot_builder(builder: Any) -> bytes:
    """The per-session state of a :class:`operators.timeline.TimelineBuilder` (smoother tracks,
    geometric-AU neutral baselines), pickled."""
    return pickle.dumps(builder.snapshot(), protocol=5)


def restore_builder(builder: Any, blob: bytes) -> None:
    """Put a :func:`snapshot_builder` state into a freshly built timeline builder."""
    builder.restore(pickle.loads(blob))


# --------------------------------------------------------------------------------------------
# Redis store


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """State of one session after the frame at ``offset`` of ``source``.

    Attributes:
        source: ``<topic>:<partition>`` the session's frames come from.
        offset: Kafka offset of the last frame the state includes.
        seq / ts_ms: that frame's envelope ``seq`` and capture time (epoch ms).
        stage / builder: :func:`snapshot_stage` and :func:`snapshot_builder` bytes.
        written_ms: when the checkpoint was written, epoch ms.
    """

    source: str
    offset: int
    seq: int
    ts_ms: int
    stage: bytes
    builder: bytes
    written_ms: int = 0


# KEYS[1] = checkpoint hash; ARGV = source, offset, seq, ts_ms, stage, builder, written_ms,
# version, ttl_s. Refuses (returns 0) to replace a checkpoint of the same source at an equal or
# later offset: a consumer that lost its partition and finishes a frame late cannot move a
# session's state back.
_CAS = """
local cur = redis.call('HMGET', KEYS[1], 'source', 'offset')
if cur[1] == ARGV[1] and cur[2] and tonumber(cur[2]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'source', ARGV[1], 'offset', ARGV[2], 'seq', ARGV[3],
           'ts_ms', ARGV[4], 'stage', ARGV[5], 'builder', ARGV[6], 'written_ms', ARGV[7],
           'v', ARGV[8])
if tonumber(ARGV[9]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[9])
end
return 1
"""


class CheckpointStore:
    """Session checkpoints at ``<prefix>:{<sid>}:ckpt`` (a hash; same hash tag as the session's
    other keys, so it is Redis-Cluster safe).

    Args:
        client: ``redis.Redis`` with ``decode_responses=False`` (the state is binary).
        prefix: key prefix.
        ttl_s: expiry refreshed on every save (None = never): a session silent that long
            restarts from a blank state.
    """

    def __init__(self, client: Any, prefix: str = "affect", ttl_s: int | None = None) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._cas = client.register_script(_CAS)

    def key(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:ckpt"

    def save(self, sid: str, ck: Checkpoint) -> bool:
        """Write ``ck`` unless the stored checkpoint of the same source is at ``ck.offset`` or
        later; True when written."""
        now = ck.written_ms or int(time.time() * 1000)
        return bool(self._cas(keys=[self.key(sid)], args=[
            ck.source, ck.offset, ck.seq, ck.ts_ms, ck.stage, ck.builder, now, STATE_VERSION,
            self.ttl_s or 0]))

    def load(self, sid: str) -> Checkpoint | None:
        """The session's checkpoint, or None (none, or written by an incompatible version)."""
        h = self.r.hgetall(self.key(sid))
        if not h or int(h.get(b"v", b"0")) != STATE_VERSION:
            return None
        return Checkpoint(h[b"source"].decode(), int(h[b"offset"]), int(h[b"seq"]),
                          int(h[b"ts_ms"]), h[b"stage"], h[b"builder"], int(h[b"written_ms"]))

    def delete(self, sid: str) -> None:
        self.r.delete(self.key(sid))
