"""Helpers shared by the Kafka service tests: real clips as envelope-v1 messages, the expected
timeline points of each (computed here with the same operators), waiting on Redis."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable

import numpy as np

from affectstream.pipeline.kafka.envelope import decode, encode
from affectstream.pipeline.kafka.publish import sampled_frames

Message = tuple[bytes, bytes, list]


def clip_messages(path: str, session: str, fps: float, t0_ms: int,
                  max_frames: int | None = None) -> list[Message]:
    """The clip resampled to ``fps`` as ``(key, value, headers)``, exactly as ``publish`` makes
    them (JPEG quality 90, ``ts_ms = t0_ms + pts_ms``)."""
    return [encode(session, seq, t0_ms + fr.pts_ms, fr.image, pts_ms=fr.pts_ms, jpeg_quality=90)
            for seq, fr in enumerate(sampled_frames(path, fps, max_frames))]


def interleave(*streams: list[Message]) -> list[Message]:
    """Round-robin merge (each stream keeps its order)."""
    out = []
    for i in range(max(len(s) for s in streams)):
        out += [s[i] for s in streams if i < len(s)]
    return out


def expected_points(base_stage, msgs: Iterable[Message]) -> set[tuple[int, int]]:
    """``{(track_id, ts_ms)}`` one session's messages must produce: the same face-track stage
    the service builds per session (shared networks, fresh tracker), one torch thread like the
    consumer actors."""
    import torch

    from affectstream.operators.facetrack import FaceTrackStage
    from affectstream.operators.records import Frame

    b = base_stage
    stage = FaceTrackStage(b.detector, copy.deepcopy(b.tracker), b.landmarker, b.crop,
                           b.min_face_px, b.min_presence, b.detect_interval_ms)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = set()
        for key, value, headers in msgs:
            env, img = decode(key, value, headers)
            tf = stage.process(Frame(env.session_id, env.seq, env.ts_ms, env.pts_ms, img))
            out |= {(int(t), env.ts_ms) for t in tf.faces.track_id}
        return out
    finally:
        torch.set_num_threads(threads)


def produce(bootstrap: str, topic: str, msgs: Iterable[Message]) -> dict[int, int]:
    """Send and flush; returns ``{partition: end offset}`` (one past its last message)."""
    from affectstream.pipeline.kafka.client import make_producer

    p = make_producer(bootstrap)
    futs = [p.send(topic, key=k, value=v, headers=h) for k, v, h in msgs]
    p.flush(30)
    ends: dict[int, int] = {}
    for f in futs:
        md = f.get(timeout=30)
        ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
    p.close(5)
    return ends


def stored_points(r, sid: str) -> list[tuple[int, int]]:
    """``[(track_id, ts_ms)]`` in Redis for a session (with repeats, if any)."""
    from affectstream.pipeline.store.redis_store import Keys

    k = Keys()
    out = []
    for t in r.zrange(k.tracks(sid), 0, -1):
        out += [(int(t), int(eid.split("-")[0])) for eid, _ in r.xrange(k.track(sid, int(t)))]
    return out


def wait_points(r, want: dict[str, int], timeout_s: float = 240.0, settle_s: float = 1.5,
                progress=None) -> dict[str, int]:
    """Wait until every session has at least its count of points, then ``settle_s`` more (so
    extra points would show); returns the final counts. ``progress(counts)`` is called each
    round."""
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = {sid: len(stored_points(r, sid)) for sid in want}
        if progress is not None:
            progress(counts)
        if all(counts[s] >= n for s, n in want.items()):
            time.sleep(settle_s)
            return {sid: len(stored_points(r, sid)) for sid in want}
        time.sleep(0.1)
    return counts


def fraction(counts: dict[str, int], want: dict[str, int]) -> float:
    return sum(min(counts[s], n) for s, n in want.items()) / max(1, sum(want.values()))


def tiny_jpeg() -> bytes:
    from affectstream.pipeline.kafka.envelope import encode_image

    return encode_image(np.full((8, 8, 3), 128, np.uint8))
