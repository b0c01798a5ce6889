"""Where Ray listens and who may connect: loopback-only local clusters, token auth otherwise.

A local Ray started by ``affectstream run`` / ``serve`` (no ``RAY_ADDRESS``) is reachable from
this machine only: every Ray process (GCS, raylet and its object manager, workers, dashboard
agent, runtime-env agent, metrics export, Serve replicas' inter-deployment gRPC server) listens
on 127.0.0.1, so Ray's token auth is not needed there. A cluster joined through ``RAY_ADDRESS``
runs with token auth (``RAY_AUTH_MODE=token``); see :func:`pipeline.runtime.dag.init_ray`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for its single-machine mode: ``0`` keeps 127.0.0.1 as the node address instead
of rewriting it to a reachable IP; the Ray processes of a local cluster inherit it."""


class RayAuthError(RuntimeError):
    """Ray would accept unauthenticated connections from beyond this machine."""


def check_cluster_auth(address: str, env: Mapping[str, str]) -> None:
    """Refuse to join a non-loopback Ray cluster with token auth explicitly disabled.

    Args:
        address: ``RAY_ADDRESS`` (``host:port``, ``ray://host:port`` or ``auto``).
        env: the environment (``RAY_AUTH_MODE``).

    Raises:
        RayAuthError: ``address`` is not loopback and ``RAY_AUTH_MODE`` is ``disabled``.
    """
    from affectstream.pipeline.api.app import is_loopback

    host = address.split("://", 1)[-1].rsplit(":", 1)[0] if address != "auto" else "auto"
    if not is_loopback(host) and env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        raise RayAuthError(
            f"RAY_AUTH_MODE=disabled with RAY_ADDRESS={address}: a Ray cluster reachable beyond "
            "loopback needs token auth (unset RAY_AUTH_MODE or set it to 'token', and give the "
            "token with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH)")


def loopback_address(address: str) -> bool:
    """True when ``RAY_ADDRESS`` (``host:port`` or ``ray://host:port``) names a loopback host."""
    from affectstream.pipeline.api.app import is_loopback

    if address in ("auto", "local"):
        return False
    return is_loopback(address.split("://", 1)[-1].rsplit(":", 1)[0])


def loopback_only_ray() -> None:
    """Configure this process, and the Ray processes it starts, for a loopback-only local Ray:
    no 127.0.0.1 -> node-IP rewrite, and token auth off unless ``RAY_AUTH_MODE`` is set."""
    from ray._private import ray_constants

    os.environ[LOOPBACK_ENV] = "0"  # the Ray processes started from here
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process (read when ray.init resolves the IP)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def serve_replica_on_loopback() -> None:
    """In a Serve replica of a loopback-only cluster, bind the replica's inter-deployment gRPC
    server to 127.0.0.1 instead of ``[::]`` (Ray Serve hard-codes the wildcard; the node address
    other replicas dial is 127.0.0.1 there). Call it from the deployment's ``__init__``: Serve
    starts that server right after. A no-op elsewhere, and idempotent."""
    if os.environ.get(LOOPBACK_ENV) != "0":
        return
    try:
        from ray.serve._private import replica
    except ImportError:  # pragma: no cover
        return
    orig: Any = getattr(replica, "add_port_to_grpc_server", None)
    if orig is None or getattr(orig, "_affectstream_loopback", False):
        return

    def add_port(server: Any, address: str) -> int:
        if address.startswith(("[::]:", "0.0.0.0:")):
            address = "127.0.0.1:" + address.rsplit(":", 1)[1]
        return orig(server, address)

    add_port._affectstream_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port
