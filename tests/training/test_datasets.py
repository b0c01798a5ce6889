"""Every reader on a tiny dataset written in its real format: read back exactly; broken files
raise errors that name them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.training import formats as F
from affectstream.training.datasets import (
    BP4D,
    CAT2000,
    DISFA,
    FER2013,
    AffectNet,
    CKPlus,
    DatasetFormatError,
    FERPlus,
    RafDB,
    extract_frames,
)
from affectstream.training.datasets.base import five_from_68
from affectstream.training.datasets.disfa import fold_subjects


def _decoded(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------------ RAF-DB


@pytest.fixture(scope="module")
def rafdb(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("rafdb")
    return root, F.write_rafdb(root, n_train=9, n_test=4)


def test_rafdb_reads_labels_landmarks_attributes(rafdb) -> None:
    root, w = rafdb
    ds = RafDB(root, "train", image="original", landmarks="manual", attributes=True)
    assert len(ds) == 9
    assert ds.label_names[ds[0]["label"]] == "surprise"  # code 1
    for i in range(len(ds)):
        s = ds[i]
        exp = w[s["id"]]
        assert s["label"] == exp["label"]
        np.testing.assert_allclose(s["landmarks"], exp["landmarks"], atol=1e-5)
        np.testing.assert_allclose(s["bbox_xyxy"], exp["bbox"], atol=1e-5)
        assert s["attributes"] == exp["attributes"]
        np.testing.assert_array_equal(
            s["image"], _decoded(root / "Image/original" / f"{s['id']}.jpg"))
    test = RafDB(root, "test", image="aligned")
    assert [s["id"] for s in (test[i] for i in range(len(test)))] == [
        "test_0001", "test_0002", "test_0003", "test_0004"]
    assert test[0]["image"].shape == (100, 100, 3)
    assert "landmarks" not in test[0] and "attributes" not in test[0]


def test_rafdb_errors_name_the_file(rafdb, tmp_path) -> None:
    root, _ = rafdb
    with pytest.raises(DatasetFormatError, match="list_patition_label.txt"):
        RafDB(tmp_path)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(root, bad)
    (bad / "Annotation/manual/train_00002_manu_attri.txt").write_text("1 2\n3\n")
    with pytest.raises(DatasetFormatError, match="train_00002_manu_attri.txt"):
        RafDB(bad, attributes=True)
    (bad / "EmoLabel/list_patition_label.txt").write_text("train_00001.jpg 9\n")
    with pytest.raises(DatasetFormatError, match=r"list_patition_label.txt:1"):
        RafDB(bad)
    with pytest.raises(ValueError, match="original"):
        RafDB(root, image="aligned", landmarks="manual")


# --------------------------------------------------------------------------------- AffectNet


@pytest.mark.parametrize("classes", [7, 8])
def test_affectnet_7_and_8(tmp_path, classes: int) -> None:
    w = F.write_affectnet(tmp_path, n_train=22, n_val=3)
    ds = AffectNet(tmp_path, "train", classes=classes)
    kept = {k: v for k, v in w.items() if v["code"] < classes and k.startswith(("1/", "2/", "3/"))
            and int(k.split("img")[1][:4]) < 100}
    assert len(ds) == len(kept)
    assert ds.label_names[-1] == ("contempt" if classes == 8 else "anger")
    for i in range(len(ds)):
        s = ds[i]
        exp = w[s["id"]]
        assert s["label"] == exp["code"]
        np.testing.assert_allclose(s["bbox_xyxy"], exp["bbox"])
        np.testing.assert_allclose(s["landmarks"], five_from_68(exp["lm68"]), atol=1e-5)
        if exp["arousal"] == -2:
            assert np.isnan(s["arousal"])
        else:
            assert s["valence"] == pytest.approx(exp["valence"])
            assert s["arousal"] == pytest.approx(exp["arousal"])
        np.testing.assert_array_equal(
            s["image"], _decoded(tmp_path / "Manually_Annotated_Images" / s["id"]))


def test_affectnet_bad_header_and_landmarks(tmp_path) -> None:
    F.write_affectnet(tmp_path, 3, 1)
    p = tmp_path / "Manually_Annotated_file_lists/training.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join([lines[0].replace("valence", "val")] + lines[1:]))
    with pytest.raises(DatasetFormatError, match=r"training.csv:1"):
        AffectNet(tmp_path)
    parts = lines[1].split(",")
    parts[5] = "1;2;3"
    p.write_text("\n".join([lines[0], ",".join(parts)]))
    with pytest.raises(DatasetFormatError, match=r"training.csv:2: facial_landmarks"):
        AffectNet(tmp_path)


# ------------------------------------------------------------------------------ FER2013(+)


def test_fer2013_pixels_exact(tmp_path) -> None:
    w = F.write_fer2013(tmp_path, n_train=6, n_val=2, n_test=3)["rows"]
    for split, usage in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest")):
        ds = FER2013(tmp_path, split)
        rows = [(i, r) for i, r in enumerate(w) if r["usage"] == usage]
        assert len(ds) == len(rows)
        for k, (i, r) in enumerate(rows):
            s = ds[k]
            assert s["id"] == f"fer{i:07d}"
            assert s["label"] == r["code"]
            np.testing.assert_array_equal(s["image"][..., 0], r["pixels"])
            np.testing.assert_array_equal(s["image"][..., 2], r["pixels"])


def test_ferplus_majority_and_probability(tmp_path) -> None:
    w = F.write_fer2013(tmp_path, n_train=12, n_val=0, n_test=0)["rows"]
    maj = FERPlus(tmp_path, "train", "majority")
    prob = FERPlus(tmp_path, "train", "probability")
    expect = [i for i, r in enumerate(w) if r["name"]]
    assert [maj.sample_id(k) for k in range(len(maj))] == [f"fer{i:07d}" for i in expect]
    for k, i in enumerate(expect):
        v = w[i]["votes"][:8].astype(float)
        assert maj[k]["label"] == i % 8
        np.testing.assert_allclose(prob[k]["soft_label"], v / v.sum(), atol=1e-6)
    assert maj.label_names[:2] == ("neutral", "happiness")


def test_fer2013_malformed_pixels(tmp_path) -> None:
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n3,1 2 3,Training\n")
    with pytest.raises(DatasetFormatError, match=r"fer2013.csv:2: expected 2304"):
        FER2013(tmp_path)


# ---------------------------------------------------------------------------------------- CK+


def test_ckplus_peaks_folds_and_facs(tmp_path) -> None:
    w = F.write_ckplus(tmp_path, n_subjects=6, frames=4)
    train = CKPlus(tmp_path, "train", fold=1, n_folds=3, peak_frames=2, include_neutral=True)
    test = CKPlus(tmp_path, "test", fold=1, n_folds=3, peak_frames=2)
    assert {s for s in (train[i]["subject"] for i in range(len(train)))}.isdisjoint(
        {test[i]["subject"] for i in range(len(test))})
    assert len(train) + len(test) == 6 * 2 + 4  # 4 neutral first frames in train
    for i in range(len(test)):
        s = test[i]
        assert s["label"] == w[s["subject"]]["code"]
        assert s["id"].endswith(("_00000003", "_00000004"))
        assert s["image"].shape == (240, 240, 3)
    neutral = [train[i] for i in range(len(train)) if train[i]["id"].endswith("_00000001")]
    assert neutral and all(s["label"] == 0 for s in neutral)
    au = CKPlus(tmp_path, "all", task="au", peak_frames=1, au_codes=(1, 4, 12, 17, 25))
    for i in range(len(au)):
        s = au[i]
        facs = w[s["subject"]]["facs"]
        np.testing.assert_array_equal(s["au_presence"],
                                      [1.0 if a in facs else 0.0 for a in (1, 4, 12, 17, 25)])


def test_ckplus_missing_sequence(tmp_path) -> None:
    F.write_ckplus(tmp_path, n_subjects=2, frames=2)
    import shutil

    shutil.rmtree(tmp_path / "cohn-kanade-images" / "S005" / "001")
    (tmp_path / "cohn-kanade-images" / "S005" / "001").mkdir()
    with pytest.raises(DatasetFormatError, match=r"S005_001_00000002_emotion.txt: no frames"):
        CKPlus(tmp_path, "all")


# -------------------------------------------------------------------------------------- DISFA


def test_disfa_labels_and_video_frames(tmp_path) -> None:
    w = F.write_disfa(tmp_path, subjects=("SN003", "SN001"), n_frames=12)
    assert "SN003" in fold_subjects(1, "test") and "SN001" in fold_subjects(1, "train")
    train = DISFA(tmp_path, "train", fold=1)
    test = DISFA(tmp_path, "test", fold=1, frame_step=3)
    assert train.subjects == ("SN001",) and test.subjects == ("SN003",)
    assert len(train) == 12 and len(test) == 4
    for ds, si in ((train, 1), (test, 0)):
        for k in (len(ds) - 1, 0, len(ds) // 2):  # out of order: seeks
            s = ds[k]
            fr = s["frame"]
            np.testing.assert_array_equal(
                s["au_intensity"], [F.disfa_intensity(si, fr, a) for a in range(12)])
            src = w[s["subject"]]["frames"][fr - 1].astype(float)
            assert np.abs(s["image"].astype(float) - src).mean() < 4.0  # MJPEG round trip
            # and not the neighbouring frame
            other = w[s["subject"]]["frames"][(fr % 12)].astype(float)
            assert np.abs(s["image"] - src).mean() < np.abs(s["image"] - other).mean()
    n = extract_frames(tmp_path, tmp_path / "frames", subjects=("SN001",))
    assert n == 12
    fromdir = DISFA(tmp_path, "train", fold=1, frames_dir=tmp_path / "frames")
    assert np.abs(fromdir[5]["image"].astype(float) - train[5]["image"]).mean() < 2.0


def test_disfa_inconsistent_label_files(tmp_path) -> None:
    F.write_disfa(tmp_path, subjects=("SN001",), n_frames=4)
    (tmp_path / "ActionUnit_Labels/SN001/SN001_au12.txt").write_text("1,0\n2,7\n")
    with pytest.raises(DatasetFormatError, match=r"SN001_au12.txt:2"):
        DISFA(tmp_path, subjects=("SN001",))
    (tmp_path / "ActionUnit_Labels/SN001/SN001_au12.txt").write_text("1,0\n2,1\n")
    with pytest.raises(DatasetFormatError, match=r"SN001_au12.txt: frame numbers differ"):
        DISFA(tmp_path, subjects=("SN001",))
    (tmp_path / "ActionUnit_Labels/SN001/SN001_au26.txt").unlink()
    with pytest.raises(DatasetFormatError, match="SN001_au26.txt"):
        DISFA(tmp_path, subjects=("SN001",))


# --------------------------------------------------------------------------------------- BP4D


def test_bp4d_fera2015_layout(tmp_path) -> None:
    w = F.write_bp4d(tmp_path, train=("F001", "M001"), dev=("F002",), n_frames=5)
    train = BP4D(tmp_path, "train")
    assert len(train) == 2 * 4  # the frame with AU10 = 9 dropped
    for i in range(len(train)):
        s = train[i]
        subj, _, fr = s["id"].split("/")
        np.testing.assert_array_equal(s["au_intensity"], w[subj][int(fr)])
        np.testing.assert_array_equal(
            s["image"], _decoded(tmp_path / "BP4D-training" / subj / "T1" / f"{fr}.jpg"))
    dev = BP4D(tmp_path, "dev", drop_uncoded=False)
    assert len(dev) == 5 and np.isnan(dev[1]["au_intensity"][1])
    assert dev.label_names == ("AU06", "AU10", "AU12", "AU14", "AU17")


def test_bp4d_missing_au_folder(tmp_path) -> None:
    F.write_bp4d(tmp_path, n_frames=2)
    import shutil

    shutil.rmtree(tmp_path / "AUCoding/AU_INT/AU14")
    with pytest.raises(DatasetFormatError, match="AU_INT/AU14"):
        BP4D(tmp_path)


# ------------------------------------------------------------------------------------ CAT2000


def test_cat2000_maps_and_fixations(tmp_path) -> None:
    w = F.write_cat2000(tmp_path, per_category=4)
    train = CAT2000(tmp_path, "train", val_per_category=1)
    val = CAT2000(tmp_path / "trainSet", "val", val_per_category=1)
    assert len(train) == 9 and len(val) == 3
    for ds in (train, val):
        for i in range(len(ds)):
            s = ds[i]
            np.testing.assert_array_equal(s["fixations"], w[s["id"]]["fixations"])
            assert s["fixations"].sum() > 0
            assert np.abs(s["saliency_map"] * 255 - w[s["id"]]["map"]).max() <= 3
            assert s["image"].shape == (108, 192, 3)


def test_cat2000_bad_mat(tmp_path) -> None:
    F.write_cat2000(tmp_path, per_category=1, categories=("Social",))
    import scipy.io

    scipy.io.savemat(str(tmp_path / "trainSet/FIXATIONLOCS/Social/001.mat"), {"other": 1})
    with pytest.raises(DatasetFormatError, match=r"001.mat: no variable 'fixLocs'"):
        CAT2000(tmp_path, "all")[0]


def test_disfa_labels_past_the_video_end_are_skipped(tmp_path) -> None:
    F.write_disfa(tmp_path, subjects=("SN001",), n_frames=6)
    for au in F.DISFA_AU_NUMBERS:
        p = tmp_path / f"ActionUnit_Labels/SN001/SN001_au{au}.txt"
        p.write_text(p.read_text() + "7,0\n")
    ds = DISFA(tmp_path, subjects=("SN001",))
    assert [ds.sample_id(i) for i in range(len(ds))] == [f"SN001/{f}" for f in range(1, 7)]
