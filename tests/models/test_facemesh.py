"""FaceMesh torch port vs the reference runtime (ai-edge-litert) on real face crops."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch

from affectstream.models import create_model, get_card
from affectstream.operators.detection import FaceDetector
from affectstream.operators.landmarks import FaceMeshLandmarker, roi_to_frame

litert = pytest.importorskip("ai_edge_litert.interpreter")

IMAGES = ("single_face.jpg", "multi_face.jpg", "t1.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg",
          "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg")


@pytest.fixture(scope="module")
def face_crops(media):
    """Real FaceMesh input crops: every face BlazeFace-full finds in 7 photos + 2 video frames."""
    frames = [cv2.cvtColor(cv2.imread(str(media(n))), cv2.COLOR_BGR2RGB) for n in IMAGES]
    with av.open(str(media("single_face.mp4"))) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in (0, 40):
                frames.append(f.to_ndarray(format="rgb24"))
            if i >= 40:
                break
    dets = FaceDetector("full").detect(frames)
    lm = FaceMeshLandmarker(max_batch_size=8)
    crops, rois, counts = lm.crops(frames, [d.bbox_xyxy for d in dets],
                                   [d.keypoints for d in dets])
    assert sum(counts) >= 17  # 1 + 5 + 6 + 4 + 2 faces
    return lm, crops, rois


def tflite_facemesh(path: str, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    it = litert.Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    outs = {d["name"]: d["index"] for d in it.get_output_details()}
    lms, logits = [], []
    for c in crops:
        it.set_tensor(inp, (c.astype(np.float32) / 255.0)[None])
        it.invoke()
        lms.append(it.get_tensor(outs["conv2d_20"]).reshape(468, 3).copy())
        logits.append(float(it.get_tensor(outs["conv2d_30"]).reshape(())))
    return np.stack(lms), np.asarray(logits, np.float32)


def test_landmarks_and_presence_match_tflite(face_crops, media):
    lm, crops, (c, s, a) = face_crops
    ref_lm, ref_logit = tflite_facemesh(str(media("face_landmark.tflite")), crops)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        got_lm, got_logit = lm.net(x)
    # raw outputs: crop pixels of a 192-px crop (x, y, z) and the presence logit
    np.testing.assert_allclose(got_lm.numpy(), ref_lm, atol=5e-3)
    np.testing.assert_allclose(got_logit[:, 0].numpy(), ref_logit, atol=5e-3)
    assert (ref_logit > 0).all()  # every real face crop is "face present" for the reference too
    # in frame pixels (faces up to ~350 px wide): within 0.05 px
    got_xy = roi_to_frame(got_lm.numpy()[..., :2], c, s, a, 192)
    ref_xy = roi_to_frame(ref_lm[..., :2], c, s, a, 192)
    assert np.abs(got_xy - ref_xy).max() < 0.05
    # the operator's batched path (chunks of 8) gives the same landmarks
    run_lm, presence = lm.run_crops(crops)
    np.testing.assert_allclose(run_lm, got_lm.numpy(), atol=1e-4)
    assert (presence > 0.9).all()


def test_presence_low_on_non_face(media):
    """A crop of sky/background is not a face for either runtime."""
    img = cv2.cvtColor(cv2.imread(str(media("multi_face.jpg"))), cv2.COLOR_BGR2RGB)
    crop = np.ascontiguousarray(cv2.resize(img[0:190, 700:890], (192, 192)))[None]
    _, ref_logit = tflite_facemesh(str(media("face_landmark.tflite")), crop)
    model = create_model("facemesh")
    with torch.inference_mode():
        _, logit = model(torch.from_numpy(crop).permute(0, 3, 1, 2).float() / 255.0)
    assert ref_logit[0] < 0 and logit.item() < 0
    assert abs(logit.item() - ref_logit[0]) < 5e-3


def test_registry_card_and_random_init_forward():
    card = get_card("facemesh")
    assert card.task == "landmarks" and card.input_size == (192, 192)
    assert card.mean == (0.0, 0.0, 0.0) and card.std == (1.0, 1.0, 1.0)
    model = create_model("facemesh", weights=None)
    with torch.inference_mode():
        lm, logit = model(torch.rand(2, 3, 192, 192))
    assert lm.shape == (2, 468, 3) and logit.shape == (2, 1)
    assert torch.isfinite(lm).all() and torch.isfinite(logit).all()
