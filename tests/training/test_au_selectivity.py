"""AU-selective feature maps (training/au_selectivity.py) on real face photos and structured
synthetic responses."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn

from affectstream.models.registry import ModelCard
from affectstream.models.weights import artifact_path
from affectstream.training.au_selectivity import (EXPRESSION_PROTOTYPE_AUS, au_selectivity, default_real_faces,
                                     feature_selection_comparison, layer_responses,
                                     load_labels_csv, preprocess, rank_maps, run_au_selectivity,
                                     select_au_maps, weak_au_labels)

MARKER_CHANNEL = 5
PROBE_CARD = ModelCard(name="probe", task="backbone", input_size=(48, 48), color="rgb",
                       mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))



class Probe(nn.Module):
    """Random 3x3 conv features, except channel 5 = G - (R + B) / 2 (a green detector)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)
        with torch.no_grad():
            self.features.weight[MARKER_CHANNEL] = 0
            self.features.bias[MARKER_CHANNEL] = 0
            self.features.weight[MARKER_CHANNEL, :, 1, 1] = torch.tensor([-0.5, 1.0, -0.5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def marked_faces():
    """Real face crops; 'AU12' is on for every other crop, and those crops carry a green mark
    on the mouth (the visual evidence a feature map can pick up). 'AU04' is random."""
    faces = default_real_faces(n_augment=4, seed=0)
    n = len(faces)
    au12 = (np.arange(n) % 2).astype(np.float32)
    au04 = np.random.default_rng(1).integers(0, 2, n).astype(np.float32)
    images = []
    for im, on in zip(faces.images, au12):
        im = im.copy()
        if on:
            h, w = im.shape[:2]
            im[int(0.7 * h):int(0.8 * h), int(0.4 * w):int(0.6 * w)] = (0, 255, 0)  # BGR green
        images.append(im)
    faces.images = images
    faces.au = np.stack([au04, au12], axis=1)
    faces.au_names = ("AU04", "AU12")
    faces.weak_au = False
    return faces


def test_default_real_faces_are_real_photos_with_weak_labels():
    faces = default_real_faces(n_augment=2)
    assert len(faces) == 10 and faces.weak_au
    assert set(faces.expressions) == {"surprise", "happiness", "anger", "disgust"}
    im = faces.images[0]
    assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[0] > 200 and im.std() > 20
    i12 = faces.au_names.index("AU12")
    happy = np.array([e == "happiness" for e in faces.expressions])
    assert (faces.au[happy, i12] == 1).all() and (faces.au[~happy, i12] == 0).all()


@pytest.mark.parametrize("pool", ["mean", "max"])
@pytest.mark.parametrize("method", ["dprime", "pearson"])
def test_constructed_feature_ranks_first_for_its_au(marked_faces, pool, method):
    x = preprocess(marked_faces.images, PROBE_CARD)
    resp = layer_responses(Probe(), x, ["features"], batch_size=8, pool=pool)
    assert resp["features"].shape == (len(marked_faces), 16)
    sel = au_selectivity(resp["features"], marked_faces.au, method)
    names = [f"features:{c}" for c in range(16)]
    ranking = rank_maps(sel, names, marked_faces.au_names, top_k=3)
    assert ranking["AU12"][0][0] == f"features:{MARKER_CHANNEL}"
    assert ranking["AU12"][0][1] > 0
    # nothing is constructed to follow the random AU04 labels
    assert ranking["AU04"][0][0] != f"features:{MARKER_CHANNEL}" or abs(ranking["AU04"][0][1]) < 1


def test_dprime_on_known_values():
    r = np.array([[1.0], [2.0], [3.0], [5.0], [6.0], [7.0]])
    au = np.array([[0], [0], [0], [2], [3], [np.nan]], dtype=np.float32)
    # present {5, 6} (mean 5.5, var 0.5); absent {1, 2, 3} (mean 2, var 1)
    expected = (5.5 - 2.0) / np.sqrt((0.5 + 1.0) / 2)
    assert au_selectivity(r, au)[0, 0] == pytest.approx(expected)
    assert np.isnan(au_selectivity(r, np.zeros((6, 1)))[0, 0])  # never present -> undefined


def test_select_au_maps_round_robin_covers_every_au():
    sel = np.array([[5.0, 0.0], [4.0, 0.1], [0.0, 3.0], [1.0, 2.0], [np.nan, np.nan]])
    assert select_au_maps(sel, 3).tolist() == [0, 2, 1]
    assert sorted(select_au_maps(sel, 5).tolist()) == [0, 1, 2, 3, 4]


def _structured(seed: int = 0):
    """3 expressions; 3 AU-driven maps + 37 high-variance noise maps."""
    rng = np.random.default_rng(seed)
    exprs = np.array(["happiness", "surprise", "anger"] * 30)
    au, names = weak_au_labels(list(exprs), ("AU12", "AU26", "AU23"))
    signal = au + 0.3 * rng.standard_normal(au.shape)
    noise = 3.0 * rng.standard_normal((len(exprs), 37))
    resp = np.concatenate([noise[:, :20], signal, noise[:, 20:]], axis=1)  # signal at 20, 21, 22
    return resp, au, list(exprs)


def test_feature_selection_prefers_au_selective_maps():
    resp, au, exprs = _structured()
    rows = feature_selection_comparison(resp, au, exprs, k_values=(3,), n_random=3, cv=3)
    by = {(r["k"], r["strategy"]): r for r in rows}
    assert set(by) == {(3, "au_selective"), (3, "random"), (3, "variance"), (40, "all")}
    assert by[(3, "au_selective")]["accuracy"] > 0.95
    assert by[(3, "au_selective")]["accuracy"] > by[(3, "random")]["accuracy"] + 0.2
    assert by[(3, "au_selective")]["accuracy"] > by[(3, "variance")]["accuracy"] + 0.2
    assert all(r["n_folds"] == 3 and r["n_samples"] == 90 for r in rows)


def test_feature_selection_needs_two_samples_per_class():
    resp, au, exprs = _structured()
    exprs[0] = "fear"
    with pytest.raises(ValueError, match="fear"):
        feature_selection_comparison(resp, au, exprs, k_values=(3,))


def test_run_writes_tables_and_heatmap(marked_faces, tmp_path):
    res = run_au_selectivity(Probe(), marked_faces, tmp_path, layers=["features"], card=PROBE_CARD,
                             k_values=(2, 4), n_random=2, cv=3, batch_size=8)
    assert res.selectivity.shape == (16, 2)
    with open(res.files["selectivity_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 and list(rows[0])[:5] == ["map", "layer", "channel", "AU04", "AU12"]
    best12 = max(rows, key=lambda r: float(r["AU12"]))
    assert best12["map"] == f"features:{MARKER_CHANNEL}"
    with open(res.files["ranking_csv"]) as f:
        rank = list(csv.DictReader(f))
    assert rank[0].keys() == {"au", "rank", "map", "selectivity"}
    with open(res.files["comparison_csv"]) as f:
        cmp_rows = list(csv.DictReader(f))
    assert {r["strategy"] for r in cmp_rows} == {"au_selective", "random", "variance", "all"}
    png = res.files["heatmap_png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_load_labels_csv_with_aus_boxes_and_weak_labels(tmp_path):
    img = artifact_path("0-f15-hao-ph.jpg")
    p = tmp_path / "labels.csv"
    p.write_text("path,x1,y1,x2,y2,AU06,AU12,expression\n"
                 f"{img},83,120,413,450,3,4,happy\n"
                 f"{img},,,,,0,,neutral\n")
    faces = load_labels_csv(p)
    assert faces.au_names == ("AU06", "AU12") and not faces.weak_au
    assert faces.expressions == ("happiness", "neutral")
    assert np.isnan(faces.au[1, 1]) and faces.au[0, 1] == 4
    assert faces.boxes[0].tolist() == [83, 120, 413, 450] and np.isnan(faces.boxes[1]).all()
    x = preprocess(faces.images, PROBE_CARD, faces.boxes)
    assert x.shape == (2, 3, 48, 48)

    weak = tmp_path / "weak.csv"
    weak.write_text(f"path,expression\n{img.name},happiness\n{img.name},surprise\n")
    faces = load_labels_csv(weak, images_dir=img.parent)
    assert faces.weak_au
    assert set(faces.au_names) == set(EXPRESSION_PROTOTYPE_AUS["happiness"]) | set(
        EXPRESSION_PROTOTYPE_AUS["surprise"])

    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,expression\n{img},joy\n")
    with pytest.raises(ValueError, match="joy"):
        load_labels_csv(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("path,expression\nnope.jpg,anger\n")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_labels_csv(missing)
