"""Shared torch building blocks for the paper models (AMP-Net, DSAN, DSR-FAU, saliency CNN).

Private module (the leading underscore keeps :mod:`models` from treating it as an architecture
file). Everything here is stateless apart from its parameters/buffers, works on any batch size and
traces with :func:`torch.jit.trace`.

Sources of the block designs (re-implemented from the papers' descriptions):
  * ResNet basic/bottleneck blocks: He et al., "Deep Residual Learning for Image Recognition",
    CVPR 2016, doi:10.1109/CVPR.2016.90, Table 1.
  * CBAM: Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018,
    doi:10.1007/978-3-030-01234-2_1, Fig. 2 (channel then spatial attention).
  * OSA + eSE: Lee & Park, "CenterMask: Real-Time Anchor-Free Instance Segmentation", CVPR 2020,
    doi:10.1109/CVPR42600.2020.01392, Sec. 3.2 (VoVNetV2: one-shot aggregation with residual and
    effective squeeze-excitation); Lee et al., "An Energy and GPU-Computation Efficient Backbone
    Network ..." (VoVNet), CVPRW 2019, doi:10.1109/CVPRW.2019.00103.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_act(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, dilation: int = 1,
                groups: int = 1, act: bool = True) -> nn.Sequential:
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU`` with "same" padding for odd kernels.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        kernel: square kernel size (odd).
        stride: stride; output size is ``ceil(in / stride)``.
        dilation: dilation; padding grows with it so the spatial size is kept at stride 1.
        groups: conv groups (``in_ch`` for depthwise).
        act: append a ReLU.
    """
    pad = dilation * (kernel - 1) // 2
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1 projection shortcut).

    Shapes: ``(B, in_ch, H, W) -> (B, out_ch, ceil(H/stride), ceil(W/stride))``.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of the first conv and of the projection.
        attention: optional module applied to the residual branch before the addition (CBAM in
            AMP-Net's local branch).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, attention: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv_bn_act(in_ch, out_ch, 3, stride)
        self.conv2 = conv_bn_act(out_ch, out_ch, 3, 1, act=False)
        self.attention = attention if attention is not None else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = conv_bn_act(in_ch, out_ch, 1, stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(self.conv2(self.conv1(x)))
        return F.relu(y + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1 reduce, 3x3, 1x1 expand; stride on the 3x3 as in torchvision).

    Shapes: ``(B, in_ch, H, W) -> (B, out_ch, ceil(H/stride), ceil(W/stride))``.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn_act(in_ch, mid_ch, 1)
        self.conv2 = conv_bn_act(mid_ch, mid_ch, 3, stride)
        self.conv3 = conv_bn_act(mid_ch, out_ch, 1, act=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = conv_bn_act(in_ch, out_ch, 1, stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


def resnet_stage(block: str, in_ch: int, out_ch: int, n_blocks: int, stride: int) -> nn.Sequential:
    """A ResNet stage of ``n_blocks`` blocks; the first one carries the stride.

    Args:
        block: ``"basic"`` or ``"bottleneck"`` (bottleneck width ``out_ch // 4``).
    """
    blocks: list[nn.Module] = []
    for i in range(n_blocks):
        cin, s = (in_ch, stride) if i == 0 else (out_ch, 1)
        if block == "basic":
            blocks.append(BasicBlock(cin, out_ch, s))
        elif block == "bottleneck":
            blocks.append(Bottleneck(cin, out_ch // 4, out_ch, s))
        else:
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
    return nn.Sequential(*blocks)


def resnet_stem(out_ch: int = 64) -> nn.Sequential:
    """ResNet input stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool (overall stride 4)."""
    return nn.Sequential(
        nn.Conv2d(3, out_ch, 7, 2, 3, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1))


class ChannelAttention(nn.Module):
    """CBAM channel attention: shared MLP on avg- and max-pooled descriptors, sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: 7x7 conv over [channel-mean, channel-max], sigmoid gate."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(desc))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (channel attention, then spatial attention)."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class ESE(nn.Module):
    """Effective squeeze-excitation (VoVNetV2): global avg-pool, one 1x1 conv (no reduction),
    hard-sigmoid gate."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))


class OSABlock(nn.Module):
    """One-shot aggregation block with eSE and identity residual (VoVNetV2).

    ``n_layers`` successive 3x3 convs; layer ``i`` sees a ``(2i+3)``-pixel receptive field (times
    the dilation), so concatenating the input with every layer's output aggregates several
    receptive fields at once (AMP-Net's "multi-receptive-field" global perception). A 1x1 conv
    fuses the concatenation to ``out_ch``; eSE re-weights channels; the input is added back when
    ``in_ch == out_ch``.

    Shapes: ``(B, in_ch, H, W) -> (B, out_ch, H, W)``.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, n_layers: int = 3, dilation: int = 1):
        super().__init__()
        self.layers = nn.ModuleList(
            conv_bn_act(in_ch if i == 0 else mid_ch, mid_ch, 3, dilation=dilation)
            for i in range(n_layers))
        self.fuse = conv_bn_act(in_ch + n_layers * mid_ch, out_ch, 1)
        self.ese = ESE(out_ch)
        self.residual = in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        y = x
        for layer in self.layers:
            y = layer(y)
            feats.append(y)
        out = self.ese(self.fuse(torch.cat(feats, dim=1)))
        return out + x if self.residual else out
