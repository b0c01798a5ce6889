"""``bench --autoscale`` inputs (pipeline.bench.autoscale): real requests from a real clip, and
a clear refusal of a config without autoscaling. The autoscaling run itself needs minutes of a
real cluster; its output is docs/bench/autoscale_local-cluster.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from affectstream.pipeline.bench.autoscale import clip_requests, run_autoscale_bench
from affectstream.pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_requests_are_what_the_runner_sends(media):
    cfg = load_config("cluster")
    reqs = clip_requests(cfg, str(media("single_face.mp4")), fps=10, max_frames=6)
    assert 1 <= len(reqs) <= 6
    for r in reqs:
        n = len(r.crops)
        assert n >= 1 and r.crops.dtype == np.uint8
        assert r.points01.shape == (n, 468, 2)
        if cfg.inference.au_model == "blendshape":
            assert r.landmarks3d.shape == (n, 478, 3)


def test_a_fixed_replica_count_is_refused():
    cfg = load_config("cluster", overrides={"inference": {"num_replicas": 1}})
    with pytest.raises(ValueError, match="num_replicas: auto"):
        run_autoscale_bench(cfg, "unused.mp4")


def test_committed_run_scaled_up_and_back_down():
    res = json.loads((ROOT / "docs" / "bench" / "autoscale_local-cluster.json").read_text())
    ac, runs = res["autoscaling"], [r["running"] for r in res["timeline"]]
    assert runs[0] == ac["min_replicas"] == runs[-1]
    assert max(runs) == res["summary"]["max_running"] == ac["max_replicas"] > ac["min_replicas"]
    phases = [r["phase"] for r in res["timeline"]]
    assert phases.index("load") < phases.index("cooldown")
