"""How a Serve replica of the service resolves its configuration (DESIGN §7, §10): a whole
config passed as JSON (secrets removed) or a YAML file/preset, then explicit overrides; secrets
come from the replica's own environment and secret files, never from deployment arguments."""

from __future__ import annotations

from typing import Any

from affectstream.pipeline.api.app import ApiConfigError

_SECRET_ARGS = {"auth_token": "AFFECTSTREAM_API_TOKEN", "redis_password":
                "AFFECTSTREAM_REDIS_PASSWORD", "kafka_password": "AFFECTSTREAM_KAFKA_PASSWORD"}


def _resolve(config: str | None, overrides: dict[str, Any]) -> Any:
    """The replica's :class:`~pipeline.config.PipelineConfig`: ``overrides["config_json"]`` (a
    whole config resolved elsewhere, e.g. by ``affectstream serve``, secrets removed) or the YAML
    ``config`` with the environment applied, then the explicit overrides. Secrets come from this
    process's environment and secret files (``overrides["secrets_dir"]``,
    ``AFFECTSTREAM_SECRETS_DIR``; :func:`pipeline.config.apply_secrets`), never from arguments."""
    from affectstream.pipeline.config import PipelineConfig, _merge, apply_secrets, load_config

    secret_args = sorted(set(overrides) & set(_SECRET_ARGS))
    if secret_args:
        raise ApiConfigError(
            f"secrets are not build_app args ({', '.join(secret_args)}): they would show in the "
            "Serve config; set " + ", ".join(_SECRET_ARGS[a] for a in secret_args)
            + " (or <VAR>_FILE, or a secrets_dir) where the replicas run")
    explicit = {
        "redis": {"url": overrides.get("redis_url"),
                  "key_prefix": overrides.get("key_prefix")},
        "api": {"host": overrides.get("host")},
        "kafka": {"bootstrap": overrides.get("bootstrap"),
                  "consumers": overrides.get("consumers")}}
    if overrides.get("config_json"):
        if config:
            raise ApiConfigError("give build_app either config or config_json, not both")
        base = PipelineConfig.model_validate_json(overrides["config_json"]).model_dump()
        base = apply_secrets(base, secrets_dir=overrides.get("secrets_dir"))
        clean = {s: {k: v for k, v in d.items() if v is not None} for s, d in explicit.items()}
        return PipelineConfig.model_validate(_merge(base, clean))
    if overrides.get("secrets_dir"):
        explicit = _merge(apply_secrets({}, secrets_dir=overrides["secrets_dir"]),
                          explicit)
    return load_config(config, overrides=explicit)
