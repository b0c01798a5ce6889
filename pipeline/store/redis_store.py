"""Redis layout (DESIGN §6): idempotent timeline sink and read-side queries.

Keys (every key of a session shares the cluster hash tag ``{sid}``)::

    <p>:sessions              ZSET   session_id -> last update ms
    <p>:{sid}:meta            HASH   source, created_ms, updated_ms (capture time of the newest
                                     point), last_write_ms (wall clock of the last write), status,
                                     ended_ms, models, config digest
    <p>:{sid}:tracks          ZSET   track_id -> first seen ms
    <p>:{sid}:track:{tid}     STREAM one entry per analysed frame of that face, ID ``<ts_ms>-0``

Idempotency: entry IDs are given explicitly and are monotonic per track, so a replayed point is
rejected by Redis ("equal or smaller than the target stream top item") and counted as a duplicate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from affectstream.operators.records import TimelinePoint
from affectstream.pipeline.store.summary import TrackSummary, _SummaryAcc


class Keys:
    """Key names for one prefix."""

    def __init__(self, prefix: str = "affect") -> None:
        self.prefix = prefix

    @property
    def sessions(self) -> str:
        return f"{self.prefix}:sessions"

    def meta(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:meta"

    def tracks(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:tracks"

    def track(self, sid: str, tid: int) -> str:
        return f"{self.prefix}:{{{sid}}}:track:{tid}"


@dataclasses.dataclass
class WriteResult:
    """Outcome of one :meth:`RedisSink.write`: points written and replays rejected."""

    written: int = 0
    duplicates: int = 0


def connect(url: str, password: str | None = None, **kw: Any) -> redis.Redis:
    """A ``redis.Redis`` client with decoded responses (hiredis parser when installed)."""
    return redis.Redis.from_url(url, password=password, decode_responses=True,
                                health_check_interval=30, **kw)


class RedisSink:
    """Writes timeline points with explicit monotonic IDs; replays are counted, not doubled.

    Args:
        client: redis client (``decode_responses=True``).
        prefix: key prefix.
        maxlen: approximate per-track cap (``XADD MAXLEN ~``), or None.
        retention_ms: keep entries newer than ``newest - retention_ms`` (``MINID ~``), or None.
        session_ttl_s: TTL set on a session's keys by :meth:`end_session`, or None.
    """

    def __init__(self, client: redis.Redis, prefix: str = "affect", maxlen: int | None = None,
                 retention_ms: int | None = None, session_ttl_s: int | None = None) -> None:
        self.r = client
        self.k = Keys(prefix)
        self.maxlen = maxlen
        self.retention_ms = retention_ms
        self.session_ttl_s = session_ttl_s
        self._known_tracks: set[tuple[str, int]] = set()

    def start_session(self, sid: str, source: str, models: str = "", config_digest: str = "",
                      now_ms: int | None = None) -> None:
        """Create or refresh the session's meta (status=running), clear any pending TTL."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        p = self.r.pipeline(transaction=False)
        p.hsetnx(self.k.meta(sid), "created_ms", now)
        p.hset(self.k.meta(sid), mapping={"source": source, "updated_ms": now, "status": "running",
                                          "models": models, "config_digest": config_digest,
                                          "last_write_ms": int(time.time() * 1000)})
        p.persist(self.k.meta(sid))
        p.zadd(self.k.sessions, {sid: now})
        p.execute()

    def write(self, points: Sequence[TimelinePoint]) -> WriteResult:
        """Append points in one pipeline round trip.

        Points of one track must come in increasing ``ts_ms``; a point whose ID is not above the
        stream top (a replay) is rejected by Redis and counted in ``duplicates``.

        Raises:
            redis.ConnectionError / redis.TimeoutError: Redis unreachable (nothing is lost: the
                caller retries the same points; already-written ones count as duplicates).
        """
        res = WriteResult()
        if not points:
            return res
        p = self.r.pipeline(transaction=False)
        newest: dict[str, int] = {}
        adds_track: list[bool] = []
        for pt in points:
            key = self.k.track(pt.session_id, pt.track_id)
            kw: dict[str, Any] = {}
            if self.maxlen is not None:
                kw = {"maxlen": self.maxlen, "approximate": True}
            elif self.retention_ms is not None:
                kw = {"minid": str(max(0, pt.ts_ms - self.retention_ms)), "approximate": True}
            p.xadd(key, pt.to_fields(), id=f"{pt.ts_ms}-0", **kw)
            new = (pt.session_id, pt.track_id) not in self._known_tracks
            if new:
                p.zadd(self.k.tracks(pt.session_id), {str(pt.track_id): pt.ts_ms}, nx=True)
                self._known_tracks.add((pt.session_id, pt.track_id))
            adds_track.append(new)
            newest[pt.session_id] = max(newest.get(pt.session_id, 0), pt.ts_ms)
        wall = int(time.time() * 1000)
        for sid, ts in newest.items():
            p.zadd(self.k.sessions, {sid: ts})
            p.hset(self.k.meta(sid), mapping={"updated_ms": ts, "last_write_ms": wall})
        try:
            out = p.execute(raise_on_error=False)
        except Exception:
            for pt, new in zip(points, adds_track):
                if new:
                    self._known_tracks.discard((pt.session_id, pt.track_id))
            raise
        i = 0
        for new in adds_track:
            r = out[i]
            i += 1
            if isinstance(r, redis.ResponseError):
                if "equal or smaller" in str(r):
                    res.duplicates += 1
                else:
                    raise r
            elif isinstance(r, Exception):
                raise r
            else:
                res.written += 1
            i += int(new)
        for r in out[i:]:
            if isinstance(r, Exception):
                raise r
        return res

    def end_session(self, sid: str, status: str = "ended") -> None:
        """Mark the session ended and put the TTL on all its keys."""
        self.r.hset(self.k.meta(sid), mapping={"status": status,
                                               "ended_ms": int(time.time() * 1000)})
        if self.session_ttl_s is None:
            return
        p = self.r.pipeline(transaction=False)
        for key in [self.k.meta(sid), self.k.tracks(sid)] + [
                self.k.track(sid, int(t)) for t in self.r.zrange(self.k.tracks(sid), 0, -1)]:
            p.expire(key, self.session_ttl_s)
        p.execute()


