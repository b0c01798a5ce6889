"""Turning one analysed frame into smoothed timeline points (stateful per session).

Combines the geometric AU estimator (per-track neutral baseline; used only when the inference
returned no AUs, i.e. ``au_model: geometric``), the temporal smoother and the record encoding;
frees per-track state when the tracker ends a track. AU intensities (learned or geometric) and
emotion probabilities are smoothed; when the AU model reports presence, a point's presence is its
*smoothed* intensity >= ``presence_threshold`` (the AU model's own rule, 2.0 for ``blendshape``),
so ``AU12_c`` always agrees with ``AU12_r``. Head pose and gaze are this frame's values.
"""

from __future__ import annotations

import numpy as np

from affectstream.operators.au_geometric import GeometricAU
from affectstream.operators.records import (AU_OCCURRENCE_THRESHOLD, DISFA_AUS, FACE_REGIONS, Faces,
                                            TimelinePoint)
from affectstream.operators.smoothing import Smoother


class TimelineBuilder:
    """Per-session: (tracked faces, inference output) -> list of :class:`TimelinePoint`.

    Args:
        smoother: the session's :class:`Smoother`.
        emotion_labels: labels of the expression model's probability columns (canonical names).
        geometric_au: estimator used when inference returns no learned AUs.
        store_landmarks: put each face's landmarks in its point (``TimelinePoint.landmarks``).
        presence_threshold: smoothed AU intensity (0–5) from which an AU is present, applied
            when the inference reports presence (:data:`operators.records.AU_OCCURRENCE_THRESHOLD`).
    """

    def __init__(self, smoother: Smoother, emotion_labels: tuple[str, ...],
                 geometric_au: GeometricAU | None = None, store_landmarks: bool = False,
                 presence_threshold: float = AU_OCCURRENCE_THRESHOLD) -> None:
        self.smoother = smoother
        self.labels = tuple(emotion_labels)
        self.geo = geometric_au or GeometricAU()
        self.store_landmarks = store_landmarks
        self.presence_threshold = presence_threshold

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
              saliency: np.ndarray | None, au: np.ndarray | None, *,
              au_presence: np.ndarray | None = None, pose: np.ndarray | None = None,
              gaze: np.ndarray | None = None, landmarks3d: np.ndarray | None = None
              ) -> list[TimelinePoint]:
        """Smooth and encode one frame.

        Args:
            session_id: session.
            ts_ms: capture time (epoch ms); pts_ms: media time (ms).
            faces: tracked faces (N) with FaceMesh landmarks (N,468,2) when AUs are geometric.
            probs: (N, E) emotion probabilities.
            saliency: (N, 6) per-region saliency or None.
            au: (N, 12) learned AU intensities or None (geometric estimate from landmarks).
            au_presence: (N, 12) 0/1 per-frame AU presence from the AU model, or None (then
                points carry no presence); points re-decide it on the smoothed intensity.
            pose: (N, 3) head yaw, pitch, roll in degrees, or None.
            gaze: (N, 2) gaze yaw, pitch in degrees, or None.
            landmarks3d: (N, 478, 3) FaceMesh V2 frame-pixel landmarks, or None; stored (instead
                of ``faces.landmarks``) when ``store_landmarks``.

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
        lms = None
        if self.store_landmarks:
            lms = landmarks3d if landmarks3d is not None else faces.landmarks
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
                saliency={} if s is None else {k: float(v) for k, v in zip(FACE_REGIONS, s)},
                au_presence={} if au_presence is None
                else {k: int(v >= self.presence_threshold) for k, v in zip(DISFA_AUS, a)},
                **_angles(pose, gaze, i),
                landmarks=None if lms is None else np.asarray(lms[i], np.float32)))
        return out


def _angles(pose: np.ndarray | None, gaze: np.ndarray | None, i: int) -> dict[str, float]:
    """``yaw``/``pitch``/``roll`` and ``gaze_yaw``/``gaze_pitch`` of face ``i`` (those given)."""
    out: dict[str, float] = {}
    if pose is not None:
        out.update(yaw=float(pose[i, 0]), pitch=float(pose[i, 1]), roll=float(pose[i, 2]))
    if gaze is not None:
        out.update(gaze_yaw=float(gaze[i, 0]), gaze_pitch=float(gaze[i, 1]))
    return out
