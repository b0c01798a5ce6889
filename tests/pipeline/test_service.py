"""The Kafka service against real servers: a tansu broker, a redis-server, Ray Serve with the
real models, real clips. One service (two consumer actors, a two-partition topic) serves every
test of the module, as it would serve many clients publishing into one topic."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
import redis

from tests.conftest import free_port
from tests.pipeline.kafka_clips import (clip_messages, expected_points, fraction, interleave,
                                        produce, stored_points, tiny_jpeg, wait_points)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def service(kafka_broker, redis_server):
    from affectstream.pipeline.runtime import dag
    from affectstream.pipeline.config import load_config
    from affectstream.pipeline.service.lifecycle import start_service

    tag = uuid.uuid4().hex[:8]
    cfg = load_config("service", overrides={
        "kafka": {"bootstrap": kafka_broker, "topic": f"frames-{tag}",
                  "dlq_topic": f"frames-{tag}.dlq", "result_topic": f"points-{tag}",
                  "group_id": f"svc-{tag}", "consumers": 2, "session_timeout_ms": 6000,
                  "heartbeat_interval_ms": 2000, "max_poll_interval_ms": 10000,
                  "checkpoint_interval_ms": 500, "commit_interval_ms": 500},
        "redis": {"url": redis_server}, "api": {"port": free_port()}, "ray_num_cpus": 2})
    svc = start_service(cfg)
    try:
        yield svc
    finally:
        try:
            svc.stop()
        finally:
            dag.shutdown()


@pytest.fixture(scope="module")
def base_stage(service):
    """The face-track networks, for the expected points (the service's config)."""
    from affectstream.operators.facetrack import FaceTrackStage

    return FaceTrackStage.from_config(service.cfg)


@pytest.fixture()
def r(redis_server):
    return redis.Redis.from_url(redis_server, decode_responses=True)


def _read_topic(bootstrap, topic, n, timeout_s=30.0, match=lambda rec: True):
    from kafka import KafkaConsumer

    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                      auto_offset_reset="earliest", enable_auto_commit=False)
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            out += [x for x in recs if match(x)]
    c.close()
    return out


