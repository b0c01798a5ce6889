"""Face landmarks (FaceMesh, 468 points) and face-crop helpers.

Plain Python + numpy + OpenCV + torch; no Ray/Redis/Kafka.

* :class:`FaceMeshLandmarker` crops every face MediaPipe-style — a square ROI centred on the
  detector box, side ``roi_scale`` (1.5) times the box's long side, rotated so the eye line is
  horizontal when the detector's eye keypoints are given — batches the crops of many frames into
  one forward pass of :mod:`models.facemesh`, and maps the landmarks back to frame pixels.
  Source: MediaPipe face-landmark graph (``DetectionsToRectsCalculator`` with the eye keypoints
  as rotation vector, ``RectTransformationCalculator`` with scale 1.5 and ``square_long``);
  Kartynnik et al., arXiv:1907.06724, section 2.
* :func:`five_point` reduces 468 FaceMesh landmarks to the usual 5 alignment points.
* :func:`aligned_crop` warps faces to a 5-point template with a least-squares similarity
  transform (Umeyama, "Least-squares estimation of transformation parameters between two point
  patterns", IEEE TPAMI 13(4), 1991).
* :func:`square_crop` cuts square, zero-padded crops around boxes.

Coordinates: continuous pixel coordinates of the frame (pixel ``(i, j)`` covers
``[j, j+1) x [i, i+1)``), the convention of :mod:`operators.detection`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from affectstream.models.cpu_runtime import Runtime

# FaceMesh indices used by five_point(); "image-left" is the subject's right for a frontal face.
FIVE_POINT_INDICES: dict[str, tuple[int, ...]] = {
    "left_eye": (33, 133, 159, 145),     # image-left eye: outer/inner corner, upper/lower lid
    "right_eye": (263, 362, 386, 374),   # image-right eye: outer/inner corner, upper/lower lid
    "nose_tip": (1,),
    "left_mouth": (61,),                 # image-left mouth corner
    "right_mouth": (291,),               # image-right mouth corner
}

ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]], np.float32)
"""The widely used 5-point template for 112x112 aligned faces (eyes, nose tip, mouth corners in
image-left/right order; Deng et al., ArcFace, CVPR 2019), in 112-px coordinates."""


@dataclasses.dataclass(frozen=True)
class FaceLandmarks:
    """FaceMesh output for the faces of one frame.

    Attributes:
        landmarks: (N, 468, 2) float32 pixels (x, y) in the original frame.
        presence: (N,) float32 in [0, 1], probability that the ROI holds a face.
        depth: (N, 468) float32 relative depth in frame-pixel scale (smaller = nearer).
    """

    landmarks: np.ndarray
    presence: np.ndarray
    depth: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.landmarks)
        for name, arr, shape in (("landmarks", self.landmarks, (n, 468, 2)),
                                 ("presence", self.presence, (n,)),
                                 ("depth", self.depth, (n, 468))):
            if arr.dtype != np.float32 or arr.shape != shape:
                raise ValueError(f"{name} must be float32 of shape {shape}, "
                                 f"got {arr.dtype} {arr.shape}")

    def __len__(self) -> int:
        return len(self.landmarks)


# ------------------------------------------------------------------------------ ROI geometry


def face_rois(bbox_xyxy: np.ndarray, keypoints: np.ndarray | None = None, scale: float = 1.5
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe-style square face ROIs from detector boxes.

    Args:
        bbox_xyxy: (N, 4) pixels.
        keypoints: optional (N, K>=2, 2) detector keypoints; points 0 and 1 are the subject's
            right and left eye (BlazeFace order) and set the rotation.
        scale: ROI side / long side of the box.

    Returns:
        centres (N, 2), sides (N,), angles (N,) in radians (clockwise in image coordinates, the
        angle of the eye line; 0 without keypoints). float64.
    """
    b = np.asarray(bbox_xyxy, np.float64).reshape(-1, 4)
    centres = (b[:, :2] + b[:, 2:]) / 2
    sides = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * scale
    if keypoints is None:
        angles = np.zeros(len(b))
    else:
        k = np.asarray(keypoints, np.float64)
        d = k[:, 1] - k[:, 0]
        angles = np.arctan2(d[:, 1], d[:, 0])
    return centres, sides, angles


