"""``affectstream run --json --overlay`` as a user runs it (a subprocess; one stream: placed in
that process), and the
global flags: ``--version``, ``--quiet``, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

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
