"""A multi-node Ray cluster on this machine (``k8s/local-cluster.sh``): a head and worker nodes,
each its own raylet started with ``ray start``, with the CPUs, custom resources and labels of
the config's node groups (``cluster.groups``, :mod:`pipeline.service.placement`) — the groups the KubeRay
RayService declares too.

Every node listens on 127.0.0.1 only (``--node-ip-address=127.0.0.1`` with Ray's single-machine
switch, :mod:`pipeline.runtime.ray_net`), so token auth stays off as for the other local
clusters; ``affectstream serve`` joins it with ``RAY_ADDRESS=127.0.0.1:PORT``. Port 6379 is
Redis's and is refused. Each node gets its own block of ports and its own temp dir
``<root>/<node>`` (several raylets on one host need distinct node-manager, object-manager,
agent and worker ports; Ray keeps each node's sockets and logs under its temp dir), so a node's
processes — raylet, workers, agents — are told apart by that dir on their command lines.

Ports of node ``i`` (0 = head) for GCS port ``P``: node manager ``P+10i+1``, object manager
``+2``, dashboard agent HTTP ``+3`` and gRPC ``+4``, runtime-env agent ``+5``, metrics ``+6``,
Ray client server (head) ``P+7``; workers ``P+100(i+1)`` to ``P+100(i+1)+99``.

State (``<root>/cluster.json``)::

    {"address": "127.0.0.1:6392", "root": "/tmp/affectstream-cluster-6392",
     "nodes": [{"name": "head", "group": "head", "temp_dir": ..., "node_manager_port": ...}, ...]}
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from affectstream.pipeline.service.placement import ClusterConfig, NodeGroup

DEFAULT_PORT = 6392
STATE_FILE = "cluster.json"


class LocalClusterError(RuntimeError):
    """The local cluster could not be started, found or changed."""


def default_root(port: int) -> Path:
    """``/tmp/affectstream-cluster-<port>``: short, because Ray's Unix sockets live below it
    (a socket path may not exceed 107 bytes)."""
    return Path(f"/tmp/affectstream-cluster-{port}")


def node_ports(port: int, i: int) -> dict[str, int]:
    """The ports of node ``i`` (0 = head) of the cluster whose GCS listens on ``port``."""
    b = port + 10 * i
    out = {"node-manager-port": b + 1, "object-manager-port": b + 2,
           "dashboard-agent-listen-port": b + 3, "dashboard-agent-grpc-port": b + 4,
           "runtime-env-agent-port": b + 5, "metrics-export-port": b + 6,
           "min-worker-port": port + 100 * (i + 1), "max-worker-port": port + 100 * (i + 1) + 99}
    if i == 0:
        out["ray-client-server-port"] = port + 7
    return out


def layout(cluster: ClusterConfig) -> list[tuple[str, str, NodeGroup]]:
    """``[(node name, group name, group)]``: the head first, then ``<group>-<k>`` for each
    worker node (k from 1).

    Raises:
        LocalClusterError: the config has no node groups.
    """
    if not cluster.groups:
        raise LocalClusterError("the config has no cluster.groups (see configs/cluster.yaml)")
    out = [("head", "head", cluster.groups["head"])]
    for name, g in cluster.groups.items():
        if name != "head":
            out += [(f"{name}-{k}", name, g) for k in range(1, g.nodes + 1)]
    return out


def start_command(ray_cmd: list[str], node: str, group: NodeGroup, i: int, port: int, root: Path,
                  object_store_mb: int) -> list[str]:
    """The ``ray start`` command line of node ``i`` (0 = head)."""
    cmd = [*ray_cmd, "start", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
           f"--temp-dir={root / node}", f"--object-store-memory={object_store_mb << 20}"]
    cmd += ["--head", f"--port={port}", "--include-dashboard=false"] if i == 0 else [
        f"--address=127.0.0.1:{port}", "--include-log-monitor=false"]
    cmd += [f"--{k}={v}" for k, v in node_ports(port, i).items()]
    if group.num_cpus is not None:
        cmd.append(f"--num-cpus={group.num_cpus:g}")
    if group.num_gpus is not None:
        cmd.append(f"--num-gpus={group.num_gpus}")
    if group.resources:
        cmd.append("--resources=" + json.dumps(group.resources, separators=(",", ":")))
    if group.labels:
        cmd.append("--labels=" + ",".join(f"{k}={v}" for k, v in group.labels.items()))
    return cmd


def ray_env() -> dict[str, str]:
    """Environment of the ``ray start`` processes: loopback-only, token auth off."""
    from affectstream.pipeline.runtime.ray_net import LOOPBACK_ENV

    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env[LOOPBACK_ENV] = "0"
    env.setdefault("RAY_AUTH_MODE", "disabled")
    return env


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Ray's servers (TIME_WAIT)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def up(cluster: ClusterConfig, port: int = DEFAULT_PORT, root: str | Path | None = None,
       object_store_mb: int = 256, log: Any = None, attempts: int = 3) -> dict[str, Any]:
    """Start the head and every worker node of ``cluster.groups``; returns the state (module
    docstring), also written to ``<root>/cluster.json``.

    Args:
        cluster: node groups (``cluster`` section of the config).
        port: GCS port of the head (not 6379).
        root: directory of the nodes' temp dirs; default :func:`default_root`.
        object_store_mb: object store of each node, MiB.
        log: ``log(str)`` for each command run (e.g. ``print``).
        attempts: tries per node (a node whose raylet registers late is started again).

    Raises:
        LocalClusterError: port 6379, a port of the cluster already taken, or ``ray start``
            failing (its last output line is in the message; the nodes started are stopped).
    """
    if port == 6379:
        raise LocalClusterError("port 6379 is Redis's; pass another GCS port")
    root = Path(root) if root else default_root(port)
    nodes = layout(cluster)
    taken = [p for p in [port] + [p for i in range(len(nodes))
                                  for k, p in node_ports(port, i).items()
                                  if not k.endswith("worker-port")] if not _port_free(p)]
    if taken:
        raise LocalClusterError(f"ports {taken} are in use; pass another GCS port")
    root.mkdir(parents=True, exist_ok=True)
    # this interpreter runs Ray's CLI, so the nodes' workers import the same packages
    ray_cmd = [sys.executable, "-m", "affectstream.pipeline.runtime.ray_start"]
    state: dict[str, Any] = {"address": f"127.0.0.1:{port}", "root": str(root), "nodes": []}
    for i, (name, gname, group) in enumerate(nodes):
        cmd = start_command(ray_cmd, name, group, i, port, root, object_store_mb)
        for attempt in range(1, attempts + 1):
            if log:
                log(" ".join(cmd))
            r = subprocess.run(cmd, env=ray_env(), capture_output=True, text=True, timeout=300)
            if r.returncode == 0:
                break
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            # Ray waits a fixed 30 s for a new raylet to register: on a loaded machine it may
            # be late; clear this node's processes and start it again
            _kill_all(node_processes(str(root / name), state["address"] if i == 0 else None))
            if attempt == attempts:
                down(root)
                raise LocalClusterError(f"ray start of {name} failed (exit {r.returncode}, "
                                        f"{attempts} attempts): {tail[0]}")
            if log:
                log(f"# ray start of {name} failed ({tail[0]}); again")
            time.sleep(2)
        state["nodes"].append({"name": name, "group": gname, "temp_dir": str(root / name),
                               "node_manager_port": node_ports(port, i)["node-manager-port"],
                               "labels": dict(group.labels), "resources": dict(group.resources)})
        (root / STATE_FILE).write_text(json.dumps(state, indent=1))
    return state


def read_state(root: str | Path) -> dict[str, Any]:
    """The recorded cluster under ``root``.

    Raises:
        LocalClusterError: none recorded there.
    """
    try:
        return json.loads((Path(root) / STATE_FILE).read_text())
    except (OSError, ValueError) as e:
        raise LocalClusterError(f"no local cluster recorded under {root}: {e}") from None


def node_processes(temp_dir: str, address: str | None = None) -> list[Any]:
    """``psutil.Process`` es of one node: those whose command line names its temp dir (or has
    the argument ``--address=<address>``: the head's Ray client server), and their
    descendants."""
    import psutil

    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}  # this command names the dir too
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if proc.pid in skip:
            continue
        try:
            args = proc.info["cmdline"] or []
            if any(temp_dir + "/" in a or a.endswith(temp_dir) for a in args) or (
                    address and f"--address={address}" in args):
                found[proc.pid] = proc
                for c in proc.children(recursive=True):
                    found[c.pid] = c
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def _kill_all(procs: list[Any]) -> list[int]:
    pids = []
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
            pids.append(p.pid)
        except Exception:  # noqa: BLE001  (gone meanwhile)
            continue
    return pids


def kill_node(root: str | Path, name: str) -> list[int]:
    """SIGKILL every process of worker node ``name`` (raylet, its workers and agents) at once,
    as a machine loss would; returns the pids killed.

    Raises:
        LocalClusterError: unknown node, the head, or no process of it found.
    """
    st = read_state(root)
    nodes = {n["name"]: n for n in st["nodes"]}
    if name not in nodes:
        raise LocalClusterError(f"unknown node {name!r}; nodes: {', '.join(nodes)}")
    if nodes[name]["group"] == "head":
        raise LocalClusterError("the head is not killed (its loss ends the whole cluster)")
    procs = node_processes(nodes[name]["temp_dir"])
    if not procs:
        raise LocalClusterError(f"no process of node {name} found (already gone?)")
    return _kill_all(procs)


def down(root: str | Path, timeout_s: float = 15.0) -> int:
    """Stop every process of the cluster under ``root`` (SIGTERM, SIGKILL after ``timeout_s``),
    workers' nodes first, and forget it; returns how many processes were signalled."""
    import psutil

    root = Path(root)
    try:
        address = read_state(root)["address"]
    except (LocalClusterError, KeyError):
        address = None
    procs = node_processes(str(root), address)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    (root / STATE_FILE).unlink(missing_ok=True)
    return len(procs)


def wait_nodes(address: str, alive: int, timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Poll the GCS (from a connected driver) until ``alive`` nodes are alive; returns
    ``ray.nodes()``.

    Raises:
        LocalClusterError: not reached within ``timeout_s``.
    """
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        nodes = ray.nodes()
        if sum(1 for n in nodes if n["Alive"]) == alive:
            return nodes
        if time.monotonic() > deadline:
            raise LocalClusterError(f"{address}: {sum(n['Alive'] for n in nodes)} nodes alive, "
                                    f"expected {alive}")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    """``python -m affectstream.pipeline.runtime.local_cluster {up,down,kill-node,status}``
    (what ``k8s/local-cluster.sh`` runs). Exit codes: 0 done, 1 failed, 2 bad usage."""
    import argparse

    ap = argparse.ArgumentParser(prog="local-cluster.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["up", "down", "kill-node", "status"])
    ap.add_argument("node", nargs="?", help="kill-node: the node to kill (e.g. ingest-1)")
    ap.add_argument("--config", "-c", default="cluster",
                    help="config with cluster.groups (preset or YAML; default: cluster)")
    ap.add_argument("--port", type=int, default=int(os.environ.get(
        "AFFECTSTREAM_CLUSTER_PORT", DEFAULT_PORT)), help="GCS port of the head (not 6379)")
    ap.add_argument("--root", default=None, help="nodes' temp dirs (default "
                    "/tmp/affectstream-cluster-<port>)")
    ap.add_argument("--object-store-mb", type=int, default=256)
    a = ap.parse_args(argv)
    root = Path(a.root) if a.root else default_root(a.port)
    try:
        if a.command == "up":
            from affectstream.pipeline.config import load_config

            st = up(load_config(a.config).cluster, a.port, root, a.object_store_mb,
                    log=lambda c: print("+ " + c, file=sys.stderr, flush=True))
            for n in st["nodes"]:
                print(f"{n['name']:<14} 127.0.0.1:{n['node_manager_port']}  labels "
                      f"{n['labels']}  resources {n['resources']}")
            print(f"\nexport RAY_ADDRESS={st['address']}   # then: affectstream serve "
                  f"--config {a.config}")
        elif a.command == "down":
            print(f"stopped {down(root)} processes")
        elif a.command == "kill-node":
            if not a.node:
                ap.error("kill-node needs a node name")
            print(f"killed {len(kill_node(root, a.node))} processes of {a.node} (SIGKILL)")
        else:
            print(json.dumps(read_state(root), indent=1))
    except LocalClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
