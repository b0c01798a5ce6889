"""Tracker logic on synthetic boxes (pure logic); identity on real video is in test_pipeline_ops."""

import pickle

import numpy as np
import pytest

from affectstream.operators.records import Faces
from affectstream.operators.tracking import FaceTracker
from affectstream.operators.tracking.matching import assign, iou_matrix


def F(boxes, scores):
    return Faces(np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32),
                 np.zeros(len(scores), np.int64))


@pytest.mark.parametrize("a,b,expected", [
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
    ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),
    ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),
])
def test_iou(a, b, expected):
    assert iou_matrix(np.array([a]), np.array([b]))[0, 0] == pytest.approx(expected)


def test_assign_respects_threshold():
    m, ur, uc = assign(np.array([[0.9, 0.1], [0.05, 0.1]]), 0.2)
    assert m == [(0, 0)] and ur == [1] and uc == [1]


def test_two_faces_moving_keep_ids_and_cross_low_score():
    tr = FaceTracker()
    ids = []
    for k in range(20):
        t = k * 33
        a = [10 + 3 * k, 50, 60 + 3 * k, 110]
        b = [300 - 3 * k, 60, 350 - 3 * k, 120]
        score_b = 0.3 if k == 10 else 0.9  # a blurred frame: low score, kept by stage 2
        out = tr.update(F([a, b], [0.9, score_b]), t)
        ids.append(out.track_id.tolist())
    assert all(x == [1, 2] for x in ids)


def test_lost_buffer_in_ms():
    tr = FaceTracker(lost_track_buffer_ms=500)
    box = [100, 100, 160, 170]
    assert tr.update(F([box], [0.9]), 0).track_id.tolist() == [1]
    assert len(tr.update(Faces.empty(), 300)) == 0
    assert tr.update(F([box], [0.9]), 400).track_id.tolist() == [1]  # within 500 ms
    tr.update(Faces.empty(), 800)
    tr.update(Faces.empty(), 1000)
    assert tr.ended == [1]
    assert tr.update(F([box], [0.9]), 1100).track_id.tolist() == [2]


def test_time_must_not_decrease():
    tr = FaceTracker()
    tr.update(F([[0, 0, 50, 50]], [0.9]), 0)
    with pytest.raises(ValueError, match="must not decrease"):
        tr.update(Faces.empty(), -1)
    with pytest.raises(ValueError, match="activation_ms"):
        FaceTracker(activation_ms=-1)


BOX = [100, 100, 160, 170]


@pytest.mark.parametrize("activation_ms,fps,first_reported_frame", [
    (60, 30, 2),   # frames at 0, 33, 67 ms: confirmed on the third
    (60, 25, 2),   # 0, 40, 80 ms
    (60, 10, 1),   # 0, 100 ms: two frames at a low analysis rate
    (200, 30, 6),  # 0 ... 200 ms
    (0, 30, 0),    # every detection starts a track at once
])
def test_low_score_face_seen_in_consecutive_frames_becomes_a_track(activation_ms, fps,
                                                                    first_reported_frame):
    tr = FaceTracker(activation_ms=activation_ms)
    got = [tr.update(F([BOX], [0.55]), round(k * 1000 / fps)).track_id.tolist()
           for k in range(10)]
    assert got == [[]] * first_reported_frame + [[1]] * (10 - first_reported_frame)


def test_one_frame_low_score_detection_never_becomes_a_track():
    tr = FaceTracker()
    for k in range(10):  # a flicker every other frame: each tentative track is dropped
        faces = F([BOX], [0.55]) if k % 2 == 0 else Faces.empty()
        assert len(tr.update(faces, k * 33)) == 0
    assert tr.update(F([[300, 100, 360, 170]], [0.9]), 400).track_id.tolist() == [1]


def test_high_score_starts_at_once_and_ids_stay_unique():
    tr = FaceTracker()
    a, b = [10, 10, 70, 80], [200, 10, 260, 80]
    seen = []
    for k in range(5):
        seen.append(tr.update(F([a, b], [0.55, 0.9]), k * 33).track_id.tolist())
    assert seen == [[1]] * 2 + [[2, 1]] * 3  # b is 1 at once, a is 2 from its third frame


def test_low_score_face_keeps_its_id_across_a_missed_frame():
    tr = FaceTracker()
    ids = []
    for k in range(12):
        faces = Faces.empty() if k == 6 else F([BOX], [0.55])
        ids.append(tr.update(faces, k * 33).track_id.tolist())
    assert ids[6] == [] and {i for x in ids for i in x} == {1}


def test_snapshot_restore_during_activation():
    a = FaceTracker()
    a.update(F([BOX], [0.55]), 0)
    a.update(F([BOX], [0.55]), 33)
    b = FaceTracker()
    b.restore(pickle.loads(pickle.dumps(a.snapshot())))
    assert b.update(F([BOX], [0.55]), 67).track_id.tolist() == [1]
    assert b.update(F([[300, 100, 360, 170]], [0.9]), 100).track_id.tolist() == [2]
