"""``affectstream sessions`` (list, delete), ``timeline`` and ``export``: stored sessions in Redis.

Mount ``sessions_app`` as the ``sessions`` group and the commands of ``data_cli`` as top-level
commands. Exit codes: 0 done; 1 Redis unreachable, unknown session or nothing in range; 2 a bad
option.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from affectstream.pipeline.cli.common import (console, fail, out, print_json, redis_url_or_env,
                                              utc)

sessions_app = typer.Typer(help="Stored sessions: list (default), delete.", add_completion=False)
data_cli = typer.Typer(add_completion=False)

EXPORT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl"}


def _store(redis_url: str | None) -> tuple[Any, str]:
    from affectstream.pipeline.store.redis_store import TimelineStore, connect

    url = redis_url_or_env(redis_url)
    return TimelineStore(connect(url)), url


def _known_or_fail(store: Any, session: str, url: str) -> None:
    if not store.exists(session):
        known = ", ".join(s for s, _ in store.sessions()[:10]) or "none"
        fail(f"no session {session!r} in {url} (known: {known})")


def format_ttl(ttl_s: int | None) -> str:
    """Remaining retention as ``3d 4h`` / ``5h 10m`` / ``42s``; ``none`` when it never expires."""
    if ttl_s is None:
        return "none"
    d, rem = divmod(int(ttl_s), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s}s" if m else f"{s}s"


def session_rows(store: Any) -> list[dict[str, Any]]:
    """One dict per session, most recent first: ``session_id``, ``status`` (``expired`` once its
    keys are gone), ``tracks``, ``created_ms``, ``last_capture_ms`` (capture time of the newest
    point, epoch ms), ``last_write_ms`` (wall clock of the last write, epoch ms), ``ended_ms``,
    ``ttl_s`` (seconds until its keys expire; None = no expiry), ``source``."""
    _, page = store.sessions_page(0, 1_000_000)
    p = store.r.pipeline(transaction=False)
    for sid, _, _ in page:
        p.zcard(store.k.tracks(sid))
        p.ttl(store.k.meta(sid))
    res = p.execute() if page else []
    rows = []
    for i, (sid, ts, m) in enumerate(page):
        ttl = res[2 * i + 1]

        def num(key: str) -> int | None:
            v = m.get(key)  # noqa: B023
            return int(float(v)) if v not in (None, "") else None

        rows.append({"session_id": sid, "status": m.get("status", "expired") if m else "expired",
                     "tracks": int(res[2 * i]), "created_ms": num("created_ms"),
                     "last_capture_ms": num("updated_ms") or ts,
                     "last_write_ms": num("last_write_ms"), "ended_ms": num("ended_ms"),
                     "ttl_s": int(ttl) if ttl is not None and ttl >= 0 else None,
                     "source": m.get("source", "")})
    return rows


@sessions_app.callback(invoke_without_command=True)
def sessions(
    ctx: typer.Context,
    redis_url: Optional[str] = typer.Option(None, "--redis-url"),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout (one array)."),
) -> None:
    """List sessions: status, tracks, capture time of the newest point, wall-clock time of the
    last write, retention left (redis.session_ttl_s after a session ends; none = kept)."""
    if ctx.invoked_subcommand is not None:
        return
    store, _ = _store(redis_url)
    rows = session_rows(store)
    if as_json:
        print_json(rows)
        return
    t = Table("session", "status", "tracks", "newest point, capture (UTC)",
              "last write, wall clock (UTC)", "retention", "source")
    for r in rows:
        t.add_row(r["session_id"], r["status"], str(r["tracks"]), utc(r["last_capture_ms"]),
                  utc(r["last_write_ms"]),
                  "expired" if r["status"] == "expired" else format_ttl(r["ttl_s"]), r["source"])
    out.print(t)


@sessions_app.command("delete")
def sessions_delete(
    session: str = typer.Argument(..., help="Session id."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete every key of a session (timelines, tracks, meta, checkpoint) and its index entry."""
    store, url = _store(redis_url)
    in_index = store.r.zscore(store.k.sessions, session) is not None
    if not in_index and not store.exists(session):
        _known_or_fail(store, session, url)
    if not yes:
        if not sys.stdin.isatty():
            fail("refusing to delete without confirmation: pass --yes", 2)
        typer.confirm(f"delete session {session!r} from {url}?", abort=True)
    n = store.delete(session)
    console.print(f"deleted session {session!r}: {n} keys")


