"""The Kafka service: consumer replicas + shared inference + query API (DESIGN §4–§7).

``affectstream serve`` (and the KubeRay ``RayService``, through ``pipeline.api:build_app``) runs
one Ray Serve application, ``affectstream``, with three deployments:

* ``QueryAPI`` — the FastAPI query API (HTTP ingress), :mod:`pipeline.api`;
* ``Inference`` — batched FER / AU / saliency, shared by every session, :mod:`pipeline.inference`;
* ``KafkaIngest`` — ``kafka.consumers`` replicas, each running one
  :class:`~pipeline.kafka_consumer.KafkaStream`: a member of the consumer group
  ``kafka.group_id`` that owns some partitions of ``kafka.topic`` and runs each session it reads
  through the shared session runner (:mod:`pipeline.kafka_session`,
  :mod:`pipeline.runtime.runner`).

Delivery guarantees, dead letters, the memory budget and metrics are described in
:mod:`pipeline.kafka_consumer`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
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
            config / overrides: as for :class:`pipeline.api.QueryAPI` (resolved in the replica).
            inference: handle of the ``Inference`` deployment of the same application.
        """

        async def __init__(self, config: str | None = None,
                           overrides: dict[str, Any] | None = None,
                           inference: Any = None) -> None:
            import ray

            from affectstream.pipeline.api import _resolve
            from affectstream.pipeline.ray_net import serve_replica_on_loopback

            serve_replica_on_loopback()
            cfg = _resolve(config, overrides or {})
            try:
                from ray.serve._private.constants import SERVE_NAMESPACE
            except ImportError:  # pragma: no cover
                SERVE_NAMESPACE = "serve"  # noqa: N806
            self.actor_name = ray.get_runtime_context().get_actor_name()
            self.namespace = SERVE_NAMESPACE  # where Serve keeps its replica actors
            self.inference = inference
            from affectstream.pipeline.kafka_consumer import KafkaStream

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
    :func:`pipeline.api.build_app`). ``config``/``overrides`` travel to the replicas, which
    resolve them in their own environment; ``cfg`` (resolved by the caller) sizes them."""
    from affectstream.pipeline.inference import Inference

    i = cfg.inference
    inference = Inference.options(
        num_replicas=i.num_replicas, max_ongoing_requests=max(8, 2 * i.max_batch_size),
        user_config={"max_batch_size": i.max_batch_size,
                     "batch_wait_timeout_s": i.batch_wait_timeout_s},
    ).bind(i.fer_model, i.saliency, i.au_model, i.device, i.half, i.torch_threads or 1,
           i.max_batch_size, i.batch_wait_timeout_s)
    ingest = KafkaIngest.options(num_replicas=cfg.kafka.consumers).bind(
        config, overrides, inference=inference)
    return {"inference": inference, "ingest": ingest}


# --------------------------------------------------------------------------------------------
# local service (``affectstream serve``)


@dataclasses.dataclass
class Service:
    """A running service started by :func:`start_service` in this Ray cluster.

    Attributes:
        cfg: its configuration.
        app_name: Serve application name.
        url: base URL of the HTTP API.
    """

    cfg: PipelineConfig
    app_name: str
    url: str
    secrets_dir: str | None = None

    def ingest_handle(self) -> Any:
        return serve.get_deployment_handle("KafkaIngest", app_name=self.app_name)

    def call_consumers(self, method: str, *args: Any, timeout_s: float = 30.0
                       ) -> list[dict[str, Any]]:
        """Call a :class:`KafkaIngest` method on every consumer replica. Serve routes each call
        to one replica, so this calls until every replica answered (told apart by
        ``actor_name``) or ``timeout_s`` passed."""
        h = self.ingest_handle()
        seen: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < self.cfg.kafka.consumers and time.monotonic() < deadline:
            r = getattr(h, method).remote(*args).result(timeout_s=timeout_s)
            seen[r["actor_name"]] = r
        return list(seen.values())

    def stats(self, frames: bool = False, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """:meth:`KafkaIngest.stats` of every consumer replica."""
        return self.call_consumers("stats", frames, timeout_s=timeout_s)

    def stop(self) -> None:
        """Delete the application: consumers drain, checkpoint, commit and leave the group."""
        try:
            serve.delete(self.app_name)
        finally:
            if self.secrets_dir:
                import shutil

                shutil.rmtree(self.secrets_dir, ignore_errors=True)


def _quiet() -> dict[str, Any]:
    return {"log_level": "WARNING", "enable_access_log": False}


def start_service(cfg: PipelineConfig, *, app_name: str = APP_NAME,
                  create_topics: bool = True) -> Service:
    """Start Ray (or join ``RAY_ADDRESS``), Serve's HTTP proxy on ``api.host:api.port`` and the
    service application; returns once every deployment is running.

    Args:
        cfg: configuration (already resolved: CLI flags and environment applied).
        app_name: Serve application name.
        create_topics: create ``kafka.topic`` (``kafka.consumers`` partitions), the DLQ and the
            result topic when they do not exist.

    Raises:
        pipeline.api.ApiConfigError: the API would bind beyond loopback without a token.
        pipeline.kafka_io.BrokerUnavailable: ``create_topics`` and no broker answers.
    """
    from affectstream.pipeline import dag
    from affectstream.pipeline.api import build_app, check_bind

    check_bind(cfg.api.host, cfg.api.auth_token)
    if create_topics:
        from affectstream.pipeline.kafka_io import client_kwargs, ensure_topics

        k = cfg.kafka
        ckw = {kk: v for kk, v in client_kwargs(k).items() if kk != "bootstrap_servers"}
        ensure_topics(k.bootstrap, [k.topic], max(1, k.consumers), **ckw)
        ensure_topics(k.bootstrap, [t for t in (k.dlq_topic, k.result_topic) if t], 1, **ckw)
    dag.init_ray(cfg)
    serve.start(http_options={"host": cfg.api.host, "port": cfg.api.port},
                proxy_location="HeadOnly", logging_config=_quiet())
    # secrets reach the replicas as 0600 files in a private directory (this machine's local
    # cluster), never as deployment arguments; a joined cluster's nodes use their own env/files
    import tempfile

    from affectstream.pipeline.config import without_secrets, write_secrets_dir

    args: dict[str, Any] = {"config_json": without_secrets(cfg).model_dump_json(),
                            "host": cfg.api.host}
    sdir = None
    if not os.environ.get("RAY_ADDRESS"):
        sdir = tempfile.mkdtemp(prefix="affectstream-secrets-")
        if write_secrets_dir(cfg, sdir):
            args["secrets_dir"] = sdir
    try:
        serve.run(build_app(args), name=app_name, route_prefix="/", logging_config=_quiet())
    except BaseException:
        if sdir:
            import shutil

            shutil.rmtree(sdir, ignore_errors=True)
        raise
    host = "127.0.0.1" if cfg.api.host in ("0.0.0.0", "::") else cfg.api.host
    return Service(cfg, app_name, f"http://{host}:{cfg.api.port}", sdir)


def run_service(cfg: PipelineConfig, *, on_ready: Callable[[Service], None] | None = None
                ) -> None:
    """Run the service until SIGINT or SIGTERM, then shut it down cleanly (consumers drain,
    checkpoint and commit; Ray stops if this process started it).

    Args:
        cfg: configuration.
        on_ready: called once the service runs (e.g. to print where it listens).
    """
    from affectstream.pipeline import dag

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.warning("signal %d: shutting down", signum)
        stop.set()

    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, on_signal) for s in sigs}
    try:
        svc = start_service(cfg)
        for s in sigs:  # Ray may have installed its own handlers meanwhile
            signal.signal(s, on_signal)
        if on_ready is not None:
            on_ready(svc)
        while not stop.wait(0.5):
            for s in sigs:  # Ray's late-starting threads may install native handlers: take back
                signal.signal(s, on_signal)
        svc.stop()
    finally:
        dag.shutdown()
        for s, h in old.items():
            signal.signal(s, h)
