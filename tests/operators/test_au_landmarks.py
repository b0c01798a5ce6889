"""The landmark heads of the batched inference on real faces: blendshapes -> AUs, pose, gaze."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from affectstream.operators.au_blendshape import BlendshapeAU
from affectstream.operators.au_landmarks import LandmarkAnalyzer
from affectstream.operators.detection import FaceDetector
from affectstream.operators.face_mesh_v2 import FaceMeshV2Landmarker
from affectstream.operators.records import DISFA_AUS

STILLS = ("0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg")  # surprise, happy, anger


@pytest.fixture(scope="module")
def faces(media):
    frames = [cv2.cvtColor(cv2.imread(str(media(n))), cv2.COLOR_BGR2RGB) for n in STILLS]
    dets = FaceDetector("full").detect(frames)
    boxes, kps = [d.bbox_xyxy[:1] for d in dets], [d.keypoints[:1] for d in dets]
    full = FaceMeshV2Landmarker()(frames, boxes, kps)
    bare = FaceMeshV2Landmarker(blendshapes=False)(frames, boxes, kps)
    return full, bare


def test_landmarks_only_mode_gives_the_same_points_without_blendshapes(faces):
    full, bare = faces
    for a, b in zip(full, bare):
        assert b.blendshapes is None and b.landmarks.shape == (1, 478, 3)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)


def test_heads_match_the_blendshape_au_model_and_read_frontal_faces(faces):
    full, bare = faces
    lm = np.concatenate([f.landmarks for f in bare])
    out = LandmarkAnalyzer()(lm)
    assert out.au.shape == (3, len(DISFA_AUS)) and out.au.dtype == np.float32
    assert ((out.au >= 0) & (out.au <= 5)).all()
    assert out.au_presence.dtype == np.uint8 and set(np.unique(out.au_presence)) <= {0, 1}
    # the same AUs as BlendshapeAU on the landmarker's own blendshapes (the same network)
    ref, ref_c = BlendshapeAU()(np.concatenate([f.blendshapes for f in full]), lm)
    np.testing.assert_allclose(out.au, ref, atol=1e-3)
    np.testing.assert_array_equal(out.au_presence, ref_c)
    assert out.au[1].argmax() == DISFA_AUS.index("AU12")            # the happy still
    assert out.au_presence[1, DISFA_AUS.index("AU12")] == 1
    assert out.pose.shape == (3, 3) and (np.abs(out.pose) < 20).all()  # posed frontal faces
    assert out.gaze.shape == (3, 2) and (np.abs(out.gaze) < 30).all()


def test_batching_does_not_change_a_face(faces):
    _, bare = faces
    lm = np.concatenate([f.landmarks for f in bare])
    heads = LandmarkAnalyzer(max_batch_size=2)
    whole = heads(lm)
    one = heads(lm[2:3])
    np.testing.assert_allclose(whole.au[2:3], one.au, atol=1e-4)
    np.testing.assert_allclose(whole.pose[2:3], one.pose, atol=1e-3)


def test_empty_and_bad_input():
    heads = LandmarkAnalyzer()
    out = heads(np.zeros((0, 478, 3), np.float32))
    assert out.au.shape == (0, 12) and out.pose.shape == (0, 3) and out.gaze.shape == (0, 2)
    with pytest.raises(ValueError, match=r"\(N, 478, 3\)"):
        heads(np.zeros((2, 468, 2), np.float32))
