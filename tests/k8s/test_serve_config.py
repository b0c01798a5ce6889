"""The RayService's Serve config (spec.serveConfigV2) and the pipeline config it points to: both
parse and validate with the schemas that will read them at run time (Ray Serve's
ServeDeploySchema, the project's PipelineConfig), the import path exists in the project, and
the autoscaling bounds fit the worker groups that must host the replicas."""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.k8s.conftest import (
    CONFIG_MOUNT,
    K8S,
    NAMESPACE,
    OVERLAYS,
    ROOT,
    by_kind,
    groups,
    kustomize,
    one,
    quantity,
    ray_container,
    rayservice,
    serve_config,
)

IMPORT_PATH = "affectstream.pipeline.service.application:build_app"


def _app(cfg: dict) -> dict:
    apps = cfg["applications"]
    assert len(apps) == 1, "one Serve application: affectstream.pipeline.service.application:build_app"
    return apps[0]


def _deployment(app: dict, name: str) -> dict:
    found = [d for d in app.get("deployments", []) if d["name"] == name]
    assert len(found) == 1, f"no deployment {name!r} in the Serve config"
    return found[0]


def _endpoints_env(docs: list[dict]) -> dict[str, str]:
    cms = [d for d in by_kind(docs, "ConfigMap")
           if d["metadata"]["name"].startswith("affectstream-endpoints")]
    assert len(cms) == 1
    return dict(cms[0]["data"])


