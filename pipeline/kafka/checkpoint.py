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

State format (version 2): each part (``stage``, ``builder``) is UTF-8 JSON of the operators'
``snapshot()`` data, written by :func:`encode_state`: numbers, strings, lists, tuples, dicts,
deques, numpy arrays (dtype, shape, base64 of the bytes; numeric dtypes only) and instances of a
fixed list of the operators' own state classes (:data:`STATE_CLASSES`), each stored as its
attribute dict and rebuilt only if it has exactly that class's attributes. Nothing in it names
code to run: a checkpoint planted by whoever can write Redis can at worst give a session a wrong
state, never run code. With a key (``AFFECTSTREAM_CHECKPOINT_KEY`` or the file named by
``kafka.checkpoint_key_file``) every checkpoint carries an HMAC-SHA256 over all its fields and
one without a valid signature is ignored.

A checkpoint that cannot be read (another format such as the pickles of version 1, another
version, a wrong signature, a schema mismatch, not a hash) is ignored with a warning and counted
in ``affectstream_checkpoints_rejected_total{reason}``; the session starts blank.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from affectstream.pipeline import metrics

log = logging.getLogger(__name__)

STATE_VERSION = 2
FORMAT = "json"
KEY_ENV = "AFFECTSTREAM_CHECKPOINT_KEY"
MAX_STATE_BYTES = 16 << 20
"""Largest state part read back, bytes (a bigger one is refused unparsed)."""


