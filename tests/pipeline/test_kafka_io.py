import subprocess
import sys
import time
import uuid
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from affectstream.pipeline.cli.kafka import kafka_cli as _kafka_cli
from affectstream.pipeline.config import KafkaConfig
from affectstream.pipeline.kafka.envelope import SCHEMA, encode
from affectstream.pipeline.kafka.client import BrokerUnavailable, ensure_topics, make_producer
from affectstream.pipeline.kafka.frames import FrameConsumer
from affectstream.pipeline.kafka.offsets import DeadLetter, OffsetTracker
from affectstream.pipeline.kafka.publish import publish

# --------------------------------------------------------------------------------------------
# OffsetTracker: pure logic


@pytest.mark.parametrize("tracked, acked, expected", [
    ([], [], {}),
    ([0, 1, 2], [], {"p": 0}),
    ([0, 1, 2], [1, 2], {"p": 0}),            # head not acked: nothing past it is committable
    ([0, 1, 2], [0], {"p": 1}),
    ([0, 1, 2], [2, 0], {"p": 1}),
    ([0, 1, 2], [2, 1, 0], {"p": 3}),         # all acked: one past the last
    ([5, 9, 12], [5, 9], {"p": 12}),          # offset gaps (compaction, txn markers)
    ([5, 9, 12], [12, 9, 5], {"p": 13}),
])
def test_committable_is_the_acknowledged_prefix(tracked, acked, expected):
    t = OffsetTracker()
    for o in tracked:
        t.track("p", o)
    for o in acked:
        assert t.ack("p", o)
    assert t.committable() == expected
    assert t.in_flight() == len(tracked) - len(acked)


def test_commit_marks_progress_per_partition_and_ignores_stale_acks():
    t = OffsetTracker()
    for o in range(4):
        t.track("a", o)
    t.track("b", 10)
    t.ack("a", 0), t.ack("a", 1), t.ack("b", 10)
    assert t.committable() == {"a": 2, "b": 11}
    t.mark_committed({"a": 2, "b": 11})
    assert t.committable() == {}                       # nothing new
    assert not t.ack("a", 1)                           # already acked
    assert not t.ack("a", 99)                          # never handed out
    assert not t.ack("zzz", 0)                         # unknown partition
    t.ack("a", 3)
    assert t.committable() == {}                       # 2 still in flight
    t.ack("a", 2)
    assert t.committable() == {"a": 4}
    assert t.committable(["b"]) == {}


def test_revoked_partitions_are_forgotten():
    t = OffsetTracker()
    t.track("a", 0)
    t.track("b", 0)
    t.forget(["a"])
    assert not t.ack("a", 0)
    assert t.partitions() == ["b"]
    t.track("a", 0)  # reassigned later: starts afresh from the committed offset
    assert t.committable() == {"a": 0, "b": 0}


def test_offsets_must_increase_per_partition():
    t = OffsetTracker()
    t.track("a", 5)
    with pytest.raises(ValueError, match="offset 4 tracked after 5"):
        t.track("a", 4)


