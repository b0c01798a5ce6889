"""Saliency CNN: DoG module, multi-indicator losses, saliency-guided FER."""

from __future__ import annotations

import pytest
import torch

from affectstream.models import create_model
from affectstream.models.saliency_cnn import (DoGModule, multi_indicator_saliency_loss, saliency_cc,
                                 saliency_kld, saliency_nss)



def _blob(cx: float, cy: float, h: int = 30, w: int = 40, s: float = 3.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * s * s)).view(1, 1, h, w)


def test_dog_responses_centre_surround_and_border_normalised():
    dog = DoGModule(4, reduced=2)
    # A constant has no centre-surround contrast, up to the borders (normalised blur).
    flat = dog.dog_responses(torch.full((1, 2, 30, 40), 3.0))
    assert flat.shape == (1, 2 * 3, 30, 40)
    assert flat.abs().max() < 1e-5
    # A small bright blob gives a positive response at its centre, negative around it.
    resp = dog.dog_responses(_blob(20, 15, s=1.0).expand(1, 2, 30, 40))
    assert resp[0, 0, 15, 20] > 0 and resp[0, 0, 15, 24] < 0


def test_metrics_reward_the_right_map():
    density = _blob(10, 12)
    fix = torch.zeros_like(density)
    fix[0, 0, 12, 10] = 1
    good, bad = density.clone(), _blob(30, 20)
    assert saliency_kld(good, density).item() == pytest.approx(0.0, abs=1e-5)
    assert saliency_kld(bad, density) > 1.0
    assert saliency_cc(good, density).item() == pytest.approx(1.0, abs=1e-5)
    assert saliency_cc(bad, density) < 0.1
    assert saliency_nss(good, fix) > 2.0 > saliency_nss(bad, fix)
    lg = multi_indicator_saliency_loss(good, density, fix)
    lb = multi_indicator_saliency_loss(bad, density, fix)
    assert lg["total"] < lb["total"]
    torch.testing.assert_close(lg["total"], 10 * lg["kld"] - 2 * lg["cc"] - lg["nss"])


def test_saliency_fer_uses_the_prior_and_returns_it():
    model = create_model("saliency_fer", weights=None).train()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out["logits"].shape == (2, 7) and out["saliency"].shape == (2, 1, 112, 112)
    # The classification loss does not move the (detached) saliency prior ...
    torch.nn.functional.cross_entropy(out["logits"], torch.tensor([1, 2])).backward()
    assert all(p.grad is None for p in model.saliency.parameters())
    # ... and the prior changes the prediction (the guidance is active).
    model.eval()
    with torch.inference_mode():
        ref = model(x)["logits"]
        model.saliency.head[1].bias.fill_(50.0)  # saturate the map to all-ones
        assert (model(x)["logits"] - ref).abs().max() > 1e-4
