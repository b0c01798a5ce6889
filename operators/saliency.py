"""Per-face saliency: Grad-CAM of the expression model, summarised per facial region.

Grad-CAM (Selvaraju et al., ICCV 2017, §3): for the predicted class c, weights
``a_k = mean_ij dY_c/dA_k[i,j]`` over a conv layer's maps ``A_k``; map = ``ReLU(sum_k a_k A_k)``,
normalised per face to [0, 1]. Region summary: the map sampled (bilinear) at the FaceMesh points of
each region of :data:`operators.records.FACE_REGIONS`, averaged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectstream.operators.records import FACE_REGIONS

REGION_POINTS: dict[str, tuple[int, ...]] = {
    "brows": (70, 63, 105, 66, 107, 300, 293, 334, 296, 336),
    "eyes": (33, 133, 159, 145, 160, 158, 153, 144, 263, 362, 386, 374, 387, 385, 380, 373),
    "nose": (1, 2, 4, 5, 6, 168, 197, 195, 98, 327, 129, 358),
    "cheeks": (50, 101, 205, 36, 117, 280, 330, 425, 266, 346),
    "mouth": (61, 291, 0, 17, 13, 14, 37, 267, 84, 314, 40, 270, 91, 321),
    "jaw": (152, 148, 377, 176, 400, 136, 365, 172, 397, 58, 288),
}
"""FaceMesh (468-point) indices per region."""

_ALL_IDX = np.concatenate([np.array(REGION_POINTS[r]) for r in FACE_REGIONS])
_SPLITS = np.cumsum([len(REGION_POINTS[r]) for r in FACE_REGIONS])[:-1]


def grad_cam(model: Callable[[torch.Tensor], torch.Tensor], layer: nn.Module, x: torch.Tensor,
             target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Grad-CAM.

    Args:
        model: returns logits (B, C).
        layer: module whose output (B, K, h, w) is explained.
        x: input batch.
        target: (B,) class per sample; default the arg-max.

    Returns:
        (logits (B, C) detached, cam (B, h, w) float32 in [0, 1]).
    """
    feats: list[torch.Tensor] = []
    h = layer.register_forward_hook(lambda m, i, o: feats.append(o))
    try:
        with torch.enable_grad():
            logits = model(x)
            a = feats[0]
            if target is None:
                target = logits.argmax(1)
            sel = logits.gather(1, target[:, None]).sum()
            (g,) = torch.autograd.grad(sel, a)
    finally:
        h.remove()
    w = g.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((w * a).sum(1)).detach()
    mx = cam.flatten(1).max(1).values.clamp_min(1e-8)
    return logits.detach(), (cam / mx[:, None, None]).float()


def region_summary(cam: np.ndarray, points01: np.ndarray) -> np.ndarray:
    """Mean saliency per region.

    Args:
        cam: (N, h, w) float in [0, 1], covering the face crop.
        points01: (N, 468, 2) FaceMesh points in crop coordinates normalised to [0, 1].

    Returns:
        (N, len(FACE_REGIONS)) float32 in [0, 1], in ``FACE_REGIONS`` order.
    """
    n = len(cam)
    if n == 0:
        return np.zeros((0, len(FACE_REGIONS)), np.float32)
    grid = torch.from_numpy(points01[:, _ALL_IDX].astype(np.float32) * 2 - 1)[:, None]  # N,1,P,2
    vals = F.grid_sample(torch.from_numpy(np.ascontiguousarray(cam, np.float32))[:, None], grid,
                         mode="bilinear", padding_mode="border", align_corners=False)[:, 0, 0]
    parts = np.split(vals.numpy(), _SPLITS, axis=1)
    return np.clip(np.stack([p.mean(1) for p in parts], 1), 0, 1).astype(np.float32)
