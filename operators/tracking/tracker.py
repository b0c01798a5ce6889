"""ByteTrack-style multi-face tracker with time-aware Kalman prediction.

Association per frame (Zhang et al., "ByteTrack", ECCV 2022, §3):
  1. high-score detections (``>= high_score_thresh``) vs every live track (active and lost) by IoU
     of the Kalman-predicted box;
  2. remaining low-score detections vs the still-unmatched *active* tracks (recovers faces whose
     score dipped, e.g. under motion blur or partial occlusion);
  3. unmatched high-score detections with score ``>= new_track_thresh`` start new tracks;
  4. a track unmatched for longer than ``lost_track_buffer_ms`` (media time) ends.
Times are media times (``pts_ms``), so the buffer means the same whatever the frame rate.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from affectstream.operators.records import Faces
from affectstream.operators.tracking.kalman import BoxKalman
from affectstream.operators.tracking.matching import assign, iou_matrix


@dataclasses.dataclass
class _Track:
    track_id: int
    kf: BoxKalman
    last_ms: int
    hits: int = 1
    lost: bool = False


@dataclasses.dataclass
class TrackerState:
    """Picklable tracker state (``snapshot()``/``restore()``)."""

    tracks: list
    next_id: int
    last_ms: int | None


class FaceTracker:
    """Assigns stable ``track_id`` (>= 1) to the faces of consecutive frames of one session.

    Args:
        high_score_thresh: detections at or above this enter the first association stage.
        new_track_thresh: score needed to start a new track.
        iou_match_thresh: minimum IoU between a predicted track box and a detection.
        lost_track_buffer_ms: a track unmatched this long (media ms) ends; a face re-found within
            the buffer keeps its id.
        min_hits: matched frames before a track's faces are reported.
    """

    def __init__(self, high_score_thresh: float = 0.6, new_track_thresh: float = 0.65,
                 iou_match_thresh: float = 0.2, lost_track_buffer_ms: int = 2000,
                 min_hits: int = 1) -> None:
        self.high = high_score_thresh
        self.new = new_track_thresh
        self.iou_thresh = iou_match_thresh
        self.buffer_ms = lost_track_buffer_ms
        self.min_hits = min_hits
        self.reset()

    def reset(self) -> None:
        """Forget every track; ids restart at 1."""
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._last_ms: int | None = None
        self.ended: list[int] = []

    def snapshot(self) -> TrackerState:
        return TrackerState(self._tracks, self._next_id, self._last_ms)

    def restore(self, state: TrackerState) -> None:
        self._tracks, self._next_id, self._last_ms = state.tracks, state.next_id, state.last_ms

    @property
    def active_ids(self) -> list[int]:
        return [t.track_id for t in self._tracks if not t.lost]

    def update(self, faces: Faces, t_ms: int) -> Faces:
        """Track one frame's detections.

        Args:
            faces: detections of the frame (``track_id`` ignored).
            t_ms: media time of the frame (ms), non-decreasing.

        Returns:
            The reported faces: one row per track matched in this frame (box = the detection,
            ``track_id`` set), other columns taken from the matched detection, in detection order.
            Ids of tracks ended by this update are in ``self.ended``.

        Raises:
            ValueError: ``t_ms`` earlier than the previous frame's.
        """
        if self._last_ms is not None and t_ms < self._last_ms:
            raise ValueError(f"t_ms must not decrease: {t_ms} < {self._last_ms}")
        dt = 0 if self._last_ms is None else t_ms - self._last_ms
        self._last_ms = t_ms
        pred = np.array([t.kf.predict(dt) for t in self._tracks]).reshape(-1, 4)

        boxes, scores = faces.bbox_xyxy, faces.det_score
        hi = np.flatnonzero(scores >= self.high)
        lo = np.flatnonzero(scores < self.high)
        det_to_track: dict[int, int] = {}

        # stage 1: high-score detections vs all tracks
        m1, un_tracks, un_hi = assign(iou_matrix(pred, boxes[hi]), self.iou_thresh)
        for ti, dj in m1:
            det_to_track[int(hi[dj])] = ti
        # stage 2: low-score detections vs unmatched active tracks
        act = [ti for ti in un_tracks if not self._tracks[ti].lost]
        m2, _, _ = assign(iou_matrix(pred[act], boxes[lo]), self.iou_thresh)
        for ai, dj in m2:
            det_to_track[int(lo[dj])] = act[ai]

        for d, ti in det_to_track.items():
            tr = self._tracks[ti]
            tr.kf.update(boxes[d])
            tr.last_ms = t_ms
            tr.hits += 1
            tr.lost = False
        matched = set(det_to_track.values())
        for ti, tr in enumerate(self._tracks):
            if ti not in matched:
                tr.lost = True
        # stage 3: new tracks
        for dj in un_hi:
            d = int(hi[dj])
            if scores[d] >= self.new:
                self._tracks.append(_Track(self._next_id, BoxKalman(boxes[d]), t_ms))
                det_to_track[d] = len(self._tracks) - 1
                self._next_id += 1
        # stage 4: end tracks lost too long
        self.ended = [t.track_id for t in self._tracks if t.lost and t_ms - t.last_ms > self.buffer_ms]
        keep_ids = {t.track_id for t in self._tracks} - set(self.ended)

        rows = sorted(d for d, ti in det_to_track.items()
                      if self._tracks[ti].hits >= self.min_hits)
        ids = np.array([self._tracks[det_to_track[d]].track_id for d in rows], np.int64)
        self._tracks = [t for t in self._tracks if t.track_id in keep_ids]
        idx = np.array(rows, np.int64)
        return Faces(boxes[idx], scores[idx], ids,
                     None if faces.landmarks is None else faces.landmarks[idx])
