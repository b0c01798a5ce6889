"""The Kafka service: consumer replicas + shared inference + query API (DESIGN §4–§7).

``affectstream serve`` (and the KubeRay ``RayService``, through ``pipeline.service.application:build_app``) runs
one Ray Serve application, ``affectstream``, with three deployments:

* ``QueryAPI`` — the FastAPI query API (HTTP ingress), :mod:`pipeline.api.app` (application: :mod:`pipeline.service.application`);
* ``Inference`` — batched FER / AU / saliency, shared by every session, :mod:`pipeline.runtime.inference_app`;
* ``KafkaIngest`` — ``kafka.consumers`` replicas, each running one
  :class:`~pipeline.kafka.stream.KafkaStream`: a member of the consumer group
  ``kafka.group_id`` that owns some partitions of ``kafka.topic`` and runs each session it reads
  through the shared session runner (:mod:`pipeline.kafka.session`,
  :mod:`pipeline.runtime.runner`).

Delivery guarantees, dead letters, the memory budget and metrics are described in
:mod:`pipeline.kafka.stream`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any


from affectstream.pipeline.config import PipelineConfig

log = logging.getLogger(__name__)

APP_NAME = "affectstream"
"""Serve application name of the service (the k8s serveConfigV2 uses the same)."""

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# --------------------------------------------------------------------------------------------
# Serve deployments

try:
    from ray import serve
except ImportError:  # pragma: no cover
    serve = None  # type: ignore[assignment]

if serve is not None:

    @serve.deployment(name="KafkaIngest", ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=16, graceful_shutdown_timeout_s=40,
                      graceful_shutdown_wait_loop_s=0.5, health_check_period_s=5,
                      health_check_timeout_s=60)
    class KafkaIngest:
        """One Kafka consumer of the service per replica (``num_replicas = kafka.consumers``).

        Args:
            config / overrides: as for :class:`pipeline.api.app.QueryAPI` (resolved in the replica).
            inference: handle of the ``Inference`` deployment of the same application.
        """

        async def __init__(self, config: str | None = None,
                           overrides: dict[str, Any] | None = None,
                           inference: Any = None) -> None:
            import ray

            from affectstream.pipeline.service.replica_config import _resolve
            from affectstream.pipeline.runtime.ray_net import serve_replica_on_loopback

            serve_replica_on_loopback()
            cfg = _resolve(config, overrides or {})
            try:
                from ray.serve._private.constants import SERVE_NAMESPACE
            except ImportError:  # pragma: no cover
                SERVE_NAMESPACE = "serve"  # noqa: N806
            self.actor_name = ray.get_runtime_context().get_actor_name()
            self.namespace = SERVE_NAMESPACE  # where Serve keeps its replica actors
            self.inference = inference
            from affectstream.pipeline.kafka.stream import KafkaStream

            self.worker = await asyncio.to_thread(
                KafkaStream, cfg, cfg.redis.url or DEFAULT_REDIS_URL, self._infer)
            self.stop = asyncio.Event()
            self.task = asyncio.get_running_loop().create_task(self.worker.run(self.stop))

        async def _infer(self, req: Any) -> Any:
            return await self.inference.remote(req)

        async def stats(self, frames: bool = False) -> dict[str, Any]:
            """This replica's :meth:`KafkaStream.stats` plus its Ray actor name and namespace
            (``ray.get_actor(name, namespace=...)`` finds it)."""
            return {**self.worker.stats(frames), "actor_name": self.actor_name,
                    "namespace": self.namespace}

        async def record_frames(self, n: int) -> dict[str, Any]:
            """:meth:`KafkaStream.record_frames`; returns ``{"actor_name": ...}``."""
            self.worker.record_frames(n)
            return {"actor_name": self.actor_name}

        async def check_health(self) -> None:
            if self.task.done():
                exc = None if self.task.cancelled() else self.task.exception()
                raise RuntimeError(f"Kafka consumer loop ended: {exc!r}")

        async def __del__(self) -> None:  # Serve's graceful shutdown: drain, commit, leave
            self.stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=35)
            except Exception as e:  # noqa: BLE001
                log.warning("KafkaIngest shutdown: %s", e)


def service_deployments(cfg: PipelineConfig, config: str | None,
                        overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``Inference`` and ``KafkaIngest`` deployments of the service, bound (for
    :func:`pipeline.api.app.build_app`). ``config``/``overrides`` travel to the replicas, which
    resolve them in their own environment; ``cfg`` (resolved by the caller) sizes them."""
    from affectstream.pipeline.runtime.inference_app import Inference
    from affectstream.pipeline.service.options import inference_options, ingest_options

    i = cfg.inference
    inference = Inference.options(**inference_options(cfg)).bind(
        i.fer_model, i.saliency, i.au_model, i.device, i.half, i.torch_threads or 1,
        i.max_batch_size, i.batch_wait_timeout_s)
    ingest = KafkaIngest.options(**ingest_options(cfg)).bind(
        config, overrides, inference=inference)
    return {"inference": inference, "ingest": ingest}