class TimelineStore:
    """Read side: sessions, tracks and timeline range queries."""

    def __init__(self, client: redis.Redis, prefix: str = "affect") -> None:
        self.r = client
        self.k = Keys(prefix)

    def sessions(self) -> list[tuple[str, int]]:
        """``(session_id, last update epoch ms)``, most recent first."""
        return [(s, int(t)) for s, t in self.r.zrevrange(self.k.sessions, 0, -1, withscores=True)]

    def meta(self, sid: str) -> dict[str, str]:
        """The session's meta hash (empty dict if unknown)."""
        return self.r.hgetall(self.k.meta(sid))

    def tracks(self, sid: str) -> list[tuple[int, int]]:
        """``(track_id, first seen epoch ms)`` in order of appearance."""
        return [(int(t), int(s)) for t, s in self.r.zrange(self.k.tracks(sid), 0, -1,
                                                              withscores=True)]

    def timeline(self, sid: str, track: int | None = None, from_ms: int | None = None,
                 to_ms: int | None = None, every_ms: int | None = None,
                 limit: int | None = None) -> list[TimelinePoint]:
        """Points of one track (or all tracks), time-ordered.

        Args:
            sid: session id.
            track: one track id, or None for every track.
            from_ms / to_ms: inclusive capture-time range, epoch ms.
            every_ms: downsample: keep the first point of each ``every_ms`` bucket per track.
            limit: at most this many points per track.
        """
        tids = [track] if track is not None else [t for t, _ in self.tracks(sid)]
        lo = "-" if from_ms is None else str(from_ms)
        hi = "+" if to_ms is None else str(to_ms)
        p = self.r.pipeline(transaction=False)
        for t in tids:
            p.xrange(self.k.track(sid, t), lo, hi, count=limit)
        out: list[TimelinePoint] = []
        for t, entries in zip(tids, p.execute()):
            out.extend(_downsample((TimelinePoint.from_fields(sid, t, eid, f)
                                    for eid, f in entries), every_ms))
        out.sort(key=lambda q: (q.ts_ms, q.track_id))
        return out

    def count_points(self, sid: str) -> dict[int, int]:
        """Entries per track (``XLEN``)."""
        tids = [t for t, _ in self.tracks(sid)]
        p = self.r.pipeline(transaction=False)
        for t in tids:
            p.xlen(self.k.track(sid, t))
        return dict(zip(tids, p.execute()))


    def iter_track(self, sid: str, track: int, from_ms: int | None = None,
                   to_ms: int | None = None, every_ms: int | None = None,
                   page: int = 2000) -> Iterable[TimelinePoint]:
        """Points of one track in time order, read lazily in pages of ``page`` entries.

        Args:
            sid / track: session and track.
            from_ms / to_ms: inclusive capture-time range, epoch ms.
            every_ms: keep the first point of each ``every_ms`` bucket.
            page: entries per ``XRANGE`` call.
        """
        lo = "-" if from_ms is None else str(from_ms)
        hi = "+" if to_ms is None else str(to_ms)

        def pages() -> Iterable[TimelinePoint]:
            nonlocal lo
            while True:
                entries = self.r.xrange(self.k.track(sid, track), lo, hi, count=page)
                for eid, fields in entries:
                    yield TimelinePoint.from_fields(sid, track, eid, fields)
                if len(entries) < page:
                    return
                lo = "(" + entries[-1][0]  # exclusive start after the last entry read

        yield from _downsample(pages(), every_ms)

    def session_keys(self, sid: str) -> list[str]:
        """Every key of the session (meta, tracks, track streams, checkpoint, ...), found by
        ``SCAN`` over the session's hash-tagged key space ``<prefix>:{sid}:*``."""
        pattern = _glob_escape(f"{self.k.prefix}:{{{sid}}}:") + "*"
        return sorted(set(self.r.scan_iter(match=pattern, count=1000)))

    def ttl_s(self, sid: str) -> int | None:
        """Seconds until the session's keys expire; None when they do not expire (running, or
        ``redis.session_ttl_s`` is null) or the session has no meta."""
        t = self.r.ttl(self.k.meta(sid))
        return int(t) if t is not None and t >= 0 else None

    def delete(self, sid: str) -> int:
        """Remove every key of the session and its entry in the sessions index.

        Returns:
            Number of keys deleted (0 for an unknown session; the index entry is removed anyway).
        """
        keys = self.session_keys(sid)
        p = self.r.pipeline(transaction=False)
        for chunk in iter_chunks(keys, 500):
            p.unlink(*chunk)
        p.zrem(self.k.sessions, sid)
        res = p.execute()
        return int(sum(res[:-1]))

    def exists(self, sid: str) -> bool:
        """Whether the session has a meta hash or tracks (expired sessions do not)."""
        p = self.r.pipeline(transaction=False)
        p.exists(self.k.meta(sid))
        p.exists(self.k.tracks(sid))
        return any(p.execute())

    def sessions_page(self, offset: int = 0, limit: int = 100
                      ) -> tuple[int, list[tuple[str, int, dict[str, str]]]]:
        """One page of sessions, most recent first, with their meta in one round trip.

        Returns:
            ``(total sessions, [(session_id, last update epoch ms, meta dict), ...])``; the meta
            dict is empty for a session whose keys have expired, and ``{"status": "unreadable"}``
            for one whose meta key is not a hash (one damaged key never fails the listing).
        """
        total = self.r.zcard(self.k.sessions)
        rows = self.r.zrevrange(self.k.sessions, offset, offset + limit - 1, withscores=True)
        p = self.r.pipeline(transaction=False)
        for sid, _ in rows:
            p.hgetall(self.k.meta(sid))
        metas = p.execute(raise_on_error=False) if rows else []
        metas = [{"status": "unreadable"} if isinstance(m, redis.ResponseError) else m
                 for m in metas]
        return total, [(sid, int(ts), m) for (sid, ts), m in zip(rows, metas)]

    def summary(self, sid: str, track: int | None = None, from_ms: int | None = None,
                to_ms: int | None = None, page: int = 5000) -> list[TrackSummary]:
        """Per-track aggregates over the stored points (read in pages of ``page`` entries).

        Args:
            sid: session id.
            track: one track, or None for every track.
            from_ms / to_ms: inclusive capture-time range, epoch ms.
            page: entries per ``XRANGE`` call.

        Returns:
            One :class:`TrackSummary` per track that has points in range, by track id.
        """
        tids = [track] if track is not None else [t for t, _ in self.tracks(sid)]
        out = []
        for t in tids:
            acc = _SummaryAcc(t)
            lo = "-" if from_ms is None else str(from_ms)
            hi = "+" if to_ms is None else str(to_ms)
            while True:
                entries = self.r.xrange(self.k.track(sid, t), lo, hi, count=page)
                for eid, fields in entries:
                    acc.add(int(eid.split("-")[0]), fields)
                if len(entries) < page:
                    break
                lo = "(" + entries[-1][0]
            if acc.n:
                out.append(acc.result())
        return sorted(out, key=lambda s: s.track_id)


def _downsample(points: Iterable[TimelinePoint], every_ms: int | None
                ) -> Iterable[TimelinePoint]:
    """Keep the first point of each ``every_ms`` capture-time bucket (all when falsy)."""
    last_bucket = None
    for pt in points:
        if every_ms:
            b = pt.ts_ms // every_ms
            if b == last_bucket:
                continue
            last_bucket = b
        yield pt


def _glob_escape(s: str) -> str:
    """``s`` with Redis glob metacharacters (``* ? [ ] \\``) escaped for ``SCAN MATCH``."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


def iter_chunks(items: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of at most ``n`` items."""
    for i in range(0, len(items), n):
        yield items[i:i + n]