def test_acks_from_many_threads():
    import threading

    t = OffsetTracker()
    n = 2000
    for o in range(n):
        t.track("p", o)
    offs = list(range(n))
    np.random.default_rng(0).shuffle(offs)
    ths = [threading.Thread(target=lambda part=offs[i::4]: [t.ack("p", o) for o in part])
           for i in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert t.committable() == {"p": n} and t.in_flight() == 0


# --------------------------------------------------------------------------------------------
# against a real Kafka-protocol broker


ROOT = Path(__file__).resolve().parents[2]


def _cfg(bootstrap, topic, **kw):
    return KafkaConfig(bootstrap=bootstrap, topic=topic, dlq_topic=topic + ".dlq",
                       group_id="g-" + uuid.uuid4().hex[:8], session_timeout_ms=6000,
                       heartbeat_interval_ms=2000, **kw)


def _consume(consumer: FrameConsumer, n: int, timeout_s: float = 30.0, ack: bool = True):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for f in consumer.poll(timeout_ms=500):
            got.append(f)
            if ack:
                consumer.ack(f)
    return got


def _read_all(bootstrap, topic, n, timeout_s=20.0):
    """Plain, group-less read of a topic (partition 0) from the start."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            out.extend(recs)
    c.close()
    return out


def _committed(bootstrap, group, topic, partition=0):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return c.committed(TopicPartition(topic, partition))
    finally:
        c.close()


@pytest.mark.integration
def test_publish_then_consume_a_real_clip_complete_and_in_order(kafka_broker, media):
    clip = media("single_face.mp4")
    topic = "frames-" + uuid.uuid4().hex[:8]
    seen = []
    t0 = 1_700_000_000_000
    stats = publish(clip, kafka_broker, topic, session="clip-1", jpeg_quality=90,
                    start_ts_ms=t0, progress=lambda i, total: seen.append((i, total)))
    assert stats.frames == 72 and (stats.width, stats.height) == (640, 360)
    assert seen[-1] == (72, 72) and len(seen) == 72
    cfg = _cfg(kafka_broker, topic)
    t = time.perf_counter()
    with FrameConsumer(cfg) as c:
        got = _consume(c, 72)
        t_consume = time.perf_counter() - t
        assert c.commit() == {c.assignment().pop(): 72}
        assert c.stats.dead_lettered == 0
        lag = c.lag()  # tansu's end offsets are approximate: only shape and sign here
        assert set(lag) == c.assignment() and all(v >= 0 for v in lag.values())
    print(f"\npublish {stats.frames_per_s:.0f} frames/s; consume incl. group join "
          f"{72 / t_consume:.0f} frames/s ({t_consume:.2f} s)")
    assert [f.envelope.seq for f in got] == list(range(72))
    assert [f.offset for f in got] == list(range(72))
    pts = [round(i * 1000 / 30) for i in range(72)]
    assert [f.envelope.pts_ms for f in got] == pts
    assert [f.envelope.ts_ms for f in got] == [t0 + p for p in pts]
    assert {(f.envelope.session_id, f.envelope.codec, f.envelope.width, f.envelope.height,
             f.envelope.schema_id) for f in got} == {("clip-1", "jpeg", 640, 360, SCHEMA)}
    # pixels: the consumed frame is the clip's frame (RGB), up to JPEG loss
    with av.open(str(clip)) as cont:
        first = next(cont.decode(video=0)).to_ndarray(format="rgb24")
    assert got[0].image.shape == (360, 640, 3)
    assert np.abs(got[0].image.astype(int) - first.astype(int)).mean() < 3.0
    fr = got[5].to_frame()
    assert (fr.session_id, fr.seq, fr.ts_ms, fr.pts_ms) == ("clip-1", 5, t0 + 167, 167)
    assert _committed(kafka_broker, cfg.group_id, topic) == 72


@pytest.mark.integration
def test_publish_resamples_by_pts(kafka_broker, media):
    topic = "frames-" + uuid.uuid4().hex[:8]
    stats = publish(media("single_face.mp4"), kafka_broker, topic, session="s10", fps=10,
                    start_ts_ms=0, max_frames=20)
    assert stats.frames == 20 and stats.last_ts_ms == 1900  # frames 0, 3, 6 ... of 30 fps
    recs = _read_all(kafka_broker, topic, 20)
    assert [int(dict(r.headers)["pts_ms"]) for r in recs] == [100 * i for i in range(20)]


def _bad_messages():
    """(description, key, value, headers, expected error) — produced in this order."""
    good = [encode("s1", i, 1000 + i, np.full((40, 60, 3), 30 * i, np.uint8)) for i in range(8)]
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    big_png = encode("s1", 3, 0, noise, codec="png")
    huge_flat = encode("s1", 3, 0, np.zeros((500, 500, 3), np.uint8))
    k, v, h = good[3]
    return [
        ("good 0", *good[0], None),
        ("seq header not a number", k, v, [(n, b"three" if n == "seq" else x) for n, x in h],
         "bad_header:seq"),
        ("codec header missing", k, v, [(n, x) for n, x in h if n != "codec"],
         "missing_header:codec"),
        ("good 1", *good[1], None),
        ("truncated jpeg", k, v[: len(v) // 3], h, "undecodable_image"),
        ("not an image", k, b"{\"json\": true}" * 10, h, "undecodable_image"),
        ("too many bytes", *big_png, "too_many_bytes"),
        ("too many pixels", *huge_flat, "too_many_pixels"),
        ("good 5", *good[5], None),
        ("out of order", *good[4], "out_of_order_seq"),
        ("replayed", *good[5], "duplicate_seq"),
        ("wrong key", b"s2", good[6][1], good[6][2], "key_mismatch"),
        ("good 7", *good[7], None),
    ]


@pytest.mark.integration
def test_malformed_messages_go_to_the_dlq_with_a_reason(kafka_broker):
    topic = "frames-" + uuid.uuid4().hex[:8]
    cfg = _cfg(kafka_broker, topic, max_message_bytes=100_000, max_pixels=400 * 400)
    ensure_topics(kafka_broker, [topic, cfg.dlq_topic])
    msgs = _bad_messages()
    assert len(msgs[6][2]) > 100_000  # the PNG of noise really is over the byte limit
    prod = make_producer(kafka_broker)
    for _, k, v, h, _ in msgs:
        prod.send(topic, key=k, value=v, headers=h)
    prod.flush()
    prod.close()
    with FrameConsumer(cfg) as c:
        got = _consume(c, 4)
        time.sleep(0.5)
        got += c.poll(timeout_ms=500)  # nothing else may come through
        c.dead_letter.producer.flush()
        assert c.stats.dead_lettered == 9 and c.stats.frames == 4
        assert c.commit() == {c.assignment().pop(): len(msgs)}  # DLQ'd ones count as done
    assert [f.envelope.seq for f in got] == [0, 1, 5, 7]
    dlq = _read_all(kafka_broker, cfg.dlq_topic, 9)
    expected = [(i, m) for i, m in enumerate(msgs) if m[4] is not None]
    assert len(dlq) == len(expected)
    for rec, (offset, (desc, k, v, h, reason)) in zip(dlq, expected):
        hd = dict(rec.headers)
        assert hd["error"].decode() == reason, desc
        assert rec.headers[:len(h)] == list(h), desc  # original headers first, unchanged
        assert (hd["source_topic"], hd["source_partition"], hd["source_offset"]) == \
            (topic.encode(), b"0", str(offset).encode())
        assert rec.key == k
        if reason == "too_many_bytes":  # value over the DLQ copy limit: dropped, length kept
            assert rec.value == b"" and hd["value_dropped"] == str(len(v)).encode()
        else:
            assert rec.value == v, desc


@pytest.mark.integration
def test_commits_only_acknowledged_prefix_and_replays_the_rest(kafka_broker):
    topic = "frames-" + uuid.uuid4().hex[:8]
    cfg = _cfg(kafka_broker, topic)
    ensure_topics(kafka_broker, [topic])
    prod = make_producer(kafka_broker)
    img = np.zeros((16, 16, 3), np.uint8)
    for i in range(8):
        k, v, h = encode("s", i, i, img)
        if i == 5:
            v = b"garbage"  # goes to the DLQ, acked by the DLQ delivery
        prod.send(topic, key=k, value=v, headers=h)
    prod.flush()
    prod.close()
    c = FrameConsumer(cfg)
    got = _consume(c, 7, ack=False)
    assert [f.offset for f in got] == [0, 1, 2, 3, 4, 6, 7]
    c.dead_letter.producer.flush()
    for f in got[:2] + got[3:5]:         # 0, 1, 3, 4 done; 2 still in Redis flight
        c.ack(f)
    tp = got[0].tp
    assert c.commit() == {tp: 2}
    c.ack(got[2])                          # 2 done: 0..5 (5 via DLQ) acknowledged
    c.ack(got[6])                          # 7 done, 6 not
    assert c.commit() == {tp: 6}
    assert c.commit() == {}                # nothing new
    c.close()                              # crash-like: 6 never acknowledged
    assert _committed(kafka_broker, cfg.group_id, topic) == 6
    with FrameConsumer(cfg) as c2:         # same group: replays from 6, 6 and 7 again
        again = _consume(c2, 2)
    assert [f.offset for f in again] == [6, 7]
    assert [f.envelope.seq for f in again] == [6, 7]


@pytest.mark.integration
@pytest.mark.slow
def test_rebalance_commits_acknowledged_offsets_of_revoked_partitions(fresh_tansu):
    """Runs in a fresh interpreter: after an in-process Ray driver (the e2e tests) has run and
    shut down in this pytest process, kafka-python's group rebalance stalled here (B never got a
    partition in 90 s) although it works in a clean process and inside Ray workers."""
    code = ("from tests.pipeline.test_kafka_io import check_rebalance_commits; "
            f"check_rebalance_commits({fresh_tansu!r})")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]


def check_rebalance_commits(kafka_broker: str) -> None:
    """A joins and takes both partitions, acknowledges 2 of 3 frames of each; B joins: A commits
    its acknowledged prefix on revocation, so B resumes there, not at 0."""
    topic = "frames-" + uuid.uuid4().hex[:8]
    cfg = _cfg(kafka_broker, topic)
    ensure_topics(kafka_broker, [topic], partitions=2)
    prod = make_producer(kafka_broker)
    img = np.zeros((16, 16, 3), np.uint8)
    for j, s in enumerate("abcd"):  # two sessions per partition
        for i in range(3):
            k, v, h = encode(s, i, i, img)
            prod.send(topic, key=k, value=v, headers=h, partition=j % 2)
    prod.flush()
    prod.close()
    # tansu lets a rebalance run to the rebalance timeout (= max_poll_interval_ms): keep it short
    kw = {"max_poll_interval_ms": 7000}
    a = FrameConsumer(cfg, client_id="A", consumer_kw=kw)
    got = _consume(a, 12, ack=False)
    assert len(got) == 12 and len(a.assignment()) == 2
    by_tp = {}
    for f in got:
        by_tp.setdefault(f.tp, []).append(f)
    for tp, fs in by_tp.items():  # acknowledge the first two of each partition only
        for f in fs[:2]:
            a.ack(f)
    b = FrameConsumer(cfg, client_id="B", consumer_kw=kw)  # joining triggers a rebalance
    deadline = time.monotonic() + 90  # generous: a loaded machine slows the group protocol
    b_got = []
    # each partition holds 6 frames, 2 acknowledged by A: B should get the other 4 of each
    while time.monotonic() < deadline and (not b_got or len(b_got) < 4 * len(b.assignment())):
        a.poll(timeout_ms=200)  # A takes part in the rebalance from its poll loop
        b_got += b.poll(timeout_ms=200)
    assert b.assignment(), "B got no partition"
    # normally one partition each; under load A may miss the rebalance and lose both
    assert not (a.assignment() & b.assignment())
    got_by_tp = {}
    for f in b_got:
        got_by_tp.setdefault(f.tp, []).append(f.offset)
    # A committed its acknowledged prefix of each partition it lost: B resumes there, not at 0
    assert got_by_tp == {tp: [f.offset for f in by_tp[tp][2:]] for tp in b.assignment()}
    moved = next(iter(b.assignment()))
    assert not a.ack(by_tp[moved][2])  # a late ack for a revoked partition is ignored
    a.close(commit=False)
    b.close(commit=False)


@pytest.mark.integration
def test_dead_letter_keeps_headers_and_adds_error(kafka_broker):
    topic = "dlq-" + uuid.uuid4().hex[:8]
    ensure_topics(kafka_broker, [topic])

    class Rec:
        topic, partition, offset, key, value = "src", 3, 41, b"k", b"v" * 10
        headers = [("schema", b"x"), ("seq", b"1")]

    prod = make_producer(kafka_broker)
    dl = DeadLetter(prod, topic)
    dl.send(Rec, "bad_header:schema", "because").get(timeout=10)
    prod.close()
    [rec] = _read_all(kafka_broker, topic, 1)
    assert rec.headers == [("schema", b"x"), ("seq", b"1"), ("error", b"bad_header:schema"),
                           ("error_detail", b"because"), ("source_topic", b"src"),
                           ("source_partition", b"3"), ("source_offset", b"41")]
    assert (rec.key, rec.value) == (b"k", b"v" * 10)
    assert dl.counts == {"bad_header:schema": 1}


# --------------------------------------------------------------------------------------------
# CLI (mounted the way the main app mounts it)

kafka_cli = typer.Typer()
kafka_cli.add_typer(_kafka_cli)


@kafka_cli.command()
def _other() -> None:  # a second command keeps `publish` a subcommand
    pass


def test_cli_missing_file_is_one_clear_line(tmp_path):
    res = CliRunner().invoke(kafka_cli, ["publish", str(tmp_path / "nope.mp4")])
    assert res.exit_code == 2
    assert "no such video file" in res.output and "Traceback" not in res.output


def test_cli_unreachable_broker_is_one_clear_line(media):
    from tests.conftest import free_port

    t = time.monotonic()
    res = CliRunner().invoke(kafka_cli, ["publish", str(media("single_face.mp4")),
                                         "--bootstrap", f"127.0.0.1:{free_port()}",
                                         "--connect-timeout", "2"])
    assert res.exit_code == 3, res.output
    assert "no Kafka broker answered" in res.output and "Traceback" not in res.output
    assert time.monotonic() - t < 30


def test_publish_raises_broker_unavailable(media):
    from tests.conftest import free_port

    with pytest.raises(BrokerUnavailable):
        publish(media("single_face.mp4"), f"127.0.0.1:{free_port()}", "t", open_timeout_s=2)


@pytest.mark.integration
def test_cli_publish_reports_frames(kafka_broker, media):
    topic = "frames-" + uuid.uuid4().hex[:8]
    res = CliRunner().invoke(kafka_cli, [
        "publish", str(media("single_face.mp4")), "--bootstrap", kafka_broker, "--topic", topic,
        "--session", "cli-1", "--fps", "5", "--max-frames", "6", "--jpeg-quality", "70"])
    assert res.exit_code == 0, res.output
    assert "6 frames" in res.output and "cli-1" in res.output
    recs = _read_all(kafka_broker, topic, 6)
    assert [int(dict(r.headers)["seq"]) for r in recs] == list(range(6))
    img = cv2.imdecode(np.frombuffer(recs[0].value, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (360, 640, 3)



@pytest.mark.parametrize(("over", "want"), [
    ({}, {"security_protocol": "PLAINTEXT"}),
    ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "p",
      "sasl_mechanism": "SCRAM-SHA-512", "ssl_cafile": "/ca.pem"},
     {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
      "sasl_plain_username": "u", "sasl_plain_password": "p", "ssl_cafile": "/ca.pem",
      "ssl_check_hostname": True}),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": "p",
      "sasl_mechanism": "SCRAM-SHA-256"},
     {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
      "sasl_plain_username": "u", "sasl_plain_password": "p"}),
    ({"security_protocol": "SSL", "ssl_cafile": "/ca.pem", "ssl_certfile": "/c.pem",
      "ssl_keyfile": "/k.pem", "ssl_password": "kp", "ssl_check_hostname": False},
     {"security_protocol": "SSL", "ssl_cafile": "/ca.pem", "ssl_certfile": "/c.pem",
      "ssl_keyfile": "/k.pem", "ssl_password": "kp", "ssl_check_hostname": False}),
])
def test_security_settings_reach_every_kafka_client(over, want):
    """The config maps onto kafka-python's settings, and every one is a setting the consumer,
    producer and admin client know (a real SCRAM / mTLS broker is not part of the tests)."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    from affectstream.pipeline.config import KafkaConfig
    from affectstream.pipeline.kafka.client import client_kwargs

    kw = client_kwargs(KafkaConfig(**over))
    assert kw.pop("bootstrap_servers") == ["127.0.0.1:9092"]
    assert kw == want
    for cls in (KafkaConsumer, KafkaProducer, KafkaAdminClient):
        assert set(kw) <= set(cls.DEFAULT_CONFIG), cls.__name__


def test_unknown_sasl_mechanism_is_a_config_error():
    from pydantic import ValidationError

    from affectstream.pipeline.config import KafkaConfig

    with pytest.raises(ValidationError):
        KafkaConfig(sasl_mechanism="GSSAPI-X")


@pytest.mark.integration
def test_delivery_attempts_count_unfinished_steps(redis_url):
    import redis

    from affectstream.pipeline.kafka.poison import DeliveryAttempts

    a = DeliveryAttempts(redis.Redis.from_url(redis_url), prefix="t-" + str(time.time_ns()))
    assert a.begin("t", 0, 7) == 1
    a.step_done("t", 0, 7)                      # decoded fine: nothing left
    assert a.count("t", 0, 7) == 0 and not a.r.exists(a.key("t", 0))
    assert a.begin("t", 0, 7) == 1             # face-tracking began ... and the process died
    assert a.begin("t", 0, 7) == 2             # next delivery: one crash is on record
    a.step_done("t", 0, 7)
    assert a.begin("t", 0, 7) == 2 and a.count("t", 0, 7) == 2
    a.finish("t", 0, 7)
    assert a.count("t", 0, 7) == 0
    assert 0 < a.r.ttl(a.key("t", 0)) or not a.r.exists(a.key("t", 0))
