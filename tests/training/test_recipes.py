"""Recipes: schema validation, one epoch of every recipe end to end through the CLI on its tiny
real-format dataset, evaluation tables, and an overfit run per recipe."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from affectstream.pipeline.cli.train import train_cli
from affectstream.models.checkpoint import load_checkpoint, read_checkpoint
from affectstream.training.recipes import Recipe, load_recipe
from affectstream.training.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "train"
RECIPES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))

# tiny but real: small inputs the architectures accept, few samples, small batches
TINY = {
    "ampnet_rafdb": {"model.input_size": [112, 112]},
    "dsan_rafdb_two_stage": {"model.input_size": [112, 112]},
    "saliency_fer_rafdb": {"model.input_size": [112, 112]},
    "dsrfau_disfa_teacher": {"model.input_size": [64, 64]},
    "dsrfau_disfa_student_kd": {"model.input_size": [64, 64]},
    "saliency_cnn_cat2000": {"model.input_size": [64, 96], "data.val_per_category": 2},
}
DATA = {"ampnet_rafdb": "rafdb", "dsan_rafdb_two_stage": "rafdb", "saliency_fer_rafdb": "rafdb",
        "dsrfau_disfa_teacher": "disfa", "dsrfau_disfa_student_kd": "disfa",
        "saliency_cnn_cat2000": "cat2000"}
ORDER = ["saliency_cnn_cat2000", "dsrfau_disfa_teacher", "ampnet_rafdb", "dsan_rafdb_two_stage",
         "saliency_fer_rafdb", "dsrfau_disfa_student_kd"]


def test_every_recipe_has_a_run_test() -> None:
    assert sorted(ORDER) == RECIPES == sorted(TINY)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_files_validate(name: str) -> None:
    r = load_recipe(CONFIGS / f"{name}.yaml")
    assert r.name == name
    assert r.epochs >= 1


def test_ampnet_recipe_has_the_published_hyperparameters() -> None:
    r = load_recipe(CONFIGS / "ampnet_rafdb.yaml")
    (st,) = r.stages
    assert (st.optim.name, st.optim.lr, st.optim.momentum, st.optim.weight_decay) == (
        "sgd", 0.01, 0.9, 1e-4)
    assert (st.loss.kind, st.loss.w_local, st.loss.w_global) == ("ampnet", 0.5, 0.5)


def test_dsan_recipe_is_two_stage() -> None:
    r = load_recipe(CONFIGS / "dsan_rafdb_two_stage.yaml")
    assert [s.loss.objective for s in r.stages] == ["demographic", "expression"]
    assert r.data.attributes


def test_unknown_keys_are_errors(tmp_path: Path) -> None:
    text = (CONFIGS / "ampnet_rafdb.yaml").read_text().replace("batch_size: 64", "batchsize: 64")
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(ValidationError, match="batchsize"):
        load_recipe(tmp_path / "r.yaml")
    base = load_recipe(CONFIGS / "ampnet_rafdb.yaml")
    with pytest.raises(KeyError, match="optimizer"):
        base.with_overrides({"stages.0.optimizer.lr": 1})
    with pytest.raises(ValidationError):
        base.with_overrides({"stages.0.optim.lr": -1})
    with pytest.raises(ValidationError, match="teacher"):
        Recipe.model_validate(load_recipe(CONFIGS / "dsrfau_disfa_student_kd.yaml")
                              .model_dump(mode="json") | {"teacher": None})


# ------------------------------------------------------------------------ one epoch via CLI


@pytest.fixture(scope="module")
def roots(rafdb_root: Path, disfa_root: Path, cat2000_root: Path) -> dict[str, Path]:
    return {"rafdb": rafdb_root, "disfa": disfa_root, "cat2000": cat2000_root}


@pytest.fixture(scope="module")
def one_epoch(roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run every recipe for one epoch through ``affectstream train`` (in dependency order)."""
    runner = CliRunner()
    base = tmp_path_factory.mktemp("runs")
    out: dict[str, dict] = {}
    for name in ORDER:
        sets = {**TINY[name], "data.max_train_samples": 8, "data.max_eval_samples": 4,
                "train.batch_size": 4, "train.eval_batch_size": 4}
        if name == "saliency_fer_rafdb":
            sets["model.init.checkpoint"] = str(base / "saliency_cnn_cat2000" / "best.pt")
        args = ["train", str(CONFIGS / f"{name}.yaml"), "--data", str(roots[DATA[name]]),
                "--out", str(base / name), "--epochs", "1", "--device", "cpu", "--quiet"]
        if name == "dsrfau_disfa_student_kd":
            args += ["--teacher", str(base / "dsrfau_disfa_teacher" / "best.pt")]
        for k, v in sets.items():
            args += ["--set", f"{k}={v}"]
        res = runner.invoke(train_cli, args, catch_exceptions=False)
        out[name] = {"code": res.exit_code, "output": res.output, "dir": base / name}
    return out


