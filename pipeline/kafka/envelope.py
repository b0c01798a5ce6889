"""Kafka frame envelope v1 (DESIGN §5): one encoded image per message, metadata in headers.

Wire format::

    key      session_id, UTF-8
    value    one encoded image (JPEG or PNG)
    headers  schema=affect.frame.v1   session_id   seq   ts_ms   codec=jpeg|png
             optional: width, height (pixels), pts_ms (media time, ms; an extension of v1)

Header values are ASCII decimal / text bytes. Unknown headers are ignored (forward compatible);
a known header given twice is an error.

:func:`decode` checks a message in order of cost: headers, key, byte limit, the image's own size
from its JPEG SOF / PNG IHDR (so a decompression bomb is refused before it is decoded), the pixel
limit, the per-session sequence (:class:`SeqGuard`), then decodes. Every refusal raises
:class:`EnvelopeError` whose ``reason`` is a short machine-readable label, safe as a metric label
and as the ``error`` header of the dead-letter copy:

    missing_header:<name>   a required header is absent
    bad_header:<name>       a header is present but invalid (not UTF-8, wrong value, out of its
                            range, longer than 256 bytes, duplicated); ``ts_ms`` outside
                            ``Limits.min_ts_ms..max_ts_ms``
    ts_out_of_window        ``ts_ms`` too far from the broker timestamp (``max_ts_skew_ms``)
    key_mismatch            message key is not the ``session_id`` header
    empty_image             value is empty
    too_many_bytes          value longer than ``Limits.max_bytes``
    codec_mismatch          the bytes are the other codec's format
    undecodable_image       not a readable image of the declared codec (incl. truncated)
    too_many_pixels         width*height above ``Limits.max_pixels``
    size_mismatch           ``width``/``height`` headers differ from the image
    duplicate_seq           same ``seq`` as the session's last accepted message
    out_of_order_seq        ``seq`` lower than the session's last accepted message
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from affectstream.pipeline.config import KafkaConfig

SCHEMA = "affect.frame.v1"
"""Value of the ``schema`` header for this envelope version."""

Headers = list[tuple[str, bytes]]
"""Kafka headers as kafka-python gives and takes them: ``[(name, value bytes), ...]``."""

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
"""Allowed session ids: they become part of Redis keys with a ``{sid}`` hash tag, so no braces,
spaces or slashes; 1–128 characters."""

MAX_INT64 = (1 << 63) - 1
MAX_UINT64 = (1 << 64) - 1
MAX_SIDE = 65535
"""Largest width / height (the JPEG limit); ``Limits.max_pixels`` bounds the area."""
MAX_HEADER_BYTES = 256
"""Longest value of a known header, bytes (longer: ``bad_header:<name>``)."""

_REQUIRED = ("schema", "session_id", "seq", "ts_ms", "codec")
_OPTIONAL = ("width", "height", "pts_ms")
_KNOWN = frozenset(_REQUIRED + _OPTIONAL)


class EnvelopeError(ValueError):
    """A message that is not a valid v1 frame.

    Attributes:
        reason: short machine-readable label (see the module docstring).
        detail: human-readable explanation.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class FrameEnvelope(BaseModel):
    """Metadata of one frame message (the headers), validated.

    Attributes:
        schema_id: always ``affect.frame.v1`` (header ``schema``).
        session_id: session the frame belongs to; also the message key.
        seq: per-session frame counter, increasing (not necessarily contiguous), 0..2**63-1.
        ts_ms: capture time, epoch milliseconds, 0 <= ts_ms < 2**64 (narrowed by
            :class:`Limits`).
        codec: ``jpeg`` or ``png``.
        width / height: image size in pixels (1..65535), if the producer declared it.
        pts_ms: media time in ms from the start of the source (0..2**63-1), if known.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_id: Literal["affect.frame.v1"] = Field(SCHEMA, alias="schema")
    session_id: str = Field(pattern=SESSION_ID_PATTERN)
    seq: int = Field(ge=0, le=MAX_INT64)
    ts_ms: int = Field(ge=0, le=MAX_UINT64)
    codec: Literal["jpeg", "png"]
    width: int | None = Field(None, ge=1, le=MAX_SIDE)
    height: int | None = Field(None, ge=1, le=MAX_SIDE)
    pts_ms: int | None = Field(None, ge=0, le=MAX_INT64)

    def headers(self) -> Headers:
        """The envelope as Kafka headers, required ones first."""
        h: Headers = [("schema", self.schema_id.encode()),
                      ("session_id", self.session_id.encode()),
                      ("seq", str(self.seq).encode()),
                      ("ts_ms", str(self.ts_ms).encode()),
                      ("codec", self.codec.encode())]
        for name in _OPTIONAL:
            v = getattr(self, name)
            if v is not None:
                h.append((name, str(v).encode()))
        return h


@dataclasses.dataclass(frozen=True)
class Limits:
    """Limits applied before decoding (config ``kafka.max_message_bytes``, ``max_pixels``,
    ``min_ts_ms``, ``max_ts_ms``, ``max_ts_skew_ms``).

    Attributes:
        max_bytes: largest accepted encoded image, bytes.
        max_pixels: largest accepted image, width * height pixels.
        min_ts_ms / max_ts_ms: accepted range of ``ts_ms``, epoch ms (inclusive).
        max_ts_skew_ms: if set, ``|ts_ms - broker timestamp|`` must not exceed it, ms.
    """

    max_bytes: int = 4 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    min_ts_ms: int = 0
    max_ts_ms: int = 4_102_444_800_000
    max_ts_skew_ms: int | None = None

    @staticmethod
    def from_config(cfg: KafkaConfig) -> Limits:
        """Limits of a :class:`~pipeline.config.KafkaConfig`."""
        return Limits(max_bytes=cfg.max_message_bytes, max_pixels=cfg.max_pixels,
                      min_ts_ms=cfg.min_ts_ms, max_ts_ms=cfg.max_ts_ms,
                      max_ts_skew_ms=cfg.max_ts_skew_ms)


class SeqGuard:
    """Per-session last accepted ``seq``: refuses replays and reordering within one consumer.

    State is a dict ``session_id -> last seq``. Call :meth:`reset` when partitions are
    (re)assigned or the consumer seeks, since re-reading from a committed offset legitimately
    repeats sequence numbers.
    """

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def check(self, session_id: str, seq: int) -> None:
        """Raise :class:`EnvelopeError` (``duplicate_seq`` / ``out_of_order_seq``) if ``seq`` is
        not above the session's last accepted one; does not record it."""
        last = self._last.get(session_id)
        if last is not None and seq <= last:
            reason = "duplicate_seq" if seq == last else "out_of_order_seq"
            raise EnvelopeError(reason, f"session {session_id!r}: seq {seq} after {last}")

    def accept(self, session_id: str, seq: int) -> None:
        """Record ``seq`` as the session's last accepted one."""
        self._last[session_id] = seq

    def last(self, session_id: str) -> int | None:
        """Last accepted seq of a session, or None."""
        return self._last.get(session_id)

    def reset(self, session_ids: Iterable[str] | None = None) -> None:
        """Forget all sessions, or the given iterable of session ids."""
        if session_ids is None:
            self._last.clear()
        else:
            for s in session_ids:
                self._last.pop(s, None)

    def __len__(self) -> int:
        return len(self._last)


