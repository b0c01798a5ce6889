"""Replaying a real clip as a live camera (PTS pacing, looping) and webcam sources."""

from __future__ import annotations

import numpy as np
import pytest

from affectstream.operators.decode import SourceError, VideoSource, is_live, replay, webcam_device


class FakeClock:
    """Wall clock that only moves when slept on (pure-logic timing)."""

    def __init__(self) -> None:
        self.t = 100.0
        self.released: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_realtime_releases_each_frame_at_its_pts(media):
    src = VideoSource(str(media("single_face.mp4")), "s", max_frames=30)  # 30 fps
    clk = FakeClock()
    rel = [(f.pts_ms, clk()) for f in replay(src, realtime=True, sleep=clk.sleep, clock=clk)]
    pts = np.array([p for p, _ in rel]) / 1000
    wall = np.array([t for _, t in rel]) - rel[0][1]
    assert len(rel) == 30 and np.allclose(wall, pts - pts[0], atol=1e-9)
    assert wall[-1] == pytest.approx(29 / 30, abs=0.002)


def test_loop_continues_media_time_and_seq(media):
    src = VideoSource(str(media("single_face.mp4")), "s")  # 72 frames
    out = list(replay(src, loop=True, max_frames=160))
    assert len(out) == 160 and [f.seq for f in out] == list(range(160))
    p = np.array([f.pts_ms for f in out])
    assert (np.diff(p) > 0).all() and (np.diff(p) <= 34).all()  # no jump back, no hole
    assert np.array_equal(out[72].image, out[0].image)  # the second pass starts over
    assert out[72].ts_ms - out[0].ts_ms == out[72].pts_ms - out[0].pts_ms


@pytest.mark.parametrize("url, dev, live", [
    ("0", "/dev/video0", True), ("12", "/dev/video12", True), ("/dev/video3", "/dev/video3", True),
    ("clip.mp4", None, False), ("rtsp://h/x", None, True), ("/dev/sda", None, False),
])
def test_webcam_sources_by_index_or_device(url, dev, live):
    assert webcam_device(url) == dev and is_live(url) is live


def test_missing_webcam_fails_with_a_clear_error():
    with pytest.raises(SourceError, match="cannot open webcam /dev/video77"):
        next(iter(VideoSource("77", "cam", reconnect_max_tries=0, open_timeout_s=1)))
