"""The ONNX exports of the face-track nets: exported once, cached."""

from __future__ import annotations

import pytest

from affectstream.models.cpu_runtime import cpu_net
from affectstream.models.ort_runtime import ORT_MODELS, OrtModel, export_onnx, onnx_path


@pytest.mark.parametrize("name", ORT_MODELS)
def test_export_is_cached(name):
    path = export_onnx(name)
    assert path == onnx_path(name) and path.stat().st_size > 100_000
    mtime = path.stat().st_mtime_ns
    assert export_onnx(name).stat().st_mtime_ns == mtime  # the second call reuses the file
    assert isinstance(cpu_net(name, "onnxruntime"), OrtModel)  # and runs from it
    # outputs against the torch port: tests/models/test_cpu_runtime.py


def test_models_without_an_export_are_refused():
    with pytest.raises(KeyError, match="does not run on ONNX Runtime"):
        export_onnx("mini_xception")
