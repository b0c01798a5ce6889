"""Face crops for the inference models, prepared from a model card (DESIGN §8).

Every crop is one affine warp of the original frame, so the same matrix maps the face's landmarks
into crop coordinates (needed for the saliency region summary and for landmark-taking models).
"""

from __future__ import annotations

import cv2
import numpy as np

# 5-point template (left eye, right eye, nose, left mouth corner, right mouth corner in *image*
# order: first the eye on the image's left) for a 112x112 crop, the widely used ArcFace layout.
TEMPLATE_5PT_112 = np.array([[38.29, 51.70], [73.53, 51.50], [56.03, 71.74], [41.55, 92.37],
                             [70.73, 92.20]], np.float32)


def bbox_affines(bbox_xyxy: np.ndarray, size: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """Affine matrices (N, 2, 3) mapping a square around each box (side ``scale * max(w, h)``,
    same centre) onto a crop of ``size = (H, W)`` pixels."""
    b = np.asarray(bbox_xyxy, np.float64)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * scale
    side = np.maximum(side, 1.0)
    sx, sy = size[1] / side, size[0] / side
    m = np.zeros((len(b), 2, 3))
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    m[:, 0, 2] = size[1] / 2 - sx * cx
    m[:, 1, 2] = size[0] / 2 - sy * cy
    return m


def five_point_affines(five_pt: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Similarity transforms (N, 2, 3) of 5-point landmarks (N, 5, 2) onto the template scaled to
    ``size = (H, W)`` (least squares, Umeyama via ``cv2.estimateAffinePartial2D``)."""
    dst = TEMPLATE_5PT_112 * np.array([size[1] / 112.0, size[0] / 112.0], np.float32)
    out = np.zeros((len(five_pt), 2, 3))
    for i, src in enumerate(np.asarray(five_pt, np.float32)):
        m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
        out[i] = m if m is not None else bbox_affines(
            np.r_[src.min(0), src.max(0)][None], size, 2.0)[0]
    return out


def warp_crops(image: np.ndarray, affines: np.ndarray, size: tuple[int, int],
               gray: bool = False) -> np.ndarray:
    """Warp one frame into N crops.

    Args:
        image: (H, W, 3) uint8 RGB.
        affines: (N, 2, 3) from :func:`bbox_affines` / :func:`five_point_affines`.
        size: (h, w) of each crop.
        gray: convert to one channel (ITU-R BT.601 luma, as OpenCV's RGB2GRAY).

    Returns:
        (N, h, w) uint8 if ``gray`` else (N, h, w, 3) uint8.
    """
    src = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if gray else image
    shape = (len(affines), size[0], size[1]) + (() if gray else (3,))
    out = np.empty(shape, np.uint8)
    for i, m in enumerate(affines):
        out[i] = cv2.warpAffine(src, m, (size[1], size[0]), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out


def transform_points(points: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """Apply (N, 2, 3) affines to (N, K, 2) points -> (N, K, 2) float32."""
    p = np.asarray(points, np.float64)
    return (np.einsum("nij,nkj->nki", affines[:, :, :2], p) + affines[:, None, :, 2]).astype(np.float32)