class CheckpointError(ValueError):
    """A checkpoint that is not this version's safe format; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def reject(sid: str, reason: str, detail: str = "") -> None:
    """Log and count a checkpoint that is ignored (the session starts blank)."""
    log.warning("checkpoint of session %s ignored (%s%s); starting blank", sid, reason,
                f": {detail}" if detail else "")
    metrics.CHECKPOINTS_REJECTED.labels(reason=reason).inc()


# --------------------------------------------------------------------------------------------
# safe state codec


def _state_classes() -> dict[str, tuple[type, tuple[str, ...]]]:
    from affectstream.operators.records import Faces
    from affectstream.operators.smoothing import _TrackState
    from affectstream.operators.tracking.kalman import BoxKalman
    from affectstream.operators.tracking.tracker import TrackerState, _Track

    def fields(cls: type) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    return {"Faces": (Faces, fields(Faces)), "TrackState": (_TrackState, fields(_TrackState)),
            "Track": (_Track, fields(_Track)), "TrackerState": (TrackerState, fields(TrackerState)),
            "BoxKalman": (BoxKalman, ("x", "P", "q", "r"))}


STATE_CLASSES: dict[str, tuple[type, tuple[str, ...]]] = {}
"""``name -> (class, attribute names)`` of the objects a state may contain (filled lazily)."""

_DTYPES = frozenset("bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 "
                    "float64".split())


def _classes() -> dict[str, tuple[type, tuple[str, ...]]]:
    if not STATE_CLASSES:
        STATE_CLASSES.update(_state_classes())
    return STATE_CLASSES


def _enc(x: Any) -> Any:
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, float)) and not isinstance(x, (np.integer, np.floating)):
        return x
    if isinstance(x, (np.ndarray, np.generic)):
        a = np.asarray(x)
        if a.dtype.name not in _DTYPES:
            raise TypeError(f"array dtype {a.dtype} is not storable")
        out = {"$nd": [a.dtype.name, list(a.shape),
                       base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()]}
        if isinstance(x, np.generic):
            out["scalar"] = True
        return out
    if isinstance(x, list):
        return [_enc(v) for v in x]
    if isinstance(x, tuple):
        return {"$tuple": [_enc(v) for v in x]}
    if isinstance(x, collections.deque):
        return {"$deque": [_enc(v) for v in x], "maxlen": x.maxlen}
    if isinstance(x, dict):
        return {"$dict": [[_enc(k), _enc(v)] for k, v in x.items()]}
    for name, (cls, attrs) in _classes().items():
        if type(x) is cls:
            return {"$obj": name, "attrs": {a: _enc(getattr(x, a)) for a in attrs}}
    raise TypeError(f"{type(x).__name__} is not storable in a checkpoint")


def _dec(x: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise CheckpointError("schema", "nested too deep")
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, list):
        return [_dec(v, depth + 1) for v in x]
    if not isinstance(x, dict) or len(x) < 1:
        raise CheckpointError("schema", f"unexpected {type(x).__name__}")
    if "$nd" in x:
        dtype, shape, data = x["$nd"]
        if dtype not in _DTYPES or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise CheckpointError("schema", f"bad array {dtype} {shape}")
        a = np.frombuffer(base64.b64decode(data, validate=True), dtype=dtype)
        if a.size != int(np.prod(shape, dtype=np.int64)):
            raise CheckpointError("schema", f"array data does not fill {shape}")
        a = a.reshape(shape).copy()
        return a[()] if x.get("scalar") else a
    if "$tuple" in x:
        return tuple(_dec(v, depth + 1) for v in x["$tuple"])
    if "$deque" in x:
        m = x.get("maxlen")
        if m is not None and not isinstance(m, int):
            raise CheckpointError("schema", "bad deque maxlen")
        return collections.deque((_dec(v, depth + 1) for v in x["$deque"]), maxlen=m)
    if "$dict" in x:
        out = {}
        for kv in x["$dict"]:
            k = _dec(kv[0], depth + 1)
            if not isinstance(k, (int, str, float, bool, type(None), tuple)):
                raise CheckpointError("schema", "unhashable dict key")
            out[k] = _dec(kv[1], depth + 1)
        return out
    if "$obj" in x:
        spec = _classes().get(x["$obj"])
        attrs = x.get("attrs")
        if spec is None or not isinstance(attrs, dict) or set(attrs) != set(spec[1]):
            raise CheckpointError("schema", f"unknown or malformed object {x['$obj']!r}")
        obj = object.__new__(spec[0])  # no constructor runs; the attributes are plain data
        obj.__dict__.update({a: _dec(v, depth + 1) for a, v in attrs.items()})
        post = getattr(obj, "__post_init__", None)
        if post is not None:
            try:
                post()  # the record's own shape/dtype validation
            except (TypeError, ValueError) as e:
                raise CheckpointError("schema", str(e)) from None
        return obj
    raise CheckpointError("schema", f"unknown object tag {sorted(x)[:3]}")


def encode_state(state: Any) -> bytes:
    """Operator ``snapshot()`` data as safe JSON bytes (module docstring).

    Raises:
        TypeError: the state holds something not storable (a new class: add it to
            :data:`STATE_CLASSES`).
    """
    return json.dumps(_enc(state), separators=(",", ":")).encode()


def decode_state(blob: bytes) -> Any:
    """The inverse of :func:`encode_state`; runs no code named by the data.

    Raises:
        CheckpointError: ``format`` (not JSON / too big) or ``schema`` (unexpected structure).
    """
    if len(blob) > MAX_STATE_BYTES:
        raise CheckpointError("format", f"{len(blob)} bytes")
    try:
        doc = json.loads(blob)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError("format", f"not JSON ({type(e).__name__})") from None
    try:
        return _dec(doc)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RecursionError) as e:
        raise CheckpointError("schema", f"{type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------
# operator state <-> bytes


def snapshot_stage(stage: Any) -> bytes:
    """The per-session state of a :class:`operators.facetrack.FaceTrackStage` (tracker, last
    detection time, faces being followed) as :func:`encode_state` bytes. The shared detector and
    landmarker hold no per-session state and are not included."""
    return encode_state(stage.snapshot())


def restore_stage(stage: Any, blob: bytes) -> None:
    """Put a :func:`snapshot_stage` state into a freshly built stage.

    Raises:
        CheckpointError: not a valid state.
    """
    state = decode_state(blob)
    if not isinstance(state, dict) or set(state) != {"tracker", "follow", "last_detect_ms"}:
        raise CheckpointError("schema", "not a face-track stage state")
    stage.restore(state)


def snapshot_builder(builder: Any) -> bytes:
    """The per-session state of a :class:`operators.timeline.TimelineBuilder` (smoother tracks,
    geometric-AU neutral baselines) as :func:`encode_state` bytes."""
    return encode_state(builder.snapshot())


def restore_builder(builder: Any, blob: bytes) -> None:
    """Put a :func:`snapshot_builder` state into a freshly built timeline builder.

    Raises:
        CheckpointError: not a valid state.
    """
    state = decode_state(blob)
    if not isinstance(state, dict) or set(state) != {"smoother", "geo"}:
        raise CheckpointError("schema", "not a timeline builder state")
    builder.restore(state)


def load_key(key_file: str | None = None) -> bytes | None:
    """The checkpoint signing key: env ``AFFECTSTREAM_CHECKPOINT_KEY``, else the contents of
    ``key_file`` (surrounding whitespace stripped), else None (unsigned).

    Raises:
        OSError: ``key_file`` cannot be read.
        ValueError: the key is shorter than 16 bytes.
    """
    key = os.environ.get(KEY_ENV, "").encode() or (
        Path(key_file).read_bytes().strip() if key_file else b"")
    if key and len(key) < 16:
        raise ValueError(f"checkpoint key must be at least 16 bytes, got {len(key)}")
    return key or None


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
# version, format, sig, ttl_s. Refuses (returns 0) to replace a checkpoint of the same source at
# an equal or later offset: a consumer that lost its partition and finishes a frame late cannot
# move a session's state back. A key of another type (planted) is replaced.
_CAS = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then
  redis.call('DEL', KEYS[1])
end
local cur = redis.call('HMGET', KEYS[1], 'source', 'offset', 'v')
if cur[1] == ARGV[1] and cur[3] == ARGV[8] and tonumber(cur[2])
   and tonumber(cur[2]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'source', ARGV[1], 'offset', ARGV[2], 'seq', ARGV[3],
           'ts_ms', ARGV[4], 'stage', ARGV[5], 'builder', ARGV[6], 'written_ms', ARGV[7],
           'v', ARGV[8], 'fmt', ARGV[9], 'sig', ARGV[10])
if tonumber(ARGV[11]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[11])
end
return 1
"""

