"""``GET /v1/cluster``: the Ray nodes the service runs on and which replica runs where.

Answered from inside the cluster (the ``QueryAPI`` Serve replica): nodes from the GCS
(``ray.nodes()``), replicas, proxies and the controller from the Serve controller's details
(what ``serve status`` and the dashboard show), and the alive actors per node from the GCS
actor table — so it works without Ray's dashboard. An API process that is not part of a Ray
cluster answers ``in_cluster: false`` with empty lists (a state, not a server error).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field


class NodeOut(BaseModel):
    node_id: str = Field(description="Ray node id (hex).")
    address: str = Field(description="host:port of the node's raylet.")
    alive: bool
    head: bool = Field(description="The head node (GCS, Serve controller).")
    labels: dict[str, str] = Field(description="Ray node labels (ray.io/node-id left out).")
    resources: dict[str, float] = Field(description="Total resources the node offers Ray "
                                        "(CPU, GPU, memory and object store in bytes, custom).")
    replicas: dict[str, int] = Field(description="Running Serve replicas here, by deployment.")
    actors: dict[str, int] = Field(description="Alive Ray actors here, by class.")


class ReplicaOut(BaseModel):
    app: str
    deployment: str
    replica_id: str
    state: str = Field(description="Serve replica state (RUNNING, STARTING, ...).")
    node_id: str | None
    pid: int | None


class ClusterOut(BaseModel):
    in_cluster: bool = Field(description="False when this API process is not part of a Ray "
                             "cluster (then every list is empty).")
    nodes: list[NodeOut]
    replicas: list[ReplicaOut]
    controller_node_id: str | None = Field(description="Node of the Serve controller.")
    proxy_node_ids: list[str] = Field(description="Nodes running a Serve HTTP proxy.")


def serve_details() -> dict[str, Any]:
    """The Serve controller's instance details (a plain dict; empty when Serve is not running)."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return client.get_serve_details() if client is not None else {}


def cluster_view() -> dict[str, Any]:
    """:class:`ClusterOut` as a dict, read from the connected Ray cluster (blocking calls).

    Raises:
        RuntimeError: Ray is not initialised in this process.
    """
    import ray

    if not ray.is_initialized():
        raise RuntimeError("not running inside a Ray cluster")
    details = serve_details()
    replicas = []
    for app_name, app in (details.get("applications") or {}).items():
        for dep_name, dep in (app.get("deployments") or {}).items():
            for r in dep.get("replicas") or []:
                replicas.append({"app": app_name, "deployment": dep_name,
                                 "replica_id": r["replica_id"],
                                 "state": str(getattr(r["state"], "value", r["state"])),
                                 "node_id": r.get("node_id"), "pid": r.get("pid")})
    per_node: dict[str, Counter] = {}
    for r in replicas:
        if r["state"] == "RUNNING" and r["node_id"]:
            per_node.setdefault(r["node_id"], Counter())[r["deployment"]] += 1
    actors: dict[str, Counter] = {}
    from ray._private.state import state as gcs_state

    for a in (gcs_state.actor_table(None) or {}).values():
        if a.get("State") == "ALIVE":
            nid = (a.get("Address") or {}).get("NodeID")
            actors.setdefault(nid, Counter())[a.get("ActorClassName", "?").rsplit(".", 1)[-1]] += 1
    nodes = []
    for n in ray.nodes():
        nid = n["NodeID"]
        res = n.get("Resources") or {}
        nodes.append({
            "node_id": nid, "address": f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}",
            "alive": bool(n["Alive"]), "head": "node:__internal_head__" in res or bool(
                n.get("IsHeadNode") or (n.get("Labels") or {}).get("ray.io/node-type") == "head"),
            "labels": {k: v for k, v in (n.get("Labels") or {}).items()
                       if k != "ray.io/node-id"},
            "resources": {k: float(v) for k, v in res.items() if not k.startswith("node:")},
            "replicas": dict(per_node.get(nid, {})), "actors": dict(actors.get(nid, {}))})
    ctrl = details.get("controller_info") or {}
    proxies = details.get("proxies") or {}
    return {"in_cluster": True, "nodes": nodes, "replicas": replicas, "controller_node_id": ctrl.get("node_id"),
            "proxy_node_ids": sorted(proxies)}


def cluster_router(require_token: Any = None) -> APIRouter:
    """The ``/v1/cluster`` route (``GET /v1/cluster``), behind the same bearer-token dependency
    as ``/v1`` (``require_token``; None = no token configured, no scheme declared)."""
    deps = [] if require_token is None else [Depends(require_token)]
    router = APIRouter(prefix="/v1", dependencies=deps, tags=["cluster"])

    responses = {} if require_token is None else {
        401: {"description": "Bad or missing token.",
              "content": {"application/json": {"schema": {
                  "type": "object", "properties": {"detail": {"type": "string"}}}}}}}

    @router.get("/cluster", response_model=ClusterOut, responses=responses)
    async def get_cluster() -> dict[str, Any]:
        """Ray nodes (address, labels, resources, alive) and the Serve replicas and actors on
        each; ``in_cluster: false`` and empty lists outside a Ray cluster."""
        try:
            return await asyncio.to_thread(cluster_view)
        except RuntimeError:
            return {"in_cluster": False, "nodes": [], "replicas": [], "controller_node_id": None,
                    "proxy_node_ids": []}

    return router
