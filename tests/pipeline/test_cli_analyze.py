"""``affectstream analyze au-selectivity`` (pipeline/cli/analyze.py) on real face photos."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from affectstream.models.weights import artifact_path
from affectstream.pipeline.cli.analyze import analyze_app

PHOTOS = [("0-f1-su-ph.jpg", "surprise"), ("0-f15-hao-ph.jpg", "happiness"),
          ("15-f13-anc-ph.jpg", "anger"), ("45-m7-di-ph.jpg", "disgust")]



@pytest.fixture()
def labelled_dir(tmp_path):
    rows = ["path,x1,y1,x2,y2,expression"]
    for name, expr in PHOTOS:
        p = artifact_path(name)
        rows.append(f"{p},80,120,420,460,{expr}")   # two crops of each photo
        rows.append(f"{p},100,140,400,440,{expr}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_au_selectivity_command_writes_outputs(labelled_dir, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(analyze_app, [
        "au-selectivity", "--model", "dsr_fau_student", "--weights", "none",
        "--layers", "layer3,layer4", "--images", str(labelled_dir), "--out", str(out),
        "--k", "4", "--n-random", "1", "--cv", "2"])
    assert res.exit_code == 0, res.output
    assert "weak" in res.output                     # expression-only CSV -> weak AU labels
    for f in ("au_selectivity.csv", "au_ranking.csv", "feature_selection.csv", "au_selectivity.png"):
        assert (out / f).is_file(), f
    with open(out / "au_selectivity.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 128 + 256                   # student layer3 + layer4 channels
    assert {r["layer"] for r in rows} == {"layer3", "layer4"}


@pytest.mark.parametrize("args, message", [
    (["--model", "no_such_model"], "unknown model"),
    (["--images", "/nonexistent"], "labels CSV not found"),
    (["--pool", "median"], "--pool"),
])
def test_bad_options_exit_2_with_a_message(args, message):
    res = CliRunner().invoke(analyze_app, ["au-selectivity", *args])
    assert res.exit_code == 2
    assert message in res.output


def _analyze_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affectstream.pipeline.cli.main", "analyze",
                           "au-selectivity", *args], capture_output=True, text=True, timeout=600)


def test_model_without_trained_weights_is_refused_then_allowed_with_a_warning(labelled_dir,
                                                                              tmp_path):
    opts = ["--model", "ampnet", "--images", str(labelled_dir), "--out", str(tmp_path / "o"),
            "--k", "4", "--n-random", "1", "--cv", "2"]
    r = _analyze_cli(*opts)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ("affectstream train configs/train/ampnet_rafdb.yaml" in r.stderr
            and "--weights runs/ampnet/best.pt" in r.stderr and "--allow-untrained" in r.stderr)
    assert not (tmp_path / "o").exists()
    r = _analyze_cli(*opts, "--allow-untrained")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning: model 'ampnet' has no trained weights" in r.stderr
    assert (tmp_path / "o" / "au_selectivity.csv").is_file()
