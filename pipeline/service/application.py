"""The Ray Serve application of the service (``import_path:
affectstream.pipeline.service.application:build_app``): the ``QueryAPI`` ingress (the FastAPI app
of :mod:`affectstream.pipeline.api.app`) plus, unless ``ingest`` is false, the ``Inference`` and
``KafkaIngest`` deployments (:mod:`affectstream.pipeline.service.deployments`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from affectstream.pipeline.api.app import EXTRA_REQUESTS, ApiConfigError, check_bind, create_app
from affectstream.pipeline.service.replica_config import _SECRET_ARGS, _resolve

# --------------------------------------------------------------------------------------------
# Ray Serve ingress (thin)

try:  # Ray is a dependency, but keep create_app usable where it cannot be imported
    from ray import serve
except ImportError:  # pragma: no cover
    serve = None  # type: ignore[assignment]

_BUILD_ARGS = ("config", "config_json", "redis_url", "key_prefix", "host", "bootstrap",
               "consumers", "ingest", "num_replicas", "num_cpus", "secrets_dir")
if serve is not None:

    @serve.deployment(name="QueryAPI", ray_actor_options={"num_cpus": 0.25})
    @serve.ingress()
    class QueryAPI:
        """Serve replica holding one :func:`create_app` instance. The config is resolved in the
        replica (so secrets come from the replica's environment, not from deployment args).

        Extra keyword arguments (e.g. other deployments bound into the same application, which
        Serve hands over as ``DeploymentHandle`` s) are kept in ``self.handles``.
        """

        def __init__(self, config: str | None = None,
                     overrides: dict[str, Any] | None = None, **handles: Any) -> None:
            from affectstream.pipeline.runtime.ray_net import serve_replica_on_loopback

            serve_replica_on_loopback()
            self.handles = handles
            cfg = _resolve(config, overrides or {})
            self._app = create_app(cfg.redis.url or "redis://127.0.0.1:6379/0",
                                   cfg.redis.key_prefix, cfg.api.auth_token, host=cfg.api.host,
                                   redis_password=cfg.redis.password,
                                   max_sse=cfg.api.max_sse_connections)

        def __serve_build_asgi_app__(self) -> FastAPI:
            return self._app


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Ray Serve application builder (``import_path: pipeline.service.application:build_app``): the whole service.

    The application's ingress is ``QueryAPI``; unless ``ingest`` is false it also holds the
    ``Inference`` deployment and ``kafka.consumers`` replicas of ``KafkaIngest``, the Kafka
    consumers (:mod:`pipeline.service.lifecycle`), so a RayService that runs only this application runs
    the whole pipeline.

    Args:
        args: optional ``config`` (YAML path or preset for :func:`pipeline.config.load_config`)
            or ``config_json`` (a complete config as JSON, secrets removed), ``redis_url``,
            ``key_prefix``, ``host`` (the address the Serve HTTP proxy binds; non-loopback needs
            a token), ``bootstrap`` (Kafka), ``consumers``, ``ingest`` (default true; false = the
            query API alone), ``num_replicas`` and ``num_cpus`` (of ``QueryAPI``),
            ``secrets_dir`` (a directory of secret files on the replicas' machines). Secrets
            (API token, Redis / Kafka passwords) are never args: every replica reads them from
            its environment or secret files (:func:`pipeline.config.apply_secrets`).

    Returns:
        ``serve.Application``.

    Raises:
        ApiConfigError: unknown args, a secret given as an arg, or non-loopback host without a
            token.
    """
    if serve is None:  # pragma: no cover
        raise ApiConfigError("ray[serve] is not installed")
    args = dict(args or {})
    unknown = sorted(set(args) - set(_BUILD_ARGS) - set(_SECRET_ARGS))
    if unknown:
        raise ApiConfigError(f"unknown build_app args {unknown}; known: {list(_BUILD_ARGS)}")
    config = args.pop("config", None)
    ingest = args.pop("ingest", True)
    if isinstance(ingest, str):
        ingest = ingest.strip().lower() not in ("0", "false", "no", "off", "")
    cfg = _resolve(config, args)  # validates early, in the caller's environment
    check_bind(cfg.api.host, cfg.api.auth_token)
    # room for every live tail plus queries and probes: with Serve's default (5) a few open
    # SSE streams would queue /healthz behind them
    opts: dict[str, Any] = {"max_ongoing_requests": cfg.api.max_sse_connections + EXTRA_REQUESTS}
    if args.get("num_replicas") is not None:
        opts["num_replicas"] = args["num_replicas"]
    from affectstream.pipeline.service.options import api_actor_options

    opts["ray_actor_options"] = api_actor_options(cfg, args.get("num_cpus"))
    overrides = {k: v for k, v in args.items() if k not in ("num_replicas", "num_cpus")}
    handles: dict[str, Any] = {}
    if ingest:
        from affectstream.pipeline.service.deployments import service_deployments

        handles = service_deployments(cfg, config, overrides)
    return QueryAPI.options(**opts).bind(config, overrides, **handles)
