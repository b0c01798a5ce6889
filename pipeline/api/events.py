"""OpenAPI description of the live tail's server-sent events (``GET /v1/sessions/{sid}/live``).

In OpenAPI 3.1 the ``schema`` of a ``text/event-stream`` response describes one event: an object
with the SSE fields ``event``, ``data`` (text), ``id`` and ``retry``. Each ``data`` here is JSON,
whose shape ``contentSchema`` gives (``Point`` is the timeline's point model).
"""

from __future__ import annotations

from typing import Any


def _sse_event(name: str, data: dict[str, Any], with_id: bool = False) -> dict[str, Any]:
    """Schema of one event named ``name`` whose JSON data follows ``data``."""
    props: dict[str, Any] = {
        "event": {"const": name}, "retry": {"type": "integer", "description": "Reconnect delay, ms."},
        "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data}}
    if with_id:
        props["id"] = {"type": "string", "pattern": "^[0-9]+$", "description": "ts_ms of the point."}
    return {"type": "object", "properties": props,
            "required": ["event", "data", *(["id"] if with_id else [])]}


SSE_EVENT_SCHEMA: dict[str, Any] = {"oneOf": [
    _sse_event("ready", {"type": "object", "properties": {
        "session_id": {"type": "string"}, "tracks": {"type": "array", "items": {"type": "integer"}}}}),
    _sse_event("point", {"$ref": "#/components/schemas/Point"}, with_id=True),
    _sse_event("end", {"type": "object", "properties": {"status": {"type": "string"}}}),
    _sse_event("timeout", {"type": "object", "properties": {"sent": {"type": "integer"}}}),
]}
"""One event of ``/live``: ``ready`` (data: session_id, tracks), ``point`` (id: its ts_ms, data:
a Point), ``end`` (data: the final status), ``timeout`` (data: points sent)."""
