"""Shared pieces of the command line: consoles, global flags, one-line errors, Redis lookup.

The global flags (``--quiet``, ``--log-level``, ``--debug``) are set once by the main app's
callback and read here by every command module, so no command module imports ``cli`` (which
mounts them).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import typer
from rich.console import Console

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
"""Progress and information (stderr); silenced by ``--quiet``."""
out = Console(width=None if sys.stdout.isatty() else 160)  # pipes/files: don't squeeze tables
"""Results (stdout)."""
_errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@dataclass
class Flags:
    """Global flags of one invocation."""

    quiet: bool = False
    debug: bool = False
    log_level: str = "warning"


FLAGS = Flags()

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def configure(quiet: bool, debug: bool, log_level: str) -> None:
    """Apply the global flags: console verbosity, Python and Ray log levels.

    Raises:
        typer.BadParameter: unknown ``log_level``.
    """
    level = log_level.lower()
    if level not in LOG_LEVELS:
        raise typer.BadParameter(f"{log_level!r}: one of {', '.join(LOG_LEVELS)}",
                                 param_hint="--log-level")
    if debug and level == "warning":
        level = "debug"
    FLAGS.quiet, FLAGS.debug, FLAGS.log_level = quiet, debug, level
    console.quiet = quiet
    lvl = getattr(logging, level.upper())
    logging.basicConfig(level=lvl, format="%(levelname)s %(name)s: %(message)s", force=True)
    # Ray and its helpers log INFO lines at start-up; keep them at the asked level or quieter
    ray_lvl = max(lvl, logging.WARNING) if not debug else lvl
    for name in ("ray", "ray.serve", "ray.data", "ray.tune", "ray._private", "filelock"):
        logging.getLogger(name).setLevel(ray_lvl)
    # kafka-python logs each failed connection attempt from its network thread; the CLI reports
    # an unreachable broker in one line of its own (the attempts show with --debug)
    logging.getLogger("kafka").setLevel(lvl if debug else logging.CRITICAL)


class _AtLeast(logging.Filter):
    """Passes records at ``level`` and above."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return record.levelno >= self.level


def quiet_ray() -> None:
    """Keep Ray Serve's driver-side logger at the asked level. Importing ``ray.serve`` sets that
    logger to INFO, so start-up lines like "Started Serve in namespace" would reach stderr; a
    filter on the logger holds whenever Serve is imported later, without importing it now (a run
    that joins a warm cluster never needs it: ~1 s saved)."""
    lvl = getattr(logging, FLAGS.log_level.upper())
    ray_lvl = lvl if FLAGS.debug else max(lvl, logging.WARNING)
    serve_log = logging.getLogger("ray.serve")
    for f in [f for f in serve_log.filters if isinstance(f, _AtLeast)]:
        serve_log.removeFilter(f)
    serve_log.addFilter(_AtLeast(ray_lvl))
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(ray_lvl)


def fail(msg: str, code: int = 1) -> NoReturn:
    """Print a one-line error (even with ``--quiet``) and exit with ``code``."""
    _errors.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def warn(msg: str) -> None:
    """Print a one-line warning on stderr (silenced by ``--quiet``)."""
    console.print(f"[bold yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)


def one_line_error(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line (first line of the message)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def print_json(obj: Any) -> None:
    """Write ``obj`` as one JSON document on stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def resolve_redis_or_fail(url: str | None, password: str | None = None) -> tuple[str, str]:
    """``(url, how)`` of the Redis to use (see ``redis_server.resolve_redis``); exits 1 with a
    one-line error when none answers."""
    from affectstream.pipeline.store.redis_server import RedisUnavailable, resolve_redis

    try:
        return resolve_redis(url, password)
    except RedisUnavailable as e:
        fail(str(e))


def redis_url_or_env(url: str | None) -> str:
    """The Redis URL of a read command: ``--redis-url``, else ``$AFFECTSTREAM_REDIS_URL``, else
    the local default (exits 1 when none answers)."""
    return resolve_redis_or_fail(url or os.environ.get("AFFECTSTREAM_REDIS_URL"))[0]


def utc(ms: int | float | None) -> str:
    """Epoch ms as ``YYYY-MM-DD HH:MM:SS`` UTC ('-' for None)."""
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ms) / 1000))


def load_config_or_fail(config: str | None, overrides: dict) -> Any:
    """The resolved :class:`~affectstream.pipeline.config.PipelineConfig`, or a one-line error
    (exit 1) for a missing file or an invalid value."""
    from pydantic import ValidationError

    from affectstream.pipeline.config import load_config

    try:
        return load_config(config, overrides)
    except FileNotFoundError as e:
        fail(str(e))
    except ValidationError as e:
        fail(f"invalid config: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}")
    raise AssertionError


PLACEMENT_OPTION = typer.Option(
    None, "--placement", help="'local' (this process, no Ray: fastest start), 'ray' (a stream "
    "actor each, shared Serve inference) or 'auto' (config default: local for one stream unless "
    "a Ray cluster is up or RAY_ADDRESS is set).")
"""The ``--placement`` option of ``run`` and ``bench`` (config key ``placement``)."""