def encode_image(rgb: np.ndarray, codec: Literal["jpeg", "png"] = "jpeg",
                 jpeg_quality: int = 90, *, bgr: bool = False) -> bytes:
    """Encode an image with OpenCV.

    Args:
        rgb: (H, W, 3) uint8 image, RGB (or BGR when ``bgr=True``, which skips a colour copy).
        codec: ``jpeg`` or ``png``.
        jpeg_quality: 1–100, JPEG only.
        bgr: the array is already in OpenCV's BGR order.

    Raises:
        ValueError: wrong shape/dtype, unknown codec or an encoder failure.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be uint8 of shape (H, W, 3), got {rgb.dtype} {rgb.shape}")
    img = rgb if bgr else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if codec == "jpeg":
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    elif codec == "png":
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        raise ValueError(f"codec must be 'jpeg' or 'png', got {codec!r}")
    if not ok:
        raise ValueError(f"OpenCV failed to encode a {img.shape} image as {codec}")
    return buf.tobytes()


def encode(session_id: str, seq: int, ts_ms: int, image: np.ndarray | None = None, *,
           data: bytes | None = None, codec: Literal["jpeg", "png"] = "jpeg",
           jpeg_quality: int = 90, pts_ms: int | None = None, bgr: bool = False,
           width: int | None = None, height: int | None = None
           ) -> tuple[bytes, bytes, Headers]:
    """Build one v1 message.

    Give either ``image`` (encoded here, and ``width``/``height`` headers set from it) or
    already-encoded ``data`` (``width``/``height`` then only if passed).

    Args:
        session_id: session id (see :data:`SESSION_ID_PATTERN`).
        seq: per-session increasing counter, >= 0.
        ts_ms: capture time, epoch ms.
        image: (H, W, 3) uint8 RGB (BGR with ``bgr=True``).
        data: encoded image bytes in ``codec``.
        codec: ``jpeg`` or ``png``.
        jpeg_quality: 1–100 when encoding JPEG.
        pts_ms: media time, ms (optional header).
        bgr: ``image`` is BGR.
        width / height: declared size for ``data``.

    Returns:
        ``(key, value, headers)`` ready for ``KafkaProducer.send(topic, key=, value=, headers=)``.

    Raises:
        ValueError: neither or both of image/data; invalid metadata (pydantic message).
    """
    if (image is None) == (data is None):
        raise ValueError("give exactly one of image= or data=")
    if image is not None:
        height, width = int(image.shape[0]), int(image.shape[1])
        data = encode_image(image, codec, jpeg_quality, bgr=bgr)
    env = FrameEnvelope(session_id=session_id, seq=seq, ts_ms=ts_ms, codec=codec, width=width,
                        height=height, pts_ms=pts_ms)
    return session_id.encode(), bytes(data), env.headers()  # type: ignore[arg-type]


def parse_headers(headers: Headers | None) -> FrameEnvelope:
    """Validate the headers of a message into a :class:`FrameEnvelope`.

    Raises:
        EnvelopeError: ``missing_header:<name>`` or ``bad_header:<name>``.
    """
    raw: dict[str, str] = {}
    for name, value in headers or ():
        if name not in _KNOWN:
            continue
        if name in raw:
            raise EnvelopeError(f"bad_header:{name}", "header given more than once")
        if value is not None and len(value) > MAX_HEADER_BYTES:
            raise EnvelopeError(f"bad_header:{name}", f"{len(value)} bytes > {MAX_HEADER_BYTES}")
        try:
            raw[name] = value.decode("utf-8") if value is not None else ""
        except (UnicodeDecodeError, AttributeError):
            raise EnvelopeError(f"bad_header:{name}", "value is not UTF-8 text") from None
    for name in _REQUIRED:
        if name not in raw:
            raise EnvelopeError(f"missing_header:{name}", "required by affect.frame.v1")
    try:
        return FrameEnvelope.model_validate(raw)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = str(err["loc"][0]) if err["loc"] else "?"
        if loc == "schema_id":
            loc = "schema"
        raise EnvelopeError(f"bad_header:{loc}", f"{raw.get(loc)!r}: {err['msg']}") from None


_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers that carry the image size (not DHT C4, JPG C8, DAC CC).
_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _jpeg_size(b: bytes) -> tuple[int, int]:
    """(width, height) from the first SOF segment (ITU T.81 §B.2.2)."""
    i, n = 2, len(b)
    while i + 4 <= n:
        if b[i] != 0xFF:
            raise EnvelopeError("undecodable_image", f"JPEG marker expected at byte {i}")
        m = b[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0x01 or 0xD0 <= m <= 0xD8:  # standalone markers
            i += 2
            continue
        if m in (0xD9, 0xDA):
            break  # end of image / start of scan before any SOF
        seg = (b[i + 2] << 8) | b[i + 3]
        if m in _SOF:
            if i + 9 > n or seg < 7:
                break
            h, w = struct.unpack_from(">HH", b, i + 5)
            return w, h
        i += 2 + seg
    raise EnvelopeError("undecodable_image", "no JPEG frame header (SOF) found")


def _png_size(b: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk (PNG spec §11.2.2)."""
    if len(b) < 24 or b[12:16] != b"IHDR":
        raise EnvelopeError("undecodable_image", "no PNG IHDR chunk")
    w, h = struct.unpack_from(">II", b, 16)
    return w, h


