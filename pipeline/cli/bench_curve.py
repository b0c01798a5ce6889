"""``affectstream bench-curve``: the streams curve (:mod:`affectstream.pipeline.bench.curve`).

Exit codes: 0 done; 1 a run failed, Redis or the broker unreachable; 2 a bad option.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from affectstream.pipeline.cli.common import (console, fail, load_config_or_fail, out,
                                              print_json, quiet_ray, resolve_redis_or_fail)

bench_curve_cli = typer.Typer(add_completion=False)


def _ns(text: str) -> list[int]:
    try:
        ns = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        ns = []
    if not ns or ns[0] < 1:
        fail(f"--streams wants positive integers like 1,2,4,8,16, not {text!r}", 2)
    return ns


@bench_curve_cli.command("bench-curve")
def bench_curve(
    video: Optional[str] = typer.Argument(None, help="Video file (default: the 640x360 sample)."),
    streams: str = typer.Option("1,2,4,8,16", help="The N values: concurrent streams per run."),
    max_frames: Optional[int] = typer.Option(
        200, help="Frames per stream (bounds the run time at large N); 0 = whole clip."),
    kafka: bool = typer.Option(False, "--kafka", help="Kafka sessions at --fps each (the "
                               "service), instead of files."),
    bootstrap: Optional[str] = typer.Option(None, help="Kafka bootstrap (with --kafka)."),
    fps: float = typer.Option(10.0, help="Publish rate per session with --kafka, frames/s."),
    config: Optional[str] = typer.Option(None, "--config", "-c"),
    redis_url: Optional[str] = typer.Option(None, "--redis-url"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG plot here (with "
                                        "--also, the curves of other JSON files too)."),
    also: Optional[list[Path]] = typer.Option(None, "--also", help="Earlier bench-curve JSON "
                                              "to draw in the same plot (e.g. files + Kafka)."),
    as_json: bool = typer.Option(False, "--json", help="The curve as JSON on stdout."),
    plot_only: bool = typer.Option(False, "--plot-only", help="Run nothing: draw the --also "
                                   "JSON files into --plot."),
) -> None:
    """Total frames/s, p50/p99 latency, faces per forward and CPU per frame for N streams."""
    from affectstream.pipeline.bench.curve import ROW_KEYS, plot_curve, run_curve

    if plot_only:
        if not plot or not also:
            fail("--plot-only needs --plot and at least one --also JSON", 2)
        console.print(f"plot written to {plot_curve([json.loads(p.read_text()) for p in also], plot)}")
        return

    ns = _ns(streams)
    if video is None:
        from affectstream.models.weights import artifact_path

        video = str(artifact_path("WolfgangLanger_Pexels.mp4"))
    if not Path(video).is_file():
        fail(f"video file not found: {video}")
    cfg = load_config_or_fail(config or ("service" if kafka else None),
                              {"redis": {"url": redis_url}, "kafka": {"bootstrap": bootstrap}})
    url, _ = resolve_redis_or_fail(cfg.redis.url, cfg.redis.password)
    quiet_ray()
    try:
        curve = run_curve(video, cfg, url, ns, kafka=kafka, bootstrap=bootstrap, fps=fps,
                          max_frames=max_frames or None, console=console)
    except RuntimeError as e:
        fail(str(e))
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(curve, indent=2) + "\n")
        console.print(f"curve written to {output}")
    if plot:
        others = [json.loads(p.read_text()) for p in also or []]
        console.print(f"plot written to {plot_curve([curve, *others], plot)}")
    if as_json:
        print_json(curve)
        return
    t = Table(title=f"streams curve ({curve['mode']}): {curve['video']}")
    for c in ("streams", *ROW_KEYS):
        t.add_column(c, justify="right")
    for r in curve["rows"]:
        t.add_row(str(r["streams"]), *("-" if r[k] is None else f"{r[k]:.2f}" for k in ROW_KEYS))
    out.print(t)
