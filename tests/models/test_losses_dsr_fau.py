"""DSR-FAU distillation losses: zero for identical teacher/student inputs, positive otherwise,
gradients to the student only."""

from __future__ import annotations

import pytest
import torch

from affectstream.models.losses_dsr_fau import (channel_relation_loss, dsr_fau_distillation_loss,
                                   feature_adapter, feature_map_distillation_loss,
                                   region_features, region_relation_loss)

g = torch.Generator().manual_seed(0)
FEAT = torch.randn(2, 16, 64, 64, generator=g)
HEAT = torch.rand(2, 12, 64, 64, generator=g)

LOSSES = {
    "feature": (feature_map_distillation_loss, FEAT),
    "feature_mse": (lambda s, t: feature_map_distillation_loss(s, t, normalize=False), FEAT),
    "region_grid": (region_relation_loss, FEAT),
    "region_masks": (lambda s, t: region_relation_loss(s, t, regions=HEAT), FEAT),
    "channel": (channel_relation_loss, HEAT),
}


@pytest.mark.parametrize("name", LOSSES)
def test_zero_for_identical_inputs(name):
    fn, t = LOSSES[name]
    assert fn(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_positive_for_different_inputs_and_student_only_gradients(name):
    fn, t = LOSSES[name]
    s = (t + 0.5 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1))).requires_grad_()
    teacher = t.clone().requires_grad_()
    loss = fn(s, teacher)
    assert loss.item() > 1e-4
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert teacher.grad is None


def test_relation_losses_compare_different_channel_counts():
    small = FEAT[:, :8]
    assert region_relation_loss(small, FEAT).item() > 0
    with pytest.raises(ValueError, match="feature_adapter"):
        feature_map_distillation_loss(small, FEAT)
    adapted = feature_adapter(8, 16)(small)
    assert feature_map_distillation_loss(adapted, FEAT).item() > 0


def test_region_features_grid_and_masks():
    assert region_features(FEAT, (4, 4)).shape == (2, 16, 16)
    masks = torch.zeros(2, 3, 64, 64)
    masks[:, 0, :32] = 1.0
    v = region_features(FEAT, masks)
    assert v.shape == (2, 3, 16)
    torch.testing.assert_close(v[:, 0], FEAT[:, :, :32].mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)


def test_combined_loss_on_model_outputs():
    s = {"features": FEAT[:, :8].clone().requires_grad_(), "heatmaps": HEAT.flip(1)}
    t = {"features": FEAT, "heatmaps": HEAT}
    parts = dsr_fau_distillation_loss(s, t, feature_adapter(8, 16), 1.0, 0.5, 2.0)
    assert set(parts) == {"feature", "region", "channel", "total"}
    expected = parts["feature"] + 0.5 * parts["region"] + 2.0 * parts["channel"]
    torch.testing.assert_close(parts["total"], expected)
    assert all(v.item() > 0 for v in parts.values())
    same = dsr_fau_distillation_loss(t, t)
    assert same["total"].item() == pytest.approx(0.0, abs=1e-6)
