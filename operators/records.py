"""Records passed between stages: frozen dataclasses, structure-of-arrays for faces.

Units are in the names: ``bbox_xyxy`` pixels of the original frame, ``ts_ms`` capture time
(epoch ms), ``pts_ms`` media time (ms from stream start), ``au_intensity`` FACS 0–5.
Validation happens once per record in ``__post_init__``; messages name the expected shape.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

EMOTIONS: tuple[str, ...] = (
    "anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
"""Canonical ordered emotion labels (DESIGN §4). Models declare the subset they output."""

LANDMARK_AU_MODELS: tuple[str, ...] = ("blendshape", "geometric")
"""AU sources without an AU network of their own: ``blendshape`` (FaceMesh V2 landmarks ->
blendshapes -> AUs, run in the batched inference) and ``geometric`` (FaceMesh landmarks vs a
per-track neutral baseline, run in the timeline builder)."""

DISFA_AUS: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU09", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26")
"""The 12 DISFA action units, zero-padded FACS ids."""

AU_OCCURRENCE_THRESHOLD = 2.0
"""FACS 0–5 intensity at and above which an AU counts as present (the DISFA occurrence
convention of the AU-detection literature, e.g. EAC-Net, JAA-Net)."""

FACE_REGIONS: tuple[str, ...] = ("brows", "eyes", "nose", "cheeks", "mouth", "jaw")
"""Facial regions a saliency map is summarised over."""


def _check(arr: np.ndarray, name: str, shape: tuple, dtype: Any) -> None:
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape))
    if not ok or arr.dtype != dtype:
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must be {np.dtype(dtype).name} of shape {want}, "
                         f"got {arr.dtype.name} {arr.shape}")


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded video frame.

    Attributes:
        session_id: session the frame belongs to.
        seq: per-session frame counter, increasing from 0.
        ts_ms: capture time, epoch milliseconds (int).
        pts_ms: media time from the container PTS, milliseconds (int).
        image: (H, W, 3) uint8 RGB.
    """

    session_id: str
    seq: int
    ts_ms: int
    pts_ms: int
    image: np.ndarray

    def __post_init__(self) -> None:
        _check(self.image, "image", (None, None, 3), np.uint8)


@dataclasses.dataclass(frozen=True)
class Faces:
    """Faces of one frame, structure-of-arrays.

    Attributes:
        bbox_xyxy: (N, 4) float32 pixels in the original frame.
        det_score: (N,) float32 in [0, 1].
        track_id: (N,) int64 >= 1, unique per session; 0 means "not tracked yet".
        landmarks: (N, K, 2) float32 pixels, or None.
    """

    bbox_xyxy: np.ndarray
    det_score: np.ndarray
    track_id: np.ndarray
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check(self.bbox_xyxy, "bbox_xyxy", (None, 4), np.float32)
        n = len(self.bbox_xyxy)
        _check(self.det_score, "det_score", (n,), np.float32)
        _check(self.track_id, "track_id", (n,), np.int64)
        if self.landmarks is not None:
            _check(self.landmarks, "landmarks", (n, None, 2), np.float32)

    def __len__(self) -> int:
        return len(self.bbox_xyxy)

    @staticmethod
    def empty() -> Faces:
        return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))


@dataclasses.dataclass(frozen=True)
class FaceAnalysis:
    """Per-face inference output for one frame's faces (structure-of-arrays).

    Attributes:
        emotion_probs: (N, E) float32 rows summing to 1 over ``emotion_labels``.
        emotion_labels: labels of the columns of ``emotion_probs`` (canonical names).
        au_intensity: (N, A) float32 on the FACS 0–5 scale over ``au_names``.
        au_names: AU ids of the columns of ``au_intensity``.
        saliency: (N, R) float32 in [0, 1], mean saliency per region of ``FACE_REGIONS``, or None.
        valence: (N,) float32 in [-1, 1] or None.
        arousal: (N,) float32 in [-1, 1] or None.
    """

    emotion_probs: np.ndarray
    emotion_labels: tuple[str, ...]
    au_intensity: np.ndarray
    au_names: tuple[str, ...]
    saliency: np.ndarray | None = None
    valence: np.ndarray | None = None
    arousal: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.emotion_probs)
        _check(self.emotion_probs, "emotion_probs", (n, len(self.emotion_labels)), np.float32)
        _check(self.au_intensity, "au_intensity", (n, len(self.au_names)), np.float32)
        if self.saliency is not None:
            _check(self.saliency, "saliency", (n, len(FACE_REGIONS)), np.float32)
        unknown = set(self.emotion_labels) - set(EMOTIONS)
        if unknown:
            raise ValueError(f"emotion_labels must be canonical names {EMOTIONS}, got {unknown}")


