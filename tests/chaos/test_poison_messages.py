"""Messages that used to stop a partition for good: each goes to the DLQ with its reason and the
frames after it are analysed in the same service run."""

from __future__ import annotations

import uuid

import pytest

from tests.chaos.conftest import T0, metric, read_dlq, with_header
from tests.pipeline.kafka_clips import (clip_messages, expected_points, produce, stored_points,
                                        wait_points)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]


def _long_session(media, sid: str) -> list:
    """The one-face clip three times at 15 fps (108 frames), seq and ts_ms continuing."""
    msgs = []
    for rep in range(3):
        for k, v, h in clip_messages(str(media("single_face.mp4")), sid, 15, T0 + 3000 * rep):
            hd = dict(h)
            m = with_header((k, v, h), "seq", str(int(hd["seq"]) + 1000 * rep).encode())
            msgs.append(with_header(m, "pts_ms", str(int(hd["pts_ms"]) + 3000 * rep).encode()))
    return msgs


def test_ts_poison_goes_to_the_dlq_and_the_100_frames_after_it_are_analysed(
        chaos_service, chaos_stage, media, r):
    sid = "tspoison-" + uuid.uuid4().hex[:6]
    good = _long_session(media, sid)
    want = expected_points(chaos_stage, good)
    assert len(good) == 108 and len(want) == 108
    # a face frame whose ts_ms Redis cannot take as a stream id, and one at the top of the id
    # space that would shadow every later point of its track
    poison = [with_header(good[0], "ts_ms", str(10 ** 20).encode()),
              with_header(good[0], "ts_ms", str((1 << 64) - 1).encode())]
    poison = [with_header(m, "seq", str(500 + i).encode()) for i, m in enumerate(poison)]
    poison = [with_header(m, "test_id", sid.encode()) for m in poison]
    produce(chaos_service.cfg.kafka.bootstrap, chaos_service.cfg.kafka.topic,
            good[:8] + poison + good[8:])  # 100 frames after the poison
    counts = wait_points(r, {sid: len(want)}, timeout_s=240)
    got = stored_points(r, sid)
    assert len(got) == len(set(got)) == counts[sid]
    assert set(got) == want
    dlq = read_dlq(chaos_service, 2, lambda x: dict(x.headers).get("test_id") == sid.encode())
    assert sorted(dict(x.headers)["error"] for x in dlq) == [b"bad_header:ts_ms"] * 2
    assert [st["state"] for st in chaos_service.stats()] == ["consuming"]


def test_a_store_error_that_is_not_an_outage_dead_letters_the_frames_and_the_partition_goes_on(
        chaos_service, chaos_stage, media, r):
    """Redis refuses the session's writes (its meta key is of another type): every frame of that
    session goes to the DLQ as store_error; a session behind it in the partition is complete."""
    tag = uuid.uuid4().hex[:6]
    bad, ok = f"wrongtype-{tag}", f"after-{tag}"
    r.set(f"affect:{{{bad}}}:meta", "planted")
    mb = clip_messages(str(media("single_face.mp4")), bad, 15, T0, max_frames=5)
    mg = clip_messages(str(media("single_face.mp4")), ok, 15, T0 + 3)
    want = expected_points(chaos_stage, mg)
    produce(chaos_service.cfg.kafka.bootstrap, chaos_service.cfg.kafka.topic, mb + mg)
    counts = wait_points(r, {ok: len(want)})
    assert counts[ok] == len(want) and set(stored_points(r, ok)) == want
    dlq = read_dlq(chaos_service, 5, lambda x: x.key == bad.encode())
    assert [dict(x.headers)["error"] for x in dlq] == [b"store_error"] * 5
    assert r.get(f"affect:{{{bad}}}:meta") == "planted"


def test_a_message_that_crashed_its_consumer_n_times_is_dead_lettered_on_the_next_delivery(
        chaos_service, chaos_stage, media, r):
    """The delivery count of the next offset says N attempts began and none finished (what N
    consumer crashes on it leave behind): the message goes to the DLQ as poison_pill without
    being analysed, and the rest of the session is."""
    k = chaos_service.cfg.kafka
    sid = "pill-" + uuid.uuid4().hex[:6]
    msgs = clip_messages(str(media("single_face.mp4")), sid, 15, T0)
    # where the next message lands: one past a fence message (malformed: it goes to the DLQ)
    fence = with_header(msgs[0], "schema", b"fence")
    end = produce(k.bootstrap, k.topic, [(b"fence", fence[1], fence[2])])[0]
    key = f"affect:deliveries:{k.topic}:0"
    pill = end + 3  # the fourth message produced below
    r.hset(key, str(pill), k.max_delivery_attempts)
    produce(k.bootstrap, k.topic, msgs)
    want = expected_points(chaos_stage, msgs[:3] + msgs[4:])
    counts = wait_points(r, {sid: len(want)})
    assert counts[sid] == len(want) and set(stored_points(r, sid)) == want
    dlq = read_dlq(chaos_service, 1, lambda x: x.key == sid.encode())
    assert len(dlq) == 1
    hd = dict(dlq[0].headers)
    assert (hd["error"], int(hd["source_offset"]), int(hd["seq"])) == (b"poison_pill", pill, 3)
    # finished messages leave no count behind
    assert r.hget(key, str(pill)) is None and r.hget(key, str(end)) is None
    assert metric(chaos_service.url, "affectstream_dlq_messages_total") >= 1
