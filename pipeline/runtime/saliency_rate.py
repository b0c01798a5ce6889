"""Saliency per track at a configurable rate (maps change slowly; Grad-CAM is the costliest step).

The runner asks inference for a fresh map only for faces due one (a track's first frame, then
every ``inference.saliency_interval_ms`` of media time); the frames in between carry the track's
last map.
"""

from __future__ import annotations

import numpy as np

from affectstream.operators.facetrack import TrackedFrame


class SaliencyRate:
    """Which faces need a fresh saliency map, and the held maps for the others.

    Args:
        interval_ms: media time between two maps of one track, ms; 0 = a map on every frame.
    """

    def __init__(self, interval_ms: int = 0) -> None:
        self.interval_ms = interval_ms
        self._asked: dict[int, int] = {}        # track -> pts_ms of the last map requested
        self._last: dict[int, np.ndarray] = {}  # track -> last map received (6,)

    def mask(self, t: TrackedFrame) -> np.ndarray | None:
        """Faces due for a fresh saliency map (the track's first frame, then every interval)."""
        for tid in t.ended_tracks:
            self._asked.pop(tid, None)
        if self.interval_ms <= 0:
            return None
        mask = np.zeros(len(t.faces), bool)
        for i, tid in enumerate(t.faces.track_id.tolist()):
            last = self._asked.get(tid)
            if last is None or t.pts_ms - last >= self.interval_ms:
                mask[i] = True
                self._asked[tid] = t.pts_ms
        return mask

    def fill(self, t: TrackedFrame, sal: np.ndarray | None) -> np.ndarray | None:
        """Rows not computed this frame (NaN) take the track's last map."""
        for tid in t.ended_tracks:
            self._last.pop(tid, None)
        if sal is None:
            return None
        sal = sal.copy()
        for i, tid in enumerate(t.faces.track_id.tolist()):
            if np.isnan(sal[i]).any():
                last = self._last.get(tid)
                if last is not None:
                    sal[i] = last
            else:
                self._last[tid] = sal[i]
        return None if np.isnan(sal).any() else sal
