"""Which placement ``placement: auto`` picks (pure logic; a real listening socket stands in for a
warm cluster's GCS port, as :func:`pipeline.runtime.warm.read_state` only checks that it
answers)."""

from __future__ import annotations

import json
import socket

import pytest

from affectstream.pipeline.runtime import placements


@pytest.fixture
def no_cluster(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("AFFECTSTREAM_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(placements, "_ray_joined", lambda: False)
    return tmp_path


def test_auto_places_one_stream_here_and_several_on_ray(no_cluster):
    assert placements.choose("auto", 1) == "local"
    assert placements.choose("auto", 2) == "ray"
    assert placements.choose("ray", 1) == "ray" and placements.choose("local", 3) == "local"


def test_auto_uses_a_cluster_that_is_there(no_cluster, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert placements.choose("auto", 1) == "ray"
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(placements, "_ray_joined", lambda: True)
    assert placements.choose("auto", 1) == "ray"


def test_auto_joins_the_warm_cluster_only_while_it_answers(no_cluster):
    with socket.socket() as gcs:
        gcs.bind(("127.0.0.1", 0))
        gcs.listen()
        port = gcs.getsockname()[1]
        (no_cluster / "warm-cluster.json").write_text(json.dumps({"address": f"127.0.0.1:{port}"}))
        assert placements.choose("auto", 1) == "ray"
    assert placements.choose("auto", 1) == "local"  # port closed: the stale file is dropped
    assert not (no_cluster / "warm-cluster.json").exists()


def test_unknown_placement_is_a_clear_error():
    with pytest.raises(ValueError, match="placement must be one of auto, local, ray, got 'gpu'"):
        placements.choose("gpu", 1)
