"""k8s/local-cluster.sh's node layout and ``ray start`` command lines (pipeline.runtime.local_cluster),
checked without starting Ray; the real cluster runs in tests/e2e/test_multinode.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from affectstream.pipeline.config import load_config
from affectstream.pipeline.runtime import local_cluster as lc

ROOT = Path(__file__).resolve().parents[3]


def _flags(cmd: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in cmd if a.startswith("--") and "=" in a)


def test_layout_and_commands_of_the_cluster_preset():
    cluster = load_config("cluster").cluster
    nodes = lc.layout(cluster)
    assert [(n, g) for n, g, _ in nodes] == [("head", "head"), ("ingest-1", "ingest"),
                                             ("inference-1", "inference")]
    cmds = [lc.start_command(["ray"], n, g, i, 6392, Path("/tmp/x"), 256)
            for i, (n, _, g) in enumerate(nodes)]
    ports: list[int] = []
    for (name, gname, group), cmd in zip(nodes, cmds):
        f = _flags(cmd)
        assert f["node-ip-address"] == "127.0.0.1"
        assert f["temp-dir"] == f"/tmp/x/{name}"
        assert f["labels"] == ",".join(f"{k}={v}" for k, v in group.labels.items())
        assert float(f["num-cpus"]) == group.num_cpus
        assert ("--head" in cmd) == (gname == "head")
        if gname != "head":
            assert f["address"] == "127.0.0.1:6392"
            assert f["include-log-monitor"] == "false"  # one log monitor per host
        ports += [int(v) for k, v in f.items() if k.endswith("-port") and "worker" not in k]
        lo, hi = int(f["min-worker-port"]), int(f["max-worker-port"])
        ports += list(range(lo, hi + 1))
    assert len(ports) == len(set(ports)), "two nodes share a port"
    assert 6379 not in ports


def test_custom_resources_and_gpus_reach_ray_start():
    from affectstream.pipeline.service.placement import NodeGroup

    g = NodeGroup(num_cpus=0.5, num_gpus=1, resources={"affectstream_ingest": 2},
                  labels={"a.io/b": "c"})
    f = _flags(lc.start_command(["ray"], "w-1", g, 1, 20000, Path("/tmp/y"), 64))
    assert json.loads(f["resources"]) == {"affectstream_ingest": 2}
    assert (f["num-cpus"], f["num-gpus"], f["labels"]) == ("0.5", "1", "a.io/b=c")
    assert f["object-store-memory"] == str(64 << 20)


def test_refusals_are_one_line_errors(tmp_path):
    cluster = load_config("cluster").cluster
    with pytest.raises(lc.LocalClusterError, match="6379 is Redis's"):
        lc.up(cluster, port=6379, root=tmp_path)
    with pytest.raises(lc.LocalClusterError, match="no cluster.groups"):
        lc.layout(load_config("default").cluster)
    with pytest.raises(lc.LocalClusterError, match="no local cluster recorded"):
        lc.kill_node(tmp_path, "ingest-1")
    (tmp_path / lc.STATE_FILE).write_text(json.dumps({"address": "127.0.0.1:1", "nodes": [
        {"name": "head", "group": "head", "temp_dir": str(tmp_path / "head")},
        {"name": "ingest-1", "group": "ingest", "temp_dir": str(tmp_path / "ingest-1")}]}))
    with pytest.raises(lc.LocalClusterError, match="head is not killed"):
        lc.kill_node(tmp_path, "head")
    with pytest.raises(lc.LocalClusterError, match="unknown node 'x'"):
        lc.kill_node(tmp_path, "x")
    with pytest.raises(lc.LocalClusterError, match="no process of node ingest-1"):
        lc.kill_node(tmp_path, "ingest-1")


def test_script_wraps_the_module_and_refuses_the_redis_port():
    r = subprocess.run([str(ROOT / "k8s" / "local-cluster.sh"), "up", "--port", "6379"],
                       capture_output=True, text=True, timeout=120,
                       env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 1
    assert r.stderr.strip() == "error: port 6379 is Redis's; pass another GCS port"
