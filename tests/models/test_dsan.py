"""DSAN: deep-supervision outputs, ensemble, attention maps, demographic heads."""

from __future__ import annotations

import torch

from affectstream.models import create_model, get_card
from affectstream.models.dsan import AGE_GROUP_LABELS, GENDER_LABELS, RACE_LABELS



def test_outputs_ensemble_and_attention_maps():
    model = create_model("dsan", weights=None)
    with torch.no_grad():
        model.ensemble_logit_weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(x)
    assert out["side_logits"].shape == (2, 3, 7)
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    torch.testing.assert_close(out["logits"], (out["side_logits"] * w.view(1, 3, 1)).sum(1))
    for key, side in (("attention1", 28), ("attention2", 14), ("attention3", 7)):
        a = out[key]
        assert a.shape == (2, 1, side, side)
        assert (a >= 0).all() and (a <= 1).all()
    assert out["saliency"].shape == (2, 1, 224, 224)
    assert (out["saliency"] >= 0).all() and (out["saliency"] <= 1).all()
    assert out["gender"].shape == (2, len(GENDER_LABELS))
    assert out["race"].shape == (2, len(RACE_LABELS))
    assert out["age"].shape == (2, len(AGE_GROUP_LABELS))
    assert get_card("dsan").extra["demographics"]["age"] == AGE_GROUP_LABELS


def test_each_side_output_is_supervisable():
    model = create_model("dsan", weights=None).train()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    out = model(x)
    # Deep supervision: the CE of the shallowest side output alone reaches the stage-2 trunk
    # but not the deeper stages.
    loss = torch.nn.functional.cross_entropy(out["side_logits"][:, 0], torch.tensor([0, 3]))
    loss.backward()
    assert model.layer2[0].conv1[0].weight.grad.abs().sum() > 0
    g4 = model.layer4[0].conv1[0].weight.grad
    assert g4 is None or g4.abs().sum() == 0
