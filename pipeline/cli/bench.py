"""``affectstream bench``: the main job on a real clip, measured (:mod:`pipeline.bench.runtime`),
or the Kafka service (``--kafka``) or inference autoscaling (``--autoscale``).

Exit codes: 0 done; 1 a run failed or Redis / the broker is unreachable; 2 a bad option.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from affectstream.pipeline.cli.common import (PLACEMENT_OPTION, console, fail, load_config_or_fail,
                                              out, print_json, quiet_ray, resolve_redis_or_fail)
from affectstream.pipeline.runtime.placements import choose as choose_placement

bench_cli = typer.Typer(add_completion=False)


@bench_cli.command()
def bench(
    video: Optional[str] = typer.Argument(
        None, help="Video file or stream URL (default: a real 640x360 sample clip)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o",
                                          help="Also write the results to this JSON file."),
    as_json: bool = typer.Option(False, "--json", help="Results as JSON on stdout (no tables)."),
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
    autoscale: bool = typer.Option(
        False, "--autoscale", help="Serve autoscaling of Inference under a load step of "
        "--streams callers for --duration-s (config: inference.num_replicas auto; joins "
        "RAY_ADDRESS): replicas over time."),
    placement: Optional[str] = PLACEMENT_OPTION,
) -> None:
    """End-to-end frames/s, per-stage time per frame, p50/p99 frame-to-Redis latency."""
    from affectstream.operators.decode import is_live
    from affectstream.pipeline.bench.runtime import run_bench

    if autoscale:
        from affectstream.pipeline.bench.autoscale import autoscale_cli

        return autoscale_cli(video, load_config_or_fail(config or "cluster", {}), streams, duration_s,
                             output, as_json)

    if video is None:
        from affectstream.models.weights import artifact_path

        video = str(artifact_path("WolfgangLanger_Pexels.mp4"))
    live = is_live(video)
    if not live and not Path(video).is_file():
        fail(f"video file not found: {video}")
    if live and analysis_fps is None:
        analysis_fps = 10.0
    cfg = load_config_or_fail(config, {"decode": {"analysis_fps": analysis_fps}, "redis": {"url": redis_url},
                           "placement": placement})
    url, _ = resolve_redis_or_fail(cfg.redis.url, cfg.redis.password)
    max_frames = int(duration_s * analysis_fps) if live and analysis_fps else None
    try:
        if kafka:
            from affectstream.pipeline.bench.kafka import run_kafka_bench

            cfg = load_config_or_fail(config or "service", {"redis": {"url": redis_url},
                                                "kafka": {"bootstrap": bootstrap}})
            res = run_kafka_bench(video, cfg, url, bootstrap=bootstrap, fps=fps,
                                  streams=streams, console=console)
        else:
            quiet_ray()
            res = run_bench(video, cfg, url, streams, console, max_frames=max_frames,
                            placement=choose_placement(cfg.placement, streams))
    except RuntimeError as e:
        fail(str(e))
    t = Table(title=f"affectstream bench: {res['video']}, {streams} stream(s)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in res["summary"].items():
        t.add_row(k, str(v).lower() if isinstance(v, (str, bool)) else f"{v:.2f}")
    st = Table(title="per-stage time per frame (ms; each stage's own work)")
    for c in ("stage", "mean", "p50", "p99"):
        st.add_column(c, justify="right")
    for k, v in res["stages_ms"].items():
        st.add_row(k, f"{v['mean']:.2f}", f"{v['p50']:.2f}", f"{v['p99']:.2f}")
    if as_json:
        print_json(res)
    else:
        out.print(t)
        out.print(st)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(res, indent=2) + "\n")
        console.print(f"results written to {output}")
