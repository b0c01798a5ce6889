"""Checkpoints carry their registry id, preprocessing and labels; the registry loads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from affectstream.models import create_model
from affectstream.models.checkpoint import (
    checkpoint_dict,
    load_checkpoint,
    make_card,
    read_checkpoint,
    save_checkpoint,
)


def test_round_trip_keeps_weights_and_card(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("mini_xception", weights=None)
    card = make_card("mini_xception", label_names=("anger", "happiness", "neutral"),
                     input_size=(64, 64))
    path = save_checkpoint(checkpoint_dict(model, "mini_xception", {}, card, epoch=3),
                           tmp_path / "m.pt")
    m2, c2 = load_checkpoint(path)
    assert c2.label_names == ("anger", "happiness", "neutral")
    assert c2.color == "gray" and c2.input_size == (64, 64) and m2.card is c2
    assert not m2.training
    for (k, a), b in zip(model.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    m3 = create_model("mini_xception", weights=path)
    assert all(torch.equal(a, b) for a, b in zip(m2.state_dict().values(),
                                                 m3.state_dict().values()))
    assert read_checkpoint(path)["epoch"] == 3


def test_plain_state_dict_is_not_a_training_checkpoint(tmp_path: Path) -> None:
    torch.save(create_model("mini_xception", weights=None).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="not an affectstream training checkpoint"):
        load_checkpoint(tmp_path / "sd.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_unknown_model_id_lists_known(tmp_path: Path) -> None:
    model = create_model("mini_xception", weights=None)
    obj = checkpoint_dict(model, "mini_xception", {}, make_card("mini_xception"))
    obj["model_name"] = "no_such_model"
    obj["card"]["name"] = "no_such_model"
    save_checkpoint(obj, tmp_path / "x.pt")
    with pytest.raises(KeyError, match="known: .*mini_xception"):
        load_checkpoint(tmp_path / "x.pt")


def test_pipeline_loader_uses_load_checkpoint(tmp_path: Path) -> None:
    analyze = pytest.importorskip("affectstream.operators.analyze")
    model = create_model("mini_xception", weights=None)
    card = make_card("mini_xception")
    path = save_checkpoint(checkpoint_dict(model, "mini_xception", {}, card), tmp_path / "b.pt")
    m = analyze.load_model(str(path))
    assert m.card.name == "mini_xception"
