"""AMP-Net: adaptive multilayer perceptual attention network for facial expression recognition.

Source: H. Liu, H. Cai, Q. Lin, X. Li, H. Xiao, "Adaptive Multilayer Perceptual Attention Network
for Facial Expression Recognition", IEEE TCSVT, 2022, doi:10.1109/TCSVT.2022.3165321
(proposed-method section and its overview figure: global perception module, local perception
module with landmark-guided patches, salient-region features; code and training logs published at
github.com/liuhw01/AMP-Net). Re-implemented from the paper's description and the public facts in
DESIGN.md §2; no code was copied. Section/figure numbers are not quoted because we could not
check them.

Layout (blocks -> model -> factory):
  * :func:`crop_patches` — batched RoI crop/resample with a bilinear sampling grid (an affine map
    per box, evaluated with :func:`torch.nn.functional.grid_sample`; roi_align-style bins).
  * :func:`landmark_boxes` — the four quadrant boxes and five salient boxes from 5-point landmarks.
  * :class:`AMPNet` and the registered factory :func:`ampnet`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from affectstream.models._cnn_blocks import CBAM, BasicBlock, OSABlock, resnet_stage, resnet_stem
from affectstream.models._labels import RAF_DB_LABELS
from affectstream.models.registry import ModelCard, register_model

# 5-point template (left eye, right eye, nose tip, left mouth corner, right mouth corner) of the
# widely used 112x112 ArcFace alignment, scaled by 2 to the 224x224 aligned face, in pixels
# (pixel centres at integer coordinates). Image-left first ("left eye" = the eye on the left of
# the image).
TEMPLATE_5PT_224: tuple[tuple[float, float], ...] = (
    (76.59, 103.39), (147.06, 103.00), (112.05, 143.47), (83.10, 184.73), (141.46, 184.41))


def crop_patches(feat: torch.Tensor, boxes: torch.Tensor, out_size: tuple[int, int],
                 sampling_ratio: int = 1) -> torch.Tensor:
    """Crop and resample ``K`` boxes per sample from a feature map, batched, without loops.

    Each box is mapped affinely onto an ``out_size`` grid of bins; every bin takes the mean of
    ``sampling_ratio**2`` bilinear samples at regularly spaced points inside it (as roi_align).
    Samples outside the map read zeros. When a box has integer corners and exactly ``out_size``
    pixels and ``sampling_ratio == 1``, the result equals slicing ``feat[..., y1:y2, x1:x2]``.

    Args:
        feat: ``(B, C, H, W)`` float feature map.
        boxes: ``(B, K, 4)`` boxes ``(x1, y1, x2, y2)`` in feature-map *edge* coordinates: pixel
            ``i`` spans ``[i, i+1)``, so ``(0, 0, W, H)`` is the whole map. Same dtype as ``feat``.
        out_size: ``(h, w)`` bins per patch.
        sampling_ratio: samples per bin along each axis (>= 1).

    Returns:
        ``(B, K, C, h, w)`` patches.
    """
    b, c, hf, wf = feat.shape
    k = boxes.shape[1]
    oh, ow = out_size
    s = sampling_ratio
    dev, dt = feat.device, feat.dtype
    # Sample positions as fractions of the box: (j + 0.5) / n for n = out * s points.
    fy = (torch.arange(oh * s, device=dev, dtype=dt) + 0.5) / (oh * s)
    fx = (torch.arange(ow * s, device=dev, dtype=dt) + 0.5) / (ow * s)
    x1, y1, x2, y2 = boxes.unbind(-1)  # each (B, K)
    xs = x1.unsqueeze(-1) + (x2 - x1).unsqueeze(-1) * fx  # (B, K, ow*s) edge coords
    ys = y1.unsqueeze(-1) + (y2 - y1).unsqueeze(-1) * fy  # (B, K, oh*s)
    # Edge coordinates -> grid_sample's normalised coordinates (align_corners=False).
    gx = xs * (2.0 / wf) - 1.0
    gy = ys * (2.0 / hf) - 1.0
    grid = torch.stack(torch.broadcast_tensors(
        gx.unsqueeze(2), gy.unsqueeze(3)), dim=-1)  # (B, K, oh*s, ow*s, 2)
    # Lay the K patches side by side in one grid so a single grid_sample call serves all.
    grid = grid.permute(0, 2, 1, 3, 4).reshape(b, oh * s, k * ow * s, 2)
    out = F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.reshape(b, c, oh * s, k, ow * s).permute(0, 3, 1, 2, 4)  # (B, K, C, oh*s, ow*s)
    if s > 1:
        out = out.reshape(b, k, c, oh, s, ow, s).mean(dim=(4, 6))
    return out


def landmark_boxes(landmarks: torch.Tensor, image_size: tuple[int, int],
                   feat_size: tuple[int, int], salient_size: float = 10.0,
                   min_part: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrant and salient boxes on the feature map from 5-point landmarks.

    Quadrants (AMP-Net local perception): the upper half (above the nose tip's y) is split at
    the x of the eye centre (midpoint of the eyes); the lower half at the x of the mouth centre
    (midpoint of the mouth corners). Order: upper-left, upper-right, lower-left, lower-right.
    Split lines are clamped to ``[min_part, size - min_part]`` so every quadrant keeps some area.

    Salient regions: squares of side ``salient_size`` feature pixels centred on the left eye, the
    right eye, the eye midpoint, the left and right mouth corners (in that order); centres are
    clamped so each square lies inside the map.

    Args:
        landmarks: ``(B, 5, 2)`` ``(x, y)`` in input-image pixels (pixel centres at integers):
            left eye, right eye, nose tip, left mouth corner, right mouth corner (image-left
            first).
        image_size: ``(H, W)`` of the network input in pixels.
        feat_size: ``(h, w)`` of the shared feature map.
        salient_size: side of the salient squares in feature pixels.
        min_part: minimal quadrant side in feature pixels.

    Returns:
        ``(quadrants (B, 4, 4), salient (B, 5, 4))`` boxes in feature edge coordinates, as
        accepted by :func:`crop_patches`.
    """
    hi, wi = image_size
    hf, wf = feat_size
    # Pixel-centre coords -> feature edge coords. Written with tensor arithmetic only, so that a
    # traced graph keeps the sizes symbolic instead of baking Python floats in.
    px = (landmarks[..., 0] + 0.5) * (wf / wi)
    py = (landmarks[..., 1] + 0.5) * (hf / hi)
    p = torch.stack([px, py], dim=-1)  # (B, 5, 2)
    eye_l, eye_r, nose, mouth_l, mouth_r = p.unbind(1)
    ones = torch.ones_like(px[:, 0])
    full_w = ones * wf
    full_h = ones * hf
    x_top = torch.minimum(((eye_l[:, 0] + eye_r[:, 0]) / 2).clamp(min=min_part), full_w - min_part)
    x_bot = torch.minimum(((mouth_l[:, 0] + mouth_r[:, 0]) / 2).clamp(min=min_part), full_w - min_part)
    y_mid = torch.minimum(nose[:, 1].clamp(min=min_part), full_h - min_part)
    zero = torch.zeros_like(x_top)
    quads = torch.stack([
        torch.stack([zero, zero, x_top, y_mid], -1),
        torch.stack([x_top, zero, full_w, y_mid], -1),
        torch.stack([zero, y_mid, x_bot, full_h], -1),
        torch.stack([x_bot, y_mid, full_w, full_h], -1),
    ], dim=1)
    centres = torch.stack([eye_l, eye_r, (eye_l + eye_r) / 2, mouth_l, mouth_r], dim=1)
    half = salient_size / 2
    cx = torch.minimum(centres[..., 0].clamp(min=half), full_w.unsqueeze(1) - half)
    cy = torch.minimum(centres[..., 1].clamp(min=half), full_h.unsqueeze(1) - half)
    salient = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1)
    return quads, salient


