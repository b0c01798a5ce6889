"""A real RTSP server (GStreamer's gst-rtsp-server) feeding the decoder over TCP.

Needs Debian's python3-gi / gir1.2-gst-rtsp-server-1.0 and GStreamer plugins (they live outside
virtual environments; see tests/integration/rtsp_server.py), which `.ci/setup` installs when run as
root; skipped where they are missing.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from affectstream.operators.decode import SourceError, VideoSource
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


def _remux(src: Path, dst: Path, loops: int = 3) -> Path:
    """The clip's H.264 packets ``loops`` times over in a fresh mp4 (PyAV remux, no re-encode).

    Live decoding starts at the first key frame after connecting (see operators/decode.py), and
    this clip has one key frame per 2.4 s copy, so a few copies are needed.
    """
    import av

    with av.open(str(dst), "w") as out:
        ost, offset = None, 0
        for _ in range(loops):
            with av.open(str(src)) as inp:
                ist = inp.streams.video[0]
                ost = ost or out.add_stream_from_template(ist)
                end = offset
                for p in inp.demux(ist):
                    if p.dts is None:
                        continue
                    p.pts += offset
                    p.dts += offset
                    end = max(end, p.pts + (p.duration or 0))
                    p.stream = ost
                    out.mux(p)
                offset = end
    return dst


@pytest.fixture(scope="module")
def rtsp_url(media, tmp_path_factory):
    if not _has_gst_rtsp():
        pytest.skip("gst-rtsp-server for Debian's python3 is not installed: run `bash .ci/setup` "
                    "as root (it installs gir1.2-gst-rtsp-server-1.0 and the GStreamer plugins)")
    clip = _remux(media("single_face.mp4"), tmp_path_factory.mktemp("rtsp") / "clip.mp4")
    port = free_port()
    proc = subprocess.Popen([SYS_PY, str(SERVER), str(clip), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield f"rtsp://127.0.0.1:{port}/clip"
    proc.terminate()
    proc.wait(5)


def test_rtsp_stream_sampled_at_10fps(rtsp_url):
    t0 = time.monotonic()
    frames = list(VideoSource(rtsp_url, "cam", analysis_fps=10, reconnect_max_tries=0))
    wall = time.monotonic() - t0
    assert 20 <= len(frames) <= 73  # 7.2 s at 10 frames/s, minus the GOP(s) before a key frame
    assert frames[0].image.shape == (360, 640, 3)
    pts = [f.pts_ms for f in frames]
    assert pts[0] == 0 and all(95 <= b - a <= 140 for a, b in zip(pts, pts[1:]))
    assert wall >= 5.0  # served in real time (7.2 s), not as fast as a file


def test_rtsp_unknown_mount_fails_clearly(rtsp_url):
    bad = rtsp_url.rsplit("/", 1)[0] + "/nope"
    with pytest.raises(SourceError, match="cannot open"):
        list(VideoSource(bad, "cam", open_timeout_s=3, reconnect_max_tries=0))
