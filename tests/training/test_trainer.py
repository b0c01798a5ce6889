"""Trainer core on a tiny model: determinism, exact resume, logs, checkpoints, lr schedule."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from affectstream.models.checkpoint import load_checkpoint, read_checkpoint
from affectstream.training.recipes import Recipe, StageSpec
from affectstream.training.trainer import Trainer, TrainingInterrupted, lr_factor


def tiny_recipe(**over) -> Recipe:
    base = {
        "name": "tiny",
        "model": {"name": "tiny_fer_test"},
        "data": {"dataset": "fer2013", "max_eval_samples": 8},
        "augment": {"rotation_deg": 15, "flip_p": 0.5, "brightness": 0.3},
        "stages": [{"name": "a", "epochs": 2, "loss": {"kind": "ce"},
                    "optim": {"name": "sgd", "lr": 0.05}},
                   {"name": "b", "epochs": 1, "loss": {"kind": "ce", "label_smoothing": 0.1},
                    "optim": {"name": "adam", "lr": 0.003}}],
        "train": {"batch_size": 5, "eval_batch_size": 8, "seed": 3},
    }
    return Recipe.model_validate(base).with_overrides(over)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def test_seeded_runs_are_identical(fer2013_root: Path, tmp_path: Path) -> None:
    r = tiny_recipe()
    a = Trainer(r, fer2013_root, tmp_path / "a", device="cpu", progress=False).fit()
    b = Trainer(r, fer2013_root, tmp_path / "b", device="cpu", progress=False).fit()
    wa, wb = _weights(tmp_path / "a/last.pt"), _weights(tmp_path / "b/last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    # a different seed gives different weights (the test can fail)
    c = tiny_recipe(**{"train.seed": 4})
    Trainer(c, fer2013_root, tmp_path / "c", device="cpu", progress=False).fit()
    wc = _weights(tmp_path / "c/last.pt")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.parametrize("stop_after", [2, 5, 12])  # mid-epoch 1, end of epoch 1, in stage 2
def test_resume_gives_the_same_weights(fer2013_root: Path, tmp_path: Path, stop_after: int
                                       ) -> None:
    r = tiny_recipe()
    full = Trainer(r, fer2013_root, tmp_path / "full", device="cpu", progress=False).fit()
    with pytest.raises(TrainingInterrupted):
        Trainer(r, fer2013_root, tmp_path / "cut", device="cpu", progress=False,
                stop_after_steps=stop_after).fit()
    resumed = Trainer(r, fer2013_root, tmp_path / "cut", device="cpu", progress=False).fit(
        resume=True)
    wf, wr = _weights(tmp_path / "full/last.pt"), _weights(tmp_path / "cut/last.pt")
    assert wf.keys() == wr.keys()
    for k in wf:
        assert torch.equal(wf[k], wr[k]), k
    strip = lambda h: [{k: v for k, v in row.items() if k != "time_s"} for row in h]  # noqa
    assert strip(full["history"]) == strip(resumed["history"])


def test_resume_refuses_another_recipe(fer2013_root: Path, tmp_path: Path) -> None:
    r = tiny_recipe(**{"stages.1.epochs": 1})
    with pytest.raises(TrainingInterrupted):
        Trainer(r, fer2013_root, tmp_path, device="cpu", progress=False,
                stop_after_steps=1).fit()
    other = r.with_overrides({"stages.0.optim.lr": 0.5})
    with pytest.raises(ValueError, match="different recipe"):
        Trainer(other, fer2013_root, tmp_path, device="cpu", progress=False).fit(resume=True)
    # more epochs is allowed
    longer = r.with_overrides({"stages.1.epochs": 2})
    res = Trainer(longer, fer2013_root, tmp_path, device="cpu", progress=False).fit(resume=True)
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3, 4]


def test_logs_checkpoints_and_export(fer2013_root: Path, tmp_path: Path) -> None:
    r = tiny_recipe()
    res = Trainer(r, fer2013_root, tmp_path, device="cpu", progress=False).fit()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(x["epoch"]) for x in rows] == [1, 2, 3]
    assert [x["stage"] for x in rows] == ["a", "a", "b"]
    for col in ("train_loss", "lr", "val_loss", "val_accuracy", "val_macro_f1",
                "val_per_class_accuracy.happiness"):
        assert col in rows[0]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events, "TensorBoard events missing"
    assert (tmp_path / "recipe.yaml").is_file()
    model, card = load_checkpoint(res["best_path"])
    assert card.name == "tiny_fer_test" and card.color == "gray"
    assert card.label_names == ("anger", "disgust", "fear", "happiness", "sadness", "surprise",
                                "neutral")
    assert card.extra["trained"]["recipe"] == "tiny"
    assert not model.training
    best = read_checkpoint(res["best_path"])
    assert best["select"]["metric"] == "accuracy"
    assert best["metrics"]["accuracy"] == max(float(x["val_accuracy"]) for x in rows
                                              if x["val_accuracy"])
    # the registry loads it too
    from affectstream.models import create_model

    m2 = create_model("tiny_fer_test", weights=res["best_path"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 m2.state_dict().values()))


@pytest.mark.parametrize(("schedule", "epoch", "expected"), [
    ({"name": "constant"}, 3.0, 1.0),
    ({"name": "step", "step_epochs": 2, "gamma": 0.5}, 4.5, 0.25),
    ({"name": "cosine"}, 0.0, 1.0),
    ({"name": "cosine"}, 5.0, 0.5),
    ({"name": "cosine", "min_lr_frac": 0.1}, 10.0, 0.1),
    ({"name": "cosine", "warmup_epochs": 2}, 1.0, 0.5),
])
def test_lr_factor(schedule: dict, epoch: float, expected: float) -> None:
    st = StageSpec.model_validate({"epochs": 10, "loss": {"kind": "ce"}, "schedule": schedule})
    assert lr_factor(st, epoch) == pytest.approx(expected)


def test_non_finite_loss_names_samples(fer2013_root: Path, tmp_path: Path) -> None:
    r = tiny_recipe(**{"stages.0.optim.lr": 1e30, "stages.0.optim.momentum": 0.0})
    with pytest.raises(RuntimeError, match=r"non-finite loss .* samples \['fer"):
        Trainer(r, fer2013_root, tmp_path, device="cpu", progress=False).fit()


def test_ctrl_c_stops_cleanly_and_resumes_exactly(fer2013_root: Path, tmp_path: Path,
                                                  monkeypatch) -> None:
    import os
    import signal

    import affectstream.training.trainer as T

    r = tiny_recipe()
    Trainer(r, fer2013_root, tmp_path / "full", device="cpu", progress=False).fit()
    real_make_task = T.make_task
    calls = {"n": 0}

    def make_task(*a, **k):
        task = real_make_task(*a, **k)
        loss = task.loss

        def interrupted_loss(model, batch):
            calls["n"] += 1
            if calls["n"] == 7:  # 5 steps + 1 eval batch, then Ctrl-C inside step 6 (epoch 2)
                os.kill(os.getpid(), signal.SIGINT)
            return loss(model, batch)

        task.loss = interrupted_loss
        return task

    monkeypatch.setattr(T, "make_task", make_task)
    with pytest.raises(KeyboardInterrupt):
        Trainer(r, fer2013_root, tmp_path / "cut", device="cpu", progress=False).fit()
    ck = read_checkpoint(tmp_path / "cut/last.pt")
    assert (ck["global_step"], ck["epoch"], ck["step_in_epoch"]) == (6, 1, 1)  # step finished
    monkeypatch.setattr(T, "make_task", real_make_task)
    Trainer(r, fer2013_root, tmp_path / "cut", device="cpu", progress=False).fit(resume=True)
    wf, wr = _weights(tmp_path / "full/last.pt"), _weights(tmp_path / "cut/last.pt")
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
