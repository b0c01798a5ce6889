"""The API's pages (dashboard, Swagger UI, ReDoc) use local files only: every URL they reference
is on the API itself and answers 200, also under a path prefix; in headless Chromium the docs
render from those files and the browser fetches nothing from another host."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from affectstream.pipeline.api.app import create_app
from tests.pipeline.web.live import chromium, serve_app

pytestmark = pytest.mark.integration

PAGES = ("/", "/docs", "/redoc")


class _Refs(HTMLParser):
    """``src``/``href`` attributes and ``url: '...'`` of inline scripts (Swagger's spec URL)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._script = False

    def handle_starttag(self, tag, attrs):  # noqa: ANN001, ANN201
        self._script = tag == "script"
        for k, v in attrs:
            if k in ("src", "href", "spec-url") and v and not v.startswith(("#", "data:")):
                self.urls.append(v)

    def handle_data(self, data):  # noqa: ANN001, ANN201
        if self._script:
            for line in data.splitlines():
                line = line.strip()
                if line.startswith("url:"):
                    self.urls.append(line.split("'")[1])


def _refs(html: str) -> list[str]:
    p = _Refs()
    p.feed(html)
    return p.urls


@pytest.mark.parametrize("prefix", ["", "/affect-api"])
def test_pages_reference_only_local_urls_that_answer(redis_url, prefix):
    app = create_app(redis_url)
    with TestClient(app, root_path=prefix) as c:
        for page in PAGES:
            r = c.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
            refs = _refs(r.text)
            assert refs, f"{page} references nothing?"
            for url in refs:
                parts = urlsplit(url)
                assert not parts.scheme and not parts.netloc, f"{page} loads {url} from elsewhere"
                assert url.startswith(prefix + "/"), f"{page}: {url} misses the prefix {prefix!r}"
                got = c.get(url)
                assert got.status_code == 200, (page, url, got.status_code)
        assert "/docs-assets/swagger-ui-bundle.js" in c.get("/docs").text
        assert "/docs-assets/redoc.standalone.js" in c.get("/redoc").text
        assert "fonts.googleapis" not in c.get("/redoc").text


def test_docs_render_offline_in_chromium(redis_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = create_app(redis_url)
    n_ops = sum(len(v) for v in app.openapi()["paths"].values())
    with serve_app(app) as base, chromium(tmp_path) as d:
        wait = WebDriverWait(d, 45, poll_frequency=0.1)
        d.get(base + "/docs")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == n_ops,
                   "Swagger UI did not list every operation")
        assert app.title in d.find_element(By.CSS_SELECTOR, ".info .title").text
        loaded = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in loaded)
        assert all(u.startswith(base + "/") for u in loaded), loaded
        assert [e for e in d.get_log("browser") if e["level"] == "SEVERE"] == []

        d.get(base + "/redoc")
        wait.until(lambda d: app.title in " ".join(h.text for h in d.find_elements(By.TAG_NAME, "h1")),
                   "ReDoc did not render the title")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']"))
                   == n_ops, "ReDoc did not list every operation")
        loaded = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        # ReDoc's footer asks for its logo from a CDN: the page's CSP blocks that request (the
        # browser still lists it, as a failed entry), and nothing else
        errors = [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]
        blocked = {m.split("'")[1] for m in errors if "Content Security Policy" in m
                   and m.rstrip().endswith("The action has been blocked.")}
        assert len(blocked) == len(errors), errors
        assert {u for u in loaded if not u.startswith(base + "/")} <= blocked, (loaded, errors)
