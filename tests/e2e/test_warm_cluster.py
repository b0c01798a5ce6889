"""``affectstream up`` keeps Ray and the inference deployment warm; ``run`` joins it (no Ray
start, no Serve deploy) and leaves it running; ``down`` stops exactly its processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import redis

from affectstream.pipeline.runtime.warm import processes_of
from affectstream.pipeline.store.redis_store import Keys, TimelineStore
from tests.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _cli(env: dict, *args: str, py: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *py, "-m", "affectstream.pipeline.cli.main", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def _imported(stderr: str) -> set[str]:
    """Modules a ``python -X importtime`` run imported (its stderr's table)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def _json_tail(stdout: str) -> list:
    """The JSON list ``run --json`` prints after its progress lines."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("["))
    return json.loads("\n".join(lines[start:]))


def test_up_run_joins_down(tmp_path, media, redis_url: str) -> None:
    env = dict(os.environ, AFFECTSTREAM_STATE_DIR=str(tmp_path))
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    up = _cli(env, "up", "--port", str(port), "--num-cpus", "2", "--json")
    try:
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        assert info["address"] == f"127.0.0.1:{port}" and info["reused"] is False
        assert info["stream_workers"] == 2
        state = json.loads((tmp_path / "warm-cluster.json").read_text())
        temp_dir = state["temp_dir"]
        assert processes_of(temp_dir), "no Ray process of the warm cluster"
        again = _cli(env, "up", "--port", str(port), "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["reused"] is True

        clip = str(media("single_face.mp4"))
        store = TimelineStore(redis.Redis.from_url(redis_url, decode_responses=True))
        for sid in ("warm-a", "warm-b"):  # the second run joins the same, still-running cluster
            r = _cli(env, "run", clip, "--session", sid, "--redis-url", redis_url,
                     "--max-frames", "20", "--json", py=("-X", "importtime"))
            assert r.returncode == 0, r.stderr + r.stdout
            # the joining driver loads neither torch nor Ray Serve (the pooled actor has both)
            mods = _imported(r.stderr)
            assert "ray" in mods and not {m for m in mods if m == "torch" or
                                          m.startswith(("torch.", "ray.serve"))}, sorted(mods)
            assert f"joining the warm cluster at 127.0.0.1:{port}" in r.stdout + r.stderr
            res = _json_tail(r.stdout)[0]
            # a pooled stream actor (networks loaded by `up`) served it, and went back to the
            # pool: the second run gets one too, with a blank tracker (track 1 again)
            assert res["warm_stream_worker"] is True and res["tracks"] == 1, res
            assert sum(store.count_points(sid).values()) == 20
            assert set(store.count_points(sid)) == {1}
            assert processes_of(temp_dir), "run stopped the warm cluster"
        # three streams at once: two pooled actors, the third starts its own
        r = _cli(env, "run", clip, clip, clip, "-s", "w1", "-s", "w2", "-s", "w3",
                 "--redis-url", redis_url, "--max-frames", "10", "--json")
        assert r.returncode == 0, r.stderr + r.stdout
        res = _json_tail(r.stdout)
        assert sorted(x["warm_stream_worker"] for x in res) == [False, True, True]
        assert all(x["points_written"] == 10 for x in res), res
        # Ctrl-C in a joined run: the stream ends `interrupted` and its pooled actor goes back
        # to the pool (before, it stayed leased for good): two streams get two pooled actors
        rc = redis.Redis.from_url(redis_url, decode_responses=True)
        run = subprocess.Popen(
            [sys.executable, "-m", "affectstream.pipeline.cli.main", "run",
             str(media("WolfgangLanger_Pexels.mp4")), "-s", "w-int", "--redis-url", redis_url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        while not rc.exists(Keys().track("w-int", 1)):
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()
            time.sleep(0.02)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 130 and "Traceback" not in err, err
        assert rc.hget(Keys().meta("w-int"), "status") == "interrupted"
        r = _cli(env, "run", clip, clip, "-s", "w4", "-s", "w5", "--redis-url", redis_url,
                 "--max-frames", "5", "--json")
        assert r.returncode == 0, r.stderr + r.stdout
        assert [x["warm_stream_worker"] for x in _json_tail(r.stdout)] == [True, True]
        # bench joins too, and its CPU meter counts the warm cluster's workers (retitled
        # "ray::…", found as the raylet's children): FaceMesh alone costs > 3 ms per frame
        out = tmp_path / "curve.json"
        b = _cli(env, "--quiet", "bench-curve", clip, "--streams", "1", "--max-frames", "40",
                 "--redis-url", redis_url, "-o", str(out))
        assert b.returncode == 0, b.stderr + b.stdout
        row = json.loads(out.read_text())["rows"][0]
        assert row["warm_cluster"] is True and row["cpu_ms_per_frame"] > 3.0, row
    finally:
        # every process of the cluster, the retitled agents and workers included
        procs = processes_of(temp_dir)
        titles = {" ".join(p.cmdline()) for p in procs}
        down = _cli(env, "down")
    assert any(t.startswith("ray::") for t in titles), titles  # the retitled ones are counted
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not (tmp_path / "warm-cluster.json").exists()
    _, alive = psutil.wait_procs(procs, timeout=15)
    assert alive == [], [p.pid for p in alive]  # none orphaned
    assert processes_of(temp_dir) == []
    assert "no warm cluster" in _cli(env, "down").stdout
