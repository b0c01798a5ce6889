"""Metrics produced in other processes reach /metrics through Redis, counted once."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from affectstream.pipeline.metrics import aggregate as metrics_agg

pytestmark = pytest.mark.integration


def _registry():
    reg = CollectorRegistry()
    c = Counter("affectstream_things", "Things.", ["kind"], registry=reg)
    h = Histogram("affectstream_wait_ms", "Waits.", buckets=(1, 10), registry=reg)
    g = Gauge("affectstream_lag_messages", "Lag.", ["partition"], registry=reg)
    Counter("other_total_thing", "Not ours.", registry=reg).inc()
    return reg, c, h, g


def _value(text: str, line_start: str) -> float:
    [line] = [ln for ln in text.splitlines() if ln.startswith(line_start + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_two_processes_push_and_the_api_renders_totals(redis_url, monkeypatch):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    monkeypatch.setattr(metrics_agg, "_pushing", False)
    # two "actor processes", each with its own registry
    reg_a, ca, ha, ga = _registry()
    reg_b, cb, hb, gb = _registry()
    pa = metrics_agg.RedisMetricsPusher(r, instance="a", registry=reg_a)
    pb = metrics_agg.RedisMetricsPusher(r, instance="b", registry=reg_b)
    monkeypatch.setattr(metrics_agg, "_pushing", False)  # the test process renders like the API
    ca.labels(kind="x").inc(3)
    ha.observe(5)
    ga.labels(partition="0").set(7)
    pa.push()
    ca.labels(kind="x").inc(2)          # increases after a push are sent once, as a delta
    cb.labels(kind="y").inc()
    hb.observe(0.5)
    gb.labels(partition="0").set(4)
    gb.labels(partition="1").set(9)
    assert pa.push() == 1 and pb.push() > 0
    assert pa.push() == 0               # nothing new
    # the API process: its own registry has the families, values come from Redis
    reg_api, c_api, _, _ = _registry()
    c_api.labels(kind="x").inc(10)      # a local increment is added
    body, ctype = metrics_agg.render_merged(r, registry=reg_api)
    text = body.decode()
    assert ctype.startswith("text/plain")
    assert _value(text, 'affectstream_things_total{kind="x"}') == 15
    assert _value(text, 'affectstream_things_total{kind="y"}') == 1
    assert _value(text, "affectstream_wait_ms_count") == 2
    assert _value(text, 'affectstream_wait_ms_bucket{le="1.0"}') == 1
    assert _value(text, 'affectstream_wait_ms_bucket{le="10.0"}') == 2
    assert _value(text, 'affectstream_wait_ms_bucket{le="+Inf"}') == 2
    assert _value(text, "affectstream_wait_ms_sum") == 5.5
    assert _value(text, 'affectstream_lag_messages{partition="0"}') == 7   # one owner: max
    assert _value(text, 'affectstream_lag_messages{partition="1"}') == 9
    assert "# TYPE affectstream_things_total counter" in text
    assert "other_total_thing" in text  # other families pass through
    # a pushing process renders only what it pushed (its local values are in Redis already)
    monkeypatch.setattr(metrics_agg, "_pushing", True)
    text = metrics_agg.render_merged(r, registry=reg_api)[0].decode()
    assert _value(text, 'affectstream_things_total{kind="x"}') == 5


def test_redis_down_still_renders_local_values():
    from tests.conftest import free_port

    reg, c, _, _ = _registry()
    c.labels(kind="x").inc()
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5,
                       retry=None, decode_responses=True)
    text = metrics_agg.render_merged(dead, registry=reg)[0].decode()
    assert "affectstream_things_total" in text
