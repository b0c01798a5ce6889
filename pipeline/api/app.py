"""HTTP query API (DESIGN §7): FastAPI over the Redis timeline store (the Serve ingress is in
:mod:`affectstream.pipeline.service.application`).

Endpoints (JSON unless noted; times are epoch milliseconds, AU intensities FACS 0–5)::

    GET /healthz                          liveness (no I/O)
    GET /readyz                           Redis answers PING (503 otherwise)
    GET /metrics                          Prometheus text format
    GET /v1/sessions                      sessions, most recent first (paged)
    GET /v1/sessions/{sid}                one session's meta and counts
    GET /v1/sessions/{sid}/tracks         tracks with first-seen time and point counts
    GET /v1/sessions/{sid}/timeline       points, ?track=&from_ms=&to_ms=&every_ms=&limit=
    GET /v1/sessions/{sid}/summary        per track: emotion shares, AU means/peaks, duration
    GET /v1/sessions/{sid}/live           server-sent events: new points as they are written
    GET /  /docs  /redoc                  dashboard, Swagger UI, ReDoc (local files: pipeline.web)

Auth: with a token configured, ``/v1/*`` needs ``Authorization: Bearer <token>`` (probes, metrics,
the web pages and the OpenAPI docs stay open; only then is the bearer scheme declared). Without a token the API may only bind to a loopback address:
:func:`check_bind` refuses anything else.

Ray Serve: ``import_path: pipeline.service.application:build_app`` with ``args: {config: service, ...}``.
"""


import asyncio
import heapq
import ipaddress
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from affectstream.pipeline.metrics import aggregate as metrics_agg  # noqa: F401
from affectstream.pipeline import metrics  # noqa: F401  (metrics: registers the families)
from affectstream.pipeline.kafka.envelope import SESSION_ID_PATTERN
from affectstream.pipeline.store.redis_store import Keys, TimelineStore, connect
from affectstream.pipeline.api.events import SSE_EVENT_SCHEMA
from affectstream.pipeline.api.live import _once, live_stream
from affectstream.pipeline.api.models import (ErrorOut, Health, Ready, SessionBrief,
                                               SessionDetail, SessionList, Summary, Timeline,
                                               TrackInfo, TrackList, point_out,
                                               summary_out)
from affectstream.pipeline.api.models import MAX_MS, MAX_TRACK, _opt_int
from affectstream.pipeline.web import add_web_routes

API_VERSION = "1"


EXTRA_REQUESTS = 64
"""Serve requests a ``QueryAPI`` replica takes beyond its SSE cap (queries, probes)."""


class ApiConfigError(ValueError):
    """The API is configured unsafely or inconsistently (raised before serving)."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs (127.0.0.0/8, ::1); False for wildcard and other
    addresses or names (names are not resolved: only ``localhost`` counts as loopback)."""
    h = host.strip().strip("[]").lower()
    if h in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth_token: str | None) -> None:
    """Refuse to expose the API beyond loopback without a bearer token.

    Raises:
        ApiConfigError: ``host`` is not loopback and ``auth_token`` is empty.
    """
    if not is_loopback(host) and not auth_token:
        raise ApiConfigError(
            f"refusing to serve the query API on {host!r} without an auth token: set "
            "api.auth_token (or AFFECTSTREAM_API_TOKEN), or bind to 127.0.0.1")


# --------------------------------------------------------------------------------------------
# app


SessionId = Annotated[str, Path(pattern=SESSION_ID_PATTERN, description="Session id.")]
_NOT_FOUND = {404: {"model": ErrorOut, "description": "Unknown session."}}


