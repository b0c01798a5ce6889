"""Overlay video: a session's stored timeline drawn on its source video, re-encoded with PyAV.

Every input frame is written once, with its own presentation time, so the output has the input's
frame count and timing; the drawing is :mod:`operators.overlay`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from affectstream.operators.overlay import FrameMatcher, draw_faces
from affectstream.operators.records import TimelinePoint

CODECS = ("libx264", "h264", "mpeg4")
"""Encoders tried in order (H.264 when this FFmpeg build has one, else MPEG-4 part 2)."""


@dataclasses.dataclass
class OverlayStats:
    """What :func:`render_overlay` wrote.

    Attributes:
        frames: frames written (= frames decoded from the input).
        frames_with_faces: frames on which at least one face was drawn.
        codec: encoder used.
        width / height: output size, pixels.
    """

    frames: int = 0
    frames_with_faces: int = 0
    codec: str = ""
    width: int = 0
    height: int = 0


def pick_codec() -> str:
    """The first encoder of :data:`CODECS` this PyAV build has.

    Raises:
        RuntimeError: none of them.
    """
    for c in CODECS:
        try:
            av.codec.Codec(c, "w")
            return c
        except (av.error.FFmpegError, ValueError):  # unknown encoder name
            continue
    raise RuntimeError(f"no video encoder among {', '.join(CODECS)} in this PyAV build")


def render_overlay(points: Sequence[TimelinePoint], video: str | Path, output: str | Path, *,
                   analysed_max_width: int = 1280, hold_ms: float | None = None,
                   top_aus: int = 3, codec: str | None = None) -> OverlayStats:
    """Decode ``video``, draw the points of each frame's media time, encode to ``output``.

    Args:
        points: the session's timeline points (``pts_ms`` relative to the first frame).
        video: the source video file the session analysed.
        output: the file to write (container from its suffix, e.g. ``.mp4``).
        analysed_max_width: ``decode.max_width`` of the analysis: boxes of frames wider than this
            were measured on a downscaled copy and are scaled back up.
        hold_ms: see :class:`operators.overlay.FrameMatcher` (None = estimated).
        top_aus: AUs listed per face.
        codec: encoder name (default :func:`pick_codec`).

    Returns:
        :class:`OverlayStats`.

    Raises:
        FileNotFoundError: ``video`` missing. av.error.FFmpegError: unreadable input / encoder
        failure. RuntimeError: no encoder available.
    """
    if not Path(video).is_file():
        raise FileNotFoundError(f"video file not found: {video}")
    codec = codec or pick_codec()
    matcher = FrameMatcher(points, hold_ms=hold_ms)
    stats = OverlayStats(codec=codec)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(video)) as src, av.open(str(output), "w") as dst:
        if not src.streams.video:
            raise ValueError(f"no video stream in {video}")
        vin = src.streams.video[0]
        vin.thread_type = "AUTO"
        w, h = vin.codec_context.width, vin.codec_context.height
        ow, oh = w + (w % 2), h + (h % 2)  # 4:2:0 needs even sizes: pad one pixel if odd
        rate = vin.average_rate or vin.guessed_rate or Fraction(30)
        vout = dst.add_stream(codec, rate=rate)
        vout.width, vout.height, vout.pix_fmt = ow, oh, "yuv420p"
        tb = vin.time_base or Fraction(1, 90000)
        vout.codec_context.time_base = tb
        vout.time_base = tb
        if codec in ("libx264", "h264"):
            vout.options = {"crf": "20", "preset": "veryfast"}
        else:
            vout.bit_rate = max(1_000_000, 4 * ow * oh)
        scale = w / analysed_max_width if w > analysed_max_width else 1.0
        first_pts: float | None = None
        last_pts = None
        n = 0
        for fr in src.decode(vin):
            n += 1
            if fr.pts is None or fr.time_base is None:
                pts_s = (n - 1) / float(rate)
                pts = int(round(pts_s / tb))
            else:
                pts_s, pts = float(fr.pts * fr.time_base), int(round(fr.pts * fr.time_base / tb))
            if last_pts is not None and pts <= last_pts:  # keep output PTS strictly increasing
                pts = last_pts + 1
            last_pts = pts
            first_pts = pts_s if first_pts is None else first_pts
            pts_ms = int(round((pts_s - first_pts) * 1000))
            img = fr.to_ndarray(format="rgb24")
            if (ow, oh) != (w, h):
                img = np.pad(img, ((0, oh - h), (0, ow - w), (0, 0)), mode="edge")
            faces = matcher.at(pts_ms)
            if faces:
                draw_faces(img, faces, scale=scale, top_aus=top_aus)
                stats.frames_with_faces += 1
            out = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            out.pts, out.time_base = pts, tb
            for pkt in vout.encode(out):
                dst.mux(pkt)
            stats.frames += 1
        for pkt in vout.encode(None):
            dst.mux(pkt)
        stats.width, stats.height = ow, oh
    return stats
