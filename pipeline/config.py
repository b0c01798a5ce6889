"""Configuration: frozen pydantic v2 models, YAML presets, environment overrides.

Defaults live here; YAML files in ``configs/`` only override. Unknown keys are errors
(``extra="forbid"``) so a typo never silently becomes a default.

Environment overrides (endpoints and secrets only):
    AFFECTSTREAM_REDIS_URL        -> redis.url
    AFFECTSTREAM_REDIS_PASSWORD   -> redis.password        (secret file: redis-password)
    AFFECTSTREAM_KAFKA_BOOTSTRAP  -> kafka.bootstrap
    AFFECTSTREAM_KAFKA_USERNAME   -> kafka.sasl_username   (secret file: kafka-username)
    AFFECTSTREAM_KAFKA_PASSWORD   -> kafka.sasl_password   (secret file: kafka-password)
    AFFECTSTREAM_API_TOKEN        -> api.auth_token        (secret file: api-token)

Secrets (fields marked ``secret``) may also come from files: ``<VAR>_FILE`` names a file holding
the value, or ``AFFECTSTREAM_SECRETS_DIR`` a directory with one file per secret (the names
above; a Kubernetes Secret mounted as a volume has exactly this shape). Secrets never travel as
Ray Serve deployment arguments: the service passes :func:`without_secrets` of its config and each
replica resolves them from its own environment (:func:`apply_secrets`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from affectstream.pipeline.kafka.settings import KafkaConfig
from affectstream.pipeline.service.placement import AutoscalingConfig, ClusterConfig

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecodeConfig(_Frozen):
    analysis_fps: float | None = Field(
        None, gt=0, description="Frames per second analysed (media time); None = every frame.")
    rtsp_transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport.")
    open_timeout_s: float = Field(10.0, gt=0, description="Timeout opening a stream, seconds.")
    reconnect_max_tries: int = Field(
        5, ge=0, description="Reconnect attempts for a live stream before giving up; 0 = never.")
    reconnect_backoff_s: float = Field(0.5, gt=0, description="First reconnect delay, doubles.")
    reconnect_backoff_max_s: float = Field(8.0, gt=0, description="Largest reconnect delay.")
    max_width: int = Field(
        1280, ge=64, description="Frames wider than this are downscaled before detection (px).")


class DetectConfig(_Frozen):
    model: Literal["short", "full"] = Field(
        "full", description="BlazeFace variant: short-range (faces near the camera, faster) or "
        "full-range (small faces too).")
    score_thresh: float = Field(0.5, ge=0, le=1, description="Minimum detection score.")
    nms_iou_thresh: float = Field(0.3, ge=0, le=1, description="Weighted-NMS IoU threshold.")
    max_faces: int = Field(32, ge=1, description="Most faces kept per frame.")
    min_face_px: float = Field(24.0, ge=0, description="Faces smaller than this (box side, px) "
                               "are ignored.")
    detect_interval_ms: int = Field(
        250, ge=0, description="While every face is followed by its landmarks, run the detector "
        "at most this often (media ms); new faces appear within this delay. 0 = every frame.")


class TrackConfig(_Frozen):
    high_score_thresh: float = Field(
        0.6, ge=0, le=1, description="Detections at or above this enter the first association.")
    new_track_thresh: float = Field(
        0.65, ge=0, le=1, description="Score that starts a track at once; a detection below it "
        "starts a tentative track that needs activation_ms of consecutive frames.")
    iou_match_thresh: float = Field(
        0.2, ge=0, le=1, description="Minimum IoU between a track's predicted box and a detection.")
    lost_track_buffer_ms: int = Field(
        2000, ge=0, description="How long a lost track may be re-found before it ends (ms).")
    min_hits: int = Field(1, ge=1, description="Matched frames before a track is reported.")
    activation_ms: int = Field(
        60, ge=0, description="A detection scoring below new_track_thresh becomes a track once "
        "matched in every frame for this long (media ms): 3 frames at 25-30 fps, 2 at 10 fps. "
        "0 = every detection starts a track at once.")


class InferenceConfig(_Frozen):
    fer_model: str = Field("mini_xception", description="Registry id or checkpoint path (.pt).")
    au_model: str = Field(
        "blendshape", description="AU source. 'blendshape' (default): FaceMesh V2 (478 3-D "
        "points) in the face-track stage, then blendshapes -> 12 AU intensities + presence, head "
        "pose and gaze in the batched inference; single-frame, no warm-up. 'geometric' (faster "
        "preset `configs/fast.yaml`): FaceMesh (468 points) distances vs a per-track neutral "
        "baseline, no presence/pose/gaze. Or a registry id / .pt path of a crop-based AU network. "
        "Cost per face and quality: docs/au_models.md.")
    store_landmarks: bool = Field(
        False, description="Store each face's landmarks in its timeline point (Redis field "
        "`landmarks`; 478x3 frame pixels with 'blendshape', 468x2 otherwise; ~9 kB per point).")
    saliency: Literal["gradcam", "off"] = Field(
        "gradcam", description="Per-face saliency: Grad-CAM of the expression model, or off.")
    saliency_interval_ms: int = Field(
        500, ge=0, description="Media time between two saliency maps of one track (ms); frames in "
        "between carry the track's last map (maps change slowly; a Grad-CAM backward pass costs "
        "several times the forward). 0 = every frame.")
    facetrack_runtime: Literal["litert", "onnxruntime", "torch"] = Field(
        "litert", description="Runtime of the per-stream face-track networks on CPU (BlazeFace, "
        "FaceMesh 468): LiteRT runs their original .tflite files (measured on an AMD EPYC: "
        "FaceMesh 4.2 ms against 10.0 on ONNX Runtime), ONNX Runtime runs exports of the torch "
        "ports (cached), torch the ports themselves. FaceMesh V2 always runs on torch.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    half: bool = Field(False, description="fp16 inference on CUDA.")
    torch_threads: int = Field(0, ge=0, description="Torch intra-op threads; 0 = automatic: 1 in "
                               "the per-stream stages and the Python API (their stages already run "
                               "in parallel threads), torch's default in the inference replicas.")
    max_batch_size: int = Field(
        16, ge=1, description="Inference calls per batched forward (a call: one frame, or "
        "stream_batch_frames frames of one stream, each with all its faces).")
    batch_wait_timeout_s: float = Field(
        0.01, ge=0, description="How long Serve waits to fill a batch, seconds (one stream).")
    batch_wait_multi_s: float = Field(
        0.03, ge=0, description="How long Serve waits to fill a batch while two or more streams "
        "are active (each called within the last second), seconds: their calls then share one "
        "forward, so the faces per forward grow with the streams. One stream alone waits "
        "batch_wait_timeout_s (a longer wait only adds latency there).")
    num_replicas: int | Literal["auto"] = Field(
        1, description="Serve replicas of inference; 'auto' = Serve autoscaling (`autoscaling`).")
    autoscaling: AutoscalingConfig = Field(
        AutoscalingConfig(), description="Inference autoscaling when num_replicas is 'auto'.")
    landmarks_batch: int = Field(16, ge=1, description="Faces per FaceMesh forward.")
    stream_batch_frames: int = Field(
        4, ge=1, le=64, description="Frames of one stream sent per inference call: a call waits "
        "(at most stream_linger_ms) until this many are queued, so one stream's frames share a "
        "forward and the call's fixed cost (1 = a call per frame).")
    stream_linger_ms: float = Field(
        50.0, ge=0, le=1000, description="Longest wait for stream_batch_frames (ms of wall "
        "time): the latency a lone frame may add.")


class SmoothConfig(_Frozen):
    emotion_half_life_ms: float = Field(
        300.0, ge=0, description="Half-life of the exponential smoothing of emotion probs (ms).")
    au_min_cutoff_hz: float = Field(1.0, gt=0, description="One-Euro min cutoff for AUs (Hz).")
    au_beta: float = Field(0.05, ge=0, description="One-Euro speed coefficient for AUs.")
    au_d_cutoff_hz: float = Field(1.0, gt=0, description="One-Euro derivative cutoff (Hz).")
    label_hysteresis: float = Field(
        0.1, ge=0, le=1, description="A new dominant emotion must beat the current one by this "
        "margin (probability) to replace it.")
    reset_gap_ms: int = Field(1000, ge=0, description="Reset a track's filters after a gap (ms).")


class RedisConfig(_Frozen):
    url: str | None = Field(
        None, description="redis://host:port/db; None = localhost:6379 if it answers, else an "
        "embedded private redis-server.")
    password: str | None = Field(None, description="Password (prefer the env override or a "
                                 "secret file).", json_schema_extra={"secret": True})
    key_prefix: str = Field("affect", description="Key prefix (DESIGN §6).")
    maxlen: int | None = Field(
        None, ge=1, description="Approximate cap on entries per track stream (XADD MAXLEN ~).")
    retention_ms: int | None = Field(
        None, ge=1, description="Trim entries older than this relative to the newest (MINID).")
    session_ttl_s: int | None = Field(
        7 * 24 * 3600, ge=1, description="TTL of a session's keys after it ends, seconds.")
    pipeline_size: int = Field(256, ge=1, description="Commands per Redis pipeline flush.")
    outage_tolerance_s: float = Field(
        300.0, ge=0, description="How long `run` and `serve` wait for an unreachable Redis "
        "(backoff, 'waiting for Redis' shown; analysed points are held meanwhile) before they "
        "fail, seconds (pipeline.store.redis_retry).")


class ApiConfig(_Frozen):
    host: str = Field("127.0.0.1", description="Bind address of the HTTP API.")
    port: int = Field(8000, ge=1, le=65535)
    auth_token: str | None = Field(
        None, description="Bearer token; required when bound to a non-loopback address.",
        json_schema_extra={"secret": True})
    max_sse_connections: int = Field(
        64, ge=1, le=10_000, description="Open live-tail (SSE) connections per API replica; "
        "more are answered 503 so probes and queries always get through.")


class PipelineConfig(_Frozen):
    """The whole configuration of a run or a service."""

    decode: DecodeConfig = DecodeConfig()
    detect: DetectConfig = DetectConfig()
    track: TrackConfig = TrackConfig()
    inference: InferenceConfig = InferenceConfig()
    smooth: SmoothConfig = SmoothConfig()
    redis: RedisConfig = RedisConfig()
    kafka: KafkaConfig = KafkaConfig()
    api: ApiConfig = ApiConfig()
    cluster: ClusterConfig = Field(
        ClusterConfig(), description="Node groups and replica placement on a multi-node Ray "
        "cluster (pipeline.service.placement); empty = Serve's default placement.")
    max_in_flight: int = Field(
        8, ge=1, description="Frames of one stream in flight at once (backpressure window).")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray; None = all.")
    placement: Literal["auto", "local", "ray"] = Field(
        "auto", description="Where `run` and `bench` place their streams: 'ray' (a stream actor "
        "each, inference in the shared Serve deployment), 'local' (this process, no Ray) or "
        "'auto': local for one stream when no Ray cluster is up or joined, else ray "
        "(pipeline.runtime.placements).")

    def digest(self) -> str:
        """Short sha256 of the canonical JSON of this config without its secrets (stored in
        session meta)."""
        data = self.model_dump(mode="json")
        for section, key in secret_fields():
            data[section][key] = None
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


_ENV = {
    "AFFECTSTREAM_REDIS_URL": ("redis", "url"),
    "AFFECTSTREAM_REDIS_PASSWORD": ("redis", "password"),
    "AFFECTSTREAM_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "AFFECTSTREAM_KAFKA_USERNAME": ("kafka", "sasl_username"),
    "AFFECTSTREAM_KAFKA_PASSWORD": ("kafka", "sasl_password"),
    "AFFECTSTREAM_KAFKA_SSL_PASSWORD": ("kafka", "ssl_password"),
    "AFFECTSTREAM_API_TOKEN": ("api", "auth_token"),
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_preset(name_or_path: str | Path) -> Path:
    """A preset name (``default``, ``service``, ``gpu``) or a YAML path -> existing path.

    Raises:
        FileNotFoundError: neither a file nor a known preset.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    cand = CONFIG_DIR / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    known = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {name_or_path!r} not found (presets: {', '.join(known)})")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                env: dict[str, str] | None = None) -> PipelineConfig:
    """Build a :class:`PipelineConfig` from defaults <- YAML <- environment <- explicit overrides.

    Args:
        path: YAML file or preset name; ``None`` = ``configs/default.yaml``.
        overrides: nested dict of explicit values (e.g. from CLI flags); ``None`` values ignored.
        env: environment mapping (default ``os.environ``).

    Raises:
        FileNotFoundError: missing YAML.
        pydantic.ValidationError: unknown keys or out-of-range values (the message names them).
    """
    data: dict[str, Any] = {}
    yml = resolve_preset(path or "default")
    loaded = yaml.safe_load(yml.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{yml}: top level must be a mapping")
    data = _merge(data, loaded)
    env = os.environ if env is None else env
    for var, (section, key) in _ENV.items():
        if env.get(var):
            data = _merge(data, {section: {key: env[var]}})
    data = apply_secrets(data, env)
    if overrides:
        clean = {s: {k: v for k, v in d.items() if v is not None} if isinstance(d, dict) else d
                 for s, d in overrides.items() if d is not None}
        data = _merge(data, clean)
    return PipelineConfig.model_validate(data)


# ---------------------------------------------------------------------------------- secrets

SECRET_FILES = {
    ("redis", "password"): ("AFFECTSTREAM_REDIS_PASSWORD", "redis-password"),
    ("kafka", "sasl_username"): ("AFFECTSTREAM_KAFKA_USERNAME", "kafka-username"),
    ("kafka", "sasl_password"): ("AFFECTSTREAM_KAFKA_PASSWORD", "kafka-password"),
    ("kafka", "ssl_password"): ("AFFECTSTREAM_KAFKA_SSL_PASSWORD", "kafka-ssl-password"),
    ("api", "auth_token"): ("AFFECTSTREAM_API_TOKEN", "api-token"),
}
"""Secret field -> (environment variable, file name in a secrets directory)."""

SECRETS_DIR_ENV = "AFFECTSTREAM_SECRETS_DIR"


def secret_fields() -> list[tuple[str, str]]:
    """``(section, field)`` of every config field marked ``json_schema_extra={"secret": True}``."""
    out = []
    for name, f in PipelineConfig.model_fields.items():
        sub = f.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += [(name, k) for k, g in sub.model_fields.items()
                    if isinstance(g.json_schema_extra, dict) and g.json_schema_extra.get("secret")]
    return out


def _read_secret(path: Path) -> str | None:
    try:
        return path.read_text().rstrip("\r\n") or None
    except FileNotFoundError:
        return None


def apply_secrets(data: dict[str, Any], env: Any = None,
                  secrets_dir: str | Path | None = None) -> dict[str, Any]:
    """Fill secret fields of a config mapping from this process's environment and files.

    For each secret (:data:`SECRET_FILES`), the first of: the variable itself, the file named by
    ``<VAR>_FILE``, the file ``<secrets_dir>/<name>`` (``secrets_dir`` or
    ``$AFFECTSTREAM_SECRETS_DIR``). A secret found nowhere keeps the mapping's value.

    Raises:
        FileNotFoundError: ``<VAR>_FILE`` names a file that does not exist.
    """
    env = os.environ if env is None else env
    dirs = [Path(d) for d in (secrets_dir, env.get(SECRETS_DIR_ENV)) if d]
    out = dict(data)
    for (section, key), (var, fname) in SECRET_FILES.items():
        value = env.get(var) or None
        if value is None and env.get(var + "_FILE"):
            p = Path(env[var + "_FILE"])
            if not p.is_file():
                raise FileNotFoundError(f"{var}_FILE={p}: no such file")
            value = _read_secret(p)
        for d in dirs:
            if value is None:
                value = _read_secret(d / fname)
        if value is not None:
            out = _merge(out, {section: {key: value}})
    return out


def without_secrets(cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with every secret field set to None (safe to pass as deployment arguments)."""
    data = cfg.model_dump()
    for section, key in secret_fields():
        data[section][key] = None
    return PipelineConfig.model_validate(data)


def write_secrets_dir(cfg: PipelineConfig, directory: str | Path) -> list[str]:
    """Write ``cfg``'s secrets as files (mode 0600) in ``directory`` (mode 0700), named as in
    :data:`SECRET_FILES`, for replicas on this machine to read; returns the names written."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    written = []
    for (section, key), (_var, fname) in SECRET_FILES.items():
        value = getattr(getattr(cfg, section), key)
        if value:
            fd = os.open(d / fname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(value)
            written.append(fname)
    return written
