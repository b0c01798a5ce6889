"""A real RTSP server for tests and benchmarks: GStreamer's gst-rtsp-server serving one mp4.

Run with Debian's own python3 (it needs python3-gi and gir1.2-gst-rtsp-server-1.0, which live
outside virtual environments):

    /usr/bin/python3 tests/integration/rtsp_server.py CLIP.mp4 PORT

The stream is at rtsp://127.0.0.1:PORT/clip (H.264 re-payloaded, real-time pacing by the server).
Prints "ready" on stdout once listening.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    clip, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f'( filesrc location="{clip}" ! qtdemux ! h264parse ! '
                       f'rtph264pay name=pay0 pt=96 config-interval=1 )')
    factory.set_shared(False)  # every client gets the clip from its start
    server.get_mount_points().add_factory("/clip", factory)
    server.attach(None)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