_FIELDS = (b"source", b"offset", b"seq", b"ts_ms", b"stage", b"builder", b"written_ms", b"v",
           b"fmt", b"sig")


def _sign(key: bytes, fields: list[bytes]) -> str:
    """HMAC-SHA256 over the length-prefixed fields, hex."""
    m = hmac.new(key, digestmod=hashlib.sha256)
    for f in fields:
        m.update(len(f).to_bytes(8, "big"))
        m.update(f)
    return m.hexdigest()


class CheckpointStore:
    """Session checkpoints at ``<prefix>:{<sid>}:ckpt`` (a hash; same hash tag as the session's
    other keys, so it is Redis-Cluster safe).

    Args:
        client: ``redis.Redis`` with ``decode_responses=False`` (the state is binary).
        prefix: key prefix.
        ttl_s: expiry refreshed on every save (None = never): a session silent that long
            restarts from a blank state.
        key: HMAC key (:func:`load_key`); with one, checkpoints are signed and unsigned or
            wrongly signed ones are ignored.
    """

    def __init__(self, client: Any, prefix: str = "affect", ttl_s: int | None = None,
                 key: bytes | None = None) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._key = key
        self._cas = client.register_script(_CAS)

    def key(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:ckpt"

    @staticmethod
    def _signed_fields(sid: str, vals: list[Any]) -> list[bytes]:
        return [sid.encode()] + [v if isinstance(v, bytes) else str(v).encode() for v in vals]

    def save(self, sid: str, ck: Checkpoint) -> bool:
        """Write ``ck`` unless the stored checkpoint of the same source is at ``ck.offset`` or
        later; True when written."""
        now = ck.written_ms or int(time.time() * 1000)
        vals = [ck.source, ck.offset, ck.seq, ck.ts_ms, ck.stage, ck.builder, now,
                STATE_VERSION, FORMAT]
        sig = _sign(self._key, self._signed_fields(sid, vals)) if self._key else ""
        return bool(self._cas(keys=[self.key(sid)], args=[*vals, sig, self.ttl_s or 0]))

    def load(self, sid: str) -> Checkpoint | None:
        """The session's checkpoint, or None: none stored, or one that is not this version's
        format, is unsigned / wrongly signed when a key is set, or is not a hash (each of these
        is logged and counted by :func:`reject`). Its state parts are checked when restored
        (:func:`restore_stage`, :func:`restore_builder`)."""
        import redis

        k = self.key(sid)
        try:
            h = self.r.hgetall(k)
        except redis.ResponseError as e:  # WRONGTYPE: something else was written there
            reject(sid, "not_a_hash", str(e)[:80])
            return None
        if not h:
            return None
        v = h.get(b"v", b"")
        if v != str(STATE_VERSION).encode() or h.get(b"fmt") != FORMAT.encode():
            reject(sid, "foreign", f"version {v[:8]!r}, format {h.get(b'fmt', b'')[:8]!r}")
            return None
        if not all(f in h for f in _FIELDS):
            reject(sid, "schema", "fields missing")
            return None
        if self._key is not None:
            want = _sign(self._key, self._signed_fields(sid, [h[f] for f in _FIELDS[:-1]]))
            if not hmac.compare_digest(want.encode(), h[b"sig"]):
                reject(sid, "bad_signature")
                return None
        try:
            return Checkpoint(h[b"source"].decode(), int(h[b"offset"]), int(h[b"seq"]),
                              int(h[b"ts_ms"]), h[b"stage"], h[b"builder"],
                              int(h[b"written_ms"]))
        except (UnicodeDecodeError, ValueError) as e:
            reject(sid, "schema", str(e)[:80])
            return None

    def delete(self, sid: str) -> None:
        self.r.delete(self.key(sid))
