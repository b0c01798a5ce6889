"""FaceMesh V2 (478 landmarks incl. iris) and the 52 face blendshapes, batched over many faces.

Plain numpy + OpenCV + torch; no Ray/Redis/Kafka. Crops follow MediaPipe's face landmarker (square
ROI ``roi_scale`` x the detector box, rotated upright by the eye line; see
:mod:`operators.landmarks`), all faces of all frames go through :mod:`models.facemesh_v2` in chunks
of ``max_batch_size``, landmarks are mapped back to frame pixels, and the blendshape model
(:mod:`models.face_blendshapes`) reads their 146-point subset in frame pixels — what MediaPipe
feeds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from affectstream.models.face_blendshapes import BLENDSHAPE_NAMES, LANDMARK_SUBSET
from affectstream.operators.landmarks import crop_rois, face_rois, roi_to_frame


@dataclasses.dataclass(frozen=True)
class FaceMeshV2Faces:
    """FaceMesh V2 + blendshapes for the faces of one frame.

    Attributes:
        landmarks: (N, 478, 3) float32; x, y frame pixels, z relative depth in frame-pixel scale
            (smaller = nearer). 468..477 are the iris points.
        presence: (N,) float32 in [0, 1], probability that the ROI holds a face.
        blendshapes: (N, 52) float32 in [0, 1], :data:`models.face_blendshapes.BLENDSHAPE_NAMES`;
            None when the landmarker runs without them (``blendshapes=False``).
    """

    landmarks: np.ndarray
    presence: np.ndarray
    blendshapes: np.ndarray | None

    def __post_init__(self) -> None:
        n = len(self.landmarks)
        for name, arr, shape in (("landmarks", self.landmarks, (n, 478, 3)),
                                 ("presence", self.presence, (n,)),
                                 ("blendshapes", self.blendshapes, (n, len(BLENDSHAPE_NAMES)))):
            if arr is None and name == "blendshapes":
                continue
            if arr.dtype != np.float32 or arr.shape != shape:
                raise ValueError(f"{name} must be float32 of shape {shape}, "
                                 f"got {arr.dtype} {arr.shape}")

    def __len__(self) -> int:
        return len(self.landmarks)


class FaceMeshV2Landmarker:
    """FaceMesh V2 and blendshapes on many faces of many frames.

    Args:
        device: torch device.
        roi_scale: ROI side / detector box long side (MediaPipe: 1.5).
        max_batch_size: faces per forward pass.
        half: run in float16 (CUDA only; ignored on CPU).
        blendshapes: also run the blendshape model (False: landmarks only, e.g. in the face-track
            stage when blendshapes run in the batched inference, :mod:`operators.au_landmarks`).

    Raises:
        ValueError: roi_scale <= 0 or max_batch_size < 1.
    """

    input_size = 256

    def __init__(self, device: str | torch.device = "cpu", roi_scale: float = 1.5,
                 max_batch_size: int = 64, half: bool = False, blendshapes: bool = True) -> None:
        if roi_scale <= 0 or max_batch_size < 1:
            raise ValueError("roi_scale must be > 0 and max_batch_size >= 1")
        from affectstream.models import create_model

        self.device = torch.device(device)
        self.dtype = torch.float16 if half and self.device.type == "cuda" else torch.float32
        self.mesh = create_model("facemesh_v2").to(self.device, self.dtype,
                                                   memory_format=torch.channels_last).eval()
        self.blend = create_model("face_blendshapes").to(self.device).eval() if blendshapes else None
        self.roi_scale = roi_scale
        self.max_batch_size = max_batch_size
        self._subset = torch.as_tensor(LANDMARK_SUBSET, device=self.device)

    def crops(self, frames_rgb: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
              keypoints: Sequence[np.ndarray | None] | None = None
              ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], list[int]]:
        """256x256 crops (M, 256, 256, 3) uint8, rois (centres, sides, angles), per-frame counts.

        Raises:
            ValueError: mismatched lengths.
        """
        if len(boxes) != len(frames_rgb) or (keypoints is not None
                                             and len(keypoints) != len(frames_rgb)):
            raise ValueError("frames_rgb, boxes (and keypoints) must have the same length")
        crops, rois, counts = [], [], []
        for i, f in enumerate(frames_rgb):
            b = np.asarray(boxes[i], np.float32).reshape(-1, 4)
            c, s, a = face_rois(b, None if keypoints is None else keypoints[i], self.roi_scale)
            crops.append(crop_rois(np.asarray(f), c, s, a, self.input_size))
            rois.append((c, s, a))
            counts.append(len(b))
        if not crops or sum(counts) == 0:
            sz = self.input_size
            return (np.zeros((0, sz, sz, 3), np.uint8),
                    (np.zeros((0, 2)), np.zeros(0), np.zeros(0)), counts)
        c, s, a = (np.concatenate(x) for x in zip(*rois))
        return np.concatenate(crops), (c, s, a), counts

    @torch.inference_mode()
    def run_crops(self, crops: np.ndarray, rois: tuple[np.ndarray, np.ndarray, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Landmarks (M, 478, 3) frame px, presence (M,), blendshapes (M, 52) of M crops (None
        without the blendshape model)."""
        c, s, a = rois
        lms, pres = [], []
        for i in range(0, len(crops), self.max_batch_size):
            x = torch.from_numpy(crops[i:i + self.max_batch_size]).to(self.device)
            x = x.permute(0, 3, 1, 2).to(self.dtype).mul_(1.0 / 255.0)
            lm, logit, _ = self.mesh(x)
            lms.append(lm.float().cpu().numpy())
            pres.append(torch.sigmoid(logit[:, 0].float()).cpu().numpy())
        if not lms:
            return (np.zeros((0, 478, 3), np.float32), np.zeros(0, np.float32),
                    None if self.blend is None else np.zeros((0, len(BLENDSHAPE_NAMES)), np.float32))
        lm = np.concatenate(lms)
        xy = roi_to_frame(lm[..., :2], c, s, a, self.input_size)
        z = lm[..., 2] * (s[:, None] / self.input_size)
        out = np.concatenate([xy, z[..., None]], -1).astype(np.float32)
        if self.blend is None:
            return out, np.concatenate(pres).astype(np.float32), None
        bs = []
        pts = torch.from_numpy(out[..., :2]).to(self.device)
        for i in range(0, len(out), self.max_batch_size):
            bs.append(self.blend(pts[i:i + self.max_batch_size][:, self._subset]).cpu().numpy())
        return out, np.concatenate(pres).astype(np.float32), np.concatenate(bs).astype(np.float32)

    def __call__(self, frames_rgb: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                 keypoints: Sequence[np.ndarray | None] | None = None) -> list[FaceMeshV2Faces]:
        """Landmarks and blendshapes of every face of every frame.

        Args:
            frames_rgb: B frames, (H, W, 3) uint8 RGB.
            boxes: B arrays (N_i, 4) of face boxes in pixels.
            keypoints: optional B arrays (N_i, 6, 2) of BlazeFace keypoints (rotated ROIs).

        Returns:
            B :class:`FaceMeshV2Faces`, row i of frame b belonging to ``boxes[b][i]``.

        Raises:
            ValueError: mismatched lengths.
        """
        crops, rois, counts = self.crops(frames_rgb, boxes, keypoints)
        lm, pres, bs = self.run_crops(crops, rois)
        out, o = [], 0
        for n in counts:
            out.append(FaceMeshV2Faces(lm[o:o + n], pres[o:o + n],
                                       None if bs is None else bs[o:o + n]))
            o += n
        return out
