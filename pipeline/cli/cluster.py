"""``affectstream up`` / ``affectstream down``: keep a warm local cluster (Ray + the shared
inference deployment) between runs (:mod:`affectstream.pipeline.runtime.warm`).

Exit codes: 0 done; 1 Ray could not start or the port is taken; 2 a bad option or configuration.
"""

from __future__ import annotations

import time
from typing import Optional

import typer

from affectstream.pipeline.cli.common import (console, fail, load_config_or_fail, out, print_json,
                                              quiet_ray)

cluster_cli = typer.Typer(add_completion=False)


@cluster_cli.command("up")
def up(
    config: Optional[str] = typer.Option(None, "--config", "-c",
                                         help="YAML file or preset (the inference settings)."),
    port: int = typer.Option(6390, "--port", min=1024, max=65535,
                             help="GCS port of the warm Ray head (not 6379: Redis's)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1,
                                           help="CPUs Ray may use (default: all)."),
    stream_workers: int = typer.Option(
        2, "--stream-workers", min=0, max=16, help="Idle stream actors kept with their "
        "face-track networks loaded; a joined run takes one per stream (more streams start "
        "their own)."),
    as_json: bool = typer.Option(False, "--json", help="Print the cluster as JSON on stdout."),
) -> None:
    """Start (or reuse) a warm local cluster: later `affectstream run`s join it (loopback only)."""
    from affectstream.pipeline.runtime import warm

    cfg = load_config_or_fail(config, {})
    quiet_ray()
    console.print("starting Ray and the inference deployment…")
    t0 = time.perf_counter()
    try:
        st = warm.up(cfg, port=port, num_cpus=num_cpus, stream_workers=stream_workers)
    except warm.WarmClusterError as e:
        fail(str(e))
    took = time.perf_counter() - t0
    if as_json:
        print_json({"address": st["address"], "reused": st["reused"], "up_s": round(took, 2),
                    "stream_workers": st["stream_pool"]})
    else:
        what = "already running" if st["reused"] else "started"
        out.print(f"warm cluster {what} at {st['address']} ({took:.1f} s); `affectstream run` joins "
            "it, `affectstream down` stops it", highlight=False)


@cluster_cli.command("down")
def down() -> None:
    """Stop the warm local cluster started by `affectstream up`."""
    from affectstream.pipeline.runtime import warm

    if warm.down():
        out.print("warm cluster stopped")
    else:
        out.print("no warm cluster recorded")


@cluster_cli.command("status")
def status(
    url: str = typer.Option("http://127.0.0.1:8000", "--url",
                            help="Base URL of the service's API."),
    as_json: bool = typer.Option(False, "--json", help="Print /v1/cluster as JSON."),
) -> None:
    """Ray nodes of the running service (address, labels, resources, alive) and which Serve
    replicas and actors run on each (GET /v1/cluster; token from AFFECTSTREAM_API_TOKEN)."""
    import os

    import httpx

    token = os.environ.get("AFFECTSTREAM_API_TOKEN")
    try:
        r = httpx.get(url.rstrip("/") + "/v1/cluster", timeout=30,
                      headers={"Authorization": f"Bearer {token}"} if token else None)
    except httpx.HTTPError as e:
        fail(f"{url}: {type(e).__name__}: {e}")
    if r.status_code != 200:
        fail(f"{url}/v1/cluster answered {r.status_code}: {r.text[:200]}")
    view = r.json()
    if as_json:
        print_json(view)
        return
    out.print(cluster_table(view))


def cluster_table(view: dict) -> "Table":  # noqa: F821
    """A rich table of :func:`pipeline.api.cluster.cluster_view`: one row per node."""
    from rich.table import Table

    t = Table(title="affectstream cluster")
    for c in ("node", "address", "alive", "labels", "CPU", "GPU", "replicas", "actors"):
        t.add_column(c)
    for n in view["nodes"]:
        res = n["resources"]
        t.add_row(n["node_id"][:8] + (" (head)" if n["head"] else ""), n["address"],
                  "yes" if n["alive"] else "DEAD",
                  ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())),
                  f"{res.get('CPU', 0):g}", f"{res.get('GPU', 0):g}",
                  " ".join(f"{k}x{v}" for k, v in sorted(n["replicas"].items())),
                  str(sum(n["actors"].values())))
    return t
