"""Running the service on this machine (``affectstream serve``): start Ray and Serve, deploy the
application of :mod:`affectstream.pipeline.service.application`, stop cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any


from ray import serve

from affectstream.pipeline.config import PipelineConfig
from affectstream.pipeline.service.deployments import APP_NAME

log = logging.getLogger(__name__)

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
        pipeline.api.app.ApiConfigError: the API would bind beyond loopback without a token.
        pipeline.kafka.frames.BrokerUnavailable: ``create_topics`` and no broker answers.
    """
    from affectstream.pipeline.runtime import dag
    from affectstream.pipeline.api.app import check_bind
    from affectstream.pipeline.service.application import build_app

    check_bind(cfg.api.host, cfg.api.auth_token)
    if create_topics:
        from affectstream.pipeline.kafka.client import client_kwargs, ensure_topics

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
    from affectstream.pipeline.runtime.ray_net import loopback_address

    sdir = None
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address or loopback_address(address):  # every node is on this machine
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


def wait_for_stop(stop: threading.Event, retake: Callable[[], object],
                  every_s: float = 0.5) -> None:
    """Block the main thread until ``stop`` is set or a stop signal arrives.

    ``retake()`` re-installs the service's SIGINT/SIGTERM handlers every ``every_s`` (Ray
    installs its own on the driver's main thread). A signal that still meets Ray's driver handler
    (``ray.init``'s: ``sys.exit(signum)``) arrives here as ``SystemExit(SIGTERM or SIGINT)`` and
    counts as a stop request too, so the service drains instead of dying mid-commit.
    """
    stopping = (int(signal.SIGTERM), int(signal.SIGINT))
    while True:
        try:
            if stop.wait(every_s):
                return
            retake()
        except SystemExit as e:
            if e.code not in stopping:
                raise
            log.warning("signal %s (through Ray's handler): shutting down", e.code)
            return


def run_service(cfg: PipelineConfig, *, on_ready: Callable[[Service], None] | None = None
                ) -> None:
    """Run the service until SIGINT or SIGTERM, then shut it down cleanly (consumers drain,
    checkpoint and commit; Ray stops if this process started it).

    Args:
        cfg: configuration.
        on_ready: called once the service runs (e.g. to print where it listens).
    """
    from affectstream.pipeline.runtime import dag

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
        wait_for_stop(stop, lambda: [signal.signal(s, on_signal) for s in sigs])
        svc.stop()
    finally:
        dag.shutdown()
        for s, h in old.items():
            signal.signal(s, h)
