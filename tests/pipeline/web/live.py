"""Test helpers for the web pages: a session written live by the real runner, the API app served
by uvicorn on a free loopback port, headless Debian chromium driven by Selenium."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

CHROMIUM_HINT = ("needs Debian's chromium and chromium-driver (.ci/setup installs them as root): "
                 "apt-get install --no-install-recommends chromium chromium-driver")


class LiveSession:
    """A session that the real runner (face track -> in-process inference -> Redis sink, as
    ``affectstream run`` without Ray) writes while a test watches: :meth:`feed` analyses the
    next ``n`` frames of ``video`` and returns once their points are in Redis; :meth:`close`
    ends the session (status ``ended``). Capture times start at the wall clock, as a camera's.

    Args:
        redis_url: where the session goes.
        video: a real clip.
        session_id: the session's id.
        analysis_fps: frames analysed per second of media.
    """

    def __init__(self, redis_url: str, video: Path, session_id: str, analysis_fps: float = 10.0):
        from affectstream.operators.analyze import FaceAnalyzer
        from affectstream.operators.decode import VideoSource
        from affectstream.pipeline.config import load_config
        from affectstream.pipeline.runtime.local_inference import LocalInference
        from affectstream.pipeline.runtime.parts import new_builder, new_stage
        from affectstream.pipeline.runtime.runner import SessionRunner
        from affectstream.pipeline.runtime.sinks import redis_session_sink

        cfg = load_config()
        self._frames = iter(VideoSource(str(video), session_id, analysis_fps=analysis_fps,
                                        start_ts_ms=int(time.time() * 1000)))
        analyzer = FaceAnalyzer(cfg.inference.fer_model, cfg.inference.saliency, "geometric", "cpu")
        sink, retry = redis_session_sink(redis_url, cfg)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="live-session",
                                        daemon=True)
        self._thread.start()

        async def build() -> tuple[LocalInference, SessionRunner]:
            infer = LocalInference(analyzer)
            runner = SessionRunner(session_id, new_stage(cfg), new_builder(cfg, analyzer.labels),
                                   infer, sink, sink_retry=retry)
            await runner.open(str(video))
            return infer, runner

        self._infer, self.runner = self._call(build())

    def _call(self, coro):  # noqa: ANN001, ANN202
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(120)

    def feed(self, n: int) -> int:
        """Analyse and store the next ``n`` frames; returns how many there were (fewer at the
        end of the clip)."""
        async def go() -> int:
            k = 0
            for frame in self._frames:
                await self.runner.submit(frame)
                k += 1
                if k == n:
                    break
            await self.runner.drain()
            return k
        return self._call(go())

    def close(self) -> None:
        """End the session (status ``ended``) and stop the writer thread."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self.runner.close())
            self._infer.close()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:  # noqa: ANN001
    """Serve the ASGI ``app`` with uvicorn on a free loopback port in a thread; yields its base
    URL ``http://127.0.0.1:PORT``."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


@contextlib.contextmanager
def chromium(tmp_path: Path, width: int = 1400, height: int = 1000):
    """Headless Debian ``chromium`` driven by its ``chromedriver`` (never a downloaded browser);
    skips the test when either is missing."""
    exe, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if exe is None or driver is None:
        pytest.skip(CHROMIUM_HINT)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-extensions", "--no-first-run", f"--window-size={width},{height}",
              f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(a)
    d = webdriver.Chrome(options=opts, service=Service(executable_path=driver))
    try:
        yield d
    finally:
        d.quit()
