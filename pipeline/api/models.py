"""Response models of the query API (pydantic v2; the OpenAPI schema is generated from them)
and the converters from the store's records. Times are epoch milliseconds; AU intensities are on
the FACS 0-5 scale; head pose angles are degrees."""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

from affectstream.operators.records import TimelinePoint
from affectstream.pipeline.store.summary import TrackSummary

MAX_MS = 2**63 - 1
"""Largest epoch-ms (or ms span) a query accepts: Redis stream IDs are 64-bit."""

MAX_TRACK = 2**63 - 1


class Health(BaseModel):
    status: str = Field(description="'ok' when the process serves requests.")


class Ready(BaseModel):
    status: str = Field(description="'ready' when Redis answers.")
    redis_ms: float = Field(description="PING round trip, milliseconds.")


class SessionBrief(BaseModel):
    session_id: str
    updated_ms: int = Field(description="Last update, epoch ms.")
    status: str = Field(description="running | ended | failed | ... ; 'expired' once its keys "
                        "are gone.")
    source: str | None = Field(None, description="Video file, RTSP URL or Kafka topic.")


class SessionList(BaseModel):
    total: int = Field(description="Sessions known in total.")
    offset: int
    limit: int
    sessions: list[SessionBrief]


class SessionDetail(BaseModel):
    session_id: str
    status: str
    source: str | None = None
    created_ms: int | None = Field(None, description="Epoch ms.")
    updated_ms: int | None = Field(None, description="Epoch ms of the newest point.")
    ended_ms: int | None = Field(None, description="Epoch ms, when ended.")
    models: str | None = None
    config_digest: str | None = None
    n_tracks: int
    n_points: int = Field(description="Timeline points stored (all tracks).")


class TrackInfo(BaseModel):
    track_id: int
    first_seen_ms: int = Field(description="Capture time of its first point, epoch ms.")
    n_points: int


class TrackList(BaseModel):
    session_id: str
    tracks: list[TrackInfo]


class Point(BaseModel):
    """One face at one analysed frame."""

    track_id: int
    ts_ms: int = Field(description="Capture time, epoch ms.")
    pts_ms: int = Field(description="Media time, ms from the start of the source.")
    emotion: str = Field(description="Dominant emotion label.")
    emotion_probs: dict[str, float] = Field(description="Label -> probability in [0, 1].")
    au_intensity: dict[str, float] = Field(description="AU id -> intensity, FACS 0–5.")
    bbox_xyxy: list[float] | None = Field(None, description="x1, y1, x2, y2 in pixels.")
    det_score: float | None = Field(None, description="Detection score in [0, 1].")
    saliency: dict[str, float] = Field(default_factory=dict,
                                       description="Face region -> mean saliency in [0, 1].")
    valence: float | None = Field(None, description="In [-1, 1].")
    arousal: float | None = Field(None, description="In [-1, 1].")
    au_presence: dict[str, int] = Field(
        default_factory=dict, description="AU id -> 0/1 occurrence on this frame (AU model "
        "'blendshape': intensity >= 2.0 before smoothing); empty for other AU models.")
    yaw: float | None = Field(None, description="Head yaw, degrees (> 0: face turned toward "
                              "the image's right).")
    pitch: float | None = Field(None, description="Head pitch, degrees (> 0: chin up).")
    roll: float | None = Field(None, description="Head roll, degrees (> 0: counter-clockwise "
                               "in the image).")
    gaze_yaw: float | None = Field(None, description="Gaze yaw, degrees, camera frame (head + "
                                   "eyes from the iris points; uncalibrated, coarse).")
    gaze_pitch: float | None = Field(None, description="Gaze pitch, degrees (weaker than yaw).")
    landmarks: list[list[float]] | None = Field(
        None, description="Face landmarks, frame pixels: 478 x [x, y, z] (FaceMesh V2) or 468 x "
        "[x, y]; only with inference.store_landmarks.")


class Timeline(BaseModel):
    session_id: str
    track: int | None
    from_ms: int | None
    to_ms: int | None
    every_ms: int | None
    count: int
    truncated: bool = Field(description="More points matched than `limit`.")
    points: list[Point]


class AUPeak(BaseModel):
    value: float = Field(description="Highest intensity, FACS 0–5.")
    ts_ms: int = Field(description="When it was first reached, epoch ms.")


class TrackSummaryOut(BaseModel):
    track_id: int
    n_points: int
    first_ts_ms: int
    last_ts_ms: int
    duration_ms: int = Field(description="last_ts_ms - first_ts_ms.")
    emotion_shares: dict[str, float] = Field(
        description="Dominant label -> fraction of the track's points.")
    au_mean: dict[str, float] = Field(description="AU id -> mean intensity, FACS 0–5.")
    au_peak: dict[str, AUPeak]
    valence_mean: float | None = None
    arousal_mean: float | None = None


class Summary(BaseModel):
    session_id: str
    n_tracks: int
    n_points: int
    emotion_shares: dict[str, float] = Field(
        description="Dominant label -> fraction of all points of the session.")
    tracks: list[TrackSummaryOut]


class ErrorOut(BaseModel):
    detail: str


def _num(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def point_out(p: TimelinePoint) -> Point:
    """API form of a :class:`~operators.records.TimelinePoint` (NaNs become null)."""
    box = [float(v) for v in p.bbox_xyxy]
    return Point(track_id=p.track_id, ts_ms=p.ts_ms, pts_ms=p.pts_ms, emotion=p.emotion,
                 emotion_probs=p.emotion_probs, au_intensity=p.au_intensity,
                 bbox_xyxy=None if any(math.isnan(v) for v in box) else box,
                 det_score=_num(p.det_score), saliency=p.saliency, valence=_num(p.valence),
                 arousal=_num(p.arousal), au_presence=p.au_presence, yaw=_num(p.yaw),
                 pitch=_num(p.pitch), roll=_num(p.roll), gaze_yaw=_num(p.gaze_yaw),
                 gaze_pitch=_num(p.gaze_pitch),
                 landmarks=None if p.landmarks is None else p.landmarks.tolist())


def summary_out(s: TrackSummary) -> TrackSummaryOut:
    return TrackSummaryOut(
        track_id=s.track_id, n_points=s.n_points, first_ts_ms=s.first_ts_ms,
        last_ts_ms=s.last_ts_ms, duration_ms=s.duration_ms, emotion_shares=s.emotion_shares,
        au_mean=s.au_mean, au_peak={k: AUPeak(value=v, ts_ms=t) for k, (v, t) in s.au_peak.items()},
        valence_mean=s.valence_mean, arousal_mean=s.arousal_mean)


def _opt_int(v: str | None) -> int | None:
    try:
        return int(v) if v not in (None, "") else None
    except ValueError:
        return None
