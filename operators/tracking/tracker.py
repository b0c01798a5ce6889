"""ByteTrack-style multi-face tracker with time-aware Kalman prediction.

Association per frame (Zhang et al., "ByteTrack", ECCV 2022, §3 and its reference code):
  1. high-score detections (``>= high_score_thresh``) vs every live track (confirmed, lost and
     tentative) by IoU of the Kalman-predicted box;
  2. remaining low-score detections vs the still-unmatched tracks (recovers faces whose score
     dipped, e.g. under motion blur or partial occlusion). Unlike ByteTrack, lost tracks take part
     too: a face that scores low most of the time would otherwise get a new id after every miss;
  3. unmatched detections start tracks: at once (confirmed) when the score is
     ``>= new_track_thresh``, otherwise *tentative*. A tentative track is confirmed once it has
     been matched in every frame for ``activation_ms`` (ByteTrack's activation of unconfirmed
     tracks, in media time); one missed frame deletes it. Only confirmed tracks get an id and are
     reported, so a face that the detector keeps finding becomes a track whatever its score,
     while a one-frame false detection never does;
  4. a confirmed track unmatched for longer than ``lost_track_buffer_ms`` (media time) ends.
Times are media times (``pts_ms``), so the buffers mean the same whatever the frame rate.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from affectstream.operators.records import Faces
from affectstream.operators.tracking.kalman import BoxKalman
from affectstream.operators.tracking.matching import assign, iou_matrix


@dataclasses.dataclass
class _Track:
    track_id: int  # 0 while tentative
    kf: BoxKalman
    last_ms: int
    hits: int = 1
    lost: bool = False
    confirmed: bool = True
    start_ms: int = 0


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
        new_track_thresh: score that starts a confirmed track at once; unmatched detections below
            it start tentative tracks.
        iou_match_thresh: minimum IoU between a predicted track box and a detection.
        lost_track_buffer_ms: a track unmatched this long (media ms) ends; a face re-found within
            the buffer keeps its id.
        min_hits: matched frames before a track's faces are reported.
        activation_ms: media time (ms) a tentative track must be matched in every frame before
            it is confirmed, gets an id and is reported; 60 ms is 3 frames at 25-30 fps and 2 at
            10 fps. 0 confirms every detection at once. Larger values suppress more flickering
            false detections but report a low-scoring face later.

    Raises:
        ValueError: a negative ``activation_ms``.
    """

    def __init__(self, high_score_thresh: float = 0.6, new_track_thresh: float = 0.65,
                 iou_match_thresh: float = 0.2, lost_track_buffer_ms: int = 2000,
                 min_hits: int = 1, activation_ms: int = 60) -> None:
        if activation_ms < 0:
            raise ValueError(f"activation_ms must be >= 0, got {activation_ms}")
        self.high = high_score_thresh
        self.new = new_track_thresh
        self.iou_thresh = iou_match_thresh
        self.buffer_ms = lost_track_buffer_ms
        self.min_hits = min_hits
        self.activation_ms = activation_ms
        self.reset()

    def reset(self) -> None:
        """Forget every track; ids restart at 1."""
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._last_ms: int | None = None
        self.ended: list[int] = []

    def snapshot(self) -> TrackerState:
        """The tracker's state (tracks, next id, last frame time), for :meth:`restore`."""
        return TrackerState(self._tracks, self._next_id, self._last_ms)

    def restore(self, state: TrackerState) -> None:
        """Continue from a :meth:`snapshot` (states saved before tentative tracks existed load
        as all-confirmed)."""
        self._tracks, self._next_id, self._last_ms = state.tracks, state.next_id, state.last_ms

    @property
    def active_ids(self) -> list[int]:
        """Ids of the confirmed tracks matched in the last frame."""
        return [t.track_id for t in self._tracks if not t.lost and t.confirmed]

    def update(self, faces: Faces, t_ms: int) -> Faces:
        """Track one frame's detections.

        Args:
            faces: detections of the frame (``track_id`` ignored).
            t_ms: media time of the frame (ms), non-decreasing.

        Returns:
            The reported faces: one row per confirmed track matched in this frame (box = the
            detection, ``track_id`` set), other columns taken from the matched detection, in
            detection order. Ids of tracks ended by this update are in ``self.ended``.

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
        # stage 2: low-score detections vs the unmatched tracks
        m2, _, un_lo = assign(iou_matrix(pred[un_tracks], boxes[lo]), self.iou_thresh)
        for ai, dj in m2:
            det_to_track[int(lo[dj])] = un_tracks[ai]

        for d, ti in det_to_track.items():
            tr = self._tracks[ti]
            tr.kf.update(boxes[d])
            tr.last_ms = t_ms
            tr.hits += 1
            tr.lost = False
            if not tr.confirmed and t_ms - tr.start_ms >= self.activation_ms:
                self._confirm(tr)
        matched = set(det_to_track.values())
        for ti, tr in enumerate(self._tracks):
            if ti not in matched:
                tr.lost = True
        # stage 3: new tracks, confirmed at once or tentative
        for d in sorted([int(hi[j]) for j in un_hi] + [int(lo[j]) for j in un_lo]):
            tr = _Track(0, BoxKalman(boxes[d]), t_ms, confirmed=False, start_ms=t_ms)
            if scores[d] >= self.new or self.activation_ms == 0:
                self._confirm(tr)
            self._tracks.append(tr)
            det_to_track[d] = len(self._tracks) - 1
        # stage 4: end confirmed tracks lost too long; drop tentative tracks missed once
        self.ended = [t.track_id for t in self._tracks
                      if t.confirmed and t.lost and t_ms - t.last_ms > self.buffer_ms]
        dead = set(self.ended)
        rows = sorted(d for d, ti in det_to_track.items()
                      if self._tracks[ti].confirmed and self._tracks[ti].hits >= self.min_hits)
        ids = np.array([self._tracks[det_to_track[d]].track_id for d in rows], np.int64)
        self._tracks = [t for t in self._tracks if (t.confirmed and t.track_id not in dead)
                        or (not t.confirmed and not t.lost)]
        idx = np.array(rows, np.int64)
        return Faces(boxes[idx], scores[idx], ids,
                     None if faces.landmarks is None else faces.landmarks[idx])

    def _confirm(self, tr: _Track) -> None:
        tr.confirmed = True
        tr.track_id = self._next_id
        self._next_id += 1
