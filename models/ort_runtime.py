"""The per-stream CPU networks (BlazeFace, FaceMesh 468) through ONNX Runtime.

The torch ports stay the source of truth (weights, GPU batching, training); for CPU inference
they are exported once to ONNX and run by ONNX Runtime with one intra-op thread. Why: a batch-1
forward of these small depthwise nets is ~100 torch ops, and in a stream process whose other
threads (decode, timeline, Redis) compete for the cores, torch's per-op dispatch (holding the
GIL) made FaceMesh cost ~10 ms a frame where its reference runtime (TFLite + XNNPACK) needs
~4.5 ms. Measured on 2 cores of an Intel Xeon (AMX), one thread, batch 1 (README "Runtime of
the face-track nets"): BlazeFace full 16 -> 6 ms, FaceMesh 5.9 -> 4.6 ms isolated, and in
``affectstream bench -c fast`` the landmarks step 10.2 -> 7.6 ms a frame. On an AMD EPYC without
AVX-512 FaceMesh takes 10 ms here, so LiteRT is the default (:mod:`models.cpu_runtime`).

Format: ONNX (https://onnx.ai), opset :data:`OPSET`, exported by ``torch.onnx.export``'s
TorchScript exporter from the port with its pretrained weights; dynamic batch axis. Cached under
``<cache>/onnx/<name>-<key>.onnx``; the key hashes the converted weights file, the torch version
and the opset, so new weights or a new torch export again. Outputs match the torch port within
float32 rounding (``tests/models/test_cpu_runtime.py``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from affectstream.models.weights import cache_dir, converted_path, load_state_dict, sha256_file

OPSET = 17
"""ONNX opset of the exported graphs."""

ORT_MODELS = ("blazeface_short", "blazeface_full", "facemesh")
"""Registry ids that run on ONNX Runtime when asked (the others gain nothing measured)."""


def onnx_path(name: str) -> Path:
    """Cache path of the ONNX export of registry model ``name`` (converting its weights first
    when needed; the file itself may not exist yet)."""
    weights = converted_path(name)
    if not weights.is_file():
        load_state_dict(name)
    key = f"{sha256_file(weights)};torch={torch.__version__};opset={OPSET}"
    return cache_dir() / "onnx" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def export_onnx(name: str) -> Path:
    """Export registry model ``name`` with its pretrained weights to ONNX (once; cached).

    Returns:
        The ``.onnx`` path.

    Raises:
        KeyError: ``name`` is not one of :data:`ORT_MODELS`.
        models.weights.ArtifactError: the pinned weights could not be obtained.
    """
    if name not in ORT_MODELS:
        raise KeyError(f"{name!r} does not run on ONNX Runtime; those that do: "
                       f"{', '.join(ORT_MODELS)}")
    path = onnx_path(name)
    if path.is_file():
        return path
    from affectstream.models.registry import create_model, get_card

    model = create_model(name).to(memory_format=torch.contiguous_format).eval()
    h, w = get_card(name).input_size
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.part")  # several processes may export at once
    # the ports pad with Python ints computed from the input's spatial size, which the tracer
    # records as constants (and warns about): right here, where only the batch axis varies
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.rand(1, 3, h, w),), str(tmp), dynamo=False,
                          opset_version=OPSET, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})
    os.replace(tmp, path)
    return path


class OrtModel:
    """A registry model's forward on ONNX Runtime, called like the torch module.

    Args:
        name: one of :data:`ORT_MODELS` (pretrained weights).
        threads: ONNX Runtime intra-op threads (1: the stream's other threads use the rest).

    Call: ``(B, 3, H, W) float32`` torch tensor (any strides) -> the torch module's outputs as a
    tuple of float32 CPU tensors, same shapes.
    """

    def __init__(self, name: str, threads: int = 1) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # warnings and up only
        self.name = name
        self.session = ort.InferenceSession(str(export_onnx(name)), so,
                                            providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)
        return tuple(torch.from_numpy(o) for o in self.session.run(None, {self._input: arr}))

    def eval(self) -> OrtModel:
        """No-op (inference only), for code written against ``nn.Module``."""
        return self


def export_all() -> list[Path]:
    """Export every :data:`ORT_MODELS` entry (``affectstream models fetch``)."""
    return [export_onnx(n) for n in ORT_MODELS]
