"""The landmark-driven heads of the batched inference: blendshapes -> AUs, head pose, gaze.

Used by :class:`operators.analyze.FaceAnalyzer` when ``au_model="blendshape"``: the face-track
stage sends each face's FaceMesh V2 landmarks (478 x 3, frame pixels) with its crop, and this
runs, over all faces of all frames of one batched forward:

1. the blendshape model (:mod:`models.face_blendshapes`, MLP-Mixer, 146 of the landmarks ->
   52 scores in 0–1), in chunks of ``max_batch_size`` faces;
2. :class:`operators.au_blendshape.BlendshapeAU`: the 12 DISFA AU intensities (FACS 0–5) and
   presence (0/1), single-frame, no per-track baseline;
3. :func:`operators.head_pose.head_pose`: yaw, pitch, roll in degrees (weighted Procrustes fit of
   MediaPipe's canonical face, weak perspective);
4. :func:`operators.head_pose.gaze`: gaze yaw/pitch in degrees (head + eye-in-head from the iris
   points; uncalibrated, coarse — see that module).

Plain torch + numpy; no Ray/Redis/Kafka.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from affectstream.operators.records import AU_OCCURRENCE_THRESHOLD, DISFA_AUS

N_LANDMARKS_V2 = 478
"""FaceMesh V2 points: the 468 of FaceMesh V1 (same topology) + 10 iris points."""


@dataclasses.dataclass(frozen=True)
class LandmarkHeads:
    """Per-face outputs of :class:`LandmarkAnalyzer` (structure-of-arrays, N faces).

    Attributes:
        au: (N, 12) float32 AU intensities, FACS 0–5, :data:`operators.records.DISFA_AUS` order.
        au_presence: (N, 12) uint8 0/1, intensity >= the presence threshold (default 2.0).
        pose: (N, 3) float32 ``[yaw, pitch, roll]`` degrees (signs: :mod:`operators.head_pose`).
        gaze: (N, 2) float32 ``[gaze_yaw, gaze_pitch]`` degrees, camera frame, head + eyes.
        blendshapes: (N, 52) float32 scores 0–1 (:data:`models.face_blendshapes.BLENDSHAPE_NAMES`).
    """

    au: np.ndarray
    au_presence: np.ndarray
    pose: np.ndarray
    gaze: np.ndarray
    blendshapes: np.ndarray

    @staticmethod
    def empty() -> LandmarkHeads:
        a = len(DISFA_AUS)
        return LandmarkHeads(np.zeros((0, a), np.float32), np.zeros((0, a), np.uint8),
                             np.zeros((0, 3), np.float32), np.zeros((0, 2), np.float32),
                             np.zeros((0, 52), np.float32))


class LandmarkAnalyzer:
    """Blendshapes, AUs, head pose and gaze of many faces from their FaceMesh V2 landmarks.

    Args:
        device: torch device of the blendshape model (it is small: float32 everywhere).
        presence_threshold: AU intensity (0–5) at and above which ``au_presence`` is 1.
        max_batch_size: faces per blendshape forward.

    Raises:
        ValueError: bad threshold or batch size.
    """

    def __init__(self, device: str | torch.device = "cpu", presence_threshold: float = AU_OCCURRENCE_THRESHOLD,
                 max_batch_size: int = 256) -> None:
        from affectstream.models import create_model
        from affectstream.models.face_blendshapes import LANDMARK_SUBSET
        from affectstream.operators.au_blendshape import BlendshapeAU

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.device = torch.device(device)
        self.blend = create_model("face_blendshapes").to(self.device).eval()
        self.au = BlendshapeAU(presence_threshold)
        self.max_batch_size = max_batch_size
        self._subset = torch.as_tensor(LANDMARK_SUBSET, device=self.device)

    @torch.inference_mode()
    def blendshapes(self, landmarks3d: np.ndarray) -> np.ndarray:
        """(N, 478, 3) frame-pixel landmarks -> (N, 52) float32 blendshape scores in 0–1."""
        pts = torch.from_numpy(np.ascontiguousarray(landmarks3d[..., :2], np.float32))
        pts = pts.to(self.device)[:, self._subset]
        out = [self.blend(pts[i:i + self.max_batch_size]).float().cpu().numpy()
               for i in range(0, len(pts), self.max_batch_size)]
        return np.concatenate(out).astype(np.float32)

    def __call__(self, landmarks3d: np.ndarray) -> LandmarkHeads:
        """Run every head on N faces.

        Args:
            landmarks3d: (N, 478, 3) float32 FaceMesh V2 landmarks: x, y frame pixels, z relative
                depth in the same pixel scale (:class:`operators.face_mesh_v2.FaceMeshV2Faces`).

        Raises:
            ValueError: not (N, 478, 3).
        """
        lm = np.asarray(landmarks3d, np.float32)
        if lm.ndim != 3 or lm.shape[1:] != (N_LANDMARKS_V2, 3):
            raise ValueError(f"landmarks3d must be (N, 478, 3) FaceMesh V2 points, got {lm.shape}")
        if len(lm) == 0:
            return LandmarkHeads.empty()
        from affectstream.operators.head_pose import gaze, head_pose

        bs = self.blendshapes(lm)
        au, presence = self.au(bs, lm)
        pose = head_pose(lm)
        return LandmarkHeads(au, presence, pose, gaze(lm, pose), bs)
