"""Blendshape AU model, head pose and the eval measures on real posed stills."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from affectstream.operators import au_eval
from affectstream.operators.au_blendshape import MAPPING, BlendshapeAU, blendshape_intensities
from affectstream.operators.detection import FaceDetector
from affectstream.operators.face_mesh_v2 import FaceMeshV2Landmarker
from affectstream.operators.head_pose import gaze, head_pose
from affectstream.operators.records import DISFA_AUS

STILLS = {"surprise": "0-f1-su-ph.jpg", "happiness": "0-f15-hao-ph.jpg",
          "anger": "15-f13-anc-ph.jpg"}


@pytest.fixture(scope="module")
def posed(media):
    frames = [cv2.cvtColor(cv2.imread(str(media(n))), cv2.COLOR_BGR2RGB) for n in STILLS.values()]
    frames += [f[:, ::-1].copy() for f in frames]  # mirrored copies
    dets = FaceDetector("full").detect(frames)
    faces = FaceMeshV2Landmarker()(frames, [d.bbox_xyxy[:1] for d in dets],
                                   [d.keypoints[:1] for d in dets])
    assert all(len(f) == 1 for f in faces)
    return (np.concatenate([f.blendshapes for f in faces]),
            np.concatenate([f.landmarks for f in faces]))


def test_prototypical_aus_lead_on_posed_stills(posed):
    bs, lm = posed
    inten, presence = BlendshapeAU()(bs[:3], lm[:3])
    assert inten.shape == (3, 12) and inten.dtype == np.float32
    assert ((inten >= 0) & (inten <= 5)).all()
    for label, row in zip(STILLS, inten):
        assert au_eval.prototype_check(label, row)["bar"], (label, dict(zip(DISFA_AUS, row)))
    assert presence[1, DISFA_AUS.index("AU12")] == 1 and presence[2, DISFA_AUS.index("AU12")] == 0


def test_mirroring_flips_yaw_and_keeps_aus(posed):
    bs, lm = posed
    pose = head_pose(lm)
    np.testing.assert_allclose(pose[:3, 0], -pose[3:, 0], atol=3.0)   # yaw
    np.testing.assert_allclose(pose[:3, 1], pose[3:, 1], atol=3.0)    # pitch
    assert (np.abs(pose[:, 1:]) < 20).all()                            # posed frontal faces
    g = gaze(lm)
    np.testing.assert_allclose(g[:3, 0], -g[3:, 0], atol=6.0)
    a, b = BlendshapeAU()(bs[:3], lm[:3])[0], BlendshapeAU()(bs[3:], lm[3:])[0]
    assert np.abs(a - b).max() < 1.5  # measured 1.25 (AU01 of the surprise still)


def test_rotated_image_reads_its_roll(media):
    img = cv2.cvtColor(cv2.imread(str(media("0-f15-hao-ph.jpg"))), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    rot = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0), (w, h))
    frames = [img, rot]
    dets = FaceDetector("full").detect(frames)
    faces = FaceMeshV2Landmarker()(frames, [d.bbox_xyxy[:1] for d in dets],
                                   [d.keypoints[:1] for d in dets])
    roll = head_pose(np.concatenate([f.landmarks for f in faces]))[:, 2]
    assert abs((roll[1] - roll[0]) - 20) < 3  # cv2 angle > 0 = counter-clockwise


@pytest.mark.parametrize("au,names", [(m.au, m.blendshapes) for m in MAPPING])
def test_mapping_table_is_monotone_and_bounded(au, names):
    from affectstream.models.face_blendshapes import BLENDSHAPE_NAMES

    lo, hi = np.zeros((1, 52)), np.zeros((1, 52))
    for n in names:
        hi[0, BLENDSHAPE_NAMES.index(n)] = 1.0
    i = DISFA_AUS.index(au)
    assert blendshape_intensities(lo)[0, i] == 0 and blendshape_intensities(hi)[0, i] == 5


def test_eval_measures():
    au = np.zeros((4, 12))
    au[:, 0] = [5, 5, 1, 0]
    assert au_eval.saturation(au)[0] == 0.5 and au_eval.jitter(au)[0] == pytest.approx(5 / 3)
    segs = au_eval.segment_means(au, np.array([0, 10, 20, 30.]), [au_eval.parse_segment("a:0-15")])
    assert segs["a"][0] == 2 and segs["a"][1][0] == 5
    with pytest.raises(ValueError, match="NAME:START_MS-END_MS"):
        au_eval.parse_segment("laughing")
    with pytest.raises(KeyError, match="happiness"):
        au_eval.prototype_check("joy", au[0])
    with pytest.raises(ValueError, match="presence_threshold"):
        BlendshapeAU(0)
