"""The face-track nets on ONNX Runtime against their torch ports, on real faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from affectstream.models.ort_runtime import ORT_MODELS, OrtModel, cpu_net, export_onnx, onnx_path
from affectstream.operators.detection import FaceDetector
from affectstream.operators.landmarks import FaceMeshLandmarker

IMAGES = ("single_face.jpg", "multi_face.jpg", "t1.jpg", "45-m7-di-ph.jpg")


@pytest.fixture(scope="module")
def frames(media):
    return [cv2.cvtColor(cv2.imread(str(media(n))), cv2.COLOR_BGR2RGB) for n in IMAGES]


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


def test_torch_is_kept_where_onnx_runtime_does_not_apply():
    assert isinstance(cpu_net("facemesh", "onnxruntime", weights=None), torch.nn.Module)
    assert isinstance(cpu_net("facemesh_v2", "onnxruntime"), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown runtime"):
        cpu_net("facemesh", "tensorrt")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="does not run on ONNX Runtime"):
        export_onnx("mini_xception")


def test_detector_and_landmarks_agree_across_runtimes_on_real_faces(frames):
    dets = {rt: FaceDetector("full", runtime=rt).detect(frames) for rt in ("torch", "onnxruntime")}
    for a, b in zip(dets["torch"], dets["onnxruntime"]):
        assert len(a) == len(b) >= 1
        np.testing.assert_allclose(a.bbox_xyxy, b.bbox_xyxy, atol=0.05)  # pixels
        np.testing.assert_allclose(a.det_score, b.det_score, atol=1e-4)
    boxes = [d.bbox_xyxy for d in dets["torch"]]
    kps = [d.keypoints for d in dets["torch"]]
    out = {rt: FaceMeshLandmarker(runtime=rt)(frames, boxes, kps)
           for rt in ("torch", "onnxruntime")}
    n = 0
    for a, b in zip(out["torch"], out["onnxruntime"]):
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.02)  # frame pixels
        np.testing.assert_allclose(a.presence, b.presence, atol=1e-4)
        n += len(a)
    assert n >= 12  # 1 + 5 + 6 faces at least
