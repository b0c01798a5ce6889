"""Geometric AU estimator: each formula responds to its own landmark motion (real base face)."""

from __future__ import annotations

import numpy as np
import pytest

from affectstream.operators.au_geometric import GeometricAU, face_frame, features
from affectstream.operators.records import DISFA_AUS


@pytest.fixture(scope="module")
def base_landmarks(media):
    from affectstream.operators.decode import VideoSource
    from affectstream.operators.facetrack import FaceTrackStage
    from affectstream.pipeline.config import load_config

    stage = FaceTrackStage.from_config(load_config())
    frame = next(iter(VideoSource(str(media("single_face.mp4")), "x")))
    lm = stage.process(frame).faces.landmarks
    assert lm.shape == (1, 468, 2)
    return lm.astype(np.float64)


def _moved(lm, idx, dy_iod=0.0, dx_iod=0.0):
    out = lm.copy()
    _, iod = face_frame(lm)
    out[0, list(idx), 1] += dy_iod * iod[0]
    out[0, list(idx), 0] += dx_iod * iod[0]
    return out.astype(np.float32)


def _au(est, lm):
    return dict(zip(DISFA_AUS, est.update(np.array([1]), lm.astype(np.float32))[0]))


def _warm(lm):
    est = GeometricAU(warmup=5)
    for _ in range(6):
        est.update(np.array([1]), lm.astype(np.float32))
    return est


@pytest.mark.parametrize("idx,dy,au", [
    ((61, 291), -0.06, "AU12"),        # lip corners up
    ((61, 291), +0.05, "AU15"),        # lip corners down
    ((14, 17, 152), +0.08, "AU25"),    # lower lip moves down: lips part
    ((107, 336), -0.06, "AU01"),       # inner brows up
    ((70, 300), -0.06, "AU02"),        # outer brows up
    ((159, 386), -0.04, "AU05"),       # upper lids up
    ((152,), +0.2, "AU26"),            # chin drops
])
def test_each_au_responds_to_its_motion(base_landmarks, idx, dy, au):
    est = _warm(base_landmarks)
    rest = _au(est, base_landmarks)
    moved = _au(est, _moved(base_landmarks, idx, dy))
    assert moved[au] > rest[au] + 1.0, (au, rest[au], moved[au])


def test_neutral_reads_low_after_warmup_and_scale_invariant(base_landmarks):
    est = _warm(base_landmarks)
    rest = _au(est, base_landmarks)
    assert max(rest.values()) < 0.5
    big = base_landmarks * 2.0 + 37.0  # same face, twice as large, shifted
    assert features(big) == pytest.approx(features(base_landmarks), abs=1e-6)


def test_roll_invariant(base_landmarks):
    c = base_landmarks[0].mean(0)
    th = np.deg2rad(20)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    rot = ((base_landmarks[0] - c) @ R.T + c)[None]
    assert features(rot) == pytest.approx(features(base_landmarks), abs=1e-6)


def test_shape_error():
    with pytest.raises(ValueError, match="468, 2"):
        GeometricAU().update(np.array([1]), np.zeros((1, 68, 2), np.float32))
