"""The ONNX exports of the face-track nets: cached, equal to their torch ports."""

from __future__ import annotations

import pytest
import torch

from affectstream.models.cpu_runtime import cpu_net
from affectstream.models.ort_runtime import ORT_MODELS, OrtModel, export_onnx, onnx_path


@pytest.mark.parametrize("name", ORT_MODELS)
def test_export_is_cached_and_outputs_match_the_torch_port(name):
    path = export_onnx(name)
    assert path == onnx_path(name) and path.stat().st_size > 100_000
    mtime = path.stat().st_mtime_ns
    assert export_onnx(name).stat().st_mtime_ns == mtime  # the second call reuses the file
    torch_net = cpu_net(name, "torch")
    ort_net = cpu_net(name, "onnxruntime")
    assert isinstance(ort_net, OrtModel) and isinstance(torch_net, torch.nn.Module)
    size = 192 if name != "blazeface_short" else 128
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = torch_net(x)
    got = ort_net(x.contiguous(memory_format=torch.channels_last))  # any strides
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == torch.float32
        torch.testing.assert_close(g, r, atol=2e-3, rtol=1e-4)


def test_models_without_an_export_are_refused():
    with pytest.raises(KeyError, match="does not run on ONNX Runtime"):
        export_onnx("mini_xception")
