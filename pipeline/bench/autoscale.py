"""``affectstream bench --autoscale``: Serve autoscaling of the ``Inference`` deployment observed
under a load step.

The deployment is the one ``run`` and ``serve`` use, with ``inference.num_replicas: auto`` and
``inference.autoscaling`` from the config (e.g. ``configs/cluster.yaml``), deployed into the
cluster of ``RAY_ADDRESS`` (the multi-node cluster of ``k8s/local-cluster.sh``) or a local Ray.
The load is real: the face crops and FaceMesh points of a real clip (the same face-track stage
the pipeline runs), sent as one request per frame by ``concurrency`` closed-loop callers, so
about ``concurrency`` frames are in flight while the step lasts. Three phases:

* ``idle`` (``idle_s``): no requests; the deployment sits at ``min_replicas``;
* ``load`` (``load_s``): the step;
* ``cooldown``: no requests, until the replica count is back at ``min_replicas`` (at most
  ``cooldown_max_s``).

Every ``poll_s`` the replica count (``serve.status()``: RUNNING and STARTING) and the frames
answered since the last poll are recorded; the nodes of the running replicas come from the
Serve controller (:func:`pipeline.api.cluster.cluster_view`).
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from typing import Any

from affectstream.pipeline.config import PipelineConfig


def clip_requests(cfg: PipelineConfig, video: str, fps: float = 10.0,
                  max_frames: int = 40) -> list[Any]:
    """``InferRequest`` s of the frames of ``video`` (sampled at ``fps``) that hold a face, as the
    session runner builds them: aligned crops (N,H,W[,3]) uint8, FaceMesh points (N,468,2) in
    [0,1], and the 3D landmarks (N,478,3) the face-track stage adds for ``au_model``.

    Raises:
        RuntimeError: no frame of the clip has a face.
    """
    from affectstream.operators.facetrack import FaceTrackStage
    from affectstream.pipeline.kafka.publish import sampled_frames
    from affectstream.pipeline.runtime.batch import InferRequest

    stage = FaceTrackStage.from_config(cfg)
    out = []
    for fr in sampled_frames(video, fps, max_frames):
        tf = stage.process(fr)
        if len(tf.crops):
            out.append(InferRequest(tf.crops, tf.points01, None, tf.landmarks3d))
    if not out:
        raise RuntimeError(f"{video}: no face found to load the inference deployment with")
    return out


def _replicas(app: str) -> tuple[int, int]:
    from ray import serve

    try:
        d = serve.status().applications[app].deployments["Inference"]
    except KeyError:
        return 0, 0
    st = {str(getattr(k, "value", k)): v for k, v in d.replica_states.items()}
    return st.get("RUNNING", 0), st.get("STARTING", 0)


def _nodes(app: str) -> dict[str, int]:
    """Running Inference replicas per node (``<labels or address>``)."""
    from affectstream.pipeline.api.cluster import cluster_view

    view = cluster_view()
    names = {n["node_id"]: ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items())
                                    if not k.startswith("ray.io/")) or n["address"]
             for n in view["nodes"]}
    out: dict[str, int] = {}
    for r in view["replicas"]:
        if r["app"] == app and r["deployment"] == "Inference" and r["state"] == "RUNNING":
            key = names.get(r["node_id"], r["node_id"] or "?")
            out[key] = out.get(key, 0) + 1
    return out


async def _drive(handle: Any, reqs: list[Any], app: str, concurrency: int, idle_s: float,
                 load_s: float, cooldown_max_s: float, poll_s: float, min_replicas: int,
                 log: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    phase = {"name": "idle"}
    done = {"n": 0, "faces": 0}
    placed: dict[str, Any] = {}

    async def caller(k: int) -> None:
        i = k
        while phase["name"] == "load":
            r = reqs[i % len(reqs)]
            await handle.remote(r)
            done["n"] += 1
            done["faces"] += len(r.crops)
            i += concurrency

    t0 = time.monotonic()
    timeline: list[dict[str, Any]] = []
    tasks: list[asyncio.Task] = []
    last_n, t_load = 0, None
    while True:
        t = time.monotonic() - t0
        if phase["name"] == "idle" and t >= idle_s:
            phase["name"], t_load = "load", t
            tasks = [asyncio.create_task(caller(k)) for k in range(concurrency)]
        elif phase["name"] == "load" and t >= idle_s + load_s:
            phase["name"] = "cooldown"
            await asyncio.gather(*tasks)
        running, starting = await asyncio.to_thread(_replicas, app)
        if phase["name"] == "load" and running > 1 and "load" not in placed:
            placed["load"] = await asyncio.to_thread(_nodes, app)
        row = {"t_s": round(t, 2), "phase": phase["name"], "running": running,
               "starting": starting, "frames_per_s": round((done["n"] - last_n) / poll_s, 2)}
        last_n = done["n"]
        timeline.append(row)
        if log:
            log(row)
        if phase["name"] == "cooldown" and (running <= min_replicas and not starting
                                            or t > idle_s + load_s + cooldown_max_s):
            break
        await asyncio.sleep(max(0.0, poll_s - (time.monotonic() - t0 - t)))
    placed["frames"], placed["faces"], placed["t_load_s"] = done["n"], done["faces"], t_load
    return timeline, placed


def run_autoscale_bench(cfg: PipelineConfig, video: str, *, concurrency: int = 8,
                        idle_s: float = 10.0, load_s: float = 60.0,
                        cooldown_max_s: float = 180.0, poll_s: float = 1.0,
                        log: Any = None) -> dict[str, Any]:
    """Deploy Inference with autoscaling, apply the load step, record the replicas over time.

    Args:
        cfg: config; ``inference.num_replicas`` must be ``auto``.
        video: clip whose face crops make the requests.
        concurrency: closed-loop callers during the step (about the frames in flight).
        idle_s / load_s / cooldown_max_s: phase lengths, seconds.
        poll_s: sampling period of the replica count, seconds.
        log: ``log(row)`` for each sample.

    Returns:
        JSON-able dict: ``timeline`` (one row per poll: ``t_s``, ``phase``, ``running``,
        ``starting``, ``frames_per_s``), ``summary`` (``max_running``, ``scale_up_s`` from the
        step's start to the first added replica running, ``scale_down_s`` from the step's end to
        ``min_replicas`` again, frames and faces answered), ``nodes_at_peak``, ``autoscaling``,
        ``load`` and ``machine``.

    Raises:
        ValueError: ``inference.num_replicas`` is not ``auto``.
    """
    from affectstream.pipeline.runtime import dag
    from affectstream.pipeline.runtime.inference_app import deploy
    from affectstream.pipeline.runtime.stream_actor import INFERENCE_APP

    if cfg.inference.num_replicas != "auto":
        raise ValueError("bench --autoscale needs inference.num_replicas: auto in the config")
    ac = cfg.inference.autoscaling
    reqs = clip_requests(cfg, video)
    dag.init_ray(cfg)
    try:
        handle = deploy(cfg)
        handle.remote(reqs[0]).result(timeout_s=300)  # routing and replica warm
        timeline, extra = asyncio.run(_drive(
            handle, reqs, INFERENCE_APP, concurrency, idle_s, load_s, cooldown_max_s, poll_s,
            ac.min_replicas, log))
        from ray import serve

        serve.delete(INFERENCE_APP)
    finally:
        dag.shutdown()
    end_load = idle_s + load_s
    up = next((r["t_s"] for r in timeline if r["phase"] == "load"
               and r["running"] > ac.min_replicas), None)
    down = next((r["t_s"] for r in timeline if r["phase"] == "cooldown"
                 and r["running"] <= ac.min_replicas and not r["starting"]), None)
    load_rows = [r for r in timeline if r["phase"] == "load"]
    return {
        "timeline": timeline,
        "summary": {
            "max_running": max(r["running"] for r in timeline),
            "min_running": min(r["running"] for r in timeline),
            "scale_up_s": round(up - extra["t_load_s"], 2) if up is not None else None,
            "scale_down_s": round(down - end_load, 2) if down is not None else None,
            "frames_answered": extra["frames"], "faces_answered": extra["faces"],
            "mean_frames_per_s_under_load": round(
                sum(r["frames_per_s"] for r in load_rows) / max(1, len(load_rows)), 2)},
        "nodes_at_peak": extra.get("load", {}),
        "autoscaling": ac.serve_config(),
        "load": {"concurrency": concurrency, "idle_s": idle_s, "load_s": load_s,
                 "poll_s": poll_s, "video": os.path.basename(video),
                 "requests_distinct": len(reqs), "max_batch_size": cfg.inference.max_batch_size},
        "cluster": os.environ.get("RAY_ADDRESS") or "local Ray",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
    }


def autoscale_cli(video: str | None, cfg: PipelineConfig, concurrency: int, load_s: float,
                  output: Any = None, as_json: bool = False) -> None:
    """``affectstream bench --autoscale``: run :func:`run_autoscale_bench`, print the replica
    count over time (a table, or JSON with ``--json``), write ``output`` when given."""
    import json

    from rich.table import Table

    from affectstream.pipeline.cli.common import console, fail, out, print_json, quiet_ray

    if video is None:
        from affectstream.models.weights import artifact_path

        video = str(artifact_path("single_face.mp4"))
    quiet_ray()
    console.print(f"autoscale bench: {concurrency} callers for {load_s:g} s on "
                  f"{os.environ.get('RAY_ADDRESS') or 'a local Ray'}…")
    try:
        res = run_autoscale_bench(cfg, video, concurrency=concurrency, load_s=load_s,
                                  log=lambda r: console.print(r, highlight=False))
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    if as_json:
        print_json(res)
    else:
        t = Table(title="Inference replicas over time")
        for c in ("t_s", "phase", "running", "starting", "frames_per_s"):
            t.add_column(c, justify="right")
        for r in res["timeline"]:
            t.add_row(*(str(r[c]) for c in ("t_s", "phase", "running", "starting",
                                            "frames_per_s")))
        out.print(t)
        out.print(res["summary"], res["nodes_at_peak"])
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(res, indent=2) + "\n")
        console.print(f"results written to {output}")
