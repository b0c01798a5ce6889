"""Face detection with BlazeFace (short- or full-range), batched over frames.

Plain Python + numpy + torch; no Ray/Redis/Kafka. The pipeline, per batch of RGB frames:

1. letterbox every frame to the model's square input (aspect kept, centred, black bars),
   scale pixels to [-1, 1];
2. one forward pass of :mod:`models.blazeface` for the whole batch;
3. decode the SSD outputs against fixed anchors (:func:`ssd_anchors`, :func:`decode_boxes`);
4. per frame: threshold, weighted NMS (:func:`weighted_nms`), undo the letterbox.

Source of the decoding rules: MediaPipe's face-detection graphs — ``SsdAnchorsCalculator``
(fixed-size anchors, ``anchor_offset`` 0.5, layers of equal stride merged),
``TensorsToDetectionsCalculator`` (offsets scaled by the input size, logits clipped before the
sigmoid) and ``NonMaxSuppressionCalculator`` with the ``WEIGHTED`` algorithm; paper: Bazarevsky et
al., BlazeFace, arXiv:1907.05047, section 2 ("tie resolution strategy", i.e. blending).

Coordinates: continuous pixel coordinates of the original frame, where pixel ``(i, j)`` covers
``[j, j+1) x [i, i+1)``; a normalised coordinate times the frame width/height gives this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
import torch

from affectstream.models.cpu_runtime import Runtime
from affectstream.operators.records import Faces

KEYPOINT_NAMES: tuple[str, ...] = (
    "right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")
"""BlazeFace keypoints in output order; "right"/"left" are the subject's (right eye = image left
for a frontal face)."""

_SPECS = {
    # model -> (registry name, input size, strides, anchors per layer)
    "short": ("blazeface_short", 128, (8, 16, 16, 16), 2),
    "full": ("blazeface_full", 192, (4,), 1),
}


@dataclasses.dataclass(frozen=True)
class FaceDetections:
    """Faces found in one frame (structure-of-arrays, sorted by ``det_score`` descending).

    Attributes:
        bbox_xyxy: (N, 4) float32 pixels in the original frame (x1, y1, x2, y2).
        det_score: (N,) float32 in [0, 1].
        keypoints: (N, 6, 2) float32 pixels (x, y), order :data:`KEYPOINT_NAMES`.
    """

    bbox_xyxy: np.ndarray
    det_score: np.ndarray
    keypoints: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.bbox_xyxy)
        for name, arr, shape in (("bbox_xyxy", self.bbox_xyxy, (n, 4)),
                                 ("det_score", self.det_score, (n,)),
                                 ("keypoints", self.keypoints, (n, 6, 2))):
            if arr.dtype != np.float32 or arr.shape != shape:
                raise ValueError(f"{name} must be float32 of shape {shape}, "
                                 f"got {arr.dtype} {arr.shape}")

    def __len__(self) -> int:
        return len(self.bbox_xyxy)

    @staticmethod
    def empty() -> FaceDetections:
        """No faces."""
        return FaceDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                              np.zeros((0, 6, 2), np.float32))

    def to_faces(self) -> Faces:
        """As a :class:`operators.records.Faces` (untracked: ``track_id`` 0, keypoints as
        ``landmarks``)."""
        return Faces(self.bbox_xyxy, self.det_score, np.zeros(len(self), np.int64),
                     self.keypoints)


# ------------------------------------------------------------------------------ pure functions


def ssd_anchors(input_size: int, strides: Sequence[int], anchors_per_layer: int) -> np.ndarray:
    """Centres of MediaPipe SSD anchors with fixed anchor size (w = h = 1).

    Consecutive layers with the same stride share one feature map; each contributes
    ``anchors_per_layer`` anchors per cell (2 when an interpolated-scale anchor is added, 1 when
    not). Order: layer group, then row, then column, then anchor — the order of the model's
    flattened NHWC head outputs.

    Args:
        input_size: square input side in pixels (128 short-range, 192 full-range).
        strides: per-layer strides ((8, 16, 16, 16) short-range, (4,) full-range).
        anchors_per_layer: anchors per cell per layer (2 short-range, 1 full-range).

    Returns:
        (A, 2) float32 anchor centres (x, y), normalised to [0, 1]. A = 896 for short-range,
        2304 for full-range.
    """
    out = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        fm = -(-input_size // strides[i])
        per_cell = (j - i) * anchors_per_layer
        c = (np.arange(fm, dtype=np.float32) + 0.5) / fm
        yy, xx = np.meshgrid(c, c, indexing="ij")
        centres = np.stack([xx, yy], -1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
        i = j
    return np.concatenate(out).astype(np.float32)


def decode_boxes(regressors: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor,
                 input_size: int, logit_clip: float = 80.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode raw BlazeFace outputs to normalised boxes, keypoints and scores.

    Args:
        regressors: (B, A, 16) float32 raw offsets in input pixels.
        logits: (B, A, 1) or (B, A) float32 raw face logits.
        anchors: (A, 2) float32 normalised anchor centres (see :func:`ssd_anchors`).
        input_size: model input side in pixels (the offsets' scale).
        logit_clip: logits are clipped to ``[-logit_clip, logit_clip]`` before the sigmoid.

    Returns:
        boxes: (B, A, 4) normalised x1, y1, x2, y2 in the (letterboxed) input.
        keypoints: (B, A, 6, 2) normalised x, y.
        scores: (B, A) in [0, 1].
    """
    r = regressors / float(input_size)
    ctr = r[..., 0:2] + anchors
    half = r[..., 2:4] / 2
    boxes = torch.cat([ctr - half, ctr + half], dim=-1)
    kps = r[..., 4:16].reshape(*r.shape[:-1], 6, 2) + anchors[:, None, :]
    scores = torch.sigmoid(logits.reshape(r.shape[:-1]).clamp(-logit_clip, logit_clip))
    return boxes, kps, scores


