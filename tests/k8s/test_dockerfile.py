"""k8s/Dockerfile: read as instructions and checked against the project (console scripts,
pins, the RayService's Ray version); built only where a Docker engine answers."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.k8s.conftest import K8S, OVERLAYS, ROOT, rayservice

DOCKERFILE = K8S / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, op: str) -> list[str]:
        return [a for o, a in self.instructions if o == op]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Joins continuation lines, drops comments and directives."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "Dockerfile ends inside a continued line"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.strip().partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, f"cannot read FROM {rest!r}"
            stages.append(Stage(m.group(1), m.group(2)))
        elif not stages:
            assert op == "ARG", f"{op} before the first FROM"
            k, _, v = rest.partition("=")
            global_args[k] = v
        else:
            stages[-1].instructions.append((op, rest))
    return global_args, stages


def stage_arg(stage: Stage, name: str) -> str:
    for a in stage.args("ARG"):
        k, _, v = a.partition("=")
        if k == name:
            return v
    raise AssertionError(f"stage {stage.name} has no ARG {name}")


def exec_form(value: str) -> list[str]:
    """CMD/ENTRYPOINT as argv (JSON exec form, or the shell form split)."""
    value = value.strip()
    return json.loads(value) if value.startswith("[") else shlex.split(value)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_multi_stage_with_a_pinned_base(dockerfile) -> None:
    gargs, stages = dockerfile
    assert len(stages) >= 2, "multi-stage: build tools and caches stay out of the image"
    names = [s.name for s in stages]
    assert "builder" in names and names[-1] == "runtime"
    base = gargs["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base), (
        f"base image {base!r} is not pinned to a Python 3.11 patch release")
    for s in stages:
        assert s.base in ("${PYTHON_IMAGE}", "scratch"), s.base
        assert ":latest" not in s.base


def test_runtime_runs_as_non_root(dockerfile) -> None:
    _, stages = dockerfile
    users = stages[-1].args("USER")
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root uid (runAsNonRoot)"
    # the pods run as the same uid
    rs_text = (K8S / "base" / "rayservice.yaml").read_text()
    assert f"runAsUser: {uid}" in rs_text


def test_weights_are_fetched_at_build_time_and_shipped(dockerfile) -> None:
    _, stages = dockerfile
    builder = next(s for s in stages if s.name == "builder")
    runtime = stages[-1]
    assert any("affectstream models fetch" in r for r in builder.args("RUN"))
    cache = [e for e in runtime.args("ENV") if "AFFECTSTREAM_CACHE_DIR=" in e]
    assert cache, "the runtime does not tell the package where the baked weights are"
    cache_dir = re.search(r"AFFECTSTREAM_CACHE_DIR=(\S+)", cache[0]).group(1)
    copies = [c for c in runtime.args("COPY") if "--from=builder" in c]
    assert any(c.split()[-1] == cache_dir for c in copies), "weights not copied to the runtime"
    assert not any("models fetch" in r for r in runtime.args("RUN")), "no download at runtime"


def test_cmd_runs_a_console_script_of_the_package(dockerfile, pyproject) -> None:
    _, stages = dockerfile
    runtime = stages[-1]
    scripts = pyproject["project"]["scripts"]
    for op in ("ENTRYPOINT", "CMD"):
        for value in runtime.args(op):
            argv = exec_form(value)
            assert argv[0] in scripts, f"{op} {argv[0]!r} is not in [project.scripts]"
    cmd = exec_form(runtime.args("CMD")[-1])
    assert cmd[:2] == ["affectstream", "serve"]
    assert cmd[cmd.index("--config") + 1] == "/etc/affectstream/service.yaml"
    # every `affectstream ...` command the build runs names a script too
    for s in stages:
        for run in s.args("RUN"):
            for m in re.finditer(r"(?:^|&&|;)\s*(affectstream)\b", run):
                assert m.group(1) in scripts


def test_cli_has_the_commands_the_image_uses() -> None:
    try:
        import typer.main

        from affectstream.pipeline.cli.main import app
    except ImportError as e:
        pytest.skip(f"pipeline.cli.main not importable here: {e}")
    root = typer.main.get_command(app)
    assert "serve" in root.commands, "CMD runs `affectstream serve`"
    assert "fetch" in root.commands["models"].commands, "the build runs `affectstream models fetch`"


def test_versions_agree_with_pyproject_and_the_rayservice(dockerfile, pyproject, render) -> None:
    _, stages = dockerfile
    builder = next(s for s in stages if s.name == "builder")
    deps = {Requirement(r).name: Requirement(r) for r in pyproject["project"]["dependencies"]}
    torch_version = stage_arg(builder, "TORCH_VERSION")
    assert str(deps["torch"].specifier) == f"=={torch_version}"
    ray_version = stage_arg(builder, "RAY_VERSION")
    assert Version(ray_version) in deps["ray"].specifier
    assert stage_arg(stages[-1], "RAY_VERSION") == ray_version
    assert stage_arg(builder, "TORCH_VARIANT") == "cpu", "the default image is the CPU one"
    for overlay in OVERLAYS:
        rs = rayservice(render(overlay))
        assert rs["spec"]["rayClusterConfig"]["rayVersion"] == ray_version, overlay


def test_build_context_is_an_allow_list() -> None:
    ignore = (K8S / "Dockerfile.dockerignore").read_text().splitlines()
    rules = [r.strip() for r in ignore if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", "start from nothing, then allow"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert {"pyproject.toml", "pipeline", "operators", "models", "configs"} <= allowed
    assert not allowed & {".venv", ".git", "tests"}


def _docker_answers() -> bool:
    exe = shutil.which("docker")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
def test_image_builds_and_runs_as_non_root() -> None:
    if not _docker_answers():
        pytest.skip("no Docker engine answers here")
    tag = "affectstream:test-k8s"
    build = subprocess.run(
        ["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
        capture_output=True, text=True, timeout=3600, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    assert build.returncode == 0, build.stderr[-4000:]
    probe = ("import os, pathlib, pipeline.api.app; "
             "d = pathlib.Path(os.environ['AFFECTSTREAM_CACHE_DIR']); "
             "print(os.getuid(), sum(1 for p in d.rglob('*') if p.is_file()))")
    run = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "python", "-c",
                          probe], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    uid, files = map(int, run.stdout.split())
    assert uid != 0 and files > 0