class AMPNet(nn.Module):
    """AMP-Net for 224x224 5-point-aligned faces.

    Architecture (choices for details the paper leaves open are marked *):
      * shared stem: ResNet-18 stem + layer1 + layer2 -> ``(B, 128, 28, 28)``.
      * local perception: the 28x28 map is split into four landmark-defined quadrants, each
        resampled to 14x14* (roi_align-style, 2x2 samples per bin*) and fed to its own residual
        branch (BasicBlock 128->256, stride 2, with CBAM on the residual path) -> global average
        pool -> 4 x 256.
      * salient regions: five 10x10 patches of the 28x28 map (both eyes, eye midpoint, both mouth
        corners), exact crops (1 sample per bin), through one shared* residual CBAM branch
        (128->128) -> pooled -> 5 x 128. *They are concatenated with the four quadrant features
        and classified by the local head*, because the paper's final score averages exactly two
        heads (local and global) and the salient patches, like the quadrants, are landmark-
        guided part features.
      * global perception: three OSA stages with eSE (VoVNetV2 style, 3 convs each*), at 28, 14
        and 7 pixels*, widths 256/384/512* -> pooled -> global head.
      * ``logits = 0.5 * logits_local + 0.5 * logits_global``.

    Stateless and batch-vectorised: landmarks are an input; patches come from one
    ``grid_sample`` call per patch family (no per-sample loop, nothing cached on the module).

    Args:
        num_classes: number of expression classes (7 for RAF-DB order :data:`RAF_DB_LABELS`).
        local_patch: side of the resampled quadrant patches (feature pixels).
        salient_patch: side of the salient patches (feature pixels).
        dropout: dropout before both heads.
    """

    def __init__(self, num_classes: int = 7, local_patch: int = 14, salient_patch: int = 10,
                 dropout: float = 0.5):
        super().__init__()
        self.local_patch = local_patch
        self.salient_patch = salient_patch
        self.stem = resnet_stem(64)
        self.layer1 = resnet_stage("basic", 64, 64, 2, 1)
        self.layer2 = resnet_stage("basic", 64, 128, 2, 2)
        self.local_branches = nn.ModuleList(
            BasicBlock(128, 256, stride=2, attention=CBAM(256)) for _ in range(4))
        self.salient_branch = BasicBlock(128, 128, stride=1, attention=CBAM(128))
        self.local_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * 256 + 5 * 128, num_classes))
        self.global_branch = nn.Sequential(OrderedDict([
            ("stage1", OSABlock(128, 128, 256, 3)),
            ("pool1", nn.MaxPool2d(2, 2, ceil_mode=True)),
            ("stage2", OSABlock(256, 160, 384, 3)),
            ("pool2", nn.MaxPool2d(2, 2, ceil_mode=True)),
            ("stage3", OSABlock(384, 192, 512, 3)),
        ]))
        self.global_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, num_classes))

    def patches(self, feat: torch.Tensor, landmarks: torch.Tensor,
                image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Quadrant and salient patches of the shared map.

        Args:
            feat: ``(B, C, h, w)`` shared feature map.
            landmarks: ``(B, 5, 2)`` input-pixel landmarks (see :func:`landmark_boxes`).
            image_size: ``(H, W)`` of the network input.

        Returns:
            ``(quadrants (B, 4, C, p, p), salient (B, 5, C, s, s))`` with ``p = local_patch``,
            ``s = salient_patch``.
        """
        hf, wf = feat.shape[-2], feat.shape[-1]
        quads, sal = landmark_boxes(landmarks.to(feat.dtype), image_size, (hf, wf),
                                    float(self.salient_patch))
        q = crop_patches(feat, quads, (self.local_patch, self.local_patch), sampling_ratio=2)
        s = crop_patches(feat, sal, (self.salient_patch, self.salient_patch), sampling_ratio=1)
        return q, s

    def forward(self, x: torch.Tensor, landmarks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Classify aligned faces.

        Args:
            x: ``(B, 3, 224, 224)`` RGB, scaled to [0, 1] then normalised with the card's
                mean/std (ImageNet).
            landmarks: ``(B, 5, 2)`` float ``(x, y)`` pixels in the 224x224 aligned image.

        Returns:
            ``logits`` ``(B, num_classes)`` (0.5 local + 0.5 global; softmax gives
            probabilities in :data:`RAF_DB_LABELS` order), ``logits_local``, ``logits_global``
            (each ``(B, num_classes)``, for the 0.5/0.5 cross-entropy training loss).
        """
        b = x.shape[0]
        feat = self.layer2(self.layer1(self.stem(x)))
        q, s = self.patches(feat, landmarks, (x.shape[-2], x.shape[-1]))
        local = [branch(q[:, i]).mean(dim=(2, 3)) for i, branch in enumerate(self.local_branches)]
        c, ps = s.shape[2], s.shape[3]
        sal = self.salient_branch(s.reshape(b * 5, c, ps, ps)).mean(dim=(2, 3)).reshape(b, -1)
        logits_local = self.local_head(torch.cat(local + [sal], dim=1))
        logits_global = self.global_head(self.global_branch(feat).mean(dim=(2, 3)))
        return {
            "logits": 0.5 * logits_local + 0.5 * logits_global,
            "logits_local": logits_local,
            "logits_global": logits_global,
        }


@register_model(ModelCard(
    name="ampnet",
    task="expression",
    input_size=(224, 224),
    color="rgb",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    alignment="5pt",
    label_names=RAF_DB_LABELS,
    paper="Liu et al., Adaptive Multilayer Perceptual Attention Network for Facial Expression "
          "Recognition, IEEE TCSVT 2022, doi:10.1109/TCSVT.2022.3165321",
    licence="Apache-2.0 (architecture code of this project; no trained weights yet)",
    weights=None,
    extra={
        "landmarks_in": (5, 2),
        "landmark_template": TEMPLATE_5PT_224,
        "output": "logits",
        "output_shapes": {"logits": "(B,7)", "logits_local": "(B,7)", "logits_global": "(B,7)"},
        "feature_layers": ("layer2", "global_branch.stage2", "global_branch.stage3"),
        "train": {"loss": "0.5*CE(logits_local) + 0.5*CE(logits_global)",
                  "optimizer": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
    },
))
def ampnet(num_classes: int = 7, dropout: float = 0.5) -> AMPNet:
    """AMP-Net, RAF-DB 7 classes, 224x224 RGB aligned face + ``(B, 5, 2)`` landmarks."""
    return AMPNet(num_classes=num_classes, dropout=dropout)