def _area(b: np.ndarray) -> np.ndarray:
    return np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with many (M, 4), xyxy; 0 where the union is empty."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    union = _area(box) + _area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray,
                 iou_thresh: float = 0.3, max_out: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe-style weighted NMS ("blending").

    Repeatedly takes the highest-scoring remaining box; every remaining box with IoU above
    ``iou_thresh`` with it (itself included) forms its cluster and is removed; the output box
    and keypoints are the score-weighted mean of the cluster, the score is the top score.

    Args:
        boxes: (M, 4) xyxy (any unit).
        scores: (M,) in [0, 1].
        keypoints: (M, K, 2) in the unit of ``boxes``.
        iou_thresh: cluster IoU threshold in [0, 1] (MediaPipe face detection uses 0.3).
        max_out: keep at most this many outputs (highest scores first); ``None`` for all.

    Returns:
        boxes (N, 4), scores (N,), keypoints (N, K, 2), float32, sorted by score descending.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    alive = np.ones(len(boxes), bool)
    ob, os_, ok = [], [], []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        if max_out is not None and len(ob) >= max_out:
            break
        idx = np.flatnonzero(alive)
        cl = idx[box_iou(boxes[i], boxes[idx]) > iou_thresh]
        cl = np.union1d(cl, [i])
        alive[cl] = False
        w = scores[cl][:, None]
        ob.append((boxes[cl] * w).sum(0) / w.sum())
        ok.append((keypoints[cl] * w[:, :, None]).sum(0) / w.sum())
        os_.append(scores[i])
    k = keypoints.shape[1] if keypoints.ndim == 3 else 0
    if not ob:
        return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                np.zeros((0, k, 2), np.float32))
    return (np.asarray(ob, np.float32), np.asarray(os_, np.float32), np.asarray(ok, np.float32))


def letterbox(frame: np.ndarray, size: int, out: np.ndarray | None = None
              ) -> tuple[np.ndarray, float, float, int, int]:
    """Resize ``frame`` into a ``size`` x ``size`` square keeping its aspect, centred, black bars.

    Args:
        frame: (H, W, 3) uint8.
        size: output side in pixels.
        out: optional (size, size, 3) uint8 buffer to write into.

    Returns:
        (square (size, size, 3) uint8, scale_x, scale_y, pad_x, pad_y): a frame coordinate
        ``(x, y)`` maps to ``(x * scale_x + pad_x, y * scale_y + pad_y)`` in the square (the two
        scales differ only by rounding of the resized size).

    Raises:
        ValueError: not an (H, W, 3) image with H, W > 0.
    """
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
    h, w = frame.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(frame, (nw, nh), interpolation=interp)
    if out is None:
        out = np.zeros((size, size, 3), np.uint8)
    else:
        out[...] = 0
    px, py = (size - nw) // 2, (size - nh) // 2
    out[py:py + nh, px:px + nw] = resized
    return out, nw / w, nh / h, px, py


# ------------------------------------------------------------------------------------ operator


