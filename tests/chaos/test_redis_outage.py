"""``affectstream run`` on a real clip against faults: Redis gone for 30 s mid-run (killed, then
restarted on the same port from its AOF), and where its Ray cluster listens meanwhile.

One run serves both tests (a run costs tens of seconds on a small machine): while Redis is down
the pipeline is stalled with every Ray process up, which is when the sockets are inspected.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis

from affectstream.pipeline.store.redis_server import find_redis_server
from affectstream.pipeline.store.redis_store import Keys
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

OUTAGE_S = 30.0
SID = "outage"
FRAMES = 72  # single_face.mp4: 72 frames, one face in each -> one track, 72 points


def _start_redis(exe: str, port: int, d: Path) -> subprocess.Popen:
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    c = redis.Redis(port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            if c.ping():
                return proc
        except (redis.ConnectionError, redis.BusyLoadingError):
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


def _listening(root: psutil.Process) -> list[tuple[str, str, int]]:
    """``(process name, ip, port)`` of every listening TCP socket of ``root``'s descendants."""
    pids = {}
    for p in root.children(recursive=True):
        try:
            pids[p.pid] = p.name()
        except psutil.Error:
            pass
    return [(pids[c.pid], c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def _is_loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(a, "ipv4_mapped", None)
    return (mapped or a).is_loopback


@pytest.fixture(scope="module")
def outage_run(tmp_path_factory, media):
    """Run the CLI on a real clip; kill Redis at the first stored point, keep it down 30 s,
    restart it from its AOF; record the Ray sockets seen meanwhile."""
    exe = find_redis_server()
    port = free_port()
    d = tmp_path_factory.mktemp("redis-aof")
    srv = _start_redis(exe, port, d)
    url = f"redis://127.0.0.1:{port}/0"
    r = redis.Redis(port=port, decode_responses=True)
    key = Keys().track(SID, 1)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    run = subprocess.Popen(
        [sys.executable, "-m", "affectstream.pipeline.cli.main", "run", str(media("single_face.mp4")),
         "--session", SID, "--redis-url", url, "--placement", "ray"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env)
    out: dict = {"sockets": []}
    try:
        deadline = time.monotonic() + 300
        while r.exists(key) == 0 or r.xlen(key) == 0:
            assert run.poll() is None, run.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no point written in 300 s"
            time.sleep(0.05)
        srv.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
        srv.wait(10)
        t_down = time.monotonic()
        time.sleep(2.0)
        assert run.poll() is None, "run ended while Redis was down: " + run.communicate()[1][-3000:]
        out["sockets"] = _listening(psutil.Process(run.pid))
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
        assert run.poll() is None, "run gave up on Redis: " + run.communicate()[1][-3000:]
        srv = _start_redis(exe, port, d)
        stdout, stderr = run.communicate(timeout=300)
        out.update(rc=run.returncode, stdout=stdout, stderr=stderr,
                   ids=[eid for eid, _ in r.xrange(key)],
                   tracks=r.zrange(Keys().tracks(SID), 0, -1),
                   status=r.hget(Keys().meta(SID), "status"))
        yield out
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(30)
        srv.terminate()
        srv.wait(10)


def test_no_ray_port_listens_beyond_loopback(outage_run):
    socks = outage_run["sockets"]
    names = {n for n, _, _ in socks}
    # the Ray cluster of the run was up and inspected: GCS, raylet and workers listen
    assert {"gcs_server", "raylet"} <= names, socks
    assert [s for s in socks if not _is_loopback(s[1])] == []


def test_run_survives_30s_redis_outage_with_every_point_stored_once(outage_run):
    o = outage_run
    assert o["rc"] == 0, o["stderr"][-3000:]
    assert "waiting for Redis" in o["stderr"]
    assert "Redis is back" in o["stderr"]
    # every frame's point is in Redis once: 72 distinct stream IDs (the ID is the capture time,
    # so a doubled point could not be stored twice; one missing would leave fewer)
    assert o["tracks"] == ["1"]
    assert len(o["ids"]) == FRAMES == len(set(o["ids"]))
    assert f"{FRAMES} frames analysed" in o["stdout"]
    assert o["status"] == "ended"
