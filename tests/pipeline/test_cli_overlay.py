"""Overlay video on a real clip: a session stored by the runner, drawn by the CLI, decoded back."""

from __future__ import annotations

import subprocess
import sys

import av
import numpy as np
import pytest

from tests.pipeline.stored import write_session

CLI = [sys.executable, "-m", "affectstream.pipeline.cli.main"]


def _frames(path):
    """(pts in seconds, RGB image) of every frame."""
    with av.open(str(path)) as c:
        return [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24"))
                for f in c.decode(c.streams.video[0])]


def _ring(img, box, t=2):
    """Pixels on the outline of ``box`` (x1, y1, x2, y2), ``t`` px thick."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    m = np.zeros(img.shape[:2], bool)
    m[y1 - t:y1 + t + 1, x1:x2] = m[y2 - t:y2 + t + 1, x1:x2] = True
    m[y1:y2, x1 - t:x1 + t + 1] = m[y1:y2, x2 - t:x2 + t + 1] = True
    return img[m].astype(np.float32)


@pytest.mark.integration
@pytest.mark.e2e
def test_overlay_has_the_input_frames_and_draws_held_boxes(media, redis_url, tmp_path):
    from affectstream.pipeline.store.redis_store import TimelineStore, connect

    clip = media("single_face.mp4")  # 72 frames at 30 fps, one face
    n = write_session(redis_url, clip, "ov1", analysis_fps=10)
    pts = TimelineStore(connect(redis_url)).timeline("ov1")
    assert n == 24 and len(pts) >= 20
    out = tmp_path / "ov1.mp4"
    r = subprocess.run(CLI + ["--quiet", "overlay", "ov1", str(clip), "-o", str(out),
                              "--redis-url", redis_url], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "72 frames" in r.stdout and r.stderr == ""
    src, drawn = _frames(clip), _frames(out)
    assert len(drawn) == len(src) == 72
    assert np.allclose([t for t, _ in drawn], [t for t, _ in src], atol=1e-3)
    first = {p.pts_ms: p for p in pts}
    # an analysed frame (0) and a frame between two analysed ones (1: the box is held)
    for k, p in ((0, first[0]), (1, first[0])):
        diff_box = np.abs(_ring(drawn[k][1], p.bbox_xyxy) - _ring(src[k][1], p.bbox_xyxy))
        corner = np.abs(drawn[k][1][-40:, -40:].astype(np.float32)
                        - src[k][1][-40:, -40:].astype(np.float32))
        assert diff_box.mean() > 40, (k, diff_box.mean())
        assert corner.mean() < 6, (k, corner.mean())


@pytest.mark.integration
def test_overlay_errors_are_one_line(media, redis_url, tmp_path):
    r = subprocess.run(CLI + ["overlay", "nope", str(media("single_face.mp4")), "-o",
                              str(tmp_path / "x.mp4"), "--redis-url", redis_url],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "no session 'nope'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.mp4").exists()
    r = subprocess.run(CLI + ["overlay", "s", str(tmp_path / "missing.mp4"), "-o",
                              str(tmp_path / "x.mp4"), "--redis-url", redis_url],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "video file not found" in r.stderr