def roi_matrix(centre: np.ndarray, side: float, angle: float, out_size: int) -> np.ndarray:
    """2x3 affine matrix from crop pixel indices to frame pixel indices (OpenCV convention).

    Use with ``cv2.warpAffine(..., flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)``. A crop
    coordinate ``u`` (continuous, 0..out_size) maps to the frame point
    ``centre + side * R(angle) @ (u / out_size - 0.5)``.
    """
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    a = rot * (side / out_size)
    t = np.asarray(centre, np.float64) - 0.5 + rot @ (side * (0.5 / out_size - 0.5) * np.ones(2))
    return np.hstack([a, t[:, None]]).astype(np.float64)


def crop_rois(frame: np.ndarray, centres: np.ndarray, sides: np.ndarray, angles: np.ndarray,
              out_size: int) -> np.ndarray:
    """Rotated square crops (bilinear, zero outside the frame).

    Args:
        frame: (H, W, C) or (H, W) uint8.
        centres, sides, angles: as returned by :func:`face_rois`.
        out_size: crop side in pixels.

    Returns:
        (N, out_size, out_size[, C]) uint8.
    """
    out = np.zeros((len(centres), out_size, out_size) + frame.shape[2:], np.uint8)
    for i in range(len(centres)):
        m = roi_matrix(centres[i], float(sides[i]), float(angles[i]), out_size)
        out[i] = cv2.warpAffine(frame, m, (out_size, out_size),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def roi_to_frame(points: np.ndarray, centres: np.ndarray, sides: np.ndarray, angles: np.ndarray,
                 in_size: int) -> np.ndarray:
    """Map (N, P, 2) crop coordinates (0..in_size, continuous) back to frame pixels."""
    c, s = np.cos(angles), np.sin(angles)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (N, 2, 2)
    n = points / in_size - 0.5
    return centres[:, None, :] + sides[:, None, None] * np.einsum("nij,npj->npi", rot, n)


# ------------------------------------------------------------------------------------ operator


class FaceMeshLandmarker:
    """FaceMesh on many faces of many frames, one forward per ``max_batch_size`` faces.

    Args:
        device: torch device.
        num_threads: if given, ``torch.set_num_threads(num_threads)`` (process-wide).
        roi_scale: ROI side / detector box long side (MediaPipe: 1.5).
        max_batch_size: faces per forward pass.
        weights: passed to :func:`models.create_model`.
        runtime: on CPU with the pretrained weights, ``"litert"`` runs FaceMesh on LiteRT,
            ``"onnxruntime"`` on ONNX Runtime; ``"torch"`` (and any other device or weights) on
            the torch port (:mod:`models.cpu_runtime`).
    """

    def __init__(self, device: str | torch.device = "cpu", num_threads: int | None = None,
                 roi_scale: float = 1.5, max_batch_size: int = 64,
                 weights: str | None = "default", runtime: Runtime = "torch") -> None:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        if roi_scale <= 0 or max_batch_size < 1:
            raise ValueError("roi_scale must be > 0 and max_batch_size >= 1")
        from affectstream.models.cpu_runtime import cpu_net

        self.device = torch.device(device)
        self.net = cpu_net("facemesh", runtime, self.device, weights)
        self.input_size = 192
        self.roi_scale = roi_scale
        self.max_batch_size = max_batch_size

    def crops(self, frames_rgb: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
              keypoints: Sequence[np.ndarray | None] | None = None
              ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], list[int]]:
        """The 192x192 network crops of every face.

        Returns:
            crops (M, 192, 192, 3) uint8 (M = all faces of all frames, frame-major),
            rois (centres (M, 2), sides (M,), angles (M,)), and per-frame face counts.
        """
        if len(boxes) != len(frames_rgb) or (keypoints is not None
                                             and len(keypoints) != len(frames_rgb)):
            raise ValueError("frames_rgb, boxes (and keypoints) must have the same length")
        crops, cs, ss, angs, counts = [], [], [], [], []
        for i, f in enumerate(frames_rgb):
            b = np.asarray(boxes[i], np.float32).reshape(-1, 4)
            kp = None if keypoints is None else keypoints[i]
            c, s, a = face_rois(b, kp, self.roi_scale)
            crops.append(crop_rois(np.asarray(f), c, s, a, self.input_size))
            cs.append(c)
            ss.append(s)
            angs.append(a)
            counts.append(len(b))
        sz = self.input_size
        if not crops:
            return np.zeros((0, sz, sz, 3), np.uint8), (np.zeros((0, 2)), np.zeros(0),
                                                        np.zeros(0)), []
        return (np.concatenate(crops), (np.concatenate(cs), np.concatenate(ss),
                                        np.concatenate(angs)), counts)

    @torch.inference_mode()
    def run_crops(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FaceMesh on (M, 192, 192, 3) uint8 RGB crops.

        Returns:
            landmarks (M, 468, 3) float32 in crop pixels, presence (M,) float32 in [0, 1].
        """
        lms, pres = [], []
        for i in range(0, len(crops), self.max_batch_size):
            x = torch.from_numpy(crops[i:i + self.max_batch_size]).to(self.device)
            x = x.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)
            lm, logit = self.net(x)
            lms.append(lm.float().cpu().numpy())
            pres.append(torch.sigmoid(logit[:, 0]).float().cpu().numpy())
        if not lms:
            return np.zeros((0, 468, 3), np.float32), np.zeros(0, np.float32)
        return np.concatenate(lms), np.concatenate(pres)

    def __call__(self, frames_rgb: Sequence[np.ndarray], boxes: Sequence[np.ndarray],
                 keypoints: Sequence[np.ndarray | None] | None = None) -> list[FaceLandmarks]:
        """Landmarks of every face of every frame.

        Args:
            frames_rgb: B frames, (H, W, 3) uint8 RGB.
            boxes: B arrays (N_i, 4) of face boxes in pixels (e.g. ``FaceDetections.bbox_xyxy``).
            keypoints: optional B arrays (N_i, 6, 2) of BlazeFace keypoints; with them the ROI is
                rotated upright by the eye line (better on tilted heads).

        Returns:
            B :class:`FaceLandmarks`, row i of frame b belonging to ``boxes[b][i]``.

        Raises:
            ValueError: mismatched lengths.
        """
        crops, (c, s, a), counts = self.crops(frames_rgb, boxes, keypoints)
        lm, pres = self.run_crops(crops)
        xy = roi_to_frame(lm[..., :2], c, s, a, self.input_size).astype(np.float32)
        z = (lm[..., 2] * (s[:, None] / self.input_size)).astype(np.float32)
        out, o = [], 0
        for n in counts:
            out.append(FaceLandmarks(xy[o:o + n], pres[o:o + n].astype(np.float32), z[o:o + n]))
            o += n
        return out


# --------------------------------------------------------------------------- point helpers


def five_point(landmarks468: np.ndarray) -> np.ndarray:
    """Five alignment points from FaceMesh landmarks.

    Order (image-left/right, i.e. "left eye" is the subject's right eye on a frontal face):
    left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner — the order
    of :data:`ARCFACE_TEMPLATE_112`. Eye centres are the mean of the two eye corners and the two
    mid-lid points (indices in :data:`FIVE_POINT_INDICES`: 33/133/159/145 and 263/362/386/374);
    nose tip is 1; mouth corners are 61 and 291.

    Args:
        landmarks468: (N, 468, 2 or 3) or (468, 2 or 3) landmarks.

    Returns:
        (N, 5, 2) float32 (or (5, 2) for a single face), same units as the input.

    Raises:
        ValueError: wrong shape.
    """
    lm = np.asarray(landmarks468)
    single = lm.ndim == 2
    if single:
        lm = lm[None]
    if lm.ndim != 3 or lm.shape[1] != 468 or lm.shape[2] < 2:
        raise ValueError(f"landmarks468 must be (N, 468, 2|3), got {lm.shape}")
    pts = np.stack([lm[:, list(ix), :2].mean(1) for ix in FIVE_POINT_INDICES.values()], 1)
    pts = pts.astype(np.float32)
    return pts[0] if single else pts


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Umeyama (1991), eqs. 40-42, without reflection.

    Args:
        src, dst: (K, 2) corresponding points, K >= 2.

    Returns:
        (2, 3) float64 matrix ``M`` with ``dst ~= M[:, :2] @ src + M[:, 2]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s0, d0 = src - ms, dst - md
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    var = (s0 ** 2).sum() / len(src)
    scale = (sig * np.diag(e)).sum() / var if var > 0 else 1.0
    t = md - scale * r @ ms
    return np.hstack([scale * r, t[:, None]])


def aligned_crop(frame: np.ndarray, five_pt: np.ndarray, size: int = 112,
                 template: np.ndarray | None = None) -> np.ndarray:
    """Faces warped so that their 5 points land on a template (similarity transform).

    Args:
        frame: (H, W, 3) or (H, W) uint8.
        five_pt: (N, 5, 2) or (5, 2) points in frame pixels, order of :func:`five_point`.
        size: output side in pixels.
        template: (5, 2) target points in output pixels; default: :data:`ARCFACE_TEMPLATE_112`
            scaled by ``size / 112``.

    Returns:
        (N, size, size[, 3]) uint8 (or one crop when ``five_pt`` is (5, 2)); zero outside the
        frame.
    """
    pts = np.asarray(five_pt, np.float64)
    single = pts.ndim == 2
    if single:
        pts = pts[None]
    tmpl = (ARCFACE_TEMPLATE_112 * (size / 112.0) if template is None
            else np.asarray(template, np.float64))
    out = np.zeros((len(pts), size, size) + frame.shape[2:], np.uint8)
    for i, p in enumerate(pts):
        # continuous coordinates -> OpenCV pixel-centre indices on both sides
        m = similarity_transform(p - 0.5, tmpl - 0.5)
        out[i] = cv2.warpAffine(frame, m, (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out[0] if single else out


def square_crop(frame: np.ndarray, bbox_xyxy: np.ndarray, size: int, scale: float = 1.0
                ) -> np.ndarray:
    """Axis-aligned square crops around boxes, resized to ``size`` x ``size``.

    The square is centred on the box, side ``scale`` times its long side; parts outside the
    frame are zero. Downscaling uses area interpolation (anti-aliased), upscaling bilinear.

    Args:
        frame: (H, W, C) or (H, W) uint8.
        bbox_xyxy: (N, 4) or (4,) pixels.
        size: output side in pixels.
        scale: square side / long side of the box (> 0).

    Returns:
        (N, size, size[, C]) uint8 (N = 0 gives an empty array).

    Raises:
        ValueError: ``scale`` <= 0 or ``size`` < 1.
    """
    if scale <= 0 or size < 1:
        raise ValueError("scale must be > 0 and size >= 1")
    b = np.asarray(bbox_xyxy, np.float64).reshape(-1, 4)
    h, w = frame.shape[:2]
    out = np.zeros((len(b), size, size) + frame.shape[2:], np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(b):
        side = max(1, int(round(max(x2 - x1, y2 - y1) * scale)))
        x0 = int(round((x1 + x2) / 2 - side / 2))
        y0 = int(round((y1 + y2) / 2 - side / 2))
        canvas = np.zeros((side, side) + frame.shape[2:], np.uint8)
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
        if sx1 > sx0 and sy1 > sy0:
            canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frame[sy0:sy1, sx0:sx1]
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(canvas, (size, size), interpolation=interp).reshape(out.shape[1:])
    return out
