"""Kafka client settings and admin helpers (DESIGN §5): connection kwargs (SSL/SASL) from
:class:`~affectstream.pipeline.config.KafkaConfig`, broker check, topic creation, producers."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from affectstream.pipeline.config import KafkaConfig

log = logging.getLogger(__name__)


class KafkaIOError(RuntimeError):
    """A Kafka operation failed (produce not acknowledged, commit failed)."""


class BrokerUnavailable(KafkaIOError):
    """No broker answered at the bootstrap address."""




# --------------------------------------------------------------------------------------------
# client settings


def _supported(cls: type, kw: dict[str, Any]) -> dict[str, Any]:
    """Keep only the settings this kafka-python version knows (2.x and 3.x differ slightly)."""
    known = getattr(cls, "DEFAULT_CONFIG", None)
    return {k: v for k, v in kw.items() if known is None or k in known}


def client_kwargs(cfg: KafkaConfig | None = None, bootstrap: str | None = None) -> dict[str, Any]:
    """Connection settings shared by producers, consumers and admin clients.

    Args:
        cfg: Kafka config: security protocol, SASL mechanism (PLAIN, SCRAM-SHA-256/512) and
            credentials, TLS CA / client certificate / key files.
        bootstrap: overrides ``cfg.bootstrap``.
    """
    cfg = cfg or KafkaConfig()
    kw: dict[str, Any] = {"bootstrap_servers": (bootstrap or cfg.bootstrap).split(","),
                          "security_protocol": cfg.security_protocol}
    if cfg.sasl_username:
        # kafka-python takes the SCRAM credentials in the sasl_plain_* settings too
        kw.update(sasl_mechanism=cfg.sasl_mechanism, sasl_plain_username=cfg.sasl_username,
                  sasl_plain_password=cfg.sasl_password or "")
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_check_hostname"] = cfg.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
            if getattr(cfg, name):
                kw[name] = getattr(cfg, name)
    return kw


def check_broker(bootstrap: str, timeout_s: float = 5.0, **client_kw: Any) -> None:
    """Raise :class:`BrokerUnavailable` unless a broker answers at ``bootstrap`` in time."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    kw = {"bootstrap_servers": bootstrap.split(","), **client_kw,
          "request_timeout_ms": int(timeout_s * 1000) + 1000,
          "bootstrap_timeout_ms": int(timeout_s * 1000),
          "api_version_auto_timeout_ms": int(timeout_s * 1000)}
    try:
        admin = KafkaAdminClient(**_supported(KafkaAdminClient, kw))
    except KafkaError as e:
        raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s "
                                f"({type(e).__name__})") from None
    admin.close()


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int = 1,
                  **client_kw: Any) -> list[str]:
    """Create the topics that do not exist yet; returns the names created.

    Raises:
        BrokerUnavailable: no broker answered.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    kw = {"bootstrap_servers": bootstrap.split(","), **client_kw}
    try:
        admin = KafkaAdminClient(**_supported(KafkaAdminClient, kw))
    except KafkaError as e:
        raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap} "
                                f"({type(e).__name__})") from None
    try:
        existing = set(admin.list_topics())
        new = [t for t in dict.fromkeys(topics) if t not in existing]
        if new:
            try:
                admin.create_topics([NewTopic(t, partitions, 1) for t in new])
            except TopicAlreadyExistsError:
                pass
        return new
    finally:
        admin.close()


def make_producer(bootstrap: str | None = None, cfg: KafkaConfig | None = None,
                  **overrides: Any) -> Any:
    """A ``KafkaProducer`` tuned for image messages: acks=all, batching (``linger_ms`` 10,
    ``batch_size`` 1 MiB), requests large enough for ``cfg.max_message_bytes``.

    Raises:
        BrokerUnavailable: no broker answered.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    cfg = cfg or KafkaConfig()
    kw: dict[str, Any] = {
        **client_kwargs(cfg, bootstrap), "acks": "all", "linger_ms": 10,
        "batch_size": 1 << 20, "buffer_memory": 64 << 20,
        "max_request_size": cfg.max_message_bytes + (1 << 16),
        "request_timeout_ms": 15000, "bootstrap_timeout_ms": 10000,
        "api_version_auto_timeout_ms": 10000, **overrides}
    try:
        return KafkaProducer(**_supported(KafkaProducer, kw))
    except KafkaError as e:
        raise BrokerUnavailable(f"no Kafka broker answered at {bootstrap or cfg.bootstrap} "
                                f"({type(e).__name__}: {e})") from None