@pytest.mark.parametrize("name", ORDER)
def test_one_epoch_end_to_end(one_epoch: dict, name: str) -> None:
    run = one_epoch[name]
    assert run["code"] == 0, run["output"]
    d = run["dir"]
    rows = list(csv.DictReader(open(d / "metrics.csv")))
    n_stages = len(load_recipe(CONFIGS / f"{name}.yaml").stages)
    assert len(rows) == n_stages  # --epochs 1 = one epoch per stage
    assert all(float(r["train_loss"]) == float(r["train_loss"]) for r in rows)  # not NaN
    assert "val_loss" in rows[-1]
    assert list((d / "tb").glob("events.*"))
    model, card = load_checkpoint(d / "best.pt")
    ck = read_checkpoint(d / "best.pt")
    assert ck["model_name"] == card.name and ck["recipe"]["name"] == name
    if card.task == "expression":
        assert card.label_names == ("surprise", "fear", "disgust", "happiness", "sadness",
                                    "anger", "neutral")
    if card.task == "au":
        assert card.label_names[0] == "AU01" and len(card.label_names) == 12
    assert tuple(card.input_size) == tuple(TINY[name]["model.input_size"])


def test_train_refuses_to_overwrite_and_resumes(one_epoch: dict, roots: dict) -> None:
    d = one_epoch["saliency_cnn_cat2000"]["dir"]
    runner = CliRunner()
    sets = ["model.input_size=[64, 96]", "data.val_per_category=2", "data.max_train_samples=8",
            "data.max_eval_samples=4", "train.batch_size=4", "train.eval_batch_size=4"]

    def args(epochs: int) -> list[str]:
        a = ["train", str(CONFIGS / "saliency_cnn_cat2000.yaml"), "--data",
             str(roots["cat2000"]), "--out", str(d), "--epochs", str(epochs), "--device", "cpu",
             "--quiet"]
        for s in sets:
            a += ["--set", s]
        return a

    res = runner.invoke(train_cli, args(1))
    assert res.exit_code == 2 and "--resume" in res.output
    res = runner.invoke(train_cli, args(2) + ["--resume"])
    assert res.exit_code == 0, res.output
    assert len(list(csv.DictReader(open(d / "metrics.csv")))) == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(d / "tb"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3, 4]  # none lost, none twice


def test_train_reports_a_missing_dataset_file(tmp_path: Path) -> None:
    (tmp_path / "EmoLabel").mkdir()
    res = CliRunner().invoke(train_cli, [
        "train", str(CONFIGS / "ampnet_rafdb.yaml"), "--data", str(tmp_path), "--out",
        str(tmp_path / "run"), "--device", "cpu", "--quiet"])
    assert res.exit_code == 2
    assert "list_patition_label.txt" in res.output


@pytest.mark.parametrize(("name", "expect"), [
    ("ampnet_rafdb", ["accuracy per class", "surprise", "mean acc.", "macro-F1",
                      "confusion matrix"]),
    ("dsrfau_disfa_student_kd", ["AU intensity", "ICC(3,1)", "MAE", "AU01", "AU26", "Avg."]),
    ("saliency_cnn_cat2000", ["AUC-Judd", "NSS", "CC", "KLD", "SIM"]),
])
def test_eval_prints_the_papers_tables(one_epoch: dict, roots: dict, name: str, expect: list
                                       ) -> None:
    d = one_epoch[name]["dir"]
    res = CliRunner().invoke(train_cli, ["eval", str(d / "best.pt"), "--data",
                                         str(roots[DATA[name]]), "--device", "cpu", "--quiet",
                                         "--max-samples", "4"], env={"COLUMNS": "240"})
    assert res.exit_code == 0, res.output
    for word in expect:
        assert word in res.output, (word, res.output)
    assert list(d.glob("eval_*_eval.json"))


