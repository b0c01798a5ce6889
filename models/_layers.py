"""Small building blocks that reproduce TensorFlow/Keras semantics in torch.

TensorFlow's ``SAME`` padding puts the extra row/column of an odd total padding at the bottom/right
(``pad_before = total // 2``), where torch's symmetric ``padding=`` cannot; strided ``SAME`` convs
and poolings therefore pad explicitly here. Max-pooling pads with ``-inf`` so padded cells never
win. Reference: the TensorFlow guide "Convolution and pooling: padding" (tf.nn.convolution docs).

Also: :func:`tflite_state_dict`, which copies the constant weights of a parsed ``.tflite`` graph
into a torch module's Conv2d/PReLU layers, checking every shape.
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectstream.models._tflite import TfliteGraph


def same_pad_amounts(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF ``SAME`` padding ``(before, after)`` along one axis of length ``size``."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad an NCHW tensor the way TF ``SAME`` does for a ``kernel``x``kernel`` window."""
    top, bottom = same_pad_amounts(x.shape[-2], kernel, stride)
    left, right = same_pad_amounts(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF ``SAME`` (or ``VALID``) padding semantics.

    Stride-1 ``SAME`` with an odd kernel is symmetric and uses the native padding; strided
    ``SAME`` pads explicitly (asymmetric, extra at bottom/right) before the convolution.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = True, padding: Literal["same", "valid"] = "same") -> None:
        native = kernel // 2 if (padding == "same" and stride == 1 and kernel % 2 == 1) else 0
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=native, groups=groups,
                         bias=bias)
        self._explicit = padding == "same" and native == 0 and kernel > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self._explicit:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


def depthwise(ch: int, kernel: int = 3, stride: int = 1, bias: bool = True) -> Conv2dSame:
    """A TF ``SAME`` depthwise conv (depth multiplier 1)."""
    return Conv2dSame(ch, ch, kernel, stride=stride, groups=ch, bias=bias)


class Pointwise(nn.Conv2d):
    """A 1x1 convolution that runs as one matrix product on channels-last input.

    On CPU, torch sends a 1x1 ``Conv2d`` on a channels-last tensor to its generic (im2col) path
    with layout copies (measured on FaceMesh: the 1x1 convs were the largest share of a batch-1
    forward). A channels-last (N, C, H, W) tensor is an (N*H*W, C) matrix in memory, so the conv
    is ``F.linear`` over the channel axis, with no copy in or out. Same parameters and state_dict
    keys as ``nn.Conv2d(in_ch, out_ch, 1)``; other layouts use the ordinary convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
            y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
            return y.permute(0, 3, 1, 2)
        return super().forward(x)


def pointwise(in_ch: int, out_ch: int, bias: bool = True) -> nn.Conv2d:
    """A 1x1 convolution (:class:`Pointwise`)."""
    return Pointwise(in_ch, out_ch, 1, bias=bias)


def max_pool_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF ``SAME`` max-pooling: asymmetric ``-inf`` padding, then an unpadded pool."""
    return F.max_pool2d(pad_same(x, kernel, stride, value=float("-inf")), kernel, stride)


# ----------------------------------------------------------------- weight transfer from tflite

_KINDS = ("CONV_2D", "DEPTHWISE_CONV_2D", "PRELU")


def _module_kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Conv2d):
        return "DEPTHWISE_CONV_2D" if m.groups > 1 and m.groups == m.in_channels else "CONV_2D"
    if isinstance(m, nn.PReLU):
        return "PRELU"
    return None


def _keras_number(name: str) -> int:
    """Creation index of an auto-named Keras layer: ``conv2d`` -> 0, ``conv2d_27`` -> 27."""
    m = re.search(r"_(\d+)$", name)
    return int(m.group(1)) if m else 0


def tflite_state_dict(model: nn.Module, graph: TfliteGraph,
                      order: Literal["execution", "keras"] = "execution"
                      ) -> dict[str, torch.Tensor]:
    """Copy a tflite graph's conv/PReLU constants into a state_dict for ``model``.

    Layers are matched per kind (conv, depthwise conv, PReLU): the model's modules of that kind,
    in registration order, are paired with the graph's ops of that kind, in ``order``:
    ``"execution"`` (the graph's op order) or ``"keras"`` (the creation index in the op's
    auto-generated Keras output-tensor name, for graphs whose branches interleave).

    Layout conversion: conv kernels OHWI -> OIHW; depthwise kernels 1HWC -> C1HW; PReLU alpha
    (1,1,C) -> (C,).

    Args:
        model: a freshly built module whose layer shapes match the graph.
        graph: parsed ``.tflite`` graph (see :func:`models._tflite.read_tflite`).
        order: how to order the graph's layers (see above).

    Returns:
        A complete state_dict for ``model`` (float32 tensors).

    Raises:
        ValueError: layer counts or shapes differ, or the model has parameters not covered.
    """
    ops = {k: [op for op in graph.ops if op.name == k] for k in _KINDS}
    if order == "keras":
        for k in _KINDS:
            ops[k].sort(key=lambda op: _keras_number(graph.tensors[op.outputs[0]].name))
    mods: dict[str, list[tuple[str, nn.Module]]] = {k: [] for k in _KINDS}
    for name, m in model.named_modules():
        if (k := _module_kind(m)) is not None:
            mods[k].append((name, m))
    sd: dict[str, torch.Tensor] = {}
    for k in _KINDS:
        if len(ops[k]) != len(mods[k]):
            raise ValueError(f"{k}: graph has {len(ops[k])} layers, model has {len(mods[k])}")
        for op, (name, m) in zip(ops[k], mods[k], strict=True):
            w = graph.const(op.inputs[1])
            if k == "CONV_2D":
                w = w.transpose(0, 3, 1, 2)
            elif k == "DEPTHWISE_CONV_2D":
                w = w.transpose(3, 0, 1, 2)
            else:
                w = w.reshape(-1)
            tw = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
            if tw.shape != m.weight.shape:
                tname = graph.tensors[op.outputs[0]].name
                raise ValueError(f"{name} ({k} {tname!r}): graph weight {tuple(tw.shape)} != "
                                 f"model {tuple(m.weight.shape)}")
            sd[f"{name}.weight"] = tw
            if k != "PRELU":
                if len(op.inputs) > 2 and op.inputs[2] >= 0:
                    b = torch.from_numpy(np.ascontiguousarray(graph.const(op.inputs[2]),
                                                              dtype=np.float32))
                else:
                    b = torch.zeros(m.out_channels)
                if m.bias is None or b.shape != m.bias.shape:
                    raise ValueError(f"{name}: bias mismatch")
                sd[f"{name}.bias"] = b
    missing = set(model.state_dict()) - set(sd)
    if missing:
        raise ValueError(f"parameters not covered by the graph: {sorted(missing)}")
    return sd
