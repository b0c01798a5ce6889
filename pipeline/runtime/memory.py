"""In-memory source and sink for the session runner (tests and notebooks; no servers).

``ListSink`` keeps the Redis sink's contract: per track, a point whose ``ts_ms`` is not above the
newest stored one is rejected and counted as a duplicate (Redis stream IDs ``<ts_ms>-0``), so a
replay test means the same thing in memory as against Redis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from affectstream.operators.records import Frame, TimelinePoint


@dataclasses.dataclass
class WriteCounts:
    """Outcome of one write: points stored and replays rejected."""

    written: int = 0
    duplicates: int = 0


class ListSink:
    """Keeps points per ``(session_id, track_id)`` in lists; sessions' status in a dict.

    Attributes:
        points: ``{(session_id, track_id): [TimelinePoint, ...]}`` in write order.
        status: ``{session_id: "running" | "ended" | ...}``.
    """

    def __init__(self) -> None:
        self.points: dict[tuple[str, int], list[TimelinePoint]] = {}
        self.status: dict[str, str] = {}
        self.meta: dict[str, dict[str, str]] = {}

    def open(self, session_id: str, source: str, models: str = "", config_digest: str = "") -> None:
        self.status[session_id] = "running"
        self.meta[session_id] = {"source": source, "models": models,
                                 "config_digest": config_digest}

    def write(self, points: list[TimelinePoint]) -> WriteCounts:
        res = WriteCounts()
        for p in points:
            rows = self.points.setdefault((p.session_id, p.track_id), [])
            if rows and p.ts_ms <= rows[-1].ts_ms:
                res.duplicates += 1
            else:
                rows.append(p)
                res.written += 1
        return res

    def close(self, session_id: str, status: str = "ended") -> None:
        self.status[session_id] = status

    def all_points(self, session_id: str) -> list[TimelinePoint]:
        """Every stored point of a session, ordered by (ts_ms, track_id)."""
        out = [p for (sid, _), rows in self.points.items() if sid == session_id for p in rows]
        return sorted(out, key=lambda p: (p.ts_ms, p.track_id))


class ListSource:
    """Frames from a list (or any iterable) of :class:`Frame`, with the source ``meta`` the
    runner expects.

    Args:
        frames: frames in order.
    """

    def __init__(self, frames: Iterable[Frame]) -> None:
        self._frames = list(frames)

    def __iter__(self) -> Iterator[tuple[Frame, dict]]:
        import time

        for f in self._frames:
            yield f, {"t_wall": time.time(), "decode_ms": 0.0}

    def __len__(self) -> int:
        return len(self._frames)
