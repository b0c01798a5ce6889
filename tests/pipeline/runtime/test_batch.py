"""The batched inference with ``au_model: blendshape`` on real faces: AUs, presence, head pose and
gaze come from one forward over every face of the batch, split back per frame."""

from __future__ import annotations

import numpy as np
import pytest

from affectstream.operators.analyze import FaceAnalyzer
from affectstream.operators.decode import VideoSource
from affectstream.operators.facetrack import FaceTrackStage
from affectstream.operators.records import DISFA_AUS
from affectstream.pipeline.config import load_config
from affectstream.pipeline.runtime.batch import InferRequest, analyze_batch


@pytest.fixture(scope="module")
def tracked(media):
    """Face-tracked frames: 6 of WolfgangLanger (one face each) and the 5-face group still."""
    cfg = load_config(overrides={"inference": {"au_model": "blendshape"},
                                 "track": {"activation_ms": 0}})
    stage = FaceTrackStage.from_config(cfg)
    out = [stage.process(f) for f in VideoSource(str(media("WolfgangLanger_Pexels.mp4")), "w",
                                                 max_frames=6)]
    import cv2

    from affectstream.operators.records import Frame

    img = cv2.cvtColor(cv2.imread(str(media("multi_face.jpg"))), cv2.COLOR_BGR2RGB)
    group = FaceTrackStage.from_config(cfg).process(Frame("g", 0, 0, 0, img))
    return cfg, out, group


@pytest.fixture(scope="module")
def analyzer(tracked):
    i = tracked[0].inference
    return FaceAnalyzer(i.fer_model, i.saliency, i.au_model, "cpu")


def _req(t):
    return InferRequest(t.crops, t.points01, None, t.landmarks3d)


def test_stage_carries_3d_landmarks_sharing_the_468_point_topology(tracked):
    _, frames, group = tracked
    for t in frames + [group]:
        n = len(t.faces)
        assert t.landmarks3d.shape == (n, 478, 3) and t.landmarks3d.dtype == np.float32
        np.testing.assert_array_equal(t.faces.landmarks, t.landmarks3d[:, :468, :2])
    assert len(group.faces) == 5 and all(len(t.faces) == 1 for t in frames)


def test_one_forward_over_many_frames_gives_aus_presence_and_pose(tracked, analyzer):
    _, frames, group = tracked
    reqs = [_req(t) for t in frames] + [_req(group)]
    res = analyze_batch(analyzer, reqs)
    assert [r.batch_faces for r in res] == [11] * 7 and [r.first_in_batch for r in res] == \
        [True] + [False] * 6
    for t, r in zip(frames + [group], res):
        n = len(t.faces)
        assert r.au.shape == (n, len(DISFA_AUS)) and ((r.au >= 0) & (r.au <= 5)).all()
        assert r.au_presence.shape == (n, 12) and set(np.unique(r.au_presence)) <= {0, 1}
        np.testing.assert_array_equal(r.au_presence, (r.au >= 2.0).astype(np.uint8))
        assert r.pose.shape == (n, 3) and r.gaze.shape == (n, 2)
        assert "au" in r.timings_ms
    # the man faces the camera: yaw, pitch, roll within 25 degrees
    pose = np.concatenate([r.pose for r in res[:6]])
    assert (np.abs(pose) < 25).all(), pose
    # splitting back is exact: a frame alone reads the same as inside the batch
    alone = analyze_batch(analyzer, [reqs[-1]])[0]
    np.testing.assert_allclose(alone.au, res[-1].au, atol=1e-3)
    np.testing.assert_allclose(alone.pose, res[-1].pose, atol=1e-2)


def test_a_request_without_3d_landmarks_is_refused_clearly(tracked, analyzer):
    _, frames, _ = tracked
    t = frames[0]
    with pytest.raises(ValueError, match="needs landmarks3d"):
        analyze_batch(analyzer, [InferRequest(t.crops, t.points01)])
    # frames without faces need none
    empty = InferRequest(t.crops[:0], t.points01[:0])
    assert analyze_batch(analyzer, [empty])[0].au is None


def test_geometric_keeps_the_old_path(tracked):
    cfg, frames, _ = tracked
    geo = FaceAnalyzer(cfg.inference.fer_model, cfg.inference.saliency, "geometric", "cpu")
    r = analyze_batch(geo, [_req(frames[0])])[0]
    assert r.au is None and r.au_presence is None and r.pose is None and r.gaze is None
