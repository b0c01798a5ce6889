"""Placing ``run`` on Ray: a local (loopback-only) Ray or a joined cluster, the shared inference
Serve deployment, and one :class:`~pipeline.runtime.stream_actor.StreamActor` per stream.

The per-stream work (decode, face tracking, timeline, Redis) is the session runner
(:mod:`pipeline.runtime.runner`) inside one actor per stream; only face crops travel to the
shared, batched inference deployment. :func:`run_streams` is the driver
(:mod:`pipeline.runtime.streams`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from affectstream.pipeline.config import PipelineConfig
from affectstream.pipeline.runtime.stream_actor import INFERENCE_APP as APP_NAME

__all__ = ["APP_NAME", "init_ray", "shutdown", "start_inference"]

log = logging.getLogger(__name__)

WARM: dict[str, Any] = {}
"""``{"state": ...}`` when :func:`init_ray` joined the warm cluster of ``affectstream up``."""


def init_ray(cfg: PipelineConfig) -> None:
    """Start a local Ray bound to loopback, or join the cluster of ``RAY_ADDRESS``.

    Local cluster (no ``RAY_ADDRESS``): every Ray process (GCS, raylet, object manager, workers,
    dashboard agent, runtime-env agent, metrics export) listens on 127.0.0.1 only, and no
    dashboard runs. That is Ray's own single-machine mode (``node_ip_address=127.0.0.1`` with
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which turns Ray's 127.0.0.1 -> "reachable IP"
    rewrite off). Token auth is off only there (nothing beyond this machine can connect), unless
    ``RAY_AUTH_MODE`` is set explicitly.

    Joining a loopback cluster (``RAY_ADDRESS=127.0.0.1:PORT``, e.g. the multi-node cluster of
    ``k8s/local-cluster.sh``): joined as a loopback-only local Ray (this process's node address
    127.0.0.1, token auth off unless ``RAY_AUTH_MODE`` is set).

    Joining another cluster (``RAY_ADDRESS`` set, e.g. ``ray://head:10001`` or ``auto``): token auth
    is on (``RAY_AUTH_MODE=token`` unless set; the token comes from ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, as for any Ray client).

    Raises:
        pipeline.runtime.ray_net.RayAuthError: ``RAY_ADDRESS`` names a non-loopback cluster and ``RAY_AUTH_MODE=disabled``.
    """
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        return
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True,
                          "logging_level": logging.WARNING, "configure_logging": True}
    address = os.environ.get("RAY_ADDRESS", "").strip()
    from affectstream.pipeline.runtime.ray_net import (check_cluster_auth, loopback_address,
                                                       loopback_only_ray)

    if not address:
        from affectstream.pipeline.runtime import warm

        st = warm.read_state()
        if st is not None:  # `affectstream up` keeps one warm: join it
            warm.join(st["address"])
            WARM["state"] = st
            return

    if address and loopback_address(address):  # e.g. k8s/local-cluster.sh's nodes
        loopback_only_ray()
        kw["_node_ip_address"] = "127.0.0.1"
    elif address:
        check_cluster_auth(address, os.environ)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    else:
        loopback_only_ray()
        kw["num_cpus"] = cfg.ray_num_cpus or os.cpu_count()
        kw["_node_ip_address"] = "127.0.0.1"
    ray.init(**kw)


def ensure_inference(cfg: PipelineConfig, probe: Any = None) -> bool:
    """Deploy the shared Inference app, or reuse the warm cluster's when its arguments match
    and it runs (``probe``: a leased pooled stream actor to ask, see
    :func:`pipeline.runtime.warm.deploy_inference`). Returns True when it deployed."""
    if "state" in WARM:
        from affectstream.pipeline.runtime import warm

        return warm.deploy_inference(cfg, WARM["state"], probe)
    start_inference(cfg)
    return True


def start_inference(cfg: PipelineConfig) -> Any:
    """Deploy (or update) the shared Inference Serve app without an HTTP proxy; returns a handle
    (:func:`pipeline.runtime.inference_app.deploy`)."""
    from affectstream.pipeline.runtime.inference_app import deploy

    return deploy(cfg)


def shutdown() -> None:
    """Tear down Ray started by this process (its Serve apps go with it); from a joined warm
    cluster, only disconnect (the cluster and its inference app stay up)."""
    ray.shutdown()
    WARM.clear()