def point_extras(p: Any, as_json: bool) -> dict[str, Any]:
    """A point's optional columns for ``timeline --format csv|json``: ``AU01_c``… (presence 0/1),
    ``yaw`` ``pitch`` ``roll`` ``gaze_yaw`` ``gaze_pitch`` (degrees), landmarks (JSON: a list of
    [x, y(, z)] in frame pixels; CSV: ``x_0``… ``y_0``… ``z_0``…) — only those the point has."""
    from affectstream.operators.records import POSE_FIELDS

    row: dict[str, Any] = {f"{k}_c": v for k, v in p.au_presence.items()}
    row.update({k: round(getattr(p, k), 2) for k in POSE_FIELDS if getattr(p, k) is not None})
    if p.landmarks is not None:
        if as_json:
            row["landmarks"] = p.landmarks.round(1).tolist()
        else:
            for d, axis in enumerate("xyz"[:p.landmarks.shape[1]]):
                row.update({f"{axis}_{j}": round(float(v), 1)
                            for j, v in enumerate(p.landmarks[:, d])})
    return row


@data_cli.command()
def timeline(
    session: str = typer.Argument(..., help="Session id."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url"),
    track: Optional[int] = typer.Option(None, help="Only this track id."),
    from_ms: Optional[int] = typer.Option(None, help="From capture time, epoch ms."),
    to_ms: Optional[int] = typer.Option(None, help="To capture time, epoch ms."),
    every_ms: Optional[int] = typer.Option(
        None, min=1, help="Downsample: one point per N ms per track."),
    limit: Optional[int] = typer.Option(
        None, min=1, help="Show at most N points (the first N in time)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of emotion + AU curves."),
) -> None:
    """Show a session's timeline (table, CSV or JSON) and optionally plot it."""
    if fmt not in ("table", "csv", "json"):
        fail(f"unknown --format {fmt!r} (table, csv, json)", 2)
    store, url = _store(redis_url)
    _known_or_fail(store, session, url)
    pts = store.timeline(session, track, from_ms, to_ms, every_ms, limit=limit)
    if not pts:
        fail(f"session {session!r} has no points in that range")
    t0 = pts[0].ts_ms - pts[0].pts_ms
    shown = pts[:limit] if limit else pts
    if fmt in ("csv", "json"):
        rows = []
        for p in shown:
            row = {"session_id": p.session_id, "track_id": p.track_id, "ts_ms": p.ts_ms,
                   "pts_ms": p.pts_ms, "emotion": p.emotion}
            row.update({f"p_{k}": round(v, 4) for k, v in p.emotion_probs.items()})
            row.update({k: round(v, 3) for k, v in p.au_intensity.items()})
            row.update({f"sal_{k}": round(v, 3) for k, v in p.saliency.items()})
            row.update(dict(zip(("x1", "y1", "x2", "y2"), p.bbox_xyxy)))
            row["det_score"] = p.det_score
            row.update(point_extras(p, fmt == "json"))
            rows.append(row)
        if fmt == "json":
            print_json(rows)
        else:
            import csv

            names = list(dict.fromkeys(k for r in rows for k in r))  # union, first-seen order
            w = csv.DictWriter(sys.stdout, fieldnames=names, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    else:
        more = f" (first {len(shown)} of more)" if limit and len(pts) > limit else ""
        t = Table("time (s)", "track", "emotion", "probabilities (top 3)", "top AUs (0–5)",
                  title=f"{session}: {len(shown)} points{more}", title_justify="left")
        for p in shown:
            top = sorted(p.emotion_probs.items(), key=lambda kv: -kv[1])[:3]
            aus = sorted(p.au_intensity.items(), key=lambda kv: -kv[1])[:3]
            t.add_row(f"{p.pts_ms / 1000:.2f}", str(p.track_id), p.emotion,
                      " ".join(f"{k[:4]} {v:.2f}" for k, v in top),
                      " ".join(f"{k} {v:.1f}" for k, v in aus if v >= 0.05) or "-")
        out.print(t)
    if plot is not None:
        from affectstream.pipeline.viz.plot import plot_timeline

        plot_timeline(pts, plot, title=session, t0_ms=t0)
        console.print(f"plot written to {plot}")


@data_cli.command()
def export(
    session: str = typer.Argument(..., help="Session id."),
    output: Path = typer.Option(..., "--output", "-o",
                                help="File to write: .parquet, .csv or .jsonl."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url"),
) -> None:
    """Export a stored session as a table: one row per face per analysed frame, the columns of
    affectstream.read_timeline (OpenFace/py-feat style: timestamp_ms, AU12_r, ...)."""
    kind = EXPORT_FORMATS.get(output.suffix.lower())
    if kind is None:
        fail(f"cannot tell the format of {output.name!r}: use a name ending in "
             f"{', '.join(EXPORT_FORMATS)}", 2)
    store, url = _store(redis_url)
    _known_or_fail(store, session, url)
    from affectstream.pipeline.runtime.inprocess import points_frame

    df = points_frame(store.timeline(session))
    if df.empty:
        fail(f"session {session!r} has no points")
    output.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        df.to_parquet(output, index=False)
    elif kind == "csv":
        df.to_csv(output, index=False, lineterminator="\n")
    else:
        df.to_json(output, orient="records", lines=True)
    console.print(f"{len(df)} rows ({df['track_id'].nunique()} tracks) written to {output}")
