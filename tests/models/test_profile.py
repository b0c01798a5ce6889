"""models.profile: describe() reports the module's own parameter count, FLOPs and latency."""

from __future__ import annotations

import pytest
import torch

from affectstream.models import create_model, get_card
from affectstream.models.profile import count_flops, describe, describe_all, example_inputs



@pytest.mark.parametrize("name", ["dsr_fau_student", "dsan"])
def test_describe_matches_the_module(name):
    d = describe(name, batch_sizes=(1, 2), reps=1, warmup=0)
    model = create_model(name, weights=None)
    assert d["params"] == sum(p.numel() for p in model.parameters())
    assert d["flops"] == count_flops(model, example_inputs(get_card(name), 1)) > 0
    assert d["input_size"] == get_card(name).input_size
    assert set(d["latency_ms"]) == {1, 2} and all(v > 0 for v in d["latency_ms"].values())
    assert d["ms_per_item"][2] == pytest.approx(d["latency_ms"][2] / 2)


def test_flops_scale_with_input_and_count_convs():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 10, 10)
    assert count_flops(conv, (x,)) == 2 * 3 * 8 * 9 * 100


def test_example_inputs_follow_the_card():
    (x, lm) = example_inputs(get_card("ampnet"), 3)
    assert x.shape == (3, 3, 224, 224) and lm.shape == (3, 5, 2)
    assert ((lm - torch.tensor(get_card("ampnet").extra["landmark_template"])).abs() <= 4).all()


def test_describe_all_by_task_and_names():
    rows = describe_all(batch_sizes=(), task="au", reps=1)
    assert {"dsr_fau_student", "dsr_fau_teacher"} <= {r["name"] for r in rows}
    assert all(r["task"] == "au" and r["latency_ms"] == {} for r in rows)
    rows = describe_all(batch_sizes=(), names=["dsr_fau_student"], threads=1)
    assert [r["name"] for r in rows] == ["dsr_fau_student"]
