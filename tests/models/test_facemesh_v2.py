"""FaceMesh V2 and blendshape torch ports vs the reference runtime (ai-edge-litert), real faces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from affectstream.models import create_model, get_card
from affectstream.models.face_blendshapes import LANDMARK_SUBSET
from affectstream.operators.detection import FaceDetector
from affectstream.operators.face_mesh_v2 import FaceMeshV2Landmarker

litert = pytest.importorskip("ai_edge_litert.interpreter")

IMAGES = ("single_face.jpg", "multi_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg",
          "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg")


@pytest.fixture(scope="module")
def faces(media):
    frames = [cv2.cvtColor(cv2.imread(str(media(n))), cv2.COLOR_BGR2RGB) for n in IMAGES]
    dets = FaceDetector("full").detect(frames)
    lm = FaceMeshV2Landmarker(max_batch_size=4)
    crops, rois, counts = lm.crops(frames, [d.bbox_xyxy for d in dets],
                                   [d.keypoints for d in dets])
    assert sum(counts) >= 10  # 1 + 5 + 4 posed faces
    return lm, crops, rois


def _interp(path: str):
    it = litert.Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    return it, it.get_input_details()[0]["index"], {d["name"]: d["index"]
                                                     for d in it.get_output_details()}


def test_landmarks_match_tflite(faces, media):
    lm, crops, rois = faces
    it, inp, outs = _interp(str(media("face_landmarks_detector.tflite")))
    ref_lm, ref_logit = [], []
    for c in crops:
        it.set_tensor(inp, (c.astype(np.float32) / 255.0)[None])
        it.invoke()
        ref_lm.append(it.get_tensor(outs["Identity"]).reshape(478, 3).copy())
        ref_logit.append(float(it.get_tensor(outs["Identity_1"]).reshape(())))
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        got, logit, _ = create_model("facemesh_v2")(x)
    err_px = np.abs(got.numpy() - np.stack(ref_lm))[..., :2].max()
    assert err_px < 2e-3, f"max landmark error {err_px} crop px"
    np.testing.assert_allclose(logit[:, 0].numpy(), ref_logit, atol=5e-3)
    assert min(ref_logit) > 0  # every real face is "present" for the reference


def test_blendshapes_match_tflite(faces, media):
    lm, crops, rois = faces
    landmarks, presence, bs = lm.run_crops(crops, rois)
    assert (presence > 0.9).all()
    it, inp, outs = _interp(str(media("face_blendshapes.tflite")))
    ref = []
    for p in landmarks[:, LANDMARK_SUBSET, :2]:
        it.set_tensor(inp, p[None].astype(np.float32))
        it.invoke()
        ref.append(it.get_tensor(next(iter(outs.values()))).copy())
    diff = np.abs(bs - np.stack(ref)).max()
    assert diff < 1e-4, f"max blendshape diff {diff}"
    # the posed happy face smiles, the others don't
    smile = bs[:, [44, 45]].mean(1)
    happy = 1 + 5 + 1  # single_face, multi_face x5, surprise -> happy is the 8th face
    assert smile[happy] > 0.6 and smile[happy - 1] < 0.1


@pytest.mark.parametrize("name,shape", [("facemesh_v2", (2, 3, 256, 256)),
                                        ("face_blendshapes", (2, 146, 2))])
def test_cards_and_random_init(name, shape):
    card = get_card(name)
    assert "Apache-2.0" in card.licence and card.extra["bundle_sha256"].startswith("64184e22")
    out = create_model(name, weights=None)(torch.rand(shape) * 100)
    out = out[0] if isinstance(out, tuple) else out
    assert torch.isfinite(out).all()
