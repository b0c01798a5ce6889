"""k8s/ manifests: every overlay renders with kustomize's defaults and validates against the
Kubernetes schemas (kubernetes-validate --strict), the RayService against KubeRay's CRD schema,
and the pieces agree with each other (names, ports, probes, images, security, resources)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.conftest import (
    CONFIG_MOUNT,
    CRD_DIR,
    K8S,
    NAMESPACE,
    OVERLAYS,
    ROOT,
    SERVE_SERVICE,
    VALIDATE_REQ,
    by_kind,
    groups,
    kustomize,
    one,
    port_number,
    quantity,
    ray_container,
    rayservice,
    serve_config,
)

# Kinds that come from CRDs; the Kubernetes schemas do not know them. RayService is checked
# against KubeRay's CRD below; the others are only rendered.
CRD_KINDS = {"RayService", "Kafka", "KafkaNodePool", "KafkaTopic", "ServiceMonitor", "PodMonitor"}
# Oldest Kubernetes the manifests target (PDB unhealthyPodEvictionPolicy is GA in 1.31) and the
# newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.31", "1.37")


@pytest.fixture(scope="session")
def validate_module():
    return pytest.importorskip("kubernetes_validate.utils",
                               reason=f"pip install '{VALIDATE_REQ}'")


def _kubernetes_validate(path: Path, version: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(path)],
        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_without_load_restrictor_override(render, overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "RayService", "PodDisruptionBudget",
            "NetworkPolicy"} <= kinds
    # everything namespaced lands in the one namespace the README's commands use
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, d["metadata"]["name"]
    assert one(docs, "Namespace")["metadata"]["name"] == NAMESPACE
    # the serve-config source is local to kustomize and never reaches the cluster
    assert not [d for d in by_kind(docs, "ConfigMap")
                if d["metadata"]["name"].startswith("affectstream-serve-config")]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_kubernetes_schemas(render, validate_module, tmp_path: Path,
                                                      overlay: str, version: str) -> None:
    docs = render(overlay)
    f = tmp_path / f"{overlay}.yaml"
    f.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = _kubernetes_validate(f, version)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "ERROR" not in out, out
    # Only CRD kinds may be skipped for want of a schema: a built-in kind with a wrong
    # apiVersion (e.g. policy/v1beta1) would be skipped the same way and must fail here.
    skipped = {line.split("for kind ")[1].split(" with")[0] for line in out.splitlines()
               if line.startswith("WARN") and "for kind " in line}
    assert skipped <= CRD_KINDS, f"no schema for built-in kinds {skipped - CRD_KINDS}"
    passed = sum(1 for line in out.splitlines() if line.startswith("INFO") and "passed" in line)
    assert passed == sum(1 for d in docs if d["kind"] not in CRD_KINDS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_embedded_pod_templates_and_serve_service_validate_strictly(render, validate_module,
                                                                    overlay: str) -> None:
    """The CRD schema does not reject unknown fields; validate the Kubernetes objects inside the
    RayService (pod templates, the Serve Service) against the strict core schemas too."""
    rs = rayservice(render(overlay))
    for name, g in groups(rs):
        tpl = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"t-{name}"},
               "template": g["template"]}
        validate_module.validate(tpl, K8S_VERSIONS[-1], strict=True)
    svc = rs["spec"]["serveService"]
    validate_module.validate({"apiVersion": "v1", "kind": "Service", **svc}, K8S_VERSIONS[-1],
                             strict=True)


def _strict(schema: Any) -> Any:
    """Copy of an OpenAPI v3 schema where every object with declared properties rejects
    undeclared ones, as the API server does for a typo under kubectl's strict field
    validation (structural schemas would otherwise prune it silently)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="session")
def rayservice_crd_schema() -> dict:
    crd_file = CRD_DIR / "ray.io_rayservices.yaml"
    if not crd_file.is_file():
        pytest.skip(f"KubeRay CRDs not present at {CRD_DIR}")
    crd = yaml.safe_load(crd_file.read_text())
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    return _strict(versions["v1"]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayservice_validates_against_kuberay_crd(render, rayservice_crd_schema: dict,
                                                  overlay: str) -> None:
    import jsonschema

    rs = rayservice(render(overlay))
    assert rs["apiVersion"] == "ray.io/v1"
    validator = jsonschema.Draft7Validator(rayservice_crd_schema)
    errors = sorted(validator.iter_errors(rs), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:20])


def test_crd_check_catches_a_misspelled_field(render, rayservice_crd_schema: dict) -> None:
    import jsonschema

    rs = copy.deepcopy(rayservice(render("cpu")))
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}
    assert list(jsonschema.Draft7Validator(rayservice_crd_schema).iter_errors(rs))


