"""Timeline point <-> Redis stream fields: the new per-face fields round-trip, old entries read."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from affectstream.operators.records import TimelinePoint, decode_landmarks, encode_landmarks


def _pt(**kw):
    return TimelinePoint("s", 3, 1_000, 40, "happiness", {"happiness": 0.75, "neutral": 0.25},
                         {"AU06": 2.5, "AU12": 3.25}, (1.0, 2.0, 30.0, 40.0), 0.9, {"mouth": 0.5},
                         **kw)


def test_presence_pose_gaze_and_landmarks_round_trip():
    lm = np.array([[10.04, 20.0, -1.5], [11.0, 21.26, 0.0]], np.float32)
    p = _pt(au_presence={"AU06": 1, "AU12": 1}, yaw=-10.25, pitch=3.5, roll=0.75,
            gaze_yaw=-21.5, gaze_pitch=-1.25, landmarks=lm)
    f = p.to_fields()
    assert f["c_AU12"] == "1" and f["yaw"] == "-10.25" and f["landmarks"].startswith("2x3:")
    back = TimelinePoint.from_fields("s", 3, "1000-0", f)
    assert back == p  # landmarks are not part of equality (an array)
    np.testing.assert_allclose(back.landmarks, lm, atol=0.05)
    assert set(back.au_intensity) == {"AU06", "AU12"}  # presence fields are not AUs


def test_entries_written_before_the_new_fields_still_read():
    old = {"pts_ms": "40", "emotion": "happiness", "p_happiness": "0.7500", "AU12": "3.250",
           "x1": "1.0", "y1": "2.0", "x2": "30.0", "y2": "40.0", "det": "0.900"}
    p = TimelinePoint.from_fields("s", 3, "1000-0", old)
    assert p.au_intensity == {"AU12": 3.25} and p.au_presence == {}
    assert p.yaw is p.pitch is p.roll is p.gaze_yaw is p.gaze_pitch is p.landmarks is None
    # and a point without them writes exactly the DESIGN §6 fields
    assert set(_pt().to_fields()) == {"pts_ms", "emotion", "p_happiness", "p_neutral", "AU06",
                                      "AU12", "x1", "y1", "x2", "y2", "det", "sal_mouth"}
    assert dataclasses.replace(_pt(), yaw=1.0).to_fields()["yaw"] == "1.00"


def test_landmark_field_errors_are_clear():
    assert decode_landmarks(encode_landmarks(np.zeros((0, 2), np.float32))).shape == (0, 2)
    with pytest.raises(ValueError, match="KxD"):
        decode_landmarks("3x2:1,2,3")