def probe_size(value: bytes, codec: str) -> tuple[int, int]:
    """Image ``(width, height)`` in pixels read from the file header, without decoding.

    Raises:
        EnvelopeError: ``codec_mismatch`` or ``undecodable_image``.
    """
    if codec == "jpeg":
        if not value.startswith(_JPEG_MAGIC):
            if value.startswith(_PNG_MAGIC):
                raise EnvelopeError("codec_mismatch", "codec=jpeg but the bytes are PNG")
            raise EnvelopeError("undecodable_image", "not a JPEG (bad magic bytes)")
        return _jpeg_size(value)
    if not value.startswith(_PNG_MAGIC):
        if value.startswith(_JPEG_MAGIC):
            raise EnvelopeError("codec_mismatch", "codec=png but the bytes are JPEG")
        raise EnvelopeError("undecodable_image", "not a PNG (bad magic bytes)")
    return _png_size(value)


def _complete(value: bytes, codec: str) -> bool:
    """Cheap truncation check: JPEG ends with EOI (trailing zero padding allowed), PNG with IEND.
    """
    if codec == "jpeg":
        if value.endswith(b"\xff\xd9"):
            return True
        return value[-64:].rstrip(b"\x00").endswith(b"\xff\xd9")
    return value[-12:-8] == b"\x00\x00\x00\x00" and value[-8:-4] == b"IEND"


