"""The dashboard in a real headless Chromium, against the real API app (uvicorn), a real
redis-server and sessions written by the real runner: it lists the sessions (live first), shows a
stored one (tracks, heat map, summary) and follows a session while it is being written.

Set ``AFFECTSTREAM_DASHBOARD_SCREENSHOT=docs/dashboard.png`` to refresh the README's picture.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from affectstream.pipeline.api.app import create_app
from affectstream.pipeline.store.redis_store import TimelineStore
from tests.pipeline.stored import write_session
from tests.pipeline.web.live import LiveSession, chromium, serve_app

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TOKEN = "dashboard-test-token"
WAIT_S = 45  # upper bound for the page to catch up (not a timing assertion)


def _text(d, css: str) -> str:
    from selenium.webdriver.common.by import By

    return d.find_element(By.CSS_SELECTOR, css).text


def _shown(d, css: str) -> str:
    """The element's text for a failure message; the page may be re-rendering it right now."""
    from selenium.common.exceptions import WebDriverException

    try:
        return _text(d, css)
    except WebDriverException as e:
        return f"<{type(e).__name__}>"


def _until(d, what, message: str):  # noqa: ANN001, ANN202
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page replaces elements as points arrive: a reference that went stale is read again
    return WebDriverWait(d, WAIT_S, poll_frequency=0.1, ignored_exceptions=(
        NoSuchElementException, StaleElementReferenceException)).until(what, message)


def _stored_points(store: TimelineStore, sid: str) -> int:
    return sum(store.count_points(sid).values())


def _check_session_view(d, store: TimelineStore, sid: str) -> None:
    """The open session shows every stored point, one chart and one heat map per track, and the
    summary has a row per track."""
    from selenium.webdriver.common.by import By

    n = _stored_points(store, sid)
    tracks = [t for t, _ in store.tracks(sid)]
    _until(d, lambda d: _text(d, "#point-count") == str(n),
           f"{sid}: page never showed the {n} stored points (shows {_shown(d, '#point-count')})")
    _until(d, lambda d: _text(d, '#session-meta dd[data-field="stored points"]') == str(n),
           f"{sid}: session details never showed {n} stored points")
    labels = set(store.timeline(sid, limit=1)[0].emotion_probs)

    def drawn(d) -> bool:  # noqa: ANN001  (a re-render mid-read makes _until read again)
        charts = d.find_elements(By.CSS_SELECTOR, "#emotion-charts svg[data-track]")
        assert sorted(int(c.get_attribute("data-track")) for c in charts) == tracks
        for c in charts:  # one line per emotion label (a dot when a track has a single point)
            lines = c.find_elements(By.CSS_SELECTOR, "polyline, circle")
            assert {e.get_attribute("data-label") for e in lines} == labels
        maps = d.find_elements(By.CSS_SELECTOR, "#au-heatmaps canvas[data-track]")
        assert len(maps) == len(tracks)
        assert all(int(m.get_attribute("data-bins")) >= 1 for m in maps)
        assert sum(int(m.get_attribute("data-points")) for m in maps) == n
        return True

    _until(d, drawn, f"{sid}: charts and heat maps")
    _until(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#summary tbody tr[data-track]"))
           == len(tracks), f"{sid}: summary rows")


def test_dashboard_lists_sessions_shows_one_and_follows_a_live_one(redis_url, media, tmp_path):
    from selenium.webdriver.common.by import By

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    store = TimelineStore(r)
    write_session(redis_url, media("WolfgangLanger_Pexels.mp4"), "clip-stored", analysis_fps=4)
    live = LiveSession(redis_url, media("single_face.mp4"), "cam-live", analysis_fps=10)
    try:
        assert live.feed(6) == 6
        with serve_app(create_app(redis_url, auth_token=TOKEN)) as base, chromium(tmp_path, height=1100) as d:
            d.get(base + "/")
            # behind the token: the page says so, then works once it is given
            _until(d, lambda d: "token" in _text(d, "#message"), "no token hint on a 401")
            d.find_element(By.ID, "token").send_keys(TOKEN)
            d.find_element(By.ID, "token-save").click()
            rows = _until(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"))
                          == 2 and d.find_elements(By.CSS_SELECTOR, "#sessions tbody tr"),
                          "the two sessions are not listed")
            assert [(x.get_attribute("data-sid"), x.get_attribute("data-status")) for x in rows] \
                == [("cam-live", "running"), ("clip-stored", "ended")]  # live first
            assert "live" in rows[0].text

            rows[1].click()
            _until(d, lambda d: _text(d, "#live-state") == "ended", "stored session not ended")
            _check_session_view(d, store, "clip-stored")
            if shot := os.environ.get("AFFECTSTREAM_DASHBOARD_SCREENSHOT"):
                Path(shot).parent.mkdir(parents=True, exist_ok=True)
                d.save_screenshot(shot)

            d.find_element(By.CSS_SELECTOR, '#sessions tbody tr[data-sid="cam-live"]').click()
            _until(d, lambda d: _text(d, "#live-state") == "live", "live tail not open")
            _check_session_view(d, store, "cam-live")
            before = _stored_points(store, "cam-live")
            # the page is open while the runner writes more frames: it follows them
            assert live.feed(8) == 8
            after = _stored_points(store, "cam-live")
            assert after > before
            _check_session_view(d, store, "cam-live")
            assert _text(d, "#live-state") == "live"
            live.close()
            _until(d, lambda d: _text(d, "#live-state") == "ended", "end of session not shown")
            d.save_screenshot(str(tmp_path / "live.png"))
            assert int(_text(d, "#point-count")) == after
            assert not d.find_element(By.ID, "message").is_displayed()  # no error shown
            errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"
                      and "401 (Unauthorized)" not in e["message"]]  # the call before the token
            assert errors == [], errors
    finally:
        live.close()
