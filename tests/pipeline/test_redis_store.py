import pytest
import redis

from affectstream.operators.records import TimelinePoint
from affectstream.pipeline.store.redis_store import Keys, RedisSink, TimelineStore

pytestmark = pytest.mark.integration


def _pt(sid, tid, ts, emo="happiness"):
    return TimelinePoint(sid, tid, ts, ts - 1000, emo, {"happiness": 0.7, "neutral": 0.3},
                         {"AU12": 2.5, "AU06": 1.25}, (1.0, 2.0, 30.0, 40.0), 0.9,
                         {"mouth": 0.8}, valence=0.4)


def test_replay_counts_duplicates_and_roundtrips(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    sink = RedisSink(r, maxlen=1000)
    sink.start_session("s1", source="clip.mp4", config_digest="abc")
    pts = [_pt("s1", 1, 1000 + 100 * i) for i in range(5)] + [_pt("s1", 2, 1050)]
    res = sink.write(pts)
    assert (res.written, res.duplicates) == (6, 0)
    # a fresh sink (new process) replaying the same points writes nothing
    res2 = RedisSink(r).write(pts)
    assert (res2.written, res2.duplicates) == (0, 6)
    store = TimelineStore(r)
    assert [t for t, _ in store.tracks("s1")] == [1, 2]
    assert store.count_points("s1") == {1: 5, 2: 1}
    got = store.timeline("s1", track=1)
    assert got == pts[:5]
    assert [p.ts_ms for p in store.timeline("s1", track=1, from_ms=1100, to_ms=1300)] == \
        [1100, 1200, 1300]
    assert [p.ts_ms for p in store.timeline("s1", track=1, every_ms=200)] == [1000, 1200, 1400]
    assert r.exists(Keys().meta("s1")) and store.sessions()[0][0] == "s1"


def test_end_session_sets_ttl(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    sink = RedisSink(r, session_ttl_s=60)
    sink.start_session("s2", source="x")
    sink.write([_pt("s2", 3, 5000)])
    sink.end_session("s2")
    k = Keys()
    assert 0 < r.ttl(k.track("s2", 3)) <= 60
    assert r.hget(k.meta("s2"), "status") == "ended"


def test_delete_removes_every_key_of_the_session_only(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    sink = RedisSink(r)
    for sid in ("del*me", "keep"):  # a glob character in the id must not widen the match
        sink.start_session(sid, source="x")
        sink.write([_pt(sid, 1, 5000), _pt(sid, 2, 5100)])
    r.set("affect:{del*me}:ckpt", "state")  # other keys of the session go too
    r.set("affect:{delXme}:meta", "not this session")
    store = TimelineStore(r)
    assert store.delete("del*me") == 5  # meta, tracks, 2 track streams, ckpt
    assert not store.exists("del*me") and r.zscore(Keys().sessions, "del*me") is None
    assert store.exists("keep") and r.get("affect:{delXme}:meta") == "not this session"
    assert [s for s, _ in store.sessions()] == ["keep"]
    assert store.delete("never-was") == 0


@pytest.mark.parametrize("ttl_s, expected", [(3600, 3600), (None, None)])
def test_retention_and_wall_clock_last_write(redis_url, ttl_s, expected):
    import time

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    sink = RedisSink(r, session_ttl_s=ttl_s)
    sink.start_session("s", source="x")
    t0 = int(time.time() * 1000)
    sink.write([_pt("s", 1, 5000)])  # capture time 5 s after the epoch: far from the wall clock
    meta = TimelineStore(r).meta("s")
    assert int(meta["updated_ms"]) == 5000 and abs(int(meta["last_write_ms"]) - t0) < 5000
    assert TimelineStore(r).ttl_s("s") is None  # running: kept
    sink.end_session("s")
    got = TimelineStore(r).ttl_s("s")
    assert got == expected if expected is None else expected - 5 <= got <= expected


def test_a_damaged_meta_key_never_fails_the_session_listing(redis_url):
    c = redis.Redis.from_url(redis_url, decode_responses=True)
    sink, store = RedisSink(c, "dmg"), TimelineStore(c, "dmg")
    sink.start_session("good", "file.mp4")
    c.zadd("dmg:sessions", {"bad": 1})
    c.set("dmg:{bad}:meta", "not a hash")  # e.g. planted by someone with write access
    total, rows = store.sessions_page()
    by_sid = {sid: meta for sid, _, meta in rows}
    assert total == 2 and by_sid["bad"] == {"status": "unreadable"}
    assert by_sid["good"]["status"] == "running"
