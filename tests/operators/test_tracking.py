"""Tracker logic on synthetic boxes (pure logic); identity on real video is in test_pipeline_ops."""

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


def test_low_score_never_starts_track_and_time_must_increase():
    tr = FaceTracker()
    assert len(tr.update(F([[0, 0, 50, 50]], [0.4]), 0)) == 0
    with pytest.raises(ValueError, match="must not decrease"):
        tr.update(Faces.empty(), -1)
