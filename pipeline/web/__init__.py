"""The API's web pages, served from files shipped in the package (no CDN, no build step).

- ``/``: the dashboard (``static/index.html`` + ``dashboard.js``): the sessions, live ones
  first, and per session a live view fed by ``/v1/sessions/{sid}/live`` (server-sent events read
  with ``fetch`` so the bearer token goes in the ``Authorization`` header), per-track emotion
  probabilities over time (SVG), an AU heat map per track (canvas: time x AU, FACS 0–5) and the
  summary. The token, when the API has one, is typed into the page and kept in
  ``sessionStorage`` (this browser tab only).
- ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc): their JavaScript and CSS come from the pinned
  ``fastapi-offline`` wheel's ``static`` folder, mounted at ``/docs-assets``.

Every URL a page uses is made from the request's ``root_path``, so the pages also work when the
API is mounted under a prefix (a Serve route prefix, a reverse proxy).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The dashboard's files (``index.html``, ``dashboard.js``, ``dashboard.css``)."""

DASHBOARD_ASSETS = "/dashboard-assets"
DOCS_ASSETS = "/docs-assets"

_CSP_COMMON = ("default-src 'self'; img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CSP_DASHBOARD = f"{_CSP_COMMON}; script-src 'self'; style-src 'self'"
"""Content-Security-Policy of the dashboard: nothing but this API's own files and data."""
CSP_DOCS = (f"{_CSP_COMMON}; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "worker-src 'self' blob:")
"""Of Swagger UI and ReDoc: their inline start-up script and styles, ReDoc's search worker; the
browser fetches nothing from another host (e.g. the logo ReDoc's footer links from its CDN)."""


class WebAssetsError(RuntimeError):
    """A file the web pages need is missing from the installation."""


def docs_assets_dir() -> Path:
    """Folder holding ``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js`` and
    ``favicon.png`` (from the ``fastapi-offline`` package, a pinned dependency).

    Raises:
        WebAssetsError: the package or one of its files is missing.
    """
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise WebAssetsError("the fastapi-offline package is missing (it ships the Swagger UI and "
                             "ReDoc files): pip install -e . again")
    d = Path(spec.origin).parent / "static"
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png"):
        if not (d / name).is_file():
            raise WebAssetsError(f"{d / name} is missing: reinstall fastapi-offline")
    return d


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _with_csp(resp: HTMLResponse) -> HTMLResponse:
    resp.headers["Content-Security-Policy"] = CSP_DOCS
    return resp


def add_web_routes(app: FastAPI) -> None:
    """Add the dashboard (``/``), Swagger UI (``/docs``) and ReDoc (``/redoc``) to ``app``, which
    must be built with ``docs_url=None, redoc_url=None``. None of these pages needs the bearer
    token; the data they show comes from ``/v1`` and does.

    Raises:
        WebAssetsError: a shipped file is missing.
    """
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        raise WebAssetsError(f"{index} is missing: the package was installed without its web files")
    page = index.read_text(encoding="utf-8")
    docs_dir = docs_assets_dir()
    app.mount(DASHBOARD_ASSETS, StaticFiles(directory=STATIC_DIR), name="dashboard-assets")
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_dir), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def dashboard(request: Request) -> HTMLResponse:
        return HTMLResponse(page.replace("{{ROOT}}", _root(request)),
                            headers={"Cache-Control": "no-cache",
                                     "Content-Security-Policy": CSP_DASHBOARD})

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return _with_csp(get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            # no badge image from the public validator service
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True}))

    @app.get("/redoc", include_in_schema=False, response_class=HTMLResponse)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return _with_csp(get_redoc_html(
            openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False))
