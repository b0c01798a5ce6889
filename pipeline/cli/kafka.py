"""``affectstream publish`` (video -> Kafka frames) and ``affectstream serve`` (the service).

Mount the commands of ``kafka_cli`` on the main app (they become top-level commands).

Exit codes: 0 done; 1 Redis unreachable; 2 the source is missing or unreadable, a bad option or
configuration; 3 the broker is unreachable or did not acknowledge frames.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

kafka_cli = typer.Typer(help="Kafka frame publishing (envelope v1).", no_args_is_help=True,
                        add_completion=False)

_err = Console(stderr=True)


@kafka_cli.command("publish")
def publish_cmd(
    source: Annotated[str, typer.Argument(help="Video file or rtsp:// URL.")],
    bootstrap: Annotated[str, typer.Option(
        help="Kafka bootstrap host:port[,host:port]; default: config / "
        "AFFECTSTREAM_KAFKA_BOOTSTRAP.")] = "",
    topic: Annotated[str, typer.Option(help="Frame topic; default: config kafka.topic.")] = "",
    session: Annotated[str, typer.Option(
        help="Session id (letters, digits, . _ : -); default: file name + UTC time.")] = "",
    fps: Annotated[float, typer.Option(
        min=0, help="Frames per second of media time to publish; 0 = every frame.")] = 0.0,
    jpeg_quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality.")] = 90,
    max_frames: Annotated[int, typer.Option(min=0, help="Stop after N frames; 0 = all.")] = 0,
    partitions: Annotated[int, typer.Option(
        min=1, help="Partitions if the topic has to be created.")] = 1,
    connect_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds to wait for the broker / stream.")] = 10.0,
    config: Annotated[str, typer.Option(
        help="Config YAML or preset (security settings, defaults).")] = "",
    realtime: Annotated[bool, typer.Option(
        "--realtime", help="Pace frames by their timestamps (PTS), like a live camera.")] = False,
    loop: Annotated[bool, typer.Option(
        "--loop", help="Start over at the end, media time continuing; until Ctrl-C or "
        "--max-frames.")] = False,
) -> None:
    """Publish SOURCE to Kafka, one JPEG per message keyed by session (DESIGN §5)."""
    from pydantic import ValidationError

    from affectstream.pipeline.config import load_config
    from affectstream.operators.decode import SourceError
    from affectstream.pipeline.kafka.client import BrokerUnavailable, KafkaIOError
    from affectstream.pipeline.kafka.publish import publish

    try:
        cfg = load_config(config or None, overrides={
            "kafka": {"bootstrap": bootstrap or None, "topic": topic or None}}).kafka
    except (FileNotFoundError, ValidationError, ValueError) as e:
        _fail(2, f"bad configuration: {e}")
    progress = Progress(TextColumn("[bold]publish[/]"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("frames"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=_err, transient=False)
    task = None

    def on_frame(sent: int, total: int | None) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task("frames", total=total)
        progress.update(task, completed=sent)

    try:
        with progress:
            stats = publish(source, cfg.bootstrap, cfg.topic, session or None, fps or None,
                            jpeg_quality, max_frames=max_frames or None, progress=on_frame,
                            partitions=partitions, cfg=cfg, open_timeout_s=connect_timeout,
                            realtime=realtime, loop=loop)
    except FileNotFoundError as e:
        _fail(2, str(e))
    except SourceError as e:
        _fail(2, str(e))
    except ValidationError as e:
        _fail(2, f"invalid session id {session!r}: {e.errors()[0]['msg']}")
    except (BrokerUnavailable, KafkaIOError) as e:
        _fail(3, str(e))
    except KeyboardInterrupt:
        _fail(130, "interrupted")
    typer.echo(f"published {stats.frames} frames ({stats.bytes / 1e6:.1f} MB, "
               f"{stats.width}x{stats.height} px) of session {stats.session_id} to "
               f"{cfg.topic} @ {cfg.bootstrap} in {stats.elapsed_s:.1f} s "
               f"({stats.frames_per_s:.0f} frames/s)")


@kafka_cli.command("serve")
def serve_cmd(
    config: Annotated[str, typer.Option(
        "--config", "-c", help="Config YAML or preset.")] = "service",
    bootstrap: Annotated[str, typer.Option(
        help="Kafka bootstrap host:port[,host:port] (overrides the config).")] = "",
    redis_url: Annotated[str, typer.Option(
        "--redis-url", help="redis://host:port/db (overrides the config; default: the "
        "config's, else localhost:6379, else an embedded redis-server).")] = "",
    port: Annotated[int, typer.Option(
        min=0, max=65535, help="HTTP port of the query API (overrides the config).")] = 0,
    connect_timeout: Annotated[float, typer.Option(
        min=0.1, help="Seconds to wait for the broker at start.")] = 10.0,
    allow_untrained: Annotated[bool, typer.Option(
        "--allow-untrained", help="Serve a model that has no trained weights (random outputs; "
        "for tests and development). Warns at start.")] = False,
) -> None:
    """Run the service: Kafka consumers + inference + Redis sink + HTTP query API.

    Consumes ``kafka.topic`` as group ``kafka.group_id`` with ``kafka.consumers`` consumer
    actors, writes timelines to Redis, serves /v1/..., /metrics, /healthz on api.host:port, and
    runs until Ctrl-C / SIGTERM (then drains, checkpoints and commits).
    """
    from pydantic import ValidationError

    from affectstream.pipeline.api.app import ApiConfigError, check_bind
    from affectstream.pipeline.config import load_config
    from affectstream.pipeline.kafka.client import BrokerUnavailable, check_broker, client_kwargs
    from affectstream.pipeline.store.redis_server import RedisUnavailable, resolve_redis

    try:
        cfg = load_config(config or None, overrides={
            "kafka": {"bootstrap": bootstrap or None}, "redis": {"url": redis_url or None},
            "api": {"port": port or None}})
        check_bind(cfg.api.host, cfg.api.auth_token)
    except (FileNotFoundError, ValidationError, ValueError) as e:
        _fail(2, f"bad configuration: {e}")
    from affectstream.pipeline.untrained import UntrainedModelError, check_trained

    try:
        for w in (check_trained([cfg.inference.fer_model], allow_untrained, "set inference.fer_model in the config to")
                  + check_trained([cfg.inference.au_model], allow_untrained, "set inference.au_model in the config to")):
            _err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    except (UntrainedModelError, KeyError) as e:
        _fail(2, str(e.args[0]))
    try:
        url, how = resolve_redis(cfg.redis.url, cfg.redis.password)
    except RedisUnavailable as e:
        _fail(1, str(e))
    k = cfg.kafka
    ckw = {key: v for key, v in client_kwargs(k).items() if key != "bootstrap_servers"}
    try:
        check_broker(k.bootstrap, timeout_s=connect_timeout, **ckw)
    except BrokerUnavailable as e:
        _fail(3, str(e))
    cfg = cfg.model_validate({**cfg.model_dump(), "redis": {**cfg.redis.model_dump(),
                                                            "url": url}})

    def ready(svc) -> None:  # noqa: ANN001
        _err.print(f"[bold]affectstream service[/] consuming [bold]{k.topic}[/] @ {k.bootstrap} "
                   f"(group {k.group_id}, {k.consumers} consumer(s)); timelines in Redis {url} "
                   f"({how}); API on {svc.url} (/v1/sessions, /metrics, /docs). "
                   "Ctrl-C stops.", highlight=False, soft_wrap=True)

    from affectstream.pipeline.service.lifecycle import run_service

    try:
        run_service(cfg, on_ready=ready)
    except ApiConfigError as e:
        _fail(2, str(e))
    except BrokerUnavailable as e:
        _fail(3, str(e))
    _err.print("service stopped (acknowledged offsets committed)")


def _fail(code: int, msg: str) -> None:
    _err.print(f"[red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
