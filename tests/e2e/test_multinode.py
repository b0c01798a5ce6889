"""The service on a real multi-node Ray cluster of this machine (``k8s/local-cluster.sh``: a head
and two worker nodes, each its own raylet with the labels of ``configs/cluster.yaml``):
``affectstream serve`` joins it through ``RAY_ADDRESS`` and places the consumer and the
inference replicas on different nodes (seen in ``/v1/cluster``). Mid-stream one worker node is
killed (SIGKILL of its raylet, workers and agents at once): the consumer's node (the replica is
placed on the surviving worker and replays from its last commit) or the inference node (the
consumer's inference calls wait for the replica placed on the surviving worker). Every expected
point is stored exactly once, and the API (on the head) keeps answering."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from tests.conftest import free_port
from tests.pipeline.kafka_clips import (clip_messages, expected_points, fraction, interleave,
                                        produce, stored_points, wait_points)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "k8s" / "local-cluster.sh"


def _free_block() -> int:
    """A GCS port P with P..P+399 free on 127.0.0.1 (the cluster's port block), never 6379."""
    for _ in range(50):
        p = random.randrange(20000, 40000, 10)
        ok = True
        for q in (p, p + 1, p + 7, p + 11, p + 21):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", q))
                except OSError:
                    ok = False
                    break
        if ok:
            return p
    pytest.fail("no free port block for the local cluster")


def _cluster(*args: str, port: int, root: Path, timeout: float = 300) -> str:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([str(SCRIPT), *args, "--port", str(port), "--root", str(root)],
                       capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"local-cluster.sh {' '.join(args)}: {r.stderr[-2000:]}"
    return r.stdout


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def _listening_beyond_loopback(root: Path) -> list[tuple[str, str, int]]:
    """``(process name, ip, port)`` of the listening TCP sockets of the cluster's processes
    (every node, its workers and Serve replicas) that are not on a loopback address."""
    import ipaddress

    import psutil

    from affectstream.pipeline.runtime.local_cluster import node_processes

    pids = {}
    for p in node_processes(str(root)):
        try:
            pids[p.pid] = p.name()
        except psutil.Error:
            pass
    assert len(pids) > 10, "the cluster's processes were not found"
    out = []
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            a = ipaddress.ip_address(c.laddr.ip.split("%")[0])
            if not (getattr(a, "ipv4_mapped", None) or a).is_loopback:
                out.append((pids[c.pid], c.laddr.ip, c.laddr.port))
    return out


def _view(url: str) -> dict:
    r = httpx.get(url + "/v1/cluster", timeout=30)
    r.raise_for_status()
    return r.json()


def _where(view: dict, ports: dict[str, str]) -> dict[str, set[str]]:
    """deployment -> names of the nodes where its replicas are RUNNING."""
    by_id = {n["node_id"]: ports.get(n["address"].rsplit(":", 1)[1], "?") for n in view["nodes"]}
    out: dict[str, set[str]] = {}
    for r in view["replicas"]:
        if r["state"] == "RUNNING":
            out.setdefault(r["deployment"], set()).add(by_id.get(r["node_id"], "?"))
    return out


@pytest.mark.parametrize("victim", ["ingest-1", "inference-1"])
def test_killing_a_worker_node_mid_stream_loses_and_doubles_nothing(
        victim, kafka_broker, redis_server, media, tmp_path):
    from affectstream.operators.facetrack import FaceTrackStage
    from affectstream.pipeline.config import load_config
    from affectstream.pipeline.kafka.client import ensure_topics

    tag = uuid.uuid4().hex[:6]
    port = _free_block()
    root = Path(f"/tmp/as-mn-{tag}")  # short: Ray's socket paths live below it
    api_port = free_port()
    base = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    base["kafka"].update({"topic": f"mn-{tag}", "dlq_topic": f"mn-{tag}.dlq",
                          "group_id": f"mn-{tag}", "consumers": 1, "session_timeout_ms": 6000,
                          "heartbeat_interval_ms": 2000, "max_poll_interval_ms": 10000,
                          "checkpoint_interval_ms": 500, "commit_interval_ms": 500})
    base["inference"].update({"num_replicas": 1})  # autoscaling is proved by the bench
    cfg_path = tmp_path / "cluster.yaml"
    cfg_path.write_text(yaml.safe_dump(base))
    cfg = load_config(cfg_path)
    stage = FaceTrackStage.from_config(cfg)
    clips = {f"m1-{tag}": "face_noface.mov", f"m2-{tag}": "single_face.mp4",
             f"m3-{tag}": "noface_face.mov"}
    msgs = {s: clip_messages(str(media(c)), s, 10, 1_700_000_000_000 + 13 * i)
            for i, (s, c) in enumerate(clips.items())}
    want = {s: expected_points(stage, m) for s, m in msgs.items()}
    n_want = {s: len(w) for s, w in want.items()}
    assert all(n_want.values()), n_want
    ensure_topics(kafka_broker, [cfg.kafka.topic], partitions=2)
    r = redis.Redis.from_url(redis_server, decode_responses=True)

    def progress() -> float:
        return fraction({s: len(stored_points(r, s)) for s in want}, n_want)

    log = tmp_path / "serve.log"
    proc = None
    try:
        _cluster("up", "--config", str(cfg_path), port=port, root=root)
        nodes = _cluster("status", port=port, root=root)
        import json

        state = json.loads(nodes)
        ports = {str(n["node_manager_port"]): n["name"] for n in state["nodes"]}
        env = {**os.environ, "RAY_ADDRESS": state["address"]}
        proc = subprocess.Popen(
            [sys.executable, "-m", "affectstream.pipeline.cli.main", "serve", "--config",
             str(cfg_path), "--bootstrap", kafka_broker, "--redis-url", redis_server,
             "--port", str(api_port)],
            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 600
        where: dict[str, set[str]] = {}
        while not {"KafkaIngest", "Inference", "QueryAPI"} <= set(where):
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"service not placed: {where}\n{_tail(log)}"
            try:
                where = _where(_view(url), ports)
            except httpx.HTTPError:
                pass
            time.sleep(1)
        print("\nplaced:", where)
        # the config's selectors put each deployment on its own group of nodes
        assert where == {"QueryAPI": {"head"}, "KafkaIngest": {"ingest-1"},
                         "Inference": {"inference-1"}}, where

        # every node listens on loopback only (no token auth on this cluster)
        exposed = _listening_beyond_loopback(root)
        assert not exposed, f"cluster sockets beyond loopback: {exposed}"

        produce(kafka_broker, cfg.kafka.topic, interleave(*msgs.values()))
        while progress() < 0.3:
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{_tail(log)}"
            assert time.monotonic() < deadline, f"no progress to 30 %:\n{_tail(log)}"
            time.sleep(0.05)
        replays = ("affectstream_frames_replay_skipped_total|{}",
                   "affectstream_timeline_points_duplicate_total|{}")

        def replayed() -> float:  # cluster-wide totals the consumers push to Redis
            return sum(float(v or 0) for v in r.hmget("affect:metrics", replays))

        replayed0 = replayed()
        _cluster("kill-node", victim, port=port, root=root)
        t_kill, at = time.monotonic(), progress()
        print(f"killed {victim} at {at:.0%}")
        assert at < 1.0, "the stream ended before the kill: nothing was tested"
        resumed: list[float] = []

        def watch(counts: dict[str, int]) -> None:
            if not resumed and fraction(counts, n_want) > at:
                resumed.append(time.monotonic() - t_kill)

        counts = wait_points(r, n_want, timeout_s=900, settle_s=3, progress=watch)
        print(f"points again {resumed[0]:.1f} s after the kill; all stored "
              f"{time.monotonic() - t_kill:.1f} s after it; replayed {replayed() - replayed0:g}")
        for s, w in want.items():
            got = stored_points(r, s)
            assert len(got) == len(set(got)) == counts[s], s            # nothing doubled
            assert set(got) == w, (s, sorted(set(got) ^ w)[:10])        # nothing lost
        if victim == "ingest-1":  # the consumer died with its node: it replayed from its commit
            assert replayed() > replayed0, "the kill forced no replay: nothing was tested"
        # the service still answers, with the lost replica now on the surviving worker
        assert httpx.get(url + "/healthz", timeout=10).status_code == 200
        view = _view(url)
        dead = [n for n in view["nodes"] if not n["alive"]]
        assert [ports.get(n["address"].rsplit(":", 1)[1]) for n in dead] == [victim]
        after = _where(view, ports)
        print("after the kill:", after)
        survivor = ({"ingest-1", "inference-1"} - {victim}).pop()
        assert after == {"QueryAPI": {"head"}, "KafkaIngest": {survivor},
                         "Inference": {survivor}}, after
        st = subprocess.run([sys.executable, "-m", "affectstream.pipeline.cli.main", "status",
                             "--url", url], capture_output=True, text=True, timeout=120)
        assert st.returncode == 0 and "DEAD" in st.stdout, st.stdout + st.stderr
        sid = next(iter(want))
        assert httpx.get(f"{url}/v1/sessions/{sid}", timeout=10).status_code == 200
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        _cluster("down", port=port, root=root)
