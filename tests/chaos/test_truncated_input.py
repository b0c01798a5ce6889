"""``affectstream run`` on a cut file: the frames read are analysed and stored, then it exits
non-zero with one line saying how many frames were read."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from affectstream.pipeline.store.redis_store import Keys

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]


def test_truncated_mp4_exits_nonzero_saying_how_many_frames_were_read(media, tmp_path,
                                                                        redis_url):
    data = media("WolfgangLanger_Pexels.mp4").read_bytes()  # 472 frames, index at the front
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * 0.3)])  # its first 137 frames survive
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    r = subprocess.run([sys.executable, "-m", "affectstream.pipeline.cli.main", "run", str(cut),
                        "--session", "cut", "--redis-url", redis_url],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "truncated or corrupt: 137 of 472 frames read" in errors[0], (
        r.stderr[-3000:])
    rc = redis.Redis.from_url(redis_url, decode_responses=True)
    assert rc.hget(Keys().meta("cut"), "status") == "failed"
    stored = sum(rc.xlen(Keys().track("cut", int(t)))
                 for t in rc.zrange(Keys().tracks("cut"), 0, -1))
    assert 0 < stored <= 137  # what was read was analysed and kept (one face per frame at most)
