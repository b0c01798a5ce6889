"""The face-track nets on LiteRT and ONNX Runtime against their torch ports, on real faces."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from affectstream.models.cpu_runtime import cpu_net
from affectstream.models.litert_runtime import LITERT_MODELS, LiteRTModel
from affectstream.models.ort_runtime import ORT_MODELS, OrtModel
from affectstream.operators.detection import FaceDetector
from affectstream.operators.landmarks import FaceMeshLandmarker

IMAGES = ("single_face.jpg", "multi_face.jpg", "t1.jpg", "45-m7-di-ph.jpg")


@pytest.fixture(scope="module")
def frames(media):
    return [cv2.cvtColor(cv2.imread(str(media(n))), cv2.COLOR_BGR2RGB) for n in IMAGES]


@pytest.mark.parametrize("runtime,name", [("litert", n) for n in sorted(LITERT_MODELS)]
                         + [("onnxruntime", n) for n in ORT_MODELS])
def test_outputs_match_the_torch_port(runtime, name):
    torch_net = cpu_net(name, "torch")
    net = cpu_net(name, runtime)
    assert isinstance(net, LiteRTModel if runtime == "litert" else OrtModel)
    assert isinstance(torch_net, torch.nn.Module)
    size = 192 if name != "blazeface_short" else 128
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = torch_net(x)
    got = net(x.contiguous(memory_format=torch.channels_last))  # any strides
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == torch.float32
        torch.testing.assert_close(g, r, atol=2e-3, rtol=1e-4)


def test_litert_takes_no_faces_and_refuses_a_wrong_size():
    lite = cpu_net("facemesh", "litert")
    assert [t.shape for t in lite(torch.zeros(0, 3, 192, 192))] == [(0, 468, 3), (0, 1)]
    with pytest.raises(ValueError, match="takes"):
        lite(torch.zeros(1, 3, 200, 192))


def test_the_torch_port_is_kept_where_no_other_runtime_applies():
    for rt in ("litert", "onnxruntime"):
        assert isinstance(cpu_net("facemesh", rt, weights=None), torch.nn.Module)
        assert isinstance(cpu_net("facemesh_v2", rt), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown runtime"):
        cpu_net("facemesh", "tensorrt")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="does not run on LiteRT"):
        LiteRTModel("mini_xception")


def test_creating_a_litert_net_writes_nothing_to_stderr():
    code = ("from affectstream.models.litert_runtime import LiteRTModel; import sys; "
            "LiteRTModel('facemesh'); print('still here', file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stderr == "still here\n"  # LiteRT's INFO line is gone, Python's stderr is not


@pytest.mark.parametrize("runtime", ["litert", "onnxruntime"])
def test_detector_and_landmarks_agree_with_torch_on_real_faces(frames, runtime):
    if runtime == "onnxruntime":
        assert isinstance(cpu_net("facemesh", runtime), OrtModel)
    dets = {rt: FaceDetector("full", runtime=rt).detect(frames) for rt in ("torch", runtime)}
    for a, b in zip(dets["torch"], dets[runtime]):
        assert len(a) == len(b) >= 1
        np.testing.assert_allclose(a.bbox_xyxy, b.bbox_xyxy, atol=0.05)  # pixels
        np.testing.assert_allclose(a.det_score, b.det_score, atol=1e-4)
    boxes = [d.bbox_xyxy for d in dets["torch"]]
    kps = [d.keypoints for d in dets["torch"]]
    out = {rt: FaceMeshLandmarker(runtime=rt)(frames, boxes, kps) for rt in ("torch", runtime)}
    n = 0
    for a, b in zip(out["torch"], out[runtime]):
        np.testing.assert_allclose(a.landmarks, b.landmarks, atol=0.02)  # frame pixels
        np.testing.assert_allclose(a.presence, b.presence, atol=1e-4)
        n += len(a)
    assert n >= 12  # 1 + 5 + 6 faces at least
