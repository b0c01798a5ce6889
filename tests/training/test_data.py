"""Every dataset kind of the recipe schema builds into network batches (geometry, transform),
and the remaining dataset kinds train end to end; workers do not change the result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from affectstream.models import get_card
from tests.training import formats as F
from affectstream.training.data import build_dataset
from affectstream.models.checkpoint import read_checkpoint
from affectstream.training.recipes import Recipe
from affectstream.training.trainer import Trainer

WRITERS = {
    "affectnet": lambda p: F.write_affectnet(p, 12, 6),
    "fer2013": lambda p: F.write_fer2013(p, 8, 2, 4),
    "ferplus": lambda p: F.write_fer2013(p, 8, 2, 4),
    "ckplus": lambda p: F.write_ckplus(p, 6, 3),
    "bp4d": lambda p: F.write_bp4d(p, n_frames=4),
}


def _recipe(dataset: str, model: str, loss: dict, **data) -> Recipe:
    return Recipe.model_validate({
        "name": f"t_{dataset}", "model": {"name": model},
        "data": {"dataset": dataset, **data},
        "stages": [{"epochs": 1, "loss": loss, "optim": {"name": "adam", "lr": 1e-3}}],
        "train": {"batch_size": 4, "eval_batch_size": 4}})


@pytest.mark.parametrize(("dataset", "data", "n_classes"), [
    ("affectnet", {"classes": 8}, 8),
    ("fer2013", {}, 7),
    ("ferplus", {"label_mode": "probability"}, 8),
    ("ckplus", {"n_folds": 3, "geometry": "pipeline"}, 8),
])
def test_fer_datasets_train_one_epoch(tmp_path: Path, dataset: str, data: dict, n_classes: int
                                      ) -> None:
    root = tmp_path / "data"
    WRITERS[dataset](root)
    r = _recipe(dataset, "tiny_fer_test", {"kind": "ce"}, **data)
    res = Trainer(r, root, tmp_path / "run", device="cpu", progress=False,
                  tensorboard=False).fit()
    assert len(res["history"]) == 1
    ck = read_checkpoint(tmp_path / "run" / "best.pt")
    assert len(ck["card"]["label_names"]) == n_classes == ck["model_kwargs"]["num_classes"]


def test_bp4d_trains_the_au_student(tmp_path: Path) -> None:
    root = tmp_path / "bp4d"
    WRITERS["bp4d"](root)
    r = _recipe("bp4d", "dsr_fau_student", {"kind": "au_heatmap"}).with_overrides(
        {"model.input_size": [64, 64]})
    res = Trainer(r, root, tmp_path / "run", device="cpu", progress=False,
                  tensorboard=False).fit()
    ck = read_checkpoint(tmp_path / "run" / "best.pt")
    assert tuple(ck["card"]["label_names"]) == F.BP4D_AUS and ck["model_kwargs"]["num_aus"] == 5
    assert "val_mean.icc" in res["history"][0]


def test_batches_carry_what_the_models_need(rafdb_root: Path, disfa_root: Path) -> None:
    r = _recipe("rafdb", "ampnet", {"kind": "ampnet"}, attributes=True)
    ds = build_dataset(r, rafdb_root, "train", get_card("ampnet"), (112, 112))
    b = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert b["image"].shape == (4, 3, 112, 112) and b["landmarks"].shape == (4, 5, 2)
    assert set(b["attributes"]) == {"gender", "race", "age"}
    r = _recipe("disfa", "dsr_fau_teacher", {"kind": "au_heatmap"})
    ds = build_dataset(r, disfa_root, "eval", get_card("dsr_fau_teacher"), (64, 64))
    b = torch.utils.data.default_collate([ds[i] for i in range(2)])
    assert b["au_points"].shape == (2, 12, 2, 2) and b["au_intensity"].shape == (2, 12)
    assert ds.base.subjects == ("SN003",)


def test_workers_give_the_same_weights(fer2013_root: Path, tmp_path: Path) -> None:
    base = {"name": "w", "model": {"name": "tiny_fer_test"},
            "data": {"dataset": "fer2013", "max_eval_samples": 4},
            "augment": {"rotation_deg": 20, "flip_p": 0.5},
            "stages": [{"epochs": 2, "loss": {"kind": "ce"}}],
            "train": {"batch_size": 6}}
    w = {}
    for nw in (0, 2):
        r = Recipe.model_validate(base).with_overrides({"data.num_workers": nw})
        Trainer(r, fer2013_root, tmp_path / str(nw), device="cpu", progress=False,
                tensorboard=False).fit()
        w[nw] = read_checkpoint(tmp_path / str(nw) / "last.pt")["state_dict"]
    assert all(torch.equal(w[0][k], w[2][k]) for k in w[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mixed_precision_on_gpu(rafdb_root: Path, tmp_path: Path, dtype: str) -> None:
    r = _recipe("rafdb", "ampnet", {"kind": "ampnet"}).with_overrides(
        {"train.amp_dtype": dtype, "data.max_train_samples": 8, "data.max_eval_samples": 4,
         "model.input_size": [112, 112]})
    res = Trainer(r, rafdb_root, tmp_path, device="cuda", progress=False).fit()
    assert res["history"][0]["train_loss"] == res["history"][0]["train_loss"]
    assert read_checkpoint(tmp_path / "last.pt")["scaler"] is not None
