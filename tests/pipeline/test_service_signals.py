"""How the service's main thread waits for a stop request (pure logic, real signals)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from affectstream.pipeline.service.lifecycle import wait_for_stop


def _ray_like_handler(signum, _frame):  # what ray.init installs on the driver's main thread
    raise SystemExit(signum)


def test_a_sigterm_meeting_rays_driver_handler_still_means_stop():
    old = signal.signal(signal.SIGTERM, _ray_like_handler)
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        t0 = time.monotonic()
        wait_for_stop(threading.Event(), lambda: None, every_s=0.05)  # returns, does not exit
        assert time.monotonic() - t0 < 5
    finally:
        signal.signal(signal.SIGTERM, old)


def test_the_event_stops_it_and_handlers_are_taken_back_meanwhile():
    stop, calls = threading.Event(), []
    threading.Timer(0.3, stop.set).start()
    wait_for_stop(stop, lambda: calls.append(1), every_s=0.05)
    assert len(calls) >= 2


def test_other_exits_pass_through():
    def retake():
        raise SystemExit(3)

    with pytest.raises(SystemExit) as e:
        wait_for_stop(threading.Event(), retake, every_s=0.01)
    assert e.value.code == 3
