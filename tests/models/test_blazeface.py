"""BlazeFace torch port vs the reference runtime (ai-edge-litert) on real photos and video."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch

from affectstream.models import create_model, get_card
from affectstream.operators.detection import FaceDetector, letterbox

litert = pytest.importorskip("ai_edge_litert.interpreter")

IMAGES = ("single_face.jpg", "multi_face.jpg", "t1.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg",
          "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg")
TFLITE = {"short": "face_detection_short_range.tflite", "full": "face_detection_full_range.tflite"}


@pytest.fixture(scope="module")
def frames(media) -> list[np.ndarray]:
    """Seven real photos plus two frames of single_face.mp4, RGB uint8."""
    out = [cv2.cvtColor(cv2.imread(str(media(n))), cv2.COLOR_BGR2RGB) for n in IMAGES]
    with av.open(str(media("single_face.mp4"))) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in (0, 40):
                out.append(f.to_ndarray(format="rgb24"))
            if i >= 40:
                break
    return out


class TfliteNet:
    """Callable with the torch model's signature, backed by the tflite interpreter (batch loop)."""

    def __init__(self, path: str) -> None:
        self.it = litert.Interpreter(model_path=path, num_threads=1)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]["index"]
        outs = self.it.get_output_details()
        self.reg = next(d["index"] for d in outs if d["shape"][-1] == 16)
        self.cls = next(d["index"] for d in outs if d["shape"][-1] == 1)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        regs, logits = [], []
        for img in x.permute(0, 2, 3, 1).contiguous().numpy():
            self.it.set_tensor(self.inp, img[None])
            self.it.invoke()
            regs.append(self.it.get_tensor(self.reg)[0].copy())
            logits.append(self.it.get_tensor(self.cls)[0].copy())
        return torch.from_numpy(np.stack(regs)), torch.from_numpy(np.stack(logits))


@pytest.mark.parametrize("kind", ["short", "full"])
def test_raw_outputs_match_tflite(kind, frames, media):
    size = get_card(f"blazeface_{kind}").input_size[0]
    x = np.stack([letterbox(f, size)[0] for f in frames]).astype(np.float32) / 127.5 - 1.0
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    model = create_model(f"blazeface_{kind}")
    with torch.inference_mode():
        reg, logit = model(xt)
    ref_reg, ref_logit = TfliteNet(str(media(TFLITE[kind])))(xt)
    n_anchors = {"short": 896, "full": 2304}[kind]
    assert reg.shape == (len(frames), n_anchors, 16) and logit.shape == (len(frames), n_anchors, 1)
    # regressors are offsets in input pixels (|values| up to ~300); logits up to ~|100|
    np.testing.assert_allclose(reg.numpy(), ref_reg.numpy(), atol=2e-3, rtol=1e-4)
    np.testing.assert_allclose(logit.numpy(), ref_logit.numpy(), atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("kind", ["short", "full"])
def test_decoded_faces_match_tflite(kind, frames, media):
    det = FaceDetector(kind)
    got = det.detect(frames)
    det.net = TfliteNet(str(media(TFLITE[kind])))
    ref = det.detect(frames)
    total = 0
    for g, r in zip(got, ref, strict=True):
        assert len(g) == len(r)
        total += len(g)
        np.testing.assert_allclose(g.bbox_xyxy, r.bbox_xyxy, atol=0.1)  # frame pixels
        np.testing.assert_allclose(g.keypoints, r.keypoints, atol=0.1)
        np.testing.assert_allclose(g.det_score, r.det_score, atol=1e-3)
    assert total >= len(frames) - 1  # the comparison is not vacuous


@pytest.mark.parametrize("name,size,anchors", [("blazeface_short", 128, 896),
                                               ("blazeface_full", 192, 2304)])
def test_registry_card_and_random_init_forward(name, size, anchors):
    card = get_card(name)
    assert card.task == "detection" and card.input_size == (size, size) and card.color == "rgb"
    model = create_model(name, weights=None)
    with torch.inference_mode():
        reg, logit = model(torch.zeros(2, 3, size, size))
    assert reg.shape == (2, anchors, 16) and logit.shape == (2, anchors, 1)
    assert torch.isfinite(reg).all() and torch.isfinite(logit).all()
