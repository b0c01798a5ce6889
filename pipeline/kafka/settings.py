"""Settings of the Kafka path: the ``kafka`` section of the configuration.

Defined here, next to the code that reads them; :mod:`pipeline.config` assembles the sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class KafkaConfig(BaseModel):
    """The ``kafka`` section of :class:`pipeline.config.PipelineConfig` (``affectstream serve``
    and ``publish``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port]")
    topic: str = Field("affect.frames", description="Frame topic (envelope v1, DESIGN §5).")
    dlq_topic: str = Field("affect.frames.dlq", description="Dead-letter topic.")
    result_topic: str | None = Field(None, description="Also produce timeline points here.")
    group_id: str = Field("affectstream", description="Consumer group.")
    consumers: int = Field(1, ge=1, description="Consumer actors splitting the partitions.")
    session_timeout_ms: int = Field(10000, ge=1000)
    heartbeat_interval_ms: int = Field(3000, ge=100)
    max_poll_interval_ms: int = Field(
        60000, ge=1000, description="Consumer group rebalance timeout (ms): how long a rebalance "
        "waits for members to rejoin. The service polls continuously, so this does not bound "
        "processing time.")
    fetch_max_wait_ms: int = Field(
        20, ge=0, le=10000, description="Longest the broker holds a consumer's fetch waiting "
        "for new data (ms). It bounds the Kafka part of the publish-to-Redis latency; the "
        "client default (500) adds up to a quarter second on an idle-then-busy topic.")
    checkpoint_interval_ms: int = Field(
        1000, ge=0, description="How often each session's tracker/smoother state is saved to "
        "Redis (wall ms); offsets are committed up to the last checkpoint, so this bounds the "
        "replay after a crash. 0 = after every frame.")
    commit_interval_ms: int = Field(1000, ge=50, description="Offset commit period (ms).")
    max_buffered_frames: int = Field(
        256, ge=1, description="Frames one consumer holds in memory (polled, not yet written); "
        "above this it pauses its partitions (backpressure).")
    session_idle_s: float = Field(
        120.0, gt=0, description="A session without frames this long is checkpointed, its "
        "in-memory state freed and its status set to 'ended' (redis.session_ttl_s starts; a "
        "later frame resumes it as 'running').")
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest image, bytes.")
    max_pixels: int = Field(4096 * 4096, ge=1, description="Largest image, pixels (w*h).")
    min_ts_ms: int = Field(0, ge=0, description="Smallest accepted envelope ts_ms (epoch ms).")
    max_ts_ms: int = Field(
        4_102_444_800_000, ge=1, le=(1 << 64) - 1, description="Largest accepted envelope ts_ms "
        "(epoch ms; default 2100-01-01). Timeline entry ids are ts_ms, so an absurd future "
        "timestamp would shadow every later point of its track.")
    max_ts_skew_ms: int | None = Field(
        None, ge=0, description="If set, ts_ms must lie within this many ms of the broker's "
        "record timestamp (refused as ts_out_of_window). Off by default: archived footage "
        "carries old capture times.")
    max_inflight_frame_bytes: int = Field(
        384 << 20, ge=1 << 20, description="Decoded frame bytes one consumer holds (polled, not "
        "yet face-tracked); at the budget it pauses its partitions until frames are processed. "
        "The default keeps a consumer (~0.5-0.7 GB of models) well within 2 GB.")
    max_delivery_attempts: int = Field(
        3, ge=1, description="Poison-pill rule: a message whose processing was started this "
        "many times without finishing (its consumer crashed each time) is dead-lettered as "
        "poison_pill on its next delivery. Attempts are counted in Redis.")
    checkpoint_key_file: str | None = Field(
        None, description="File holding the HMAC-SHA256 key that signs session checkpoints "
        "(env AFFECTSTREAM_CHECKPOINT_KEY takes precedence). With a key, unsigned or "
        "wrongly signed checkpoints are ignored.")
    sasl_username: str | None = Field(None, json_schema_extra={"secret": True})
    sasl_password: str | None = Field(None, json_schema_extra={"secret": True})
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism with sasl_username/sasl_password.")
    security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"] = "PLAINTEXT"
    ssl_cafile: str | None = Field(None, description="CA bundle (PEM) to verify the brokers.")
    ssl_certfile: str | None = Field(None, description="Client certificate (PEM) for mTLS.")
    ssl_keyfile: str | None = Field(None, description="Client private key (PEM) for mTLS.")
    ssl_password: str | None = Field(
        None, description="Password of ssl_keyfile (prefer env AFFECTSTREAM_KAFKA_SSL_PASSWORD).",
        json_schema_extra={"secret": True})
    ssl_check_hostname: bool = Field(True, description="Verify the broker's host name.")
