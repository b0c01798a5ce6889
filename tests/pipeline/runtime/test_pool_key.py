"""Which runs a warm pooled stream actor may serve: the key covers what its loaded networks and
tracker were built from, and nothing a run sets for itself (pure logic, no Ray)."""

from __future__ import annotations

from affectstream.pipeline.config import load_config
from affectstream.pipeline.runtime.warm import code_digest, pool_key, stage_key


def test_the_key_follows_the_face_track_settings_only():
    base = load_config("fast")
    assert stage_key(base) == stage_key(load_config("fast"))
    # set per run, on the leased actor: same key
    for over in ({"redis": {"url": "redis://10.0.0.1:6379/2"}},
                 {"decode": {"analysis_fps": 5.0}}, {"max_in_flight": 16},
                 {"inference": {"saliency_interval_ms": 0}}):
        assert stage_key(load_config("fast", overrides=over)) == stage_key(base), over
    # built into the pooled actor's networks or tracker: another key
    for over in ({"detect": {"detect_interval_ms": 250}}, {"detect": {"model": "short"}},
                 {"track": {"activation_ms": 120}}, {"inference": {"au_model": "blendshape"}},
                 {"inference": {"facetrack_runtime": "torch"}}):
        assert stage_key(load_config("fast", overrides=over)) != stage_key(base), over
    assert stage_key(load_config()) != stage_key(base)  # default models: FaceMesh V2


def test_the_pool_key_also_names_the_code():
    cfg = load_config("fast")
    assert pool_key(cfg) == f"{stage_key(cfg)}-{code_digest()}"
