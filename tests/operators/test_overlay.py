"""Overlay drawing and frame matching (pure logic on synthetic points)."""

from __future__ import annotations

import numpy as np
import pytest

from affectstream.operators.overlay import FrameMatcher, draw_faces, face_lines
from affectstream.operators.records import TimelinePoint


def _pt(track, pts_ms, box=(10, 10, 50, 60), emotion="happiness", aus=None):
    return TimelinePoint(session_id="s", track_id=track, ts_ms=1_000 + pts_ms, pts_ms=pts_ms,
                         bbox_xyxy=box, det_score=0.9, emotion=emotion,
                         emotion_probs={"happiness": 0.8, "neutral": 0.2},
                         au_intensity=aus or {"AU12": 2.5, "AU06": 1.2, "AU01": 0.1})


@pytest.mark.parametrize("frame_ms, hold_ms, expected", [
    (0, 150, [1]), (33, 150, [1]), (66, 150, [1]),   # held between points at 0 and 100
    (100, 150, [1, 2]), (133, 150, [1, 2]),
    (300, 150, [2]),                                  # track 1 ended at 100: gone after 150 ms
    (420, 150, []),
])
def test_frame_matcher_holds_tracks_for_hold_ms(frame_ms, hold_ms, expected):
    pts = [_pt(1, 0), _pt(1, 100), _pt(2, 100), _pt(2, 200), _pt(2, 250)]
    m = FrameMatcher(pts, hold_ms=hold_ms)
    got = []
    for t in range(0, frame_ms + 1):  # frames visited in order
        got = m.at(t)
    assert [p.track_id for p in got] == expected


def test_frame_matcher_without_hold_shows_points_only_on_their_frame():
    pts = [_pt(1, 0), _pt(1, 33), _pt(1, 100)]  # no point at 66: face missed there
    m = FrameMatcher(pts, hold_ms=0)
    assert [len(m.at(t)) for t in (0, 33, 66, 100)] == [1, 1, 0, 1]
    assert FrameMatcher.estimate_hold_ms(pts) == pytest.approx(1.5 * 50)


def test_face_lines_name_emotion_probability_and_top_aus():
    head, aus = face_lines(_pt(3, 0))
    assert head == "#3 happiness 80%" and aus == "AU12 2.5 AU06 1.2"


def test_draw_faces_draws_inside_the_scaled_box_only():
    img = np.zeros((120, 160, 3), np.uint8)
    draw_faces(img, [_pt(1, 0, box=(20, 30, 40, 50))], scale=2.0)  # -> (40, 60, 80, 100)
    ys, xs = np.nonzero(img.any(axis=2))
    assert xs.min() >= 38 and ys.max() <= 102 and img[60:100, 40].any() and img[60:100, 80].any()
    assert not img[60 + 3:100 - 3, 40 + 3:80 - 3].any()  # the face itself is not covered
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        draw_faces(np.zeros((4, 4), np.uint8), [])
