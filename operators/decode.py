"""Video decoding with PyAV: files and RTSP (over TCP), PTS-based sampling, reconnects.

Timestamps (DESIGN §4): ``pts_ms`` is the container presentation time of the frame
(``frame.pts * time_base``), relative to the first frame; ``ts_ms`` is the capture time in epoch ms.
For files the capture time is the file's start (``creation_time`` tag, else the file's modification
time — deterministic, so re-analysing a file yields the same timestamps and no duplicates) plus
``pts_ms``; for live streams it is the wall clock when the first frame arrived plus
``pts_ms`` — never the processing clock of each frame, so a slow pipeline does not skew timelines.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import av
import numpy as np

from affectstream.operators.records import Frame

log = logging.getLogger(__name__)

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(RuntimeError):
    """A source could not be opened or read (missing file, unreachable stream)."""


def webcam_device(url: str) -> str | None:
    """The V4L2 device of a webcam source: ``"0"`` -> ``/dev/video0``, ``/dev/video2`` as is;
    None for anything else."""
    if re.fullmatch(r"\d{1,3}", url):
        return f"/dev/video{int(url)}"
    return url if re.fullmatch(r"/dev/video\d+", url) else None


def is_live(url: str) -> bool:
    """True for network streams (RTSP, RTMP, HTTP, UDP) and webcams (index or /dev/videoN),
    False for local files."""
    return url.lower().startswith(LIVE_SCHEMES) or webcam_device(url) is not None


@dataclass
class DecodeStats:
    """Counters of one source: frames decoded, sampled out, corrupt, reconnects."""

    decoded: int = 0
    emitted: int = 0
    skipped_by_rate: int = 0
    corrupt: int = 0
    reconnects: int = 0
    packets: int = 0


class PtsSampler:
    """Keeps frames so that emitted frames are at least ``1000/analysis_fps`` ms apart in media time.

    Uses a grid anchored at the first frame: frame with ``pts_ms`` is kept when it reaches the next
    grid slot, so 30 fps sampled at 10 fps keeps every third frame regardless of jitter.
    """

    def __init__(self, analysis_fps: float | None) -> None:
        self.period_ms = None if not analysis_fps else 1000.0 / analysis_fps
        self._next: float | None = None

    def keep(self, pts_ms: float) -> bool:
        if self.period_ms is None:
            return True
        if self._next is None or pts_ms >= self._next - 1e-6:
            base = pts_ms if self._next is None else self._next
            # skip whole periods when the stream jumped ahead
            k = max(1, int((pts_ms - base) // self.period_ms) + 1)
            self._next = base + k * self.period_ms
            return True
        return False


def _file_start_ms(container: av.container.InputContainer, path: str) -> int:
    tag = container.metadata.get("creation_time")
    if tag:
        try:
            return int(datetime.fromisoformat(tag.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            pass
    return int(Path(path).stat().st_mtime * 1000)


class VideoSource:
    """Iterates :class:`Frame` records from a file or a live URL.

    Args:
        url: file path or stream URL (``rtsp://...``).
        session_id: session the frames belong to.
        analysis_fps: frames per second of media time to emit; None = every frame.
        rtsp_transport: ``"tcp"`` or ``"udp"``.
        open_timeout_s: socket timeout for opening/reading network streams, seconds.
        reconnect_max_tries: live streams only: reconnect attempts after an error or EOF.
        reconnect_backoff_s / reconnect_backoff_max_s: first and largest delay, doubling.
        max_width: frames wider than this are downscaled (aspect kept) before emission.
        start_ts_ms: capture time of the first frame (epoch ms); default as in the module doc.
        max_frames: stop after emitting this many frames (None = until the end).

    Raises (on iteration start):
        SourceError: missing file, unreadable container, no video stream, unreachable stream.
    """

    def __init__(self, url: str, session_id: str, analysis_fps: float | None = None,
                 rtsp_transport: str = "tcp", open_timeout_s: float = 10.0,
                 reconnect_max_tries: int = 5, reconnect_backoff_s: float = 0.5,
                 reconnect_backoff_max_s: float = 8.0, max_width: int = 1280,
                 start_ts_ms: int | None = None, max_frames: int | None = None) -> None:
        self.url = str(url)
        self.session_id = session_id
        self.live = is_live(self.url)
        self.analysis_fps = analysis_fps
        self.rtsp_transport = rtsp_transport
        self.open_timeout_s = open_timeout_s
        self.reconnect_max_tries = reconnect_max_tries if self.live else 0
        self.backoff = (reconnect_backoff_s, reconnect_backoff_max_s)
        self.max_width = max_width
        self.start_ts_ms = start_ts_ms
        self.max_frames = max_frames
        self.stats = DecodeStats()
        self.total_frames: int | None = None
        self.frames_exact = False
        self.last_decode_ms = 0.0  # decode + convert work behind the last emitted frame, ms
        self.fps: float | None = None
        if not self.live and not Path(self.url).is_file():
            raise SourceError(f"video file not found: {self.url}")

    def _open(self) -> av.container.InputContainer:
        opts = {}
        if self.url.lower().startswith(("rtsp://", "rtsps://")):
            opts = {"rtsp_transport": self.rtsp_transport}
        if self.live:
            # short probing and no input buffering: frames read while probing would arrive late
            # (the SDP already names the codec). Cost: packets read while probing are not kept, so
            # decoding starts at the next key frame (one GOP, typically 1-2 s on cameras).
            opts.update({"fflags": "nobuffer", "analyzeduration": "200000", "probesize": "65536"})
        dev = webcam_device(self.url)
        try:
            if dev is not None:  # a local camera through FFmpeg's video4linux2 input
                c = av.open(dev, format="v4l2", timeout=(self.open_timeout_s, self.open_timeout_s))
            else:
                c = av.open(self.url, options=opts,
                            timeout=(self.open_timeout_s, self.open_timeout_s))
        except (av.error.FFmpegError, OSError) as e:
            what = self.url if dev is None else f"webcam {dev}"
            raise SourceError(f"cannot open {what}: {e}") from e
        if not c.streams.video:
            c.close()
            raise SourceError(f"no video stream in {self.url}")
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        self.frames_exact = bool(vs.frames)  # from the container's index, not estimated
        if vs.frames:
            self.total_frames = int(vs.frames)
        elif vs.duration and vs.average_rate:
            self.total_frames = int(float(vs.duration * vs.time_base) * float(vs.average_rate))
        self.fps = float(vs.average_rate) if vs.average_rate else None
        return c

    def expected_frames(self) -> int | None:
        """Frames this source will emit, estimated from the container (None for live streams or
        when unknown); valid once iteration has started."""
        n = self.total_frames
        if n is not None and self.analysis_fps and self.fps:
            n = max(1, math.ceil(n * min(1.0, self.analysis_fps / self.fps) - 1e-6))
        if self.max_frames is not None:
            n = self.max_frames if n is None else min(n, self.max_frames)
        return None if self.live and self.max_frames is None else n

    def _check_complete(self) -> None:
        """At the end of a file: every packet its index lists was read (a decoder may still drop
        a few frames, e.g. before an edit list's start, so frames are not compared).

        Raises:
            SourceError: fewer packets than the container lists (truncated or corrupt file);
                the message says how many frames were read.
        """
        n, total = self.stats.decoded, self.total_frames
        if self.frames_exact and total is not None and self.stats.packets < total:
            raise SourceError(f"{self.url} is truncated or corrupt: {n} of {total} frames read")

    def _resize(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        if w <= self.max_width:
            return img
        import cv2

        nh = int(round(h * self.max_width / w))
        return cv2.resize(img, (self.max_width, nh), interpolation=cv2.INTER_AREA)

    def __iter__(self) -> Iterator[Frame]:
        sampler = PtsSampler(self.analysis_fps)
        seq = 0
        tries = 0
        first_pts: float | None = None
        last_pts_ms = -1
        start_ts = self.start_ts_ms
        delay = self.backoff[0]
        while True:
            try:
                container = self._open()
            except SourceError:
                # never connected: fail fast with the open error; once frames came, retry
                if not self.live or seq == 0 or tries >= self.reconnect_max_tries:
                    raise
                tries += 1
                self.stats.reconnects += 1
                log.warning("reconnecting to %s in %.1fs (try %d)", self.url, delay, tries)
                time.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            if start_ts is None:
                start_ts = _file_start_ms(container, self.url) if not self.live else int(time.time() * 1000)
            # after a reconnect the new session's PTS restart; continue media time from last_pts
            offset_ms = 0 if seq == 0 else last_pts_ms + 1
            first_pts = None
            vs = container.streams.video[0]
            work = 0.0
            try:
                for packet in container.demux(vs):
                    t0 = time.perf_counter()
                    self.stats.packets += packet.size > 0
                    try:
                        frames = packet.decode()
                    except av.error.InvalidDataError:
                        self.stats.corrupt += 1
                        continue
                    finally:
                        work += time.perf_counter() - t0
                    for fr in frames:
                        self.stats.decoded += 1
                        if fr.pts is None or fr.time_base is None:
                            pts_s = self.stats.decoded / (self.fps or 30.0)
                        else:
                            pts_s = float(fr.pts * fr.time_base)
                        if first_pts is None:
                            first_pts = pts_s
                        pts_ms = offset_ms + int(round((pts_s - first_pts) * 1000))
                        if pts_ms <= last_pts_ms:  # non-monotonic PTS: keep order strict
                            pts_ms = last_pts_ms + 1
                        if not sampler.keep(pts_ms):
                            self.stats.skipped_by_rate += 1
                            continue
                        last_pts_ms = pts_ms
                        t0 = time.perf_counter()
                        img = self._resize(fr.to_ndarray(format="rgb24"))
                        self.last_decode_ms = (work + time.perf_counter() - t0) * 1000
                        work = 0.0
                        self.stats.emitted += 1
                        tries, delay = 0, self.backoff[0]
                        yield Frame(self.session_id, seq, start_ts + pts_ms, pts_ms, img)
                        seq += 1
                        if self.max_frames is not None and seq >= self.max_frames:
                            container.close()
                            return
            except (av.error.FFmpegError, OSError) as e:
                container.close()
                if not self.live or tries >= self.reconnect_max_tries:
                    raise SourceError(f"stream {self.url} failed: {e}") from e
                tries += 1
                self.stats.reconnects += 1
                log.warning("stream %s failed (%s); reconnecting in %.1fs", self.url, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
                continue
            container.close()
            if not self.live:
                self._check_complete()
                return
            if tries >= self.reconnect_max_tries:
                return
            tries += 1
            self.stats.reconnects += 1
            time.sleep(delay)
            delay = min(delay * 2, self.backoff[1])


def replay(frames: Iterable[Frame], realtime: bool = False, loop: bool = False,
           max_frames: int | None = None, sleep=time.sleep, clock=time.monotonic
           ) -> Iterator[Frame]:
    """Replay a file's frames as a live camera would deliver them.

    Args:
        frames: a re-iterable source (e.g. :class:`VideoSource`; each pass reopens the file).
        realtime: pace frames by their ``pts_ms``: frame k is released ``pts_ms[k] -
            pts_ms[0]`` ms of wall time after the first (a consumer slower than that is not
            waited for: late frames go at once).
        loop: start over at the end, forever (or until ``max_frames``); media time and ``seq``
            continue across passes (``pts_ms``/``ts_ms`` shifted by the pass length plus one
            frame interval), so capture times keep increasing.
        max_frames: stop after this many frames in all; None = no limit.
        sleep / clock: injectable for tests (seconds).

    Yields:
        :class:`Frame` records with strictly increasing ``pts_ms``.
    """
    t0: float | None = None
    shift = 0
    seq = 0
    while True:
        last = None
        gap = 0
        for f in frames:
            if last is not None:
                gap = f.pts_ms - last
            last = f.pts_ms
            if shift or seq != f.seq:
                f = dataclasses.replace(f, seq=seq, pts_ms=f.pts_ms + shift, ts_ms=f.ts_ms + shift)
            if realtime:
                now = clock()
                if t0 is None:
                    t0 = now - f.pts_ms / 1000
                wait = t0 + f.pts_ms / 1000 - now
                if wait > 0:
                    sleep(wait)
            yield f
            seq += 1
            if max_frames is not None and seq >= max_frames:
                return
        if not loop or last is None:
            return
        shift += last + max(gap, 1)
