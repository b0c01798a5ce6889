"""The RayService's groups and Serve options say what the overlay's pipeline config says
(``cluster`` and ``inference.autoscaling`` of its service.yaml, :mod:`pipeline.service.placement`),
and the dev overlay is the layout proved on a real multi-node cluster
(``configs/cluster.yaml``, ``k8s/local-cluster.sh``, tests/e2e/test_multinode.py): same file,
same groups and labels, and every replica still has a place when one worker pod is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s.conftest import K8S, OVERLAYS, ROOT, groups, quantity, ray_container, rayservice
from tests.k8s.conftest import serve_config as serve_cfg
from tests.k8s.test_serve_config import _app, _deployment, _pipeline_config


def _nodes(rs: dict) -> list[dict]:
    """One entry per Ray node the RayService starts (head: 1; a worker group: `replicas`):
    name, group, labels and the Ray resources it offers (CPU, GPU, custom)."""
    out = []
    for name, g in groups(rs):
        lim = ray_container(g)["resources"]["limits"]
        cpus = float(g.get("rayStartParams", {}).get("num-cpus", quantity(lim.get("cpu", 0))))
        free = {"CPU": cpus, "GPU": quantity(lim.get("nvidia.com/gpu", 0)),
                **{k: float(v) for k, v in (g.get("resources") or {}).items()}}
        for k in range(1 if name == "head" else g["replicas"]):
            out.append({"name": f"{name}-{k}", "group": name,
                        "labels": dict(g.get("labels") or {}), "free": free})
    return out


def _demands(pc) -> list[tuple[str, dict]]:
    """(deployment, ray_actor_options) of every replica the service starts at its minimum."""
    from affectstream.pipeline.service.options import (api_actor_options, inference_options,
                                                        ingest_options)

    inf = inference_options(pc)
    n_inf = (pc.inference.autoscaling.min_replicas if inf["num_replicas"] == "auto"
             else inf["num_replicas"])
    ing = ingest_options(pc)
    return ([("QueryAPI", api_actor_options(pc))]
            + [("KafkaIngest", ing["ray_actor_options"])] * ing["num_replicas"]
            + [("Inference", inf["ray_actor_options"])] * n_inf)


def _place(nodes: list[dict], demands: list[tuple[str, dict]]) -> dict[str, list[str]]:
    """Place each replica as Ray would: on a node matching its label selector (then each
    fallback selector in turn) with the resources free; the emptiest such node first. Returns
    deployment -> node names; a replica with no place maps to "-"."""
    from affectstream.pipeline.service.placement import selector_matches

    free = {n["name"]: dict(n["free"]) for n in nodes}
    out: dict[str, list[str]] = {}
    for dep, opts in demands:
        need = {"CPU": opts.get("num_cpus", 1), "GPU": opts.get("num_gpus", 0),
                **opts.get("resources", {})}
        selectors = [opts.get("label_selector") or {}] + [
            f["label_selector"] for f in opts.get("fallback_strategy", [])]
        where = "-"
        for sel in selectors:
            fits = [n for n in nodes if selector_matches(sel, n["labels"])
                    and all(free[n["name"]].get(k, 0) >= v for k, v in need.items() if v)]
            if fits:
                best = max(fits, key=lambda n: free[n["name"]]["CPU"])
                for k, v in need.items():
                    free[best["name"]][k] = free[best["name"]].get(k, 0) - v
                where = best["name"]
                break
        out.setdefault(dep, []).append(where)
    return out


def test_dev_service_yaml_is_configs_cluster_yaml() -> None:
    """The dev overlay runs exactly the config the local multi-node cluster proved."""
    dev = (K8S / "overlays" / "dev" / "service.yaml").read_bytes()
    assert dev == (ROOT / "configs" / "cluster.yaml").read_bytes()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_inference_is_what_the_pipeline_config_builds(
        render, tmp_path: Path, overlay: str) -> None:
    from affectstream.pipeline.service.options import serve_config_entry

    docs = render(overlay)
    inf = _deployment(_app(serve_cfg(rayservice(docs))), "Inference")
    _, _, pc = _pipeline_config(docs, tmp_path)
    want = serve_config_entry(pc)
    got = {k: inf.get(k) for k in want}
    assert got == want, f"serve-config.yaml Inference differs from service.yaml: {got} != {want}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayservice_groups_are_the_configs_groups(render, tmp_path: Path, overlay: str) -> None:
    docs = render(overlay)
    rs = rayservice(docs)
    _, _, pc = _pipeline_config(docs, tmp_path)
    want = pc.cluster.groups
    assert want, "the overlay's service.yaml declares no cluster.groups"
    have = dict(groups(rs))
    assert set(have) == set(want), f"RayService groups {sorted(have)} != config {sorted(want)}"
    for name, g in want.items():
        spec = have[name]
        assert dict(spec.get("labels") or {}) == g.labels, name
        assert {k: float(v) for k, v in (spec.get("resources") or {}).items()} == g.resources
        params = spec.get("rayStartParams", {})
        if g.num_cpus is not None:
            assert float(params.get("num-cpus", -1)) == g.num_cpus, (name, params)
        if g.num_gpus is not None:
            lim = ray_container(spec)["resources"]["limits"]
            assert quantity(lim.get("nvidia.com/gpu", 0)) == g.num_gpus, name
        if name != "head":
            assert spec["replicas"] == g.nodes, name
            assert spec["minReplicas"] <= g.nodes <= spec["maxReplicas"], name
    selectors = [p for p in (pc.cluster.api, pc.cluster.ingest, pc.cluster.inference)
                 if p.label_selector]
    if selectors:  # only autoscaler v2 adds a pod of the group a pending selector names
        assert rs["spec"]["rayClusterConfig"]["autoscalerOptions"].get("version") == "v2"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_replica_has_a_place_in_the_smallest_cluster(render, tmp_path: Path,
                                                           overlay: str) -> None:
    docs = render(overlay)
    rs = rayservice(docs)
    _, _, pc = _pipeline_config(docs, tmp_path)
    placed = _place(_nodes(rs), _demands(pc))
    assert all("-" not in v for v in placed.values()), placed
    # consumers and inference never on the head (its loss restarts the whole cluster)
    assert not any(w.startswith("head") for w in placed["KafkaIngest"] + placed["Inference"])


def test_dev_layout_survives_the_loss_of_either_worker_pod(render, tmp_path: Path) -> None:
    """What tests/e2e/test_multinode.py does on one machine: consumer and inference on their
    own groups, and after losing either worker, both on the one left."""
    docs = render("dev")
    rs = rayservice(docs)
    _, _, pc = _pipeline_config(docs, tmp_path)
    nodes = _nodes(rs)
    placed = _place(nodes, _demands(pc))
    assert {d: {w.rsplit("-", 1)[0] for w in ws} for d, ws in placed.items()} == {
        "QueryAPI": {"head"}, "KafkaIngest": {"ingest"}, "Inference": {"inference"}}, placed
    for lost in [n["name"] for n in nodes if n["group"] != "head"]:
        left = [n for n in nodes if n["name"] != lost]
        after = _place(left, _demands(pc))
        assert all("-" not in v for v in after.values()), (lost, after)
