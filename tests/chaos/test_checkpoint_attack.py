"""Whoever can write Redis plants a pickle at a session's checkpoint key: the consumer runs
nothing, ignores it (warning + metric) and the session starts blank."""

from __future__ import annotations

import os
import pickle
import uuid

import pytest
import redis

from tests.chaos.conftest import T0, metric
from tests.pipeline.kafka_clips import (clip_messages, expected_points, produce, stored_points,
                                        wait_points)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]


class _Touch:
    """Unpickling this runs ``touch <path>``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_planted_pickle_checkpoint_runs_nothing_and_the_session_starts_blank(
        chaos_service, chaos_stage, media, redis_server, tmp_path):
    k = chaos_service.cfg.kafka
    tag = uuid.uuid4().hex[:6]
    as_hash, as_string = f"ckh-{tag}", f"cks-{tag}"
    markers = {s: tmp_path / f"pwned-{s}" for s in (as_hash, as_string)}
    rb = redis.Redis.from_url(redis_server)
    # the old (version 1) layout, pointing far ahead on the session's own partition: a consumer
    # that trusted it would unpickle the payload and skip every frame
    payload = pickle.dumps(_Touch(str(markers[as_hash])))
    rb.hset(f"affect:{{{as_hash}}}:ckpt", mapping={
        "source": f"{k.topic}:0", "offset": 10 ** 9, "seq": 10 ** 9, "ts_ms": T0,
        "stage": payload, "builder": payload, "written_ms": T0, "v": 1})
    rb.set(f"affect:{{{as_string}}}:ckpt", pickle.dumps(_Touch(str(markers[as_string]))))
    rejected0 = metric(chaos_service.url, "affectstream_checkpoints_rejected_total")
    msgs = {s: clip_messages(str(media("single_face.mp4")), s, 15, T0 + i)
            for i, s in enumerate(markers)}
    want = {s: expected_points(chaos_stage, m) for s, m in msgs.items()}
    produce(k.bootstrap, k.topic, msgs[as_hash] + msgs[as_string])
    counts = wait_points(rb_text := redis.Redis.from_url(redis_server, decode_responses=True),
                         {s: len(w) for s, w in want.items()})
    for s, w in want.items():
        got = stored_points(rb_text, s)
        assert len(got) == len(set(got)) == counts[s] and set(got) == w, s  # blank: ids from 1
        assert not markers[s].exists(), f"the planted checkpoint of {s} ran code"
    assert metric(chaos_service.url, "affectstream_checkpoints_rejected_total") - rejected0 >= 2
    # the session's own checkpoints replace the planted ones, in the safe format
    h = rb.hgetall(f"affect:{{{as_string}}}:ckpt")
    assert h[b"v"] == b"2" and h[b"fmt"] == b"json" and h[b"stage"].startswith(b"{")