@dataclasses.dataclass(frozen=True)
class TimelinePoint:
    """One smoothed timeline point: one face (track) at one analysed frame.

    Attributes:
        session_id: session.
        track_id: >= 1.
        ts_ms: capture time, epoch ms; the Redis stream entry ID is ``<ts_ms>-0``.
        pts_ms: media time, ms.
        emotion: dominant emotion label (after hysteresis).
        emotion_probs: label -> probability in [0, 1].
        au_intensity: AU id -> intensity 0–5.
        bbox_xyxy: (x1, y1, x2, y2) pixels.
        det_score: detection score in [0, 1].
        saliency: region -> mean saliency in [0, 1] (may be empty).
        valence: in [-1, 1] or None.
        arousal: in [-1, 1] or None.
        au_presence: AU id -> 0/1 occurrence, the AU model's decision on this frame (``blendshape``:
            this frame's intensity >= 2.0, before smoothing); empty when the AU model gives none.
        yaw, pitch, roll: head pose in degrees (yaw > 0: face turned toward the image's right;
            pitch > 0: chin up; roll > 0: counter-clockwise in the image), or None.
        gaze_yaw, gaze_pitch: gaze direction in degrees, camera frame, signs as yaw/pitch (head
            pose + eye-in-head angle from the iris; uncalibrated, coarse), or None.
        landmarks: (K, 2|3) float32 frame pixels (478 x 3 FaceMesh V2, or 468 x 2 FaceMesh), only
            when the configuration asks for them (``inference.store_landmarks``), else None.
    """

    session_id: str
    track_id: int
    ts_ms: int
    pts_ms: int
    emotion: str
    emotion_probs: dict[str, float]
    au_intensity: dict[str, float]
    bbox_xyxy: tuple[float, float, float, float]
    det_score: float
    saliency: dict[str, float] = dataclasses.field(default_factory=dict)
    valence: float | None = None
    arousal: float | None = None
    au_presence: dict[str, int] = dataclasses.field(default_factory=dict)
    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None
    gaze_yaw: float | None = None
    gaze_pitch: float | None = None
    landmarks: np.ndarray | None = dataclasses.field(default=None, compare=False)

    def to_fields(self) -> dict[str, str]:
        """Redis stream entry fields (DESIGN §6); numbers as short decimal strings.

        Beyond DESIGN §6: ``c_AU01``... (presence 0/1), ``yaw`` ``pitch`` ``roll`` ``gaze_yaw``
        ``gaze_pitch`` (degrees), ``landmarks`` (``"KxD:"`` then K*D comma-separated pixels,
        0.1 px) — each only when the point has it, so older entries read back unchanged."""
        f: dict[str, str] = {"pts_ms": str(self.pts_ms), "emotion": self.emotion}
        for k, v in self.emotion_probs.items():
            f[f"p_{k}"] = f"{v:.4f}"
        for k, v in self.au_intensity.items():
            f[k] = f"{v:.3f}"
        if self.valence is not None:
            f["valence"] = f"{self.valence:.4f}"
        if self.arousal is not None:
            f["arousal"] = f"{self.arousal:.4f}"
        for k, v in zip(("x1", "y1", "x2", "y2"), self.bbox_xyxy):
            f[k] = f"{v:.1f}"
        f["det"] = f"{self.det_score:.3f}"
        for k, v in self.saliency.items():
            f[f"sal_{k}"] = f"{v:.3f}"
        for k, v in self.au_presence.items():
            f[f"c_{k}"] = str(int(v))
        for k in POSE_FIELDS:
            v = getattr(self, k)
            if v is not None:
                f[k] = f"{v:.2f}"
        if self.landmarks is not None:
            f["landmarks"] = encode_landmarks(self.landmarks)
        return f

    @staticmethod
    def from_fields(session_id: str, track_id: int, entry_id: str,
                    fields: dict[str, str]) -> TimelinePoint:
        """Inverse of :meth:`to_fields` given the stream entry ID ``<ts_ms>-<n>``."""
        ts_ms = int(entry_id.split("-")[0])
        probs = {k[2:]: float(v) for k, v in fields.items() if k.startswith("p_")}
        aus = {k: float(v) for k, v in fields.items() if k.startswith("AU")}
        sal = {k[4:]: float(v) for k, v in fields.items() if k.startswith("sal_")}
        pres = {k[2:]: int(v) for k, v in fields.items() if k.startswith("c_AU")}

        def opt(k: str) -> float | None:
            return float(fields[k]) if k in fields else None

        box = tuple(float(fields.get(k, math.nan)) for k in ("x1", "y1", "x2", "y2"))
        return TimelinePoint(session_id, track_id, ts_ms, int(fields.get("pts_ms", 0)),
                             fields.get("emotion", ""), probs, aus, box,  # type: ignore[arg-type]
                             float(fields.get("det", "nan")), sal, opt("valence"), opt("arousal"),
                             pres, *(opt(k) for k in POSE_FIELDS),
                             decode_landmarks(fields["landmarks"]) if "landmarks" in fields
                             else None)


POSE_FIELDS: tuple[str, ...] = ("yaw", "pitch", "roll", "gaze_yaw", "gaze_pitch")
"""Per-face angle fields of a :class:`TimelinePoint`, degrees."""


def encode_landmarks(landmarks: np.ndarray) -> str:
    """(K, D) pixels -> ``"KxD:x0,y0[,z0],x1,..."`` with 0.1 px resolution (a Redis field)."""
    lm = np.asarray(landmarks, np.float32)
    if lm.ndim != 2:
        raise ValueError(f"landmarks must be (K, D), got {lm.shape}")
    return f"{lm.shape[0]}x{lm.shape[1]}:" + ",".join(f"{v:.1f}" for v in lm.ravel())


def decode_landmarks(text: str) -> np.ndarray:
    """Inverse of :func:`encode_landmarks`: (K, D) float32 pixels.

    Raises:
        ValueError: malformed text (the message says what was expected).
    """
    try:
        head, body = text.split(":", 1)
        k, d = (int(x) for x in head.split("x"))
        arr = np.array([float(v) for v in body.split(",")] if body else [], np.float32)
        return arr.reshape(k, d)
    except ValueError as e:
        raise ValueError(f"landmarks field must be 'KxD:' + K*D numbers, got {text[:40]!r}") from e
