"""Crash the whole service process (SIGKILL of `affectstream serve`, Ray and all) mid-stream,
three times, restart it each time: every expected point exactly once. Then a SIGTERM stops it
cleanly with every offset committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis
import yaml

from tests.conftest import free_port
from tests.pipeline.kafka_clips import (clip_messages, expected_points, fraction, interleave,
                                        produce, stored_points, wait_points)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]


def _serve(cfg_path, bootstrap, redis_url, port, log_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "affectstream.pipeline.cli.main", "serve", "--config", str(cfg_path),
         "--bootstrap", bootstrap, "--redis-url", redis_url, "--port", str(port)],
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env=env,
        start_new_session=True)  # its own process group: SIGKILL takes Ray down with it


def _tail(path, n=40):
    return "\n".join(open(path, errors="replace").read().splitlines()[-n:])


def _committed(bootstrap, group, topic, partitions):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        c.close()


def test_killing_the_service_process_mid_stream_loses_and_doubles_nothing(
        kafka_broker, redis_server, media, tmp_path):
    from affectstream.operators.facetrack import FaceTrackStage
    from affectstream.pipeline.config import load_config
    from affectstream.pipeline.kafka.client import ensure_topics

    tag = uuid.uuid4().hex[:6]
    conf = {"kafka": {"topic": f"crash-{tag}", "dlq_topic": f"crash-{tag}.dlq",
                      "group_id": f"crash-{tag}", "consumers": 1, "session_timeout_ms": 6000,
                      "heartbeat_interval_ms": 2000, "max_poll_interval_ms": 10000,
                      "checkpoint_interval_ms": 500, "commit_interval_ms": 500},
            "api": {"host": "127.0.0.1"}, "ray_num_cpus": 2}
    cfg_path = tmp_path / "service.yaml"
    cfg_path.write_text(yaml.safe_dump(conf))
    cfg = load_config(cfg_path)
    base = FaceTrackStage.from_config(cfg)
    clips = {f"p1-{tag}": "face_noface.mov", f"p2-{tag}": "single_face.mp4",
             f"p3-{tag}": "noface_face.mov", f"p4-{tag}": "single_face.mp4"}
    msgs = {s: clip_messages(str(media(c)), s, 15, 1_700_000_000_000 + 11 * i)
            for i, (s, c) in enumerate(clips.items())}
    want = {s: expected_points(base, m) for s, m in msgs.items()}
    n_want = {s: len(w) for s, w in want.items()}
    ensure_topics(kafka_broker, [cfg.kafka.topic], partitions=2)
    ends = produce(kafka_broker, cfg.kafka.topic, interleave(*msgs.values()))
    r = redis.Redis.from_url(redis_server, decode_responses=True)
    replays = ("affectstream_frames_replay_skipped_total|{}",
               "affectstream_timeline_points_duplicate_total|{}")

    def replayed():  # cluster-wide totals the consumers push to Redis (pipeline.metrics.aggregate)
        return sum(float(v or 0) for v in r.hmget("affect:metrics", replays))

    replayed0 = replayed()

    def progress():
        return fraction({s: len(stored_points(r, s)) for s in want}, n_want)

    procs = []
    try:
        for i, cut in enumerate((0.15, 0.4, 0.65)):
            log = tmp_path / f"serve-{i}.log"
            p = _serve(cfg_path, kafka_broker, redis_server, free_port(), log)
            procs.append(p)
            deadline = time.monotonic() + 300
            while progress() < cut:
                assert p.poll() is None, f"serve exited {p.returncode}:\n{_tail(log)}"
                assert time.monotonic() < deadline, f"no progress to {cut:.0%}:\n{_tail(log)}"
                time.sleep(0.05)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)
            print(f"\nkilled the service at {progress():.0%} (cut {cut:.0%})")
        log = tmp_path / "serve-final.log"
        p = _serve(cfg_path, kafka_broker, redis_server, free_port(), log)
        procs.append(p)
        counts = wait_points(r, n_want, timeout_s=300, settle_s=3)
        for s, w in want.items():
            got = stored_points(r, s)
            assert len(got) == len(set(got)) == counts[s], s            # nothing doubled
            assert set(got) == w, (s, sorted(set(got) ^ w)[:10])        # nothing lost
        time.sleep(2)
        assert replayed() > replayed0, "the kills forced no replay: nothing was tested"
        # a clean stop (SIGTERM) drains, checkpoints and commits everything read
        p.send_signal(signal.SIGTERM)
        assert p.wait(120) == 0, _tail(log)
        assert "service stopped" in _tail(log)
        assert _committed(kafka_broker, cfg.kafka.group_id, cfg.kafka.topic, ends) == ends
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(30)
