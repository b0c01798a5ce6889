"""Where a per-stream face-track network (BlazeFace, FaceMesh 468) runs on CPU.

Three runtimes, one call contract (the torch port's: ``(B, 3, H, W)`` float32 -> its outputs):

- ``"litert"`` (default): the original MediaPipe ``.tflite`` files on LiteRT + XNNPACK
  (:mod:`models.litert_runtime`) — their reference runtime; on 2 cores of an AMD EPYC FaceMesh
  takes 4.2 ms there against 10.0 on ONNX Runtime (README "Runtime of the face-track nets");
- ``"onnxruntime"``: exports of the torch ports on ONNX Runtime (:mod:`models.ort_runtime`);
- ``"torch"``: the torch ports themselves (always on CUDA, with other weights, and for
  FaceMesh V2).
"""

from __future__ import annotations

from typing import Literal

import torch

Runtime = Literal["litert", "onnxruntime", "torch"]
"""Where a per-stream CPU network runs."""

RUNTIMES: tuple[str, ...] = ("litert", "onnxruntime", "torch")


def cpu_net(name: str, runtime: Runtime, device: str | torch.device = "cpu",
            weights: str | None = "default"):
    """The network ``name`` for a face-track operator.

    On LiteRT / ONNX Runtime when ``runtime`` says so, the device is the CPU, the weights are
    the pretrained ones and that runtime has the model; else the torch port (channels-last, in
    eval mode) on ``device``.

    Returns:
        ``LiteRTModel``, ``OrtModel`` or ``torch.nn.Module``, all called the same way.

    Raises:
        ValueError: unknown ``runtime``.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    on_cpu = torch.device(device).type == "cpu" and weights == "default"
    if on_cpu and runtime == "litert":
        from affectstream.models.litert_runtime import LITERT_MODELS, LiteRTModel

        if name in LITERT_MODELS:
            return LiteRTModel(name)
    if on_cpu and runtime == "onnxruntime":
        from affectstream.models.ort_runtime import ORT_MODELS, OrtModel

        if name in ORT_MODELS:
            return OrtModel(name)
    from affectstream.models.registry import create_model

    # channels_last: ~1.5x faster depthwise convs on CPU; inputs arrive NHWC-strided anyway
    return create_model(name, weights=weights).to(
        torch.device(device), memory_format=torch.channels_last).eval()
