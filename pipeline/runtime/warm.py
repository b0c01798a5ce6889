"""A warm local cluster (``affectstream up`` / ``down``): Ray and the shared inference deployment
kept running between ``affectstream run`` invocations, so a run only joins (no Ray start, no
Serve deploy, no model load in the inference replica).

``up`` starts a Ray head with ``ray start`` bound to 127.0.0.1 (loopback only, like the Ray a
plain ``run`` starts, so token auth stays off), in its own temp dir, deploys the ``Inference``
Serve app and records the cluster in :func:`state_path`::

    {"address": "127.0.0.1:6390", "temp_dir": "/tmp/affectstream-ray-6390",
     "inference": {...the Inference deployment's arguments...}, "started": epoch s}

``run`` without ``RAY_ADDRESS`` joins that cluster when its GCS answers, and redeploys the
inference app only when its arguments differ from the recorded ones. ``down`` stops exactly the
processes of that cluster (those whose command line names its temp dir), not other Ray
instances on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from affectstream.pipeline.config import PipelineConfig

STATE_FILE = "warm-cluster.json"
DEFAULT_PORT = 6390
"""GCS port of the warm cluster (Ray's default 6379 is Redis's)."""


class WarmClusterError(RuntimeError):
    """The warm cluster could not be started or reached."""


def state_path() -> Path:
    """``$AFFECTSTREAM_STATE_DIR/warm-cluster.json``, else ``<project cache>/warm-cluster.json``
    (``AFFECTSTREAM_CACHE_DIR`` or the user cache dir)."""
    from affectstream.paths import cache_dir

    d = os.environ.get("AFFECTSTREAM_STATE_DIR")
    return (Path(d) if d else cache_dir()) / STATE_FILE


def inference_args(cfg: PipelineConfig) -> dict[str, Any]:
    """The arguments the ``Inference`` deployment is built with (what must match to reuse it)."""
    i = cfg.inference
    return {"code": code_digest(), "fer_model": i.fer_model, "saliency": i.saliency, "au_model": i.au_model,
            "device": i.device, "half": i.half, "torch_threads": i.torch_threads or 1,
            "max_batch_size": i.max_batch_size, "batch_wait_timeout_s": i.batch_wait_timeout_s,
            "batch_wait_multi_s": i.batch_wait_multi_s,
            "num_replicas": i.num_replicas if i.num_replicas != "auto" else 1}


def code_digest() -> str:
    """sha256 (16 hex) of the inference code (``operators/``, ``models/``, ``pipeline/runtime/``
    sources): a warm inference replica running other code is redeployed, not reused."""
    from affectstream.paths import source_digest

    return source_digest(("operators", "models", "pipeline.runtime"))


def _answers(address: str, timeout_s: float = 0.5) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def read_state() -> dict[str, Any] | None:
    """The recorded warm cluster if its GCS port answers, else None (a stale file is removed).
    The file is JSON with known keys; anything else in it is ignored."""
    p = state_path()
    try:
        st = json.loads(p.read_text())
        address = str(st["address"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _answers(address):
        p.unlink(missing_ok=True)
        return None
    return st


def up(cfg: PipelineConfig, port: int = DEFAULT_PORT, num_cpus: int | None = None,
       stream_workers: int = 2) -> dict:
    """Start the warm cluster (or reuse the running one) and deploy inference into it.

    Args:
        stream_workers: idle stream actors kept with their networks loaded (:func:`start_pool`).

    Returns:
        the recorded state (see the module docstring) plus ``"reused": bool``.

    Raises:
        WarmClusterError: ``ray start`` failed or the port is taken by something else.
    """
    st = read_state()
    reused = st is not None
    if st is None:
        address = f"127.0.0.1:{port}"
        if _answers(address):
            raise WarmClusterError(f"port {port} is in use by something else; pass --port")
        temp_dir = f"/tmp/affectstream-ray-{port}"
        # Ray's CLI through this interpreter: no `ray` script needs to sit beside it
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
               "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
               f"--num-cpus={num_cpus or cfg.ray_num_cpus or os.cpu_count() or 1}"]
        from affectstream.pipeline.runtime.local_cluster import ray_env

        r = subprocess.run(cmd, env=ray_env(), capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            raise WarmClusterError(f"ray start failed (exit {r.returncode}): {tail[0]}")
        st = {"address": address, "temp_dir": temp_dir, "started": time.time()}
    join(st["address"])
    try:
        deploy_inference(cfg, st)
        st["stream_pool"] = start_pool(cfg, stream_workers)
    finally:
        import ray

        ray.shutdown()
    write_state(st)
    return st | {"reused": reused}


def join(address: str) -> None:
    """Connect this process to the warm cluster at ``address`` as a loopback-only local Ray."""
    import logging

    import ray

    from affectstream.pipeline.runtime.ray_net import loopback_only_ray

    loopback_only_ray()
    ray.init(address=address, include_dashboard=False, log_to_driver=True,
             logging_level=logging.WARNING, configure_logging=True,
             _node_ip_address="127.0.0.1")


def deploy_inference(cfg: PipelineConfig, st: dict[str, Any], probe: Any = None) -> bool:
    """Deploy the inference app into the joined cluster unless the recorded one has the same
    arguments and runs; updates ``st["inference"]``. Returns True when it (re)deployed.

    Args:
        probe: a leased pooled stream actor, asked whether the app runs
            (:meth:`StreamActor.inference_running`) so this process needs neither Ray Serve nor
            torch; None asks Serve from here.
    """
    want = inference_args(cfg)
    if st.get("inference") == want and _inference_running(probe):
        return False
    from affectstream.pipeline.runtime.inference_app import deploy  # loads torch: only here

    deploy(cfg)
    st["inference"] = want
    if state_path().is_file():  # the next run must compare against what now runs, not up's
        write_state(st)
    return True


def _inference_running(probe: Any) -> bool:
    import ray

    if probe is not None:
        try:
            return bool(ray.get(probe.inference_running.remote(), timeout=30))
        except ray.exceptions.RayError:
            pass  # ask Serve from here instead
    from affectstream.pipeline.runtime.stream_actor import inference_running

    return inference_running()


def write_state(st: dict[str, Any]) -> None:
    """Record the warm cluster (:func:`state_path`, JSON)."""
    state_path().parent.mkdir(parents=True, exist_ok=True)
    state_path().write_text(json.dumps({k: v for k, v in st.items() if k != "reused"}, indent=1))


def start_pool(cfg: PipelineConfig, n: int) -> int:
    """Keep ``n`` idle stream actors in the joined cluster (detached, named
    :func:`~pipeline.runtime.stream_actor.pool_name` in :data:`POOL_NAMESPACE`), each with the
    face-track networks of ``cfg`` loaded and its inference handle warmed up. A ``run`` leases
    one per stream instead of starting a worker process and loading the networks (~2 s here) and
    hands it back afterwards. An idle slot actor built for other face-track settings or code is
    replaced; a busy one is left to finish its stream (``up`` again replaces it later).
    Returns ``n``."""
    import ray

    from affectstream.pipeline.runtime.stream_actor import POOL_NAMESPACE, StreamActor, pool_name

    key, made = pool_key(cfg), []
    for i in range(n):
        try:
            old = ray.get_actor(pool_name(i), namespace=POOL_NAMESPACE)
            info = ray.get(old.pool_info.remote(), timeout=30)
            if info["key"] == key or info["leased"]:
                continue
            ray.kill(old)  # idle, other settings or code: replace it (once its name is free)
            _wait_name_free(pool_name(i), POOL_NAMESPACE)
        except ValueError:  # no such actor
            pass
        made.append(StreamActor.options(name=pool_name(i), namespace=POOL_NAMESPACE,
                                        lifetime="detached").remote(
            None, None, cfg.model_dump_json(), None, pool_key=key))
    ray.get([a.connect.remote() for a in made], timeout=300)
    return n


def _wait_name_free(name: str, namespace: str, timeout_s: float = 30.0) -> None:
    """Wait until no live actor holds ``name`` (a killed actor frees it asynchronously)."""
    import ray
    import tenacity

    def taken() -> bool:
        try:
            ray.get_actor(name, namespace=namespace)
            return True
        except ValueError:
            return False

    tenacity.Retrying(retry=tenacity.retry_if_result(bool), wait=tenacity.wait_fixed(0.2),
                      stop=tenacity.stop_after_delay(timeout_s), reraise=True)(taken)


def pool_key(cfg: PipelineConfig) -> str:
    """What a pooled stream actor must have been built for to serve a run: the face-track
    settings (:func:`stage_key`) and the code (:func:`code_digest`)."""
    return f"{stage_key(cfg)}-{code_digest()}"


def stage_key(cfg: PipelineConfig) -> str:
    """What a face-track stage's networks and tracker settings depend on (``detect``, ``track``
    and the inference settings that pick or run the networks), as a short digest: a pooled stream
    actor serves a run only when its key matches."""
    import hashlib

    i = cfg.inference
    data = {"detect": cfg.detect.model_dump(mode="json"),
            "track": cfg.track.model_dump(mode="json"),
            "inference": {k: getattr(i, k) for k in ("fer_model", "au_model", "landmarks_batch",
                                                     "facetrack_runtime", "torch_threads")}}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def lease_pooled(cfg: PipelineConfig, slots: int) -> Any | None:
    """A pooled stream actor of the joined warm cluster, leased for one stream, or None when
    every slot is busy, gone, or has other face-track settings."""
    import ray

    from affectstream.pipeline.runtime.stream_actor import POOL_NAMESPACE, pool_name

    key = pool_key(cfg)
    for i in range(slots):
        try:
            a = ray.get_actor(pool_name(i), namespace=POOL_NAMESPACE)
            if ray.get(a.lease.remote(key), timeout=10):
                return a
        except (ValueError, ray.exceptions.RayError):
            continue
    return None


def processes_of(temp_dir: str) -> list:
    """The live processes (``psutil.Process``) of the Ray cluster that lives in ``temp_dir``:
    those whose command line names it (GCS, raylet, ...) and all their descendants (workers and
    the dashboard / runtime-env agents retitle themselves ``ray::...``, so their command lines
    name no directory)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in a for a in proc.info["cmdline"] or []):
                found[proc.pid] = proc
                found.update((c.pid, c) for c in proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


def down() -> bool:
    """Stop the warm cluster's processes (SIGTERM, then SIGKILL after 10 s) and forget it.
    Returns False when none was recorded."""
    import psutil

    p = state_path()
    try:
        temp_dir = str(json.loads(p.read_text())["temp_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    procs = processes_of(temp_dir)
    # raylet/GCS first so workers are not restarted meanwhile
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    p.unlink(missing_ok=True)
    return True