def _metric(url: str, name: str) -> float:
    """Sum of a metric's samples (all label sets) in /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith(name + " ") or ln.startswith(name + "{"))


def test_publish_serve_query_a_real_clip(service, base_stage, media, r):
    """publish -> service -> HTTP query: every frame with a face becomes one point, the summary
    and live tail agree, /metrics shows what the consumer actors did, the result topic has the
    same points."""
    from affectstream.pipeline.kafka.publish import publish

    sid = "clip-" + uuid.uuid4().hex[:6]
    clip = str(media("single_face.mp4"))
    want = expected_points(base_stage, clip_messages(clip, sid, 15, T0))
    assert len(want) == 36 and {t for t, _ in want} == {1}  # 2.4 s at 15 fps, one face
    stats = publish(clip, service.cfg.kafka.bootstrap, service.cfg.kafka.topic, session=sid,
                    fps=15, start_ts_ms=T0, create_topic=False)
    assert stats.frames == 36
    wait_points(r, {sid: len(want)})
    api = httpx.Client(base_url=service.url, timeout=30)
    assert sid in [s["session_id"] for s in api.get("/v1/sessions").json()["sessions"]]
    det = api.get(f"/v1/sessions/{sid}").json()
    assert (det["n_points"], det["n_tracks"], det["status"]) == (36, 1, "running")
    assert det["source"] == "kafka:" + service.cfg.kafka.topic
    tl = api.get(f"/v1/sessions/{sid}/timeline").json()
    assert {(p["track_id"], p["ts_ms"]) for p in tl["points"]} == want and tl["count"] == 36
    assert all(abs(sum(p["emotion_probs"].values()) - 1) < 0.01 for p in tl["points"])
    summ = api.get(f"/v1/sessions/{sid}/summary").json()
    ts = sorted(t for _, t in want)
    assert summ["n_points"] == 36 and summ["tracks"][0]["duration_ms"] == ts[-1] - ts[0]
    with api.stream("GET", f"/v1/sessions/{sid}/live",
                    params={"after_ms": 0, "max_events": 3, "block_ms": 100}) as resp:
        events = [ln for ln in resp.iter_lines() if ln.startswith("event: point")]
    assert len(events) == 3
    # metrics produced in the consumer actors reach the API's /metrics (through Redis)
    deadline = time.monotonic() + 15
    while _metric(service.url, "affectstream_frames_analysed_total") < 36:
        assert time.monotonic() < deadline, "consumer metrics never reached /metrics"
        time.sleep(0.5)
    for name in ("affectstream_frames_in_total", "affectstream_faces_total",
                 "affectstream_timeline_points_written_total",
                 "affectstream_inference_batch_size_count",
                 "affectstream_session_checkpoints_total"):
        assert _metric(service.url, name) > 0, name
    text = api.get("/metrics").text
    for stage in ("detect", "landmarks", "fer+saliency", "sink", "publish_to_redis"):
        assert f'affectstream_stage_latency_ms_count{{stage="{stage}"}}' in text
    deadline = time.monotonic() + 15  # the lag gauge is refreshed every 5 s
    while "affectstream_consumer_lag_messages{" not in api.get("/metrics").text:
        assert time.monotonic() < deadline, "no consumer lag gauge"
        time.sleep(1)
    # the optional result topic carries the same points (JSON, keyed by session)
    recs = _read_topic(service.cfg.kafka.bootstrap, service.cfg.kafka.result_topic, 36,
                       match=lambda x: x.key == sid.encode())
    got = [json.loads(x.value) for x in recs]
    assert {(p["track_id"], p["ts_ms"]) for p in got} == want
    assert dict(recs[0].headers)["schema"] == b"affect.point.v1"


def test_two_sessions_interleaved_in_one_topic_come_out_separate_and_complete(service, base_stage,
                                                                               media, r):
    tag = uuid.uuid4().hex[:6]
    a, b = f"a-{tag}", f"b-{tag}"
    ma = clip_messages(str(media("single_face.mp4")), a, 15, T0)
    mb = clip_messages(str(media("noface_face.mov")), b, 15, T0 + 5)
    want = {a: expected_points(base_stage, ma), b: expected_points(base_stage, mb)}
    assert len(want[a]) == 36 and 0 < len(want[b]) < len(mb)  # b: the face enters part-way
    produce(service.cfg.kafka.bootstrap, service.cfg.kafka.topic, interleave(ma, mb))
    counts = wait_points(r, {s: len(w) for s, w in want.items()})
    for s in (a, b):
        got = stored_points(r, s)
        assert len(got) == len(set(got)) == counts[s]
        assert set(got) == want[s], s


BAD_KINDS = ["bad_header:seq", "missing_header:codec", "undecodable_image", "key_mismatch",
             "bad_header:schema", "too_many_pixels", "empty_image", "duplicate_seq"]


def _bad(kind: str, i: int, good: tuple) -> tuple:
    """One malformed message of ``kind``; ``good`` is a valid (key, value, headers)."""
    import struct
    import zlib

    from affectstream.pipeline.kafka.envelope import encode

    k, v, h = encode(f"junk-{i % 7}", 10_000 + i, T0, data=tiny_jpeg())
    mark = [("test_index", str(i).encode())]
    if kind == "bad_header:seq":
        h = [(n, b"x" if n == "seq" else x) for n, x in h]
    elif kind == "missing_header:codec":
        h = [(n, x) for n, x in h if n != "codec"]
    elif kind == "undecodable_image":
        v = b"\xff\xd8\xff" + bytes(range(256)) * 2
    elif kind == "key_mismatch":
        k = b"someone-else"
    elif kind == "bad_header:schema":
        h = [(n, b"affect.frame.v0" if n == "schema" else x) for n, x in h]
    elif kind == "too_many_pixels":  # a PNG header claiming 100000 x 100000
        ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
        v = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
             + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
        h = [(n, b"png" if n == "codec" else x) for n, x in h]
    elif kind == "empty_image":
        v = b""
    elif kind == "duplicate_seq":  # the good frame again, right after itself
        k, v, h = good
    return k, v, list(h) + mark


def test_malformed_messages_land_in_the_dlq_and_good_frames_are_analysed(service, base_stage,
                                                                          media, r):
    """1,000 malformed messages mixed into a real stream: all 1,000 in the DLQ with their
    reason, every good frame analysed."""
    sid = "good-" + uuid.uuid4().hex[:6]
    good = clip_messages(str(media("single_face.mp4")), sid, 15, T0)
    want = expected_points(base_stage, good)
    dlq0 = _metric(service.url, "affectstream_dlq_messages_total")
    msgs = []
    kinds = [BAD_KINDS[i % len(BAD_KINDS)] for i in range(1000)]
    # each good frame is followed by its share of the bad ones (a duplicate right after it)
    per = {j: [] for j in range(len(good))}
    for i, kind in enumerate(kinds):
        per[i * len(good) // 1000].append((i, kind))
    for j, g in enumerate(good):
        msgs.append(g)
        msgs += [_bad(kind, i, g) for i, kind in per[j]]
    assert len(msgs) == 1000 + len(good)
    produce(service.cfg.kafka.bootstrap, service.cfg.kafka.topic, msgs)
    wait_points(r, {sid: len(want)})
    assert set(stored_points(r, sid)) == want and len(stored_points(r, sid)) == len(want)
    dlq = _read_topic(service.cfg.kafka.bootstrap, service.cfg.kafka.dlq_topic, 1000,
                      timeout_s=60, match=lambda x: "test_index" in dict(x.headers))
    assert len(dlq) == 1000
    by_index = {int(dict(x.headers)["test_index"]): dict(x.headers) for x in dlq}
    assert sorted(by_index) == list(range(1000))
    for i, hd in by_index.items():
        assert hd["error"].decode() == kinds[i], (i, hd)
        assert hd["source_topic"].decode() == service.cfg.kafka.topic
    deadline = time.monotonic() + 15
    while _metric(service.url, "affectstream_dlq_messages_total") - dlq0 < 1000:
        assert time.monotonic() < deadline, "DLQ count never reached /metrics"
        time.sleep(0.5)
    assert _metric(service.url, "affectstream_dlq_messages_total") - dlq0 == 1000


def test_killing_a_consumer_actor_mid_stream_loses_and_doubles_nothing(service, base_stage,
                                                                        media, r):
    """Three times, kill the consumer actor that holds sessions while they are being analysed;
    Serve starts a new one, the group rebalances, sessions resume from their checkpoints. The
    timelines end with every expected point exactly once."""
    import ray

    tag = uuid.uuid4().hex[:6]
    clips = {f"k1-{tag}": "single_face.mp4", f"k2-{tag}": "noface_face.mov",
             f"k3-{tag}": "face_noface.mov", f"k4-{tag}": "single_face.mp4"}
    msgs = {s: clip_messages(str(media(c)), s, 15, T0 + 7 * i)
            for i, (s, c) in enumerate(clips.items())}
    want = {s: expected_points(base_stage, m) for s, m in msgs.items()}
    n_want = {s: len(w) for s, w in want.items()}
    skipped0 = _metric(service.url, "affectstream_frames_replay_skipped_total")
    dup0 = _metric(service.url, "affectstream_timeline_points_duplicate_total")
    produce(service.cfg.kafka.bootstrap, service.cfg.kafka.topic, interleave(*msgs.values()))
    kills = []
    for cut in (0.15, 0.35, 0.55):
        deadline = time.monotonic() + 240
        while fraction({s: len(stored_points(r, s)) for s in want}, n_want) < cut:
            assert time.monotonic() < deadline, f"stalled before {cut:.0%}"
            time.sleep(0.05)
        # right after a kill the group may still be rebalancing: wait for a consumer to hold them
        while not (busy := [st for st in service.stats() if set(st["sessions"]) & set(want)]):
            assert time.monotonic() < deadline, f"no consumer took the sessions at {cut:.0%}"
            time.sleep(0.1)
        victim = max(busy, key=lambda st: len(st["sessions"]))
        ray.kill(ray.get_actor(victim["actor_name"], namespace=victim["namespace"]),
                 no_restart=True)
        kills.append((cut, victim["actor_name"]))
    assert len(kills) >= 3, kills
    counts = wait_points(r, n_want, timeout_s=300, settle_s=3)
    for s, w in want.items():
        got = stored_points(r, s)
        assert len(got) == len(set(got)) == counts[s], s           # nothing doubled
        assert set(got) == w, (s, sorted(set(got) ^ w)[:10])       # nothing lost or extra
    # the kills really forced replays, which were absorbed
    replayed = (_metric(service.url, "affectstream_frames_replay_skipped_total") - skipped0
                + _metric(service.url, "affectstream_timeline_points_duplicate_total") - dup0)
    print(f"\nkills at {[c for c, _ in kills]}; replayed frames absorbed: {replayed:.0f}")
    assert replayed > 0