def create_app(redis_url: str | None = None, prefix: str = "affect",
               auth_token: str | None = None, *, host: str | None = None,
               redis_password: str | None = None, client: redis.Redis | None = None,
               max_sse: int = 64) -> FastAPI:
    """Build the query API.

    Args:
        redis_url: ``redis://host:port/db`` (ignored when ``client`` is given).
        prefix: Redis key prefix.
        auth_token: bearer token required on ``/v1/*``; None = no auth.
        host: the address the server will bind to; checked with :func:`check_bind`.
        redis_password: Redis password.
        client: an existing ``redis.Redis`` with ``decode_responses=True``.
        max_sse: most live-tail (SSE) connections open at once; more are answered 503.

    Raises:
        ApiConfigError: non-loopback ``host`` without ``auth_token``, or no Redis given.
    """
    if host is not None:
        check_bind(host, auth_token)
    if client is None:
        if not redis_url:
            raise ApiConfigError("create_app needs redis_url or client")
        client = connect(redis_url, redis_password, socket_timeout=5, socket_connect_timeout=3)
    store = TimelineStore(client, prefix)
    keys = Keys(prefix)
    kwargs = client.connection_pool.connection_kwargs
    state: dict[str, Any] = {"sse_open": 0}
    pool_size = max_sse + EXTRA_REQUESTS

    def aredis() -> Any:
        # one asyncio client per event loop, without a socket timeout (XREAD BLOCK waits)
        import redis.asyncio as aioredis

        loop = asyncio.get_running_loop()
        if state.get("loop") is not loop:
            state["loop"] = loop
            if redis_url:  # same URL (scheme, TLS, db) as the sync client
                state["aredis"] = aioredis.Redis.from_url(
                    redis_url, password=redis_password, decode_responses=True,
                    socket_timeout=None, max_connections=pool_size)
            else:
                pool_kw = {k: v for k, v in kwargs.items()
                           if k in ("host", "port", "db", "username", "password", "path")}
                state["aredis"] = aioredis.Redis(**pool_kw, decode_responses=True,
                                                 socket_timeout=None, max_connections=pool_size)
        return state["aredis"]

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        r = state.pop("aredis", None)
        if r is not None:
            try:
                await r.aclose()
            except Exception:  # noqa: BLE001  (loop may already be closing)
                pass
        client.close()

    app = FastAPI(
        title="affectstream query API", version=API_VERSION, lifespan=lifespan,
        docs_url=None, redoc_url=None,  # served from local files by add_web_routes
        description="Per-face emotion and action-unit timelines of video sessions, from Redis. "
        "Times are epoch milliseconds; AU intensities are on the FACS 0–5 scale.")

    bearer = HTTPBearer(auto_error=False, description="Bearer token (api.auth_token).")

    def require_token(cred: Annotated[HTTPAuthorizationCredentials | None,
                                      Depends(bearer)]) -> None:
        if auth_token is None:
            return
        if cred is None or not secrets.compare_digest(cred.credentials.encode(),
                                                      auth_token.encode()):
            raise HTTPException(401, "missing or invalid bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    def known(sid: str) -> None:
        if not store.exists(sid):
            raise HTTPException(404, f"unknown session {sid!r} (never written, or expired)")

    # probes are async and do no blocking work: they never queue behind the thread pool that
    # sync endpoints share, nor behind live tails (capped at max_sse per replica)
    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Ready, tags=["ops"],
             responses={503: {"model": ErrorOut, "description": "Redis unreachable."}})
    async def readyz() -> Ready:
        t = time.perf_counter()
        try:
            await asyncio.wait_for(aredis().ping(), timeout=3.0)
        except (redis.RedisError, OSError, TimeoutError) as e:
            raise HTTPException(503, f"redis unreachable: {type(e).__name__}: {e}") from None
        return Ready(status="ready", redis_ms=round((time.perf_counter() - t) * 1000, 3))

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}},
                              "description": "Prometheus text exposition format."}})
    def metrics_endpoint() -> Response:
        """This process's metrics plus the cluster-wide totals the Kafka consumer actors push
        to Redis (:mod:`pipeline.metrics.aggregate`)."""
        body, ctype = metrics_agg.render_merged(client, prefix)
        return Response(body, media_type=ctype)

    # the bearer scheme is declared (and enforced) only when a token is configured
    v1 = APIRouter(prefix="/v1", tags=["sessions"], **({} if auth_token is None else {
        "dependencies": [Depends(require_token)],
        "responses": {401: {"model": ErrorOut, "description": "Bad or missing token."}}}))

    @v1.get("/sessions", response_model=SessionList)
    def list_sessions(offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> SessionList:
        """Sessions, most recently updated first."""
        total, rows = store.sessions_page(offset, limit)
        return SessionList(total=total, offset=offset, limit=limit, sessions=[
            SessionBrief(session_id=sid, updated_ms=ts, status=m.get("status", "expired"),
                         source=m.get("source")) for sid, ts, m in rows])

    @v1.get("/sessions/{sid}", response_model=SessionDetail, responses=_NOT_FOUND)
    def get_session(sid: SessionId) -> SessionDetail:
        """One session: meta (source, status, models, config digest) and counts."""
        known(sid)
        m = store.meta(sid)
        counts = store.count_points(sid)
        return SessionDetail(
            session_id=sid, status=m.get("status", "unknown"), source=m.get("source"),
            created_ms=_opt_int(m.get("created_ms")), updated_ms=_opt_int(m.get("updated_ms")),
            ended_ms=_opt_int(m.get("ended_ms")), models=m.get("models"),
            config_digest=m.get("config_digest"), n_tracks=len(counts),
            n_points=sum(counts.values()))

    @v1.get("/sessions/{sid}/tracks", response_model=TrackList, responses=_NOT_FOUND)
    def get_tracks(sid: SessionId) -> TrackList:
        """Tracks (faces) of a session in order of appearance."""
        known(sid)
        counts = store.count_points(sid)
        return TrackList(session_id=sid, tracks=[
            TrackInfo(track_id=t, first_seen_ms=ts, n_points=counts.get(t, 0))
            for t, ts in store.tracks(sid)])

    @v1.get("/sessions/{sid}/timeline", response_model=Timeline, responses=_NOT_FOUND)
    def get_timeline(
            sid: SessionId,
            track: Annotated[int | None, Query(ge=1, le=MAX_TRACK, description="One track; all if absent.")]
            = None,
            from_ms: Annotated[int | None, Query(ge=0, le=MAX_MS, description="Inclusive, epoch ms.")] = None,
            to_ms: Annotated[int | None, Query(ge=0, le=MAX_MS, description="Inclusive, epoch ms.")] = None,
            every_ms: Annotated[int | None, Query(
                ge=1, le=MAX_MS, description="Downsample: first point of each every_ms bucket per track.")]
            = None,
            limit: Annotated[int, Query(ge=1, le=100_000, description="Most points returned.")]
            = 10_000) -> Timeline:
        """Time-ordered points of one track or all tracks (none when from_ms is after to_ms)."""
        known(sid)
        tids = [track] if track is not None else [t for t, _ in store.tracks(sid)]
        per_track = []
        for t in tids:
            it = store.iter_track(sid, t, from_ms, to_ms, every_ms, page=min(limit + 1, 2000))
            pts = []
            for p in it:
                pts.append(p)
                if len(pts) > limit:
                    break
            per_track.append(pts)
        merged = list(heapq.merge(*per_track, key=lambda q: (q.ts_ms, q.track_id)))
        truncated = len(merged) > limit
        merged = merged[:limit]
        return Timeline(session_id=sid, track=track, from_ms=from_ms, to_ms=to_ms,
                        every_ms=every_ms, count=len(merged), truncated=truncated,
                        points=[point_out(p) for p in merged])

    @v1.get("/sessions/{sid}/summary", response_model=Summary, responses=_NOT_FOUND)
    def get_summary(
            sid: SessionId,
            track: Annotated[int | None, Query(ge=1, le=MAX_TRACK)] = None,
            from_ms: Annotated[int | None, Query(ge=0, le=MAX_MS, description="Inclusive, epoch ms.")] = None,
            to_ms: Annotated[int | None, Query(ge=0, le=MAX_MS, description="Inclusive, epoch ms.")] = None,
    ) -> Summary:
        """Per track: share of points per dominant emotion, AU mean and peak, duration."""
        known(sid)
        rows = store.summary(sid, track, from_ms, to_ms)
        n = sum(s.n_points for s in rows)
        overall: dict[str, float] = {}
        for s in rows:
            for lab, share in s.emotion_shares.items():
                overall[lab] = overall.get(lab, 0.0) + share * s.n_points
        return Summary(session_id=sid, n_tracks=len(rows), n_points=n,
                       emotion_shares={k: v / n for k, v in sorted(overall.items())} if n else {},
                       tracks=[summary_out(s) for s in rows])

    @v1.get("/sessions/{sid}/live", response_class=StreamingResponse, responses={
        **_NOT_FOUND,
        503: {"model": ErrorOut, "description": "Too many live connections on this replica "
              "(api.max_sse_connections); retry after the Retry-After seconds."},
        200: {"description": "text/event-stream. Events: `ready` (data: session_id, tracks), "
              "`point` (id: ts_ms, data: a Point), `end` (the session ended), `timeout` "
              "(max_duration_s reached); comment lines are heartbeats. Resume with `after_ms` "
              "or the Last-Event-ID header.",
              "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}}})
    async def live(
            request: Request, sid: SessionId,
            track: Annotated[int | None, Query(ge=1, le=MAX_TRACK, description="One track; all if absent.")]
            = None,
            after_ms: Annotated[int | None, Query(
                ge=0, le=MAX_MS, description="Also send stored points newer than this epoch ms.")] = None,
            block_ms: Annotated[int, Query(ge=10, le=30_000, description="XREAD BLOCK, ms.")]
            = 1000,
            heartbeat_s: Annotated[float, Query(gt=0, le=300)] = 15.0,
            max_events: Annotated[int | None, Query(ge=1, le=MAX_MS, description="Close after "
                                                    "this many points.")] = None,
            max_duration_s: Annotated[float | None, Query(
                gt=0, le=7 * 24 * 3600, description="Close after this many seconds.")] = None,
    ) -> StreamingResponse:
        """Server-sent events of new timeline points across the session's tracks (new tracks are
        picked up as they appear), via ``XREAD BLOCK``. At most ``max_sse`` are open per
        replica; more are answered 503."""
        if state["sse_open"] >= max_sse:
            raise HTTPException(503, f"too many live connections on this replica ({max_sse}, "
                                "api.max_sse_connections); retry later",
                                headers={"Retry-After": "5"})
        state["sse_open"] += 1  # no await since the check: the slot is ours
        release = _once(lambda: state.__setitem__("sse_open", state["sse_open"] - 1))
        try:
            return await live_stream(aredis(), keys, request, sid, track, after_ms, block_ms,
                                     heartbeat_s, max_events, max_duration_s, release)
        except BaseException:
            release()
            raise

    app.include_router(v1)
    from affectstream.pipeline.api.cluster import cluster_router

    app.include_router(cluster_router(None if auth_token is None else require_token))
    add_web_routes(app)  # dashboard at /, Swagger UI at /docs, ReDoc at /redoc (no CDN)

    async def _redis_down(_req: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": f"redis unreachable: {type(exc).__name__}: {exc}"},
                            status_code=503)

    app.add_exception_handler(redis.ConnectionError, _redis_down)
    app.add_exception_handler(redis.TimeoutError, _redis_down)

    app.state.store = store
    app.state.sse_open = lambda: state["sse_open"]
    return app
