"""mini-Xception torch port (from the Keras h5) vs the quantized tflite of the same model."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch

from affectstream.models import create_model, get_card
from affectstream.models.mini_xception import LABEL_NAMES
from affectstream.operators.detection import FaceDetector
from affectstream.operators.landmarks import square_crop

litert = pytest.importorskip("ai_edge_litert.interpreter")

IMAGES = ("single_face.jpg", "multi_face.jpg", "t1.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg",
          "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg")


@pytest.fixture(scope="module")
def crops(media) -> dict[str, np.ndarray]:
    """64x64 grey face crops (detector box, scale 1.0): per source name, (N, 64, 64) uint8."""
    frames = {n: cv2.cvtColor(cv2.imread(str(media(n))), cv2.COLOR_BGR2RGB) for n in IMAGES}
    with av.open(str(media("single_face.mp4"))) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % 4 == 0:
                frames[f"single_face.mp4#{i}"] = f.to_ndarray(format="rgb24")
    det = FaceDetector("full")
    out = {}
    for (name, img), d in zip(frames.items(), det.detect(list(frames.values())), strict=True):
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        out[name] = square_crop(grey, d.bbox_xyxy, 64, scale=1.0)
    return out


def tflite_probs(path: str, x: np.ndarray) -> np.ndarray:
    it = litert.Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    inp, outp = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    res = []
    for img in x:
        it.set_tensor(inp, img[None, :, :, None])
        it.invoke()
        res.append(it.get_tensor(outp)[0].copy())
    return np.stack(res)


def to_input(grey: np.ndarray) -> np.ndarray:
    return grey.astype(np.float32) / 127.5 - 1.0  # card: mean 0.5, std 0.5 on [0, 1]


def test_top1_agrees_with_quantized_tflite(crops, media):
    x = to_input(np.concatenate(list(crops.values())))
    assert len(x) >= 30
    ref = tflite_probs(str(media("emotion_model_quantized.tflite")), x)
    model = create_model("mini_xception")
    with torch.inference_mode():
        probs = torch.softmax(model(torch.from_numpy(x)[:, None]), -1).numpy()
    agree = (probs.argmax(1) == ref.argmax(1)).mean()
    # the tflite reference has int8 weights, so exact equality is not expected:
    # >= 95 % same top-1 and every probability within 0.06 (measured: 100 %, 0.03)
    assert agree >= 0.95, f"top-1 agreement {agree:.3f}"
    assert np.abs(probs - ref).max() < 0.06


@pytest.mark.parametrize("image,expected,top_k", [
    ("0-f15-hao-ph.jpg", "happiness", 1),
    ("single_face.jpg", "happiness", 1),
    # surprise vs fear is the classic FER2013 confusion; on this posed surprise the two swap
    # places with the crop margin (scale 0.9: surprise 0.80; 1.0: fear 0.40), so top-2 here.
    ("0-f1-su-ph.jpg", "surprise", 2),
])
def test_obvious_expressions(crops, image, expected, top_k):
    model = create_model("mini_xception")
    with torch.inference_mode():
        logits = model(torch.from_numpy(to_input(crops[image]))[:, None])
    assert len(logits) == 1
    top = [LABEL_NAMES[i] for i in logits[0].argsort(descending=True)[:top_k].tolist()]
    assert expected in top, top


def test_card_labels_and_params():
    card = get_card("mini_xception")
    assert card.task == "expression" and card.color == "gray" and card.input_size == (64, 64)
    assert card.mean == (0.5,) and card.std == (0.5,)
    assert card.label_names == ("anger", "disgust", "fear", "happiness", "sadness", "surprise",
                                "neutral")
    model = create_model("mini_xception", weights=None)
    assert sum(p.numel() for p in model.parameters()) == 56_951  # as in the Keras file


def test_cam_layer_feeds_grad_cam():
    model = create_model("mini_xception")
    feats = {}
    h = model.cam_layer.register_forward_hook(lambda m, i, o: feats.setdefault("a", o))
    x = torch.zeros(2, 1, 64, 64)
    logits = model(x)
    h.remove()
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    fmap = feats["a"]
    assert fmap.shape == (2, 128, 4, 4)
    (grad,) = torch.autograd.grad(logits[:, 3].sum(), fmap)
    assert grad.shape == fmap.shape and grad.abs().sum() > 0
    assert model.class_maps(x).shape == (2, 7, 4, 4)


def test_folded_batchnorm_keeps_logits_and_grad_cam(crops):
    ref = create_model("mini_xception").eval()
    folded = create_model("mini_xception").eval().fold_batchnorm()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in ref.modules()) == 14
    x = torch.from_numpy(np.concatenate([to_input(g) for g in crops.values()])[:, None])
    maps = {}
    for name, model in (("ref", ref), ("folded", folded)):
        xi = x.clone()
        fm = {}
        h = model.cam_layer.register_forward_hook(lambda m, i, o, fm=fm: fm.setdefault("a", o))
        logits = model(xi)
        h.remove()
        (grad,) = torch.autograd.grad(logits[:, 3].sum(), fm["a"])
        maps[name] = (logits.detach(), (grad * fm["a"]).sum(1).detach())
    torch.testing.assert_close(maps["folded"][0], maps["ref"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(maps["folded"][1], maps["ref"][1], atol=1e-4, rtol=1e-3)
    with pytest.raises(RuntimeError, match="eval mode"):
        create_model("mini_xception").train().fold_batchnorm()
