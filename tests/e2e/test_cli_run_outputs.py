"""``affectstream run --json --overlay`` as a user runs it (a subprocess; one stream: placed in
that process), and the
global flags: ``--version``, ``--quiet``, one-line errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import av
import pytest

import affectstream

CLI = [sys.executable, "-m", "affectstream.pipeline.cli.main"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=420)


@pytest.mark.e2e
@pytest.mark.slow
def test_run_json_and_overlay_quietly(media, redis_url, tmp_path):
    clip, ov = media("single_face.mp4"), tmp_path / "sf.mp4"
    r = _cli("--quiet", "run", str(clip), "-s", "sf", "--redis-url", redis_url,
             "--analysis-fps", "10", "--json", "--overlay", str(ov))
    assert r.returncode == 0, r.stderr[-3000:]
    (res,) = json.loads(r.stdout)  # stdout is exactly one JSON document
    assert res["session_id"] == "sf" and res["ok"] and res["frames_analysed"] == 24
    assert res["tracks"] == 1 and res["points_written"] == 24 and res["frames_per_s"] > 0
    assert res["placement"] == "local" and not res["warm_stream_worker"]
    assert "INFO" not in r.stderr and "Started Serve" not in r.stderr, r.stderr
    with av.open(str(ov)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 72  # the input's frames, not the 24 analysed


@pytest.mark.e2e
@pytest.mark.slow
def test_ctrl_c_stops_a_local_run_cleanly(media, redis_url):
    """Ctrl-C while frames flow: exit 130 at once, no asyncio noise, what was written stays and
    the session reads ``interrupted``."""
    import redis

    from affectstream.pipeline.store.redis_store import Keys

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    key = Keys().track("cc", 1)
    run = subprocess.Popen(CLI + ["run", str(media("WolfgangLanger_Pexels.mp4")), "-s", "cc",
                                  "--redis-url", redis_url, "-c", "fast"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not r.exists(key) or r.xlen(key) == 0:
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-2000:]
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr[-2000:]
    assert "Task was destroyed" not in stderr + stdout and "Traceback" not in stderr, stderr
    assert r.hget(Keys().meta("cc"), "status") == "interrupted"
    assert 0 < r.xlen(key) < 472  # the points written before the interrupt stay


def test_version_and_bad_input_errors_are_one_line(tmp_path):
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"affectstream {affectstream.__version__}"
    r = _cli("--quiet", "run", str(tmp_path / "missing.mp4"), "--redis-url",
             "redis://127.0.0.1:1/0")
    assert r.returncode == 1 and r.stderr.strip() == \
        f"error: video file not found: {tmp_path / 'missing.mp4'}"
    r = _cli("run", "a.mp4", "b.mp4", "--overlay", str(tmp_path / "o.mp4"))
    assert r.returncode == 2 and "--overlay needs exactly one source" in r.stderr
    r = _cli("--log-level", "loud", "sessions")
    assert r.returncode == 2 and "--log-level" in r.stderr
