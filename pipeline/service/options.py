"""Serve options of the service's deployments, from the config alone: replicas, autoscaling and
placement (``inference``, ``kafka.consumers``, ``cluster`` of :class:`pipeline.config.
PipelineConfig`; :mod:`pipeline.service.placement`). The application builder, the ``run`` inference app
and the offline checks of ``k8s/`` (the RayService's ``serveConfigV2`` must say the same) all
take them from here."""

from __future__ import annotations

from typing import Any

from affectstream.pipeline.config import PipelineConfig

API_CPUS = 0.25
"""Default CPUs of a QueryAPI replica."""


def inference_options(cfg: PipelineConfig) -> dict[str, Any]:
    """``Inference.options(**...)``: ``num_replicas`` (an int, or ``"auto"`` with
    ``autoscaling_config`` from ``inference.autoscaling``), ``max_ongoing_requests`` (room for
    two batches), ``ray_actor_options`` (``cluster.inference``; 0 CPUs by default) and the
    live-tunable ``user_config``."""
    i = cfg.inference
    out: dict[str, Any] = {
        "num_replicas": i.num_replicas,
        "max_ongoing_requests": max(8, 2 * i.max_batch_size),
        "ray_actor_options": cfg.cluster.inference.actor_options(0),
        "user_config": {"max_batch_size": i.max_batch_size,
                        "batch_wait_timeout_s": i.batch_wait_timeout_s,
                        "batch_wait_multi_s": i.batch_wait_multi_s}}
    if i.num_replicas == "auto":
        out["autoscaling_config"] = i.autoscaling.serve_config()
    return out


def ingest_options(cfg: PipelineConfig) -> dict[str, Any]:
    """``KafkaIngest.options(**...)``: one replica per consumer, placed by ``cluster.ingest``."""
    return {"num_replicas": cfg.kafka.consumers,
            "ray_actor_options": cfg.cluster.ingest.actor_options(0)}


def api_actor_options(cfg: PipelineConfig, num_cpus: float | None = None) -> dict[str, Any]:
    """``ray_actor_options`` of a QueryAPI replica (``cluster.api``); ``num_cpus`` (the
    application's ``num_cpus`` arg) wins over the config."""
    opts = cfg.cluster.api.actor_options(API_CPUS)
    if num_cpus is not None:
        opts["num_cpus"] = float(num_cpus)
    return opts


def serve_config_entry(cfg: PipelineConfig) -> dict[str, Any]:
    """The ``Inference`` entry of a Serve config file's ``deployments`` that says what the
    application builds from ``cfg`` (``user_config`` left out: it stays with the application)."""
    opts = inference_options(cfg)
    opts.pop("user_config")
    return {"name": "Inference", **opts}
