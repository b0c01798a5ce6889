"""The ``cluster`` and ``inference.autoscaling`` config sections (pipeline.service.placement) and the
Serve options built from them (pipeline.service.options): pure logic, no Ray."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from affectstream.pipeline.config import load_config
from affectstream.pipeline.service.options import (api_actor_options, inference_options,
                                                    ingest_options, serve_config_entry)
from affectstream.pipeline.service.placement import (AutoscalingConfig, ClusterConfig,
                                                      DeploymentPlacement, NodeGroup,
                                                      selector_matches)

LABELS = {"affectstream.io/role": "worker", "affectstream.io/pool": "ingest"}


@pytest.mark.parametrize("selector, matches", [
    ({}, True),
    ({"affectstream.io/pool": "ingest"}, True),
    ({"affectstream.io/pool": "inference"}, False),
    ({"affectstream.io/pool": "!inference"}, True),
    ({"affectstream.io/pool": "!ingest"}, False),
    ({"affectstream.io/pool": "in(inference,ingest)"}, True),
    ({"affectstream.io/pool": "!in(inference, ingest)"}, False),
    ({"affectstream.io/zone": "a"}, False),          # absent key: no match ...
    ({"affectstream.io/zone": "!a"}, True),          # ... except for "not"
    ({"affectstream.io/role": "worker", "affectstream.io/pool": "gpu"}, False),
])
def test_selector_matches(selector, matches):
    assert selector_matches(selector, LABELS) is matches


def test_defaults_place_nothing_and_keep_the_old_options():
    cfg = load_config("default")
    assert cfg.cluster.groups == {}
    assert ingest_options(cfg)["ray_actor_options"] == {"num_cpus": 0}
    assert api_actor_options(cfg) == {"num_cpus": 0.25}
    assert api_actor_options(cfg, 1) == {"num_cpus": 1.0}
    opts = inference_options(cfg)
    assert opts["num_replicas"] == 1 and "autoscaling_config" not in opts
    assert opts["ray_actor_options"] == {"num_cpus": 0}
    assert opts["max_ongoing_requests"] == 2 * cfg.inference.max_batch_size


def test_cluster_preset_builds_selectors_fallbacks_and_autoscaling():
    cfg = load_config("cluster")
    opts = inference_options(cfg)
    assert opts["num_replicas"] == "auto"
    assert opts["autoscaling_config"] == cfg.inference.autoscaling.model_dump(exclude_none=True)
    assert opts["ray_actor_options"] == {
        "num_cpus": 1, "label_selector": {"affectstream.io/pool": "inference"},
        "fallback_strategy": [{"label_selector": {"affectstream.io/role": "worker"}}]}
    assert serve_config_entry(cfg)["name"] == "Inference"
    assert "user_config" not in serve_config_entry(cfg)
    # every selector names a group of the preset, and the head takes no consumer or inference
    groups = cfg.cluster.groups
    for p in (cfg.cluster.api, cfg.cluster.ingest, cfg.cluster.inference):
        for sel in [p.label_selector, *p.fallback]:
            assert [g for g in groups.values() if selector_matches(sel, g.labels)], sel
    for p in (cfg.cluster.ingest, cfg.cluster.inference):
        assert not selector_matches(p.label_selector, groups["head"].labels)


def test_serve_validates_the_built_options():
    from ray.serve.config import AutoscalingConfig as ServeAutoscaling
    from ray.serve.schema import RayActorOptionsSchema

    cfg = load_config("cluster")
    opts = inference_options(cfg)
    ServeAutoscaling.model_validate(opts["autoscaling_config"])
    RayActorOptionsSchema.model_validate(opts["ray_actor_options"])


@pytest.mark.parametrize("bad, match", [
    (lambda: DeploymentPlacement(fallback=[{"a": "b"}]), "need a label_selector"),
    (lambda: NodeGroup(labels={"ray.io/node-type": "x"}), "reserved"),
    (lambda: ClusterConfig(groups={"w": NodeGroup()}), "needs a `head` group"),
    (lambda: ClusterConfig(groups={"head": NodeGroup(nodes=2)}), "must be 1"),
    (lambda: AutoscalingConfig(min_replicas=3, max_replicas=2), "min_replicas <= "),
    (lambda: AutoscalingConfig(look_back_period_s=5), "greater than 10"),
    (lambda: NodeGroup(extra=1), "Extra inputs"),
])
def test_invalid_layouts_fail_with_a_message(bad, match):
    with pytest.raises(ValidationError, match=match):
        bad()
