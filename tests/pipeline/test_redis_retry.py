"""The shared Redis outage policy: waits out an outage, fails clearly past the tolerance."""

from __future__ import annotations

import time

import pytest
import redis

from affectstream.pipeline.store.redis_retry import REDIS_WAITING, OutageState, RedisOutage, call_redis


class Flaky:
    """Fails with ``err`` for its first ``n`` calls, then returns the call count."""

    def __init__(self, n: int, err: Exception) -> None:
        self.n, self.err, self.calls = n, err, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.n:
            raise self.err
        return self.calls


@pytest.mark.parametrize("err", [redis.ConnectionError("refused"), redis.TimeoutError("slow"),
                                 redis.BusyLoadingError("loading")])
def test_outage_is_waited_out_and_state_shown(err):
    st = OutageState()
    seen = []

    def op():
        seen.append(st.snapshot()["waiting"])
        return f()

    f = Flaky(3, err)
    assert call_redis(op, what="t", tolerance_s=30, state=st) == 4
    assert seen == [False, True, True, True]  # waiting from the first failure on
    assert st.snapshot() == {"waiting": False, "waiting_s": 0.0, "attempts": 0, "last_error": ""}
    assert REDIS_WAITING._value.get() == 0


def test_past_the_tolerance_it_fails_with_one_line():
    f = Flaky(10**6, redis.ConnectionError("Connection refused"))
    t0 = time.monotonic()
    with pytest.raises(RedisOutage, match=r"Redis unreachable for \d+ s during write .*"
                       r"outage_tolerance_s = 1 s\): ConnectionError: Connection refused"):
        call_redis(f, what="write", tolerance_s=1.0, state=OutageState())
    assert 1.0 <= time.monotonic() - t0 < 10 and f.calls >= 3


def test_other_errors_are_not_outages():
    f = Flaky(1, redis.ResponseError("ERR The ID specified in XADD is equal or smaller"))
    with pytest.raises(redis.ResponseError):
        call_redis(f, what="w", tolerance_s=30, state=OutageState())
    assert f.calls == 1


def test_abort_stops_waiting_with_the_original_error():
    f = Flaky(10**6, redis.ConnectionError("down"))
    with pytest.raises(redis.ConnectionError, match="down"):
        call_redis(f, what="w", tolerance_s=60, abort=lambda: f.calls >= 2, state=OutageState())
    assert f.calls == 2


def test_zero_tolerance_fails_at_once():
    with pytest.raises(RedisOutage, match="outage_tolerance_s is 0"):
        call_redis(Flaky(1, redis.ConnectionError("x")), what="w", tolerance_s=0)


@pytest.mark.integration
def test_against_a_real_stopped_port():
    from tests.conftest import free_port

    c = redis.Redis(port=free_port(), socket_connect_timeout=1)
    with pytest.raises(RedisOutage, match="ConnectionError"):
        call_redis(c.ping, what="ping", tolerance_s=0.5, state=OutageState())