class FaceDetector:
    """Batched BlazeFace face detector.

    Args:
        model: ``"short"`` (128x128, faces within ~2 m, fast) or ``"full"`` (192x192, finds
            small/distant faces too, ~3x slower).
        score_thresh: minimum face probability in [0, 1] (MediaPipe uses 0.5).
        iou_thresh: weighted-NMS cluster IoU threshold in [0, 1] (MediaPipe uses 0.3).
        max_faces: at most this many faces per frame (highest scores).
        device: torch device for the network.
        num_threads: if given, ``torch.set_num_threads(num_threads)`` (process-wide).
        weights: passed to :func:`models.create_model` (``"default"``: the pinned MediaPipe
            weights).
        clip_boxes: clip ``bbox_xyxy`` to the frame (keypoints are never clipped).
        runtime: on CPU with the pretrained weights, ``"litert"`` runs the network on LiteRT,
            ``"onnxruntime"`` on ONNX Runtime; ``"torch"`` (and any other device or weights) on
            the torch port (:mod:`models.cpu_runtime`).

    Raises:
        ValueError: unknown ``model`` or a threshold outside [0, 1].
    """

    def __init__(self, model: Literal["short", "full"] = "short", score_thresh: float = 0.5,
                 iou_thresh: float = 0.3, max_faces: int = 20, device: str | torch.device = "cpu",
                 num_threads: int | None = None, weights: str | None = "default",
                 clip_boxes: bool = True, runtime: Runtime = "torch") -> None:
        if model not in _SPECS:
            raise ValueError(f"unknown detector model {model!r}; known: {', '.join(_SPECS)}")
        if not (0.0 <= score_thresh <= 1.0 and 0.0 <= iou_thresh <= 1.0):
            raise ValueError("score_thresh and iou_thresh must lie in [0, 1]")
        if max_faces < 1:
            raise ValueError("max_faces must be >= 1")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        from affectstream.models.cpu_runtime import cpu_net

        name, self.input_size, strides, per_layer = _SPECS[model]
        self.model_name = model
        self.device = torch.device(device)
        self.net = cpu_net(name, runtime, self.device, weights)
        self.anchors = torch.from_numpy(ssd_anchors(self.input_size, strides, per_layer)).to(
            self.device)
        self.score_thresh = float(score_thresh)
        self.iou_thresh = float(iou_thresh)
        self.max_faces = int(max_faces)
        self.clip_boxes = clip_boxes

    def preprocess(self, frames_rgb: Sequence[np.ndarray]
                   ) -> tuple[torch.Tensor, np.ndarray]:
        """Letterbox and normalise a batch.

        Returns:
            x: (B, 3, S, S) float32 in [-1, 1] on ``self.device``.
            geo: (B, 4) float64 rows (scale_x, scale_y, pad_x, pad_y) for undoing the letterbox.
        """
        s = self.input_size
        buf = np.zeros((len(frames_rgb), s, s, 3), np.uint8)
        geo = np.zeros((len(frames_rgb), 4), np.float64)
        for i, f in enumerate(frames_rgb):
            geo[i] = letterbox(np.asarray(f), s, out=buf[i])[1:]
        x = torch.from_numpy(buf).to(self.device).permute(0, 3, 1, 2).float()
        return x.mul_(1.0 / 127.5).sub_(1.0), geo

    @torch.inference_mode()
    def detect(self, frames_rgb: Sequence[np.ndarray]) -> list[FaceDetections]:
        """Detect faces in a batch of frames (one forward pass for the whole batch).

        Args:
            frames_rgb: B frames, each (H, W, 3) uint8 RGB; sizes may differ.

        Returns:
            B :class:`FaceDetections`, in the input order.

        Raises:
            ValueError: a frame is not (H, W, 3).
        """
        if len(frames_rgb) == 0:
            return []
        x, geo = self.preprocess(frames_rgb)
        reg, logits = self.net(x)
        boxes, kps, scores = decode_boxes(reg, logits, self.anchors, self.input_size)
        keep = scores >= self.score_thresh
        s = float(self.input_size)
        boxes_np, kps_np, scores_np = boxes.cpu().numpy(), kps.cpu().numpy(), scores.cpu().numpy()
        keep_np = keep.cpu().numpy()
        out = []
        for i, f in enumerate(frames_rgb):
            m = keep_np[i]
            if not m.any():
                out.append(FaceDetections.empty())
                continue
            b, sc, k = weighted_nms(boxes_np[i][m], scores_np[i][m], kps_np[i][m],
                                    self.iou_thresh, self.max_faces)
            sx, sy, px, py = geo[i]
            off, scl = np.array([px, py]), np.array([sx, sy])
            b = ((b.reshape(-1, 2, 2) * s - off) / scl).reshape(-1, 4)
            k = (k * s - off) / scl
            if self.clip_boxes:
                h, w = f.shape[:2]
                b[:, 0::2] = b[:, 0::2].clip(0, w)
                b[:, 1::2] = b[:, 1::2].clip(0, h)
            out.append(FaceDetections(b.astype(np.float32), sc.astype(np.float32),
                                      k.astype(np.float32)))
        return out

    __call__ = detect