def test_prometheus_operator_component_renders(kubectl: Path, tmp_path: Path) -> None:
    rel = os.path.relpath(K8S, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "namespace": NAMESPACE,
        "resources": [f"{rel}/overlays/cpu"],
        "components": [f"{rel}/components/prometheus-operator"]}))
    docs = kustomize(kubectl, tmp_path)
    pm = one(docs, "PodMonitor")
    sm = one(docs, "ServiceMonitor")
    rs = rayservice(docs)
    # the PodMonitor selects the Ray pods and scrapes their `metrics` port
    head_labels = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= (
        head_labels | {"app.kubernetes.io/part-of": "affectstream"}).items()
    for _, g in groups(rs):
        assert port_number(ray_container(g), pm["spec"]["podMetricsEndpoints"][0]["port"])
    # the ServiceMonitor selects the Serve Service and scrapes its `serve` port
    svc = rs["spec"]["serveService"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}


# --------------------------------------------------------------------------------------------
# names, ports and probes agree


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_port_agrees_across_service_containers_probes_and_serve_config(
        render, overlay: str) -> None:
    docs = render(overlay)
    rs = rayservice(docs)
    port = serve_config(rs)["http_options"]["port"]
    svc = rs["spec"]["serveService"]
    assert svc["metadata"]["name"] == SERVE_SERVICE
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("serve", port, port)]
    assert svc["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    for name, g in groups(rs):
        c = ray_container(g)
        # KubeRay takes the Service's target from the Ray container's port named `serve`
        assert port_number(c, "serve") == port, name
        if name != "head":
            rp = c["readinessProbe"]["httpGet"]
            assert (rp["path"], port_number(c, rp["port"])) == ("/readyz", port), name
    npol = one(docs, "NetworkPolicy", "affectstream-ray")
    assert any(p.get("port") == port for rule in npol["spec"]["ingress"]
               for p in rule.get("ports", [])), "the API port is not open to clients"


# KubeRay's names for Ray's well-known ports: it adds a missing name to the Services it builds,
# so the same number under another name would become a duplicate Service port.
KUBERAY_PORT_NAMES = {10001: "client", 6379: "gcs-server", 8265: "dashboard", 8080: "metrics",
                      8000: "serve"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_ports_use_kuberay_names(render, overlay: str) -> None:
    rs = rayservice(render(overlay))
    for name, g in groups(rs):
        ports = ray_container(g)["ports"]
        assert len({p["containerPort"] for p in ports}) == len(ports), name
        for p in ports:
            want = KUBERAY_PORT_NAMES.get(p["containerPort"])
            assert want is None or p["name"] == want, (name, p)
    head_ports = {p["name"] for p in ray_container(
        rs["spec"]["rayClusterConfig"]["headGroupSpec"])["ports"]}
    assert set(KUBERAY_PORT_NAMES.values()) <= head_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_target_ray_health_endpoints_on_their_ports(render, overlay: str) -> None:
    from ray._private import ray_constants

    rs = rayservice(render(overlay))
    agent_port = ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
    for name, g in groups(rs):
        c = ray_container(g)
        lp = c["livenessProbe"]["httpGet"]
        assert (lp["path"], port_number(c, lp["port"])) == (
            "/api/local_raylet_healthz", agent_port), name
        assert c["livenessProbe"]["failureThreshold"] * c["livenessProbe"]["periodSeconds"] >= 60
    head = ray_container(rs["spec"]["rayClusterConfig"]["headGroupSpec"])
    rp = head["readinessProbe"]["httpGet"]
    # The head's readiness must not wait for Serve: KubeRay deploys the app once it is ready.
    assert (rp["path"], port_number(head, rp["port"])) == ("/api/gcs_healthz", 8265)


def test_probe_paths_are_routes_of_the_api() -> None:
    api = ROOT / "pipeline" / "api" / "app.py"
    assert api.is_file(), "pipeline/api/app.py (import_path pipeline.service.application:build_app) is missing"
    src = api.read_text()
    for route in ("/readyz", "/healthz", "/metrics"):
        assert f'"{route}"' in src, f"{route} is not a route in pipeline/api/app.py"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_volume_and_metrics_ports_are_wired_on_every_ray_pod(render, overlay: str) -> None:
    docs = render(overlay)
    rs = rayservice(docs)
    cms = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    for name, g in groups(rs):
        spec = g["template"]["spec"]
        c = ray_container(g)
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in spec["volumes"]}
        cm_name = vols[mounts[CONFIG_MOUNT]]["configMap"]["name"]
        assert cm_name in cms, f"{name}: ConfigMap {cm_name} is not rendered"
        assert "service.yaml" in cms[cm_name]["data"]
        for ef in c["envFrom"]:
            assert ef["configMapRef"]["name"] in cms, f"{name}: {ef} is not rendered"
        metrics = str(port_number(c, "metrics"))
        assert g["rayStartParams"]["metrics-export-port"] == metrics, name
        ann = g["template"]["metadata"]["annotations"]
        assert (ann["prometheus.io/scrape"], ann["prometheus.io/port"]) == ("true", metrics)


# --------------------------------------------------------------------------------------------
# images, GPUs, resources, security


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_and_gpus(render, overlay: str) -> None:
    rs = rayservice(render(overlay))
    gpu_groups = []
    for name, g in groups(rs):
        c = ray_container(g)
        gpus = c["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert c["imagePullPolicy"] == "IfNotPresent"
        if gpus:
            gpu_groups.append(name)
            assert c["image"].startswith("affectstream-cuda:"), c["image"]
            assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
        else:
            assert c["image"].startswith("affectstream:"), c["image"]
    assert gpu_groups == (["gpu"] if overlay == "gpu" else [])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_and_shared_memory(render, overlay: str) -> None:
    rs = rayservice(render(overlay))
    for name, g in groups(rs):
        c = ray_container(g)
        req, lim = c["resources"]["requests"], c["resources"]["limits"]
        # Guaranteed QoS for Ray pods: the OOM killer picks them last, Ray sees exact sizes
        assert {k: quantity(v) for k, v in req.items()} == {k: quantity(v) for k, v in lim.items()}
        vols = {v["name"]: v for v in g["template"]["spec"]["volumes"]}
        shm_mount = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert len(shm_mount) == 1, name
        shm = vols[shm_mount[0]["name"]]["emptyDir"]
        assert shm["medium"] == "Memory"
        # Ray's object store takes 30 % of the memory by default and lives in /dev/shm
        assert quantity(shm["sizeLimit"]) >= 0.3 * quantity(lim["memory"]), name
        assert quantity(shm["sizeLimit"]) < quantity(lim["memory"]), name
        if name != "head":
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], name
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "no work may be scheduled on the head"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_restricted_pod_security(render, overlay: str) -> None:
    docs = render(overlay)
    templates = [g["template"] for _, g in groups(rayservice(docs))]
    templates += [d["spec"]["template"] for d in by_kind(docs, "Deployment")]
    for t in templates:
        psc = t["spec"]["securityContext"]
        assert psc["runAsNonRoot"] is True and psc.get("runAsUser", 1) != 0
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        for c in t["spec"]["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        for v in t["spec"].get("volumes", []):
            assert "hostPath" not in v
    auto = rayservice(docs)["spec"]["rayClusterConfig"]["autoscalerOptions"]["securityContext"]
    assert auto["allowPrivilegeEscalation"] is False and auto["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_come_from_the_secret(render, overlay: str) -> None:
    docs = render(overlay)
    secrets = {d["metadata"]["name"] for d in by_kind(docs, "Secret")}
    # Ray's ports are on the pod network: token auth on (KubeRay provisions the token)
    assert rayservice(docs)["spec"]["rayClusterConfig"]["authOptions"]["mode"] == "token"
    for name, g in groups(rayservice(docs)):
        env = {e["name"]: e for e in ray_container(g)["env"]}
        assert "RAY_AUTH_MODE" not in env, "KubeRay sets it from authOptions"
        for var in ("AFFECTSTREAM_API_TOKEN", "AFFECTSTREAM_REDIS_PASSWORD",
                    "AFFECTSTREAM_KAFKA_USERNAME", "AFFECTSTREAM_KAFKA_PASSWORD"):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            # dev generates the Secret; cpu/gpu use the one the operator creates by this name
            assert ref["name"] in secrets or ref["name"] == "affectstream-credentials", ref
            assert "value" not in env[var]
        # the API listens beyond loopback, so its token is required, not optional
        assert not env["AFFECTSTREAM_API_TOKEN"]["valueFrom"]["secretKeyRef"].get("optional")
    if overlay != "dev":
        assert not secrets, "production overlays must not carry secrets"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdb_and_network_policy_select_the_ray_pods(render, overlay: str) -> None:
    docs = render(overlay)
    rs = rayservice(docs)
    head_labels = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    # labels KubeRay adds to every Ray pod
    head_labels = head_labels | {"ray.io/node-type": "head", "ray.io/is-ray-node": "yes"}
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= head_labels.items()
    npol = one(docs, "NetworkPolicy", "affectstream-ray")
    sel = npol["spec"]["podSelector"]["matchLabels"]
    for name, g in groups(rs):
        assert sel.items() <= g["template"]["metadata"]["labels"].items(), name
    assert set(npol["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports = {p["port"] for rule in npol["spec"]["egress"] for p in rule.get("ports", [])}
    assert {53, 6379, 9092, 443} <= egress_ports


def test_base_service_yaml_is_configs_service_yaml() -> None:
    base = K8S / "base" / "service.yaml"
    assert base.read_bytes() == (ROOT / "configs" / "service.yaml").read_bytes(), (
        "k8s/base/service.yaml must stay a byte-for-byte copy of configs/service.yaml: "
        "cp configs/service.yaml k8s/base/service.yaml")
