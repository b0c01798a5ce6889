"""Overlay drawing: face boxes, track ids, the dominant emotion and the top AUs on a frame.

Pure numpy/OpenCV (no Redis, no Ray). :class:`FrameMatcher` decides which stored timeline points
are shown on each decoded frame; :func:`draw_faces` draws them.

Matching (points exist only for analysed frames): a point belongs to the frame with the same
``pts_ms`` (media time from the first frame, ms, as :class:`operators.decode.VideoSource` emits
it). On frames in between — ``analysis_fps`` below the video's rate — each track's last box is
held for at most ``hold_ms``; after that the face is drawn no more until its next point.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import cv2
import numpy as np

from affectstream.operators.records import TimelinePoint

_PALETTE = np.array([  # RGB, distinct on light and dark backgrounds
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (170, 110, 40)], np.uint8)


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable RGB colour for a track id (ids start at 1)."""
    c = _PALETTE[(int(track_id) - 1) % len(_PALETTE)]
    return int(c[0]), int(c[1]), int(c[2])


def face_lines(p: TimelinePoint, top_aus: int = 3, au_min: float = 0.5) -> tuple[str, str]:
    """The two text lines drawn for one face.

    Returns:
        ``("#<track_id> <emotion> <prob %>", "AU12 2.3 AU06 1.1 ...")``: the dominant emotion with
        its probability (0–100 %) and the ``top_aus`` most intense AUs at or above ``au_min``
        (FACS intensity 0–5); the second line is empty when no AU reaches ``au_min``.
    """
    prob = p.emotion_probs.get(p.emotion, 0.0)
    head = f"#{p.track_id} {p.emotion} {100 * prob:.0f}%"
    aus = sorted(((k, v) for k, v in p.au_intensity.items() if v >= au_min),
                 key=lambda kv: (-kv[1], kv[0]))[:top_aus]
    return head, " ".join(f"{k} {v:.1f}" for k, v in aus)


def draw_faces(image: np.ndarray, points: Sequence[TimelinePoint], scale: float = 1.0,
               top_aus: int = 3, au_min: float = 0.5) -> np.ndarray:
    """Draw every face of ``points`` onto ``image`` in place.

    Args:
        image: (H, W, 3) uint8 RGB frame, C-contiguous; modified in place.
        points: the faces to draw (one point per track).
        scale: factor from the analysed frame's pixels (``bbox_xyxy``) to ``image`` pixels
            (>1 when the analysis downscaled wide frames).
        top_aus / au_min: AUs shown per face (see :func:`face_lines`).

    Returns:
        ``image``.

    Raises:
        ValueError: ``image`` is not (H, W, 3) uint8.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 of shape (H, W, 3), got {image.dtype} "
                         f"{image.shape}")
    h, w = image.shape[:2]
    thick = max(1, round(min(h, w) / 240))
    font_scale = max(0.4, min(h, w) / 720)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for p in points:
        x1, y1, x2, y2 = (int(round(v * scale)) for v in p.bbox_xyxy)
        x1, x2 = max(0, min(x1, w - 1)), max(0, min(x2, w - 1))
        y1, y2 = max(0, min(y1, h - 1)), max(0, min(y2, h - 1))
        color = track_color(p.track_id)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        lines = [t for t in face_lines(p, top_aus, au_min) if t]
        sizes = [cv2.getTextSize(t, font, font_scale, thick)[0] for t in lines]
        line_h = max(s[1] for s in sizes) + 6 * thick
        box_w = max(s[0] for s in sizes) + 6
        box_h = line_h * len(lines)
        top = y1 - box_h if y1 - box_h >= 0 else min(y2, h - box_h)  # above the box, else below
        left = min(x1, max(0, w - box_w))
        cv2.rectangle(image, (left, max(0, top)), (left + box_w, top + box_h), color, cv2.FILLED)
        ink = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
        for i, t in enumerate(lines):
            base = top + (i + 1) * line_h - 4 * thick
            cv2.putText(image, t, (left + 3, base), font, font_scale, ink, thick, cv2.LINE_AA)
    return image


class FrameMatcher:
    """Which timeline points to draw on each frame, frames visited in increasing ``pts_ms``.

    Args:
        points: a session's points (any order, any tracks).
        hold_ms: longest a track's last point is shown on later frames without a point of its
            own (media ms); None = estimated as 1.5x the median gap between a track's points
            (at least 1 ms), so a track sampled at ``analysis_fps`` stays drawn between samples
            but not after it is lost.
        tolerance_ms: a point at most this much after a frame's time still counts for it.
    """

    def __init__(self, points: Iterable[TimelinePoint], hold_ms: float | None = None,
                 tolerance_ms: float = 1.0) -> None:
        self.points = sorted(points, key=lambda q: (q.pts_ms, q.track_id))
        self.hold_ms = self.estimate_hold_ms(self.points) if hold_ms is None else float(hold_ms)
        self.tolerance_ms = tolerance_ms
        self._i = 0
        self._last: dict[int, TimelinePoint] = {}

    @staticmethod
    def estimate_hold_ms(points: Sequence[TimelinePoint]) -> float:
        """1.5x the median gap (ms) between consecutive points of one track; 1 when unknown."""
        by_track: dict[int, list[int]] = {}
        for p in points:
            by_track.setdefault(p.track_id, []).append(p.pts_ms)
        gaps = [d for ts in by_track.values() for d in np.diff(sorted(ts)) if d > 0]
        return max(1.0, 1.5 * float(np.median(gaps))) if gaps else 1.0

    def at(self, pts_ms: float) -> list[TimelinePoint]:
        """Points to draw on the frame at ``pts_ms`` (media ms); call with increasing times.

        Returns:
            One point per track, by track id: the track's latest point at or before ``pts_ms``
            (within ``tolerance_ms``) if no older than ``hold_ms``.
        """
        while (self._i < len(self.points)
               and self.points[self._i].pts_ms <= pts_ms + self.tolerance_ms):
            p = self.points[self._i]
            self._last[p.track_id] = p
            self._i += 1
        keep = {t: p for t, p in self._last.items() if pts_ms - p.pts_ms <= self.hold_ms}
        self._last = keep
        return [keep[t] for t in sorted(keep)]