def check_ts(env: FrameEnvelope, limits: Limits, broker_ts_ms: int | None = None) -> None:
    """Refuse a ``ts_ms`` outside ``limits`` (``bad_header:ts_ms``) or too far from the broker's
    record timestamp (``ts_out_of_window``; only with ``limits.max_ts_skew_ms``).

    Raises:
        EnvelopeError: as above.
    """
    if not limits.min_ts_ms <= env.ts_ms <= limits.max_ts_ms:
        raise EnvelopeError("bad_header:ts_ms", f"{env.ts_ms} outside [{limits.min_ts_ms}, "
                            f"{limits.max_ts_ms}]")
    if (limits.max_ts_skew_ms is not None and broker_ts_ms is not None and broker_ts_ms >= 0
            and abs(env.ts_ms - broker_ts_ms) > limits.max_ts_skew_ms):
        raise EnvelopeError("ts_out_of_window", f"ts_ms {env.ts_ms} is {env.ts_ms - broker_ts_ms}"
                            f" ms from the broker timestamp (limit {limits.max_ts_skew_ms})")


def decode(msg_key: bytes | None, value: bytes | None, headers: Headers | None,
           limits: Limits = Limits(), seq_guard: SeqGuard | None = None,
           broker_ts_ms: int | None = None) -> tuple[FrameEnvelope, np.ndarray]:
    """Validate and decode one message.

    Args:
        msg_key: the message key (must equal the ``session_id`` header, UTF-8).
        value: the encoded image.
        headers: Kafka headers ``[(name, bytes), ...]``.
        limits: byte and pixel limits.
        seq_guard: if given, ``seq`` must be above the session's last accepted seq; on success
            the seq is recorded.
        broker_ts_ms: the record's broker timestamp, epoch ms (for ``limits.max_ts_skew_ms``).

    Returns:
        ``(envelope, image)`` with ``image`` (H, W, 3) uint8 RGB.

    Raises:
        EnvelopeError: with a machine-readable ``reason`` (module docstring).
    """
    env = parse_headers(headers)
    check_ts(env, limits, broker_ts_ms)
    if msg_key is None or msg_key != env.session_id.encode():
        raise EnvelopeError("key_mismatch",
                            f"key {msg_key[:64] if msg_key else msg_key!r} != session_id "
                            f"{env.session_id!r}")
    if not value:
        raise EnvelopeError("empty_image", "message value is empty")
    if len(value) > limits.max_bytes:
        raise EnvelopeError("too_many_bytes", f"{len(value)} bytes > limit {limits.max_bytes}")
    w, h = probe_size(value, env.codec)
    if w < 1 or h < 1:
        raise EnvelopeError("undecodable_image", f"image header says {w}x{h}")
    if w * h > limits.max_pixels:
        raise EnvelopeError("too_many_pixels", f"{w}x{h} > limit {limits.max_pixels} pixels")
    if (env.width is not None and env.width != w) or (env.height is not None and env.height != h):
        raise EnvelopeError("size_mismatch",
                            f"headers say {env.width}x{env.height}, image is {w}x{h}")
    if seq_guard is not None:
        seq_guard.check(env.session_id, env.seq)
    if not _complete(value, env.codec):
        raise EnvelopeError("undecodable_image", f"truncated {env.codec} ({len(value)} bytes)")
    bgr = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise EnvelopeError("undecodable_image", f"OpenCV could not decode the {env.codec}")
    if bgr.shape[0] != h or bgr.shape[1] != w:
        raise EnvelopeError("size_mismatch", f"decoded {bgr.shape[1]}x{bgr.shape[0]}, header "
                            f"said {w}x{h}")
    if seq_guard is not None:
        seq_guard.accept(env.session_id, env.seq)
    return env, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
