"""One real service for the chaos tests: a tansu broker, a redis-server, Ray Serve with the real
models and one consumer actor on a one-partition topic (so its memory and the DLQ order are
observable). The config narrows what the defaults leave open so every DLQ reason can be hit:
a 1 MB message limit and a ts_ms window of 10 years around the broker timestamp."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import redis

from tests.conftest import free_port

T0 = 1_700_000_000_000
MAX_BYTES = 1 << 20
SKEW_MS = 10 * 365 * 24 * 3600 * 1000


@pytest.fixture(scope="module")  # one per module: test_secrets.py starts a service of its own,
def chaos_service(kafka_broker, redis_server):  # and Serve's HTTP proxy must be free for it
    from affectstream.pipeline.runtime import dag
    from affectstream.pipeline.config import load_config
    from affectstream.pipeline.service.lifecycle import start_service

    tag = uuid.uuid4().hex[:8]
    cfg = load_config("service", overrides={
        "kafka": {"bootstrap": kafka_broker, "topic": f"chaos-{tag}",
                  "dlq_topic": f"chaos-{tag}.dlq", "group_id": f"chaos-{tag}", "consumers": 1,
                  "session_timeout_ms": 6000, "heartbeat_interval_ms": 2000,
                  "max_poll_interval_ms": 10000, "checkpoint_interval_ms": 500,
                  "commit_interval_ms": 500, "max_message_bytes": MAX_BYTES,
                  "max_ts_skew_ms": SKEW_MS, "session_idle_s": 4.0},
        "redis": {"url": redis_server, "session_ttl_s": 3600}, "api": {"port": free_port()},
        "ray_num_cpus": 2})
    svc = start_service(cfg)
    try:
        yield svc
    finally:
        try:
            svc.stop()
        finally:
            dag.shutdown()


@pytest.fixture(scope="module")
def chaos_stage(chaos_service):
    from affectstream.operators.facetrack import FaceTrackStage

    return FaceTrackStage.from_config(chaos_service.cfg)


@pytest.fixture()
def r(redis_server):
    return redis.Redis.from_url(redis_server, decode_responses=True)


def metric(url: str, name: str) -> float:
    """Sum of a metric's samples (all label sets) in the API's /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
               if ln.startswith(name + " ") or ln.startswith(name + "{"))


def read_dlq(svc, want: int, match, timeout_s: float = 60.0) -> list:
    """Dead letters of the service's DLQ topic that ``match``, until ``want`` are found."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(svc.cfg.kafka.dlq_topic, bootstrap_servers=svc.cfg.kafka.bootstrap,
                      group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
                      fetch_max_bytes=64 << 20)
    out = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < want and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                out += [x for x in recs if match(x)]
    finally:
        c.close()
    return out


def with_header(msg: tuple, name: str, value: bytes) -> tuple:
    """``msg`` (key, value, headers) with one header replaced (or added)."""
    k, v, h = msg
    h = [(n, x) for n, x in h if n != name] + [(name, value)]
    return k, v, h
