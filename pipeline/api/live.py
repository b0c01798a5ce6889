"""The live tail of a session (``GET /v1/sessions/{sid}/live``): server-sent events (the
WHATWG HTML "server-sent events" format) of new timeline points, read with ``XREAD BLOCK``."""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse

from affectstream.operators.records import TimelinePoint
from affectstream.pipeline.api.models import MAX_MS, _opt_int, point_out
from affectstream.pipeline.store.redis_store import Keys


def _header_ms(v: str | None) -> int | None:
    """An epoch-ms header value (``Last-Event-ID``); None when absent or out of range."""
    n = _opt_int(v)
    return n if n is not None and 0 <= n <= MAX_MS else None


def _once(fn: Any) -> Any:
    """``fn`` made callable once (later calls do nothing)."""
    done = [False]

    def call() -> None:
        if not done[0]:
            done[0] = True
            fn()
    return call


async def live_stream(r: Any, keys: Keys, request: Request, sid: str, track: int | None,
                      after_ms: int | None, block_ms: int, heartbeat_s: float,
                      max_events: int | None, max_duration_s: float | None,
                      release: Callable[[], None]) -> StreamingResponse:
    """The ``/v1/sessions/{sid}/live`` response: server-sent events of new timeline points of
    the session's tracks (new tracks picked up as they appear) via ``XREAD BLOCK`` on the
    asyncio Redis client ``r``; ``release`` gives the connection slot back when the stream ends
    (or is never started).

    Raises:
        HTTPException: 404 for an unknown session.
    """
    p = r.pipeline(transaction=False)
    p.exists(keys.meta(sid))
    p.exists(keys.tracks(sid))
    if not any(await p.execute()):
        raise HTTPException(404, f"unknown session {sid!r} (never written, or expired)")
    if after_ms is None:
        after_ms = _header_ms(request.headers.get("last-event-id"))

    async def track_ids() -> list[int]:
        if track is not None:
            return [track]
        return [int(t) for t in await r.zrange(keys.tracks(sid), 0, -1)]

    async def start_id(key: str) -> str:
        if after_ms is not None:
            return f"{after_ms}-0"
        top = await r.xrevrange(key, "+", "-", count=1)
        return top[0][0] if top else "0-0"

    streams: dict[str, str] = {}
    tid_of: dict[str, int] = {}
    for t in await track_ids():
        k = keys.track(sid, t)
        streams[k], tid_of[k] = await start_id(k), t

    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in _events():
                yield chunk
        finally:
            release()

    async def _events() -> AsyncIterator[str]:
        ready = {"session_id": sid, "tracks": sorted(tid_of.values())}
        yield f"retry: 2000\nevent: ready\ndata: {json.dumps(ready)}\n\n"
        sent = 0
        last_out = time.monotonic()
        stop_at = None if max_duration_s is None else last_out + max_duration_s
        n_tracks = len(tid_of)
        while True:
            if await request.is_disconnected():
                return
            if stop_at is not None and time.monotonic() >= stop_at:
                yield f"event: timeout\ndata: {json.dumps({'sent': sent})}\n\n"
                return
            # status first: once it says ended, every point and track is already stored, so
            # a read that blocks for nothing and finds nothing means the tail is complete
            status = await r.hget(keys.meta(sid), "status")
            ended = status is not None and status != "running"
            if track is None and await r.zcard(keys.tracks(sid)) != n_tracks:
                for t in await track_ids():
                    k = keys.track(sid, t)
                    if k not in streams:  # a new track: all its points are new
                        streams[k] = f"{after_ms}-0" if after_ms is not None else "0-0"
                        tid_of[k] = t
                n_tracks = len(tid_of)
            if streams:
                resp = await r.xread(streams, count=500, block=None if ended else block_ms)
            else:
                if not ended:
                    await asyncio.sleep(block_ms / 1000)
                resp = []
            for k, entries in resp or []:
                for eid, fields in entries:
                    streams[k] = eid
                    pt = TimelinePoint.from_fields(sid, tid_of[k], eid, fields)
                    data = point_out(pt).model_dump_json()
                    yield f"id: {pt.ts_ms}\nevent: point\ndata: {data}\n\n"
                    sent += 1
                    last_out = time.monotonic()
                    if max_events is not None and sent >= max_events:
                        return
            if not resp:
                if ended:
                    yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
                    return
                if time.monotonic() - last_out >= heartbeat_s:
                    yield ": keep-alive\n\n"
                    last_out = time.monotonic()

    gen = events()
    weakref.finalize(gen, release)  # a stream never started still gives its slot back
    return StreamingResponse(gen, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache",
                                      "X-Accel-Buffering": "no"})