def _pipeline_config(docs: list[dict], tmp_path: Path, token: bool = True):
    """The mounted service.yaml loaded as the replicas load it: file <- pod environment."""
    from affectstream.pipeline.config import load_config

    rs = rayservice(docs)
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    vols = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in ray_container(head)["volumeMounts"]}
    cm = one(docs, "ConfigMap", vols[mounts[CONFIG_MOUNT]]["configMap"]["name"])
    f = tmp_path / "service.yaml"
    f.write_text(cm["data"]["service.yaml"])
    env = _endpoints_env(docs)
    if token:
        env["AFFECTSTREAM_API_TOKEN"] = "test-token"
    return f, env, load_config(f, env=env)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_validates_with_ray_serve_schema(render, overlay: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    cfg = serve_config(rayservice(render(overlay)))
    schema = ServeDeploySchema.model_validate(cfg)
    assert schema.http_options.host == "0.0.0.0", "the proxy must listen on the pod's address"
    app = _app(cfg)
    assert app["route_prefix"] == "/"
    assert app["import_path"] == IMPORT_PATH
    assert app["args"]["config"] == f"{CONFIG_MOUNT}/service.yaml"
    # the builder is told the address the proxy binds, so it insists on the API token
    assert app["args"]["host"] == cfg["http_options"]["host"]


def test_import_path_names_a_module_of_the_project(render) -> None:
    module, _, attr = IMPORT_PATH.partition(":")
    parts = module.split(".")
    assert parts[0] == "affectstream", f"{module} is not in the affectstream namespace"
    rel = Path(*parts[1:])  # affectstream.<folder>... maps to the repository's <folder>/...
    assert (ROOT / rel.with_suffix(".py")).is_file() or (ROOT / rel / "__init__.py").is_file(), (
        f"{module} does not exist in the project")
    assert attr.isidentifier()
    try:
        mod = importlib.import_module(module)
    except ImportError as e:  # still being written, or an optional dependency is missing
        pytest.skip(f"{module} not importable here: {e}")
    assert callable(getattr(mod, attr, None)), f"{IMPORT_PATH} is not callable"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_app_config_validates_with_pipeline_config(render, tmp_path: Path, overlay: str) -> None:
    docs = render(overlay)
    cfg = serve_config(rayservice(docs))
    _, env, pc = _pipeline_config(docs, tmp_path)
    assert pc.api.port == cfg["http_options"]["port"]
    # the environment overrides of the pods reach the config
    assert pc.redis.url == env["AFFECTSTREAM_REDIS_URL"]
    assert pc.kafka.bootstrap == env["AFFECTSTREAM_KAFKA_BOOTSTRAP"]
    assert urlsplit(pc.redis.url).scheme in ("redis", "rediss")
    base = importlib.import_module("affectstream.pipeline.config").load_config(ROOT / "configs" / "service.yaml")
    # topics and the consumer group are a contract with the producers: same as configs/
    assert (pc.kafka.topic, pc.kafka.dlq_topic, pc.kafka.group_id) == (
        base.kafka.topic, base.kafka.dlq_topic, base.kafka.group_id)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_build_app_contains_the_configured_deployments(render, tmp_path: Path, overlay: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve refuses a config that overrides a deployment its application does not have
    ("Deployment 'X' does not exist"); build the real application and compare."""
    docs = render(overlay)
    app = _app(serve_config(rayservice(docs)))
    module, _, attr = app["import_path"].partition(":")
    try:
        builder = getattr(importlib.import_module(module), attr)
        from ray.serve._private.build_app import build_app as build_serve_app
    except ImportError as e:
        pytest.skip(f"cannot import the application builder here: {e}")
    f, env, _ = _pipeline_config(docs, tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    application = builder({**app["args"], "config": str(f)})
    built = build_serve_app(application, name=app["name"])
    names = {d.name for d in built.deployments}
    missing = [d["name"] for d in app.get("deployments", []) if d["name"] not in names]
    assert not missing, (f"serveConfigV2 configures {missing}, but {app['import_path']} builds "
                         f"only {sorted(names)}")


def _group_capacity(rs: dict) -> list[dict]:
    """Per worker group: Ray CPUs and GPUs of one pod, min and max pods."""
    out = []
    for name, g in groups(rs):
        if name == "head":
            continue
        lim = ray_container(g)["resources"]["limits"]
        cpus = float(g.get("rayStartParams", {}).get("num-cpus", quantity(lim.get("cpu", 0))))
        out.append({"name": name, "cpus": cpus, "gpus": quantity(lim.get("nvidia.com/gpu", 0)),
                    "min": g["minReplicas"], "max": g["maxReplicas"], "group": g})
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inference_autoscaling_fits_the_worker_groups(render, tmp_path: Path,
                                                      overlay: str) -> None:
    docs = render(overlay)
    rs = rayservice(docs)
    inf = _deployment(_app(serve_config(rs)), "Inference")
    _, _, pc = _pipeline_config(docs, tmp_path)
    ac = inf["autoscaling_config"]
    assert inf["num_replicas"] == "auto"
    assert 1 <= ac["min_replicas"] <= ac.get("initial_replicas", ac["min_replicas"]) <= (
        ac["max_replicas"])
    assert 0 < ac["target_ongoing_requests"] <= inf["max_ongoing_requests"]
    # a replica can hold a whole batch of frames in flight
    assert pc.inference.max_batch_size <= inf["max_ongoing_requests"]
    opts = inf["ray_actor_options"]
    cpus, gpus = float(opts.get("num_cpus", 1)), float(opts.get("num_gpus", 0))
    cap = _group_capacity(rs)
    for need, key in ((cpus, "cpus"), (gpus, "gpus")):
        if need == 0:
            continue
        hosts = [c for c in cap if c[key] >= need]
        assert hosts, f"no worker group can host one Inference replica ({key}={need})"
        per_pod = {c["name"]: math.floor(c[key] / need) for c in hosts}
        # every replica up to max_replicas has a place in the largest cluster ...
        assert ac["max_replicas"] <= sum(per_pod[c["name"]] * c["max"] for c in hosts)
        # ... and min_replicas fit in the smallest one
        assert ac["min_replicas"] <= sum(per_pod[c["name"]] * c["min"] for c in hosts)
    if gpus:
        assert pc.inference.device.startswith("cuda")
        for c in cap:
            if c["gpus"]:
                # GPU nodes advertise no CPUs: stream actors cannot occupy them
                assert c["cpus"] == 0 and cpus == 0, c["name"]
                env = {e["name"]: e.get("value") for e in ray_container(c["group"])["env"]}
                assert env.get("OMP_NUM_THREADS") == str(pc.inference.torch_threads)
    else:
        assert pc.inference.device == "cpu"
        assert pc.inference.torch_threads == cpus, "torch threads = the CPUs Ray reserves"


def test_dev_kafka_and_redis_match_the_config(render, tmp_path: Path) -> None:
    docs = render("dev")
    _, env, pc = _pipeline_config(docs, tmp_path)
    kafka = one(docs, "Kafka")
    cluster = kafka["metadata"]["name"]
    for d in by_kind(docs, "KafkaTopic") + by_kind(docs, "KafkaNodePool"):
        assert d["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    topics = {t["spec"]["topicName"]: t["spec"] for t in by_kind(docs, "KafkaTopic")}
    assert set(topics) == {pc.kafka.topic, pc.kafka.dlq_topic}
    # every consumer actor gets at least one partition
    assert topics[pc.kafka.topic]["partitions"] >= pc.kafka.consumers
    for t in topics.values():
        assert int(t["config"]["max.message.bytes"]) >= pc.kafka.max_message_bytes
    assert int(kafka["spec"]["kafka"]["config"]["message.max.bytes"]) >= (
        pc.kafka.max_message_bytes)
    plain = [lst for lst in kafka["spec"]["kafka"]["listeners"] if not lst["tls"]]
    assert env["AFFECTSTREAM_KAFKA_BOOTSTRAP"] == (
        f"{cluster}-kafka-bootstrap:{plain[0]['port']}")  # Strimzi's bootstrap Service
    url = urlsplit(env["AFFECTSTREAM_REDIS_URL"])
    svc = one(docs, "Service", url.hostname)
    assert url.port in {p["port"] for p in svc["spec"]["ports"]}
    redis_pol = one(docs, "NetworkPolicy", "affectstream-redis")
    ray_sel = one(docs, "NetworkPolicy", "affectstream-ray")["spec"]["podSelector"]
    assert redis_pol["spec"]["ingress"][0]["from"][0]["podSelector"] == ray_sel


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_strimzi_topics_component_fits_the_consumers(kubectl: Path, tmp_path: Path,
                                                      overlay: str) -> None:
    rel = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "namespace": NAMESPACE,
        "resources": [f"{rel}/overlays/{overlay}"],
        "components": [f"{rel}/components/strimzi-topics"]}))
    docs = kustomize(kubectl, tmp_path)
    _, _, pc = _pipeline_config(docs, tmp_path)
    topics = {t["spec"]["topicName"]: t["spec"] for t in by_kind(docs, "KafkaTopic")}
    assert set(topics) == {pc.kafka.topic, pc.kafka.dlq_topic}
    frames = topics[pc.kafka.topic]
    # every consumer gets the same number of partitions
    assert frames["partitions"] >= pc.kafka.consumers
    assert frames["partitions"] % pc.kafka.consumers == 0
    for t in topics.values():
        assert int(t["config"]["max.message.bytes"]) >= pc.kafka.max_message_bytes
        assert t["replicas"] > int(t["config"]["min.insync.replicas"]) >= 2
