"""The face-track stage on real frames: identity across an absence, follow mode, bad frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from affectstream.operators.decode import VideoSource
from affectstream.operators.facetrack import FaceTrackStage, boxes_from_landmarks
from affectstream.operators.records import Frame
from affectstream.pipeline.config import load_config


@pytest.fixture(scope="module")
def clips(media):
    face = [f.image for f in VideoSource(str(media("single_face.mp4")), "x")]
    empty = [cv2.resize(f.image, (640, 360)) for f in VideoSource(str(media("no_face.mp4")), "y")]
    return face, empty


def _stage(**detect):
    cfg = load_config(overrides={"detect": detect} if detect else None)
    return FaceTrackStage.from_config(cfg)


def _run(stage, images, fps=30.0):
    out = []
    for i, img in enumerate(images):
        out.append(stage.process(Frame("s", i, 1_000_000 + int(i * 1000 / fps),
                                       int(i * 1000 / fps), img)))
    return out


@pytest.mark.parametrize("buffer_ms,gap_frames,same_id", [
    (2000, 15, True),    # 0.5 s away, buffer 2 s: the person keeps their track id
    (200, 15, False),    # 0.5 s away, buffer 0.2 s: the track ended, a new id starts
])
def test_face_leaves_and_comes_back(clips, buffer_ms, gap_frames, same_id):
    face, empty = clips
    stage = FaceTrackStage.from_config(load_config(overrides={
        "track": {"lost_track_buffer_ms": buffer_ms}}))
    seq = face[:30] + empty[:gap_frames] + face[30:]
    res = _run(stage, seq)
    before = {int(t) for r in res[:30] for t in r.faces.track_id}
    during = [len(r.faces) for r in res[30:30 + gap_frames]]
    after = {int(t) for r in res[30 + gap_frames + 3:] for t in r.faces.track_id}
    assert before == {1}
    assert sum(during) == 0  # nobody in the empty frames
    assert after == ({1} if same_id else {2})


def test_follow_mode_matches_detect_every_frame(clips):
    face, _ = clips
    every = _run(_stage(detect_interval_ms=0), face)
    follow = _run(_stage(detect_interval_ms=500), face)
    assert all(len(r.faces) == 1 for r in every + follow)
    a = np.stack([r.faces.landmarks[0] for r in every])
    b = np.stack([r.faces.landmarks[0] for r in follow])
    iod = np.linalg.norm(a[:, 33] - a[:, 263], axis=1).mean()
    assert np.median(np.linalg.norm(a - b, axis=2)) < 0.05 * iod  # same landmarks within 5 % IOD
    ran = [r.timings_ms["detect"] > 0 for r in follow]
    assert sum(ran) < len(follow) / 3  # and the detector ran on a minority of frames


def test_boxes_from_landmarks_close_to_detector(clips):
    face, _ = clips
    r = _run(_stage(detect_interval_ms=0), face[:10])
    for x in r:
        b = boxes_from_landmarks(x.faces.landmarks)[0]
        d = x.faces.bbox_xyxy[0]
        assert np.abs(b - d).max() < 0.15 * (d[2] - d[0])


def test_crops_match_model_card_and_points_in_unit_square(clips):
    face, _ = clips
    r = _run(_stage(), face[:3])[-1]
    assert r.crops.shape == (1, 64, 64) and r.crops.dtype == np.uint8
    inside = (r.points01 > -0.1) & (r.points01 < 1.1)
    assert inside.mean() > 0.95


def test_bad_frame_is_flagged_not_raised(clips):
    face, _ = clips
    stage = _stage()
    stage.detector = None  # a broken stage step for this frame
    r = stage.process(Frame("s", 0, 0, 0, face[0]))
    assert r.error and len(r.faces) == 0 and r.seq == 0


@pytest.mark.parametrize("name,n_tracks", [
    ("t1.jpg", 6),          # six people; two faces score 0.62 and 0.55, below new_track_thresh
    ("multi_face.jpg", 5),  # five people, all above it
])
def test_clip_of_a_group_photo_gives_one_track_per_person(media, name, n_tracks):
    img = cv2.cvtColor(cv2.imread(str(media(name))), cv2.COLOR_BGR2RGB)
    res = _run(_stage(), [img] * 8)
    ids = [sorted(r.faces.track_id.tolist()) for r in res]
    assert {i for x in ids for i in x} == set(range(1, n_tracks + 1))
    assert all(x == list(range(1, n_tracks + 1)) for x in ids[2:])  # from the third frame on
    assert not any(r.ended_tracks or r.error for r in res)


def test_clip_without_a_face_gives_no_track(clips):
    _, empty = clips
    res = _run(_stage(), empty)
    assert len(res) > 30 and all(len(r.faces) == 0 and r.error is None for r in res)


def test_the_au_model_picks_the_landmarker(clips):
    """blendshape (default): FaceMesh V2, 3-D points travel on; geometric: FaceMesh, 2-D only."""
    face, _ = clips
    v2 = _run(_stage(), face[:2])[-1]
    assert v2.landmarks3d.shape == (1, 478, 3) and v2.faces.landmarks.shape == (1, 468, 2)
    cfg = load_config("fast")
    v1 = _run(FaceTrackStage.from_config(cfg), face[:2])[-1]
    assert v1.landmarks3d is None and v1.faces.landmarks.shape == (1, 468, 2)
    # the two meshes agree on the shared 468 points (same topology): median within 5 % of IOD
    iod = np.linalg.norm(v1.faces.landmarks[0, 33] - v1.faces.landmarks[0, 263])
    d = np.linalg.norm(v1.faces.landmarks[0] - v2.faces.landmarks[0], axis=1)
    assert np.median(d) < 0.05 * iod
