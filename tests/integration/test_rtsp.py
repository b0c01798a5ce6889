"""A real RTSP server (GStreamer's gst-rtsp-server) feeding the decoder over TCP.

Skipped when Debian's python3-gi / gir1.2-gst-rtsp-server-1.0 are not installed (they live outside
virtual environments; see tests/integration/rtsp_server.py).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from operators.decode import SourceError, VideoSource
from tests.conftest import free_port

pytestmark = pytest.mark.integration

SERVER = Path(__file__).with_name("rtsp_server.py")
SYS_PY = "/usr/bin/python3"


def _has_gst_rtsp() -> bool:
    try:
        r = subprocess.run([SYS_PY, "-c", "import gi; gi.require_version('GstRtspServer', '1.0');"
                            "from gi.repository import GstRtspServer"], capture_output=True,
                           timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.fixture(scope="module")
def rtsp_url(media):
    if not _has_gst_rtsp():
        pytest.skip("gst-rtsp-server for Debian's python3 is not installed")
    port = free_port()
    proc = subprocess.Popen([SYS_PY, str(SERVER), str(media("single_face.mp4")), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield f"rtsp://127.0.0.1:{port}/clip"
    proc.terminate()
    proc.wait(5)


def test_rtsp_stream_sampled_at_10fps(rtsp_url):
    t0 = time.monotonic()
    frames = list(VideoSource(rtsp_url, "cam", analysis_fps=10, reconnect_max_tries=0))
    wall = time.monotonic() - t0
    assert 20 <= len(frames) <= 25  # a 2.4 s clip at 10 frames/s
    assert frames[0].image.shape == (360, 640, 3)
    pts = [f.pts_ms for f in frames]
    assert pts[0] == 0 and all(95 <= b - a <= 140 for a, b in zip(pts, pts[1:]))
    assert wall >= 1.5  # served in real time, not as fast as a file


def test_rtsp_unknown_mount_fails_clearly(rtsp_url):
    bad = rtsp_url.rsplit("/", 1)[0] + "/nope"
    with pytest.raises(SourceError, match="cannot open"):
        list(VideoSource(bad, "cam", open_timeout_s=3, reconnect_max_tries=0))