# ----------------------------------------------------------------------------------- overfit

NO_AUG = {"augment.rotation_deg": 0, "augment.scale": [1, 1], "augment.shift_frac": 0,
          "augment.flip_p": 0, "augment.brightness": 0, "augment.contrast": 0,
          "augment.saturation": 0}
# Adam for the from-scratch FER models: SGD 0.01 needs far more than a few epochs to memorise
OVERFIT = {
    "ampnet_rafdb": {"stages.*.optim.name": "adam", "stages.*.optim.lr": 1e-3,
                     "stages.*.epochs": 5},
    "dsan_rafdb_two_stage": {"stages.*.optim.name": "adam", "stages.*.optim.lr": 1e-3,
                             "stages.*.epochs": 4},
    "saliency_fer_rafdb": {"stages.*.optim.name": "adam", "stages.*.optim.lr": 1e-3,
                           "stages.*.epochs": 5},
    "dsrfau_disfa_teacher": {"stages.*.epochs": 5},
    "dsrfau_disfa_student_kd": {"stages.*.optim.lr": 2e-3, "stages.*.epochs": 5},
    "saliency_cnn_cat2000": {"stages.*.optim.lr": 1e-3, "stages.*.epochs": 5},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ORDER)
def test_overfit_16_samples(one_epoch: dict, roots: dict, tmp_path: Path, name: str,
                            record_property) -> None:
    over = {**TINY[name], **NO_AUG, **OVERFIT[name], "data.max_train_samples": 16,
            "data.max_eval_samples": 4, "train.batch_size": 8, "train.eval_batch_size": 4,
            "stages.*.schedule.name": "constant", "stages.*.schedule.warmup_epochs": 0,
            "stages.*.optim.weight_decay": 0.0, "train.eval_every_epochs": 100}
    teacher = None
    if name == "saliency_fer_rafdb":
        over["model.init.checkpoint"] = str(one_epoch["saliency_cnn_cat2000"]["dir"] / "best.pt")
    if name == "dsrfau_disfa_student_kd":
        teacher = one_epoch["dsrfau_disfa_teacher"]["dir"] / "best.pt"
    r = load_recipe(CONFIGS / f"{name}.yaml", over)
    res = Trainer(r, roots[DATA[name]], tmp_path, device="cpu", progress=False,
                  teacher=teacher, tensorboard=False).fit()
    for stage in r.stages:
        losses = [h["train_loss"] for h in res["history"] if h["stage"] == stage.name]
        record_property(f"loss_{stage.name}", f"{losses[0]:.3f}->{losses[-1]:.3f}")
        print(name, stage.name, [round(x, 3) for x in losses])
        start, end = losses[0], losses[-1]
        assert end < start - 0.35 * abs(start), (name, stage.name, losses)


def test_default_run_folder_and_cli_errors(roots: dict, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    tiny = ["--set", "model.input_size=[64, 96]", "--set", "data.val_per_category=2",
            "--set", "data.max_train_samples=4", "--set", "data.max_eval_samples=2",
            "--set", "train.batch_size=2", "--set", "train.eval_batch_size=2"]
    res = runner.invoke(train_cli, ["train", str(CONFIGS / "saliency_cnn_cat2000.yaml"),
                                    "--data", str(roots["cat2000"]), "--epochs", "1",
                                    "--device", "cpu", "--quiet", *tiny])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "saliency" / "best.pt").is_file()  # saliency_fer's init path
    res = runner.invoke(train_cli, ["train", str(CONFIGS / "saliency_cnn_cat2000.yaml"),
                                    "--data", str(roots["cat2000"]), "--fold", "2"])
    assert res.exit_code == 2 and "no folds" in res.output
    res = runner.invoke(train_cli, ["train", str(CONFIGS / "dsrfau_disfa_student_kd.yaml"),
                                    "--data", str(roots["disfa"]), "--out", "s", "--quiet"])
    assert res.exit_code == 2 and "--teacher" in res.output
