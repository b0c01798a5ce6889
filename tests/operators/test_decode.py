"""Decoding real clips with PyAV: PTS-based timestamps, analysis_fps sampling, errors."""

from __future__ import annotations

import pytest

from affectstream.operators.decode import PtsSampler, SourceError, VideoSource, is_live


def test_file_frames_timestamps_and_size(media):
    src = VideoSource(str(media("single_face.mp4")), "s")
    frames = list(src)
    assert len(frames) == 72 and src.total_frames == 72
    assert frames[0].image.shape == (360, 640, 3)
    pts = [f.pts_ms for f in frames]
    assert pts[0] == 0 and all(b > a for a, b in zip(pts, pts[1:]))
    assert pts[1] == pytest.approx(1000 / 30, abs=1)  # 30 fps container
    assert [f.seq for f in frames] == list(range(72))
    assert all(f.ts_ms - f.pts_ms == frames[0].ts_ms for f in frames)  # same origin
    # deterministic capture time: a second pass yields identical ts_ms
    assert [f.ts_ms for f in VideoSource(str(media("single_face.mp4")), "s")] == \
        [f.ts_ms for f in frames]


def test_creation_time_tag_sets_capture_time(media):
    f = next(iter(VideoSource(str(media("face_noface.mov")), "s")))
    assert f.ts_ms == 1675460894000  # 2023-02-03T21:48:14Z from the container


def test_analysis_fps_samples_by_media_time(media):
    frames = list(VideoSource(str(media("single_face.mp4")), "s", analysis_fps=10))
    assert len(frames) == 24  # 2.4 s at 10 fps
    gaps = [b.pts_ms - a.pts_ms for a, b in zip(frames, frames[1:])]
    assert min(gaps) >= 99 and max(gaps) <= 134


@pytest.mark.parametrize("pts,fps,kept", [
    ([0, 33, 66, 100, 133, 166, 200], 10, [0, 100, 200]),
    ([0, 40, 80, 500, 540], 10, [0, 500]),    # a jump skips empty slots
    ([0, 10, 20], None, [0, 10, 20]),
])
def test_pts_sampler(pts, fps, kept):
    s = PtsSampler(fps)
    assert [p for p in pts if s.keep(p)] == kept


def test_max_width_downscales(media):
    f = next(iter(VideoSource(str(media("face_noface.mov")), "s", max_width=480)))
    assert f.image.shape == (270, 480, 3)


def test_errors(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        VideoSource(str(tmp_path / "nope.mp4"), "s")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(SourceError, match="cannot open"):
        list(VideoSource(str(bad), "s"))
    assert is_live("rtsp://cam/1") and not is_live("/data/x.mp4")


def test_unreachable_rtsp_fails_fast():
    src = VideoSource("rtsp://127.0.0.1:9/none", "s", open_timeout_s=2)
    with pytest.raises(SourceError):
        list(src)


@pytest.mark.parametrize("fraction, frames_read", [(0.3, 137), (0.05, 17)])
def test_truncated_file_fails_after_its_frames_saying_how_many(media, tmp_path, fraction,
                                                               frames_read):
    data = media("WolfgangLanger_Pexels.mp4").read_bytes()  # 472 frames, index at the front
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * fraction)])
    src = VideoSource(str(cut), "s")
    got = []
    with pytest.raises(SourceError, match=f"truncated or corrupt: {frames_read} of 472 frames read"):
        for f in src:
            got.append(f.seq)
    assert got == list(range(frames_read))


def test_complete_file_whose_decoder_drops_frames_is_not_truncated(media):
    src = VideoSource(str(media("no_face.mp4")), "s")  # 98 packets, 95 frames out (edit list)
    assert len(list(src)) == 95 and src.total_frames == 98
