"""``affectstream overlay SESSION VIDEO -o out.mp4``: a stored session drawn on its video.

Mount the commands of ``overlay_cli`` on the main app. Exit codes: 0 done; 1 Redis unreachable,
unknown session, unreadable video or encoder failure; 2 a bad option or configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from affectstream.pipeline.cli.common import (console, fail, one_line_error, out,
                                              redis_url_or_env)

overlay_cli = typer.Typer(add_completion=False)


def overlay_or_fail(session: str, video: str | Path, output: Path, redis_url: str,
                    cfg: Any, hold_ms: float | None = None, top_aus: int = 3,
                    summary_to_stderr: bool = False) -> None:
    """Read ``session`` from Redis and render the overlay of ``video`` into ``output``; print a
    one-line summary (stdout, or stderr when stdout carries JSON), or a one-line error and exit
    1."""
    import av

    from affectstream.pipeline.viz.overlay_video import render_overlay
    from affectstream.pipeline.store.redis_store import TimelineStore, connect

    store = TimelineStore(connect(redis_url, cfg.redis.password), cfg.redis.key_prefix)
    if not store.exists(session):
        fail(f"no session {session!r} in {redis_url}")
    points = store.timeline(session)
    console.print(f"drawing {len(points)} points of session {session!r} on {video}…")
    try:
        st = render_overlay(points, video, output, analysed_max_width=cfg.decode.max_width,
                            hold_ms=hold_ms, top_aus=top_aus)
    except (FileNotFoundError, ValueError, RuntimeError, av.error.FFmpegError, OSError) as e:
        fail(f"overlay of {video} failed: {one_line_error(e)}")
    (console if summary_to_stderr else out).print(f"overlay written to {output}: {st.frames} frames ({st.frames_with_faces} with "
              f"faces), {st.width}x{st.height}, {st.codec}")


@overlay_cli.command()
def overlay(
    session: str = typer.Argument(..., help="Session id (as written by run or serve)."),
    video: Path = typer.Argument(..., help="The video file the session analysed."),
    output: Path = typer.Option(..., "--output", "-o", help="Video to write (.mp4)."),
    redis_url: Optional[str] = typer.Option(None, "--redis-url"),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="YAML file or preset of the run (decode.max_width, "
        "redis.key_prefix)."),
    hold_ms: Optional[float] = typer.Option(
        None, min=0, help="Keep a track's box on frames without its own point for this long "
        "(media ms); default 1.5x the gap between analysed frames."),
    top_aus: int = typer.Option(3, min=0, max=12, help="Action units listed per face."),
) -> None:
    """Draw a stored session on its video: boxes, track ids, dominant emotion with its
    probability, top AUs; same frame count and timing as the input (H.264, else MPEG-4)."""
    from pydantic import ValidationError

    from affectstream.pipeline.config import load_config

    if not video.is_file():
        fail(f"video file not found: {video}", 2)
    try:
        cfg = load_config(config)
    except (FileNotFoundError, ValidationError, ValueError) as e:
        fail(f"bad configuration: {one_line_error(e)}", 2)
    overlay_or_fail(session, video, output, redis_url_or_env(redis_url or cfg.redis.url), cfg,
                    hold_ms, top_aus)
