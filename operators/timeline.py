"""Turning one analysed frame into smoothed timeline points (stateful per session).

Combines the geometric AU estimator (per-track neutral baseline), the temporal smoother and the
record encoding; frees per-track state when the tracker ends a track.
"""

from __future__ import annotations

import numpy as np

from affectstream.operators.au_geometric import GeometricAU
from affectstream.operators.records import DISFA_AUS, FACE_REGIONS, Faces, TimelinePoint
from affectstream.operators.smoothing import Smoother


class TimelineBuilder:
    """Per-session: (tracked faces, inference output) -> list of :class:`TimelinePoint`.

    Args:
        smoother: the session's :class:`Smoother`.
        emotion_labels: labels of the expression model's probability columns (canonical names).
        geometric_au: estimator used when inference returns no learned AUs.
    """

    def __init__(self, smoother: Smoother, emotion_labels: tuple[str, ...],
                 geometric_au: GeometricAU | None = None) -> None:
        self.smoother = smoother
        self.labels = tuple(emotion_labels)
        self.geo = geometric_au or GeometricAU()

    def snapshot(self) -> dict:
        """Per-session state (smoother tracks, AU baselines), picklable."""
        return {"smoother": self.smoother.snapshot(), "geo": self.geo.snapshot()}

    def restore(self, state: dict) -> None:
        """Continue from a :meth:`snapshot`."""
        self.smoother.restore(state["smoother"])
        self.geo.restore(state["geo"])

    def end_tracks(self, track_ids: list[int]) -> None:
        for t in track_ids:
            self.smoother.end_track(t)
            self.geo.end_track(t)

    def build(self, session_id: str, ts_ms: int, pts_ms: int, faces: Faces, probs: np.ndarray,
              saliency: np.ndarray | None, au: np.ndarray | None) -> list[TimelinePoint]:
        """Smooth and encode one frame.

        Args:
            session_id: session.
            ts_ms: capture time (epoch ms); pts_ms: media time (ms).
            faces: tracked faces (N) with FaceMesh landmarks (N,468,2) when AUs are geometric.
            probs: (N, E) emotion probabilities.
            saliency: (N, 6) per-region saliency or None.
            au: (N, 12) learned AU intensities or None (geometric estimate from landmarks).

        Returns:
            One point per face, in face order.
        """
        n = len(faces)
        if n == 0:
            return []
        if au is None:
            if faces.landmarks is None or faces.landmarks.shape[1] != 468:
                au = np.zeros((n, len(DISFA_AUS)), np.float32)
            else:
                au = self.geo.update(faces.track_id, faces.landmarks)
        out = []
        for i in range(n):
            tid = int(faces.track_id[i])
            p, lab, a, s = self.smoother.update(
                tid, pts_ms, probs[i], au[i], None if saliency is None else saliency[i])
            out.append(TimelinePoint(
                session_id=session_id, track_id=tid, ts_ms=int(ts_ms), pts_ms=int(pts_ms),
                emotion=self.labels[lab],
                emotion_probs={k: float(v) for k, v in zip(self.labels, p)},
                au_intensity={k: float(v) for k, v in zip(DISFA_AUS, a)},
                bbox_xyxy=tuple(float(v) for v in faces.bbox_xyxy[i]),  # type: ignore[arg-type]
                det_score=float(faces.det_score[i]),
                saliency={} if s is None else {k: float(v) for k, v in zip(FACE_REGIONS, s)}))
        return out
