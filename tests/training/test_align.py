"""Face geometry from the pipeline's detector + FaceMesh, cached per dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training import formats as F
from affectstream.training.align import (
    ALL_AUS,
    AU_POINTS_MESH,
    FaceGeometry,
    GeometryCache,
    PipelineFaceFinder,
    WithGeometry,
    au_points_from_mesh,
)
from affectstream.training.datasets import RafDB


@pytest.fixture(scope="module")
def finder() -> PipelineFaceFinder:
    return PipelineFaceFinder("short")


def test_au_point_table_covers_disfa_and_bp4d() -> None:
    from affectstream.operators.records import DISFA_AUS
    from affectstream.training.datasets.bp4d import BP4D_INTENSITY_AUS

    assert set(DISFA_AUS) | set(BP4D_INTENSITY_AUS) <= set(AU_POINTS_MESH)
    mesh = np.random.default_rng(0).random((468, 2)).astype(np.float32)
    pts = au_points_from_mesh(mesh, ("AU12", "AU25"))
    np.testing.assert_allclose(pts[0], mesh[[61, 291]])
    np.testing.assert_allclose(pts[1], mesh[[13, 14]])
    assert au_points_from_mesh(mesh[None].repeat(3, 0)).shape == (3, len(ALL_AUS), 2, 2)
    with pytest.raises(KeyError, match="AU99"):
        au_points_from_mesh(mesh, ("AU99",))


def test_finder_on_real_photos(finder: PipelineFaceFinder) -> None:
    for i in (0, 1, 4, 9):
        photo, box, lm = F.face_photo(i, 256)
        g = finder.find(photo)
        assert g is not None
        iou = _iou(g.bbox_xyxy, box)
        assert iou > 0.4, (i, g.bbox_xyxy, box)
        # eyes above the nose above the mouth; image-left eye first
        assert g.five[0, 0] < g.five[1, 0] and g.five[3, 0] < g.five[4, 0]
        assert g.five[:2, 1].max() < g.five[2, 1] < g.five[3:, 1].min()
        assert np.abs(g.five - lm).max() < 0.12 * 256  # near the approximate landmarks
    assert finder.find(np.zeros((128, 128, 3), np.uint8)) is None


def test_hint_box_picks_the_face() -> None:
    import cv2

    from affectstream.models.weights import artifact_path

    full = PipelineFaceFinder("full")
    img = cv2.cvtColor(cv2.imread(str(artifact_path("multi_face.jpg"))), cv2.COLOR_BGR2RGB)
    for b in F.FACE_BOXES["multi_face.jpg"]:
        g = full.find(img, np.array(b, np.float32))
        assert g is not None and _iou(g.bbox_xyxy, np.array(b, np.float32)) > 0.5
    # an annotated box where no face is detected gives no geometry (never another face)
    assert full.find(img, np.array([850, 20, 950, 120], np.float32)) is None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(x2 - x1, 0) * max(y2 - y1, 0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_cache_round_trip(tmp_path: Path) -> None:
    g = FaceGeometry(np.arange(4, dtype=np.float32), np.ones((5, 2), np.float32),
                     np.full((len(ALL_AUS), 2, 2), 3, np.float32), 0.9)
    c = GeometryCache(tmp_path / "g.npz")
    c.put("a", g)
    c.put("b", None)
    c.save()
    c2 = GeometryCache(tmp_path / "g.npz")
    got = c2.get("a")
    np.testing.assert_array_equal(got.bbox_xyxy, g.bbox_xyxy)
    np.testing.assert_array_equal(got.au_points, g.au_points)
    assert got.det_score == pytest.approx(0.9)
    assert c2.get("b") is None and c2.get("c") is False


class _Counting:
    key = "counting"

    def __init__(self, inner: PipelineFaceFinder, fail_ids: set[int]) -> None:
        self.inner, self.calls, self.fail = inner, 0, fail_ids

    def find(self, image, hint=None):
        self.calls += 1
        return None if self.calls in self.fail else self.inner.find(image, hint)


def test_with_geometry_caches_and_drops(finder: PipelineFaceFinder, tmp_path: Path) -> None:
    root = tmp_path / "raf"
    F.write_rafdb(root, n_train=5, n_test=1)
    base = RafDB(root, "train", image="original", landmarks="manual")
    c1 = _Counting(finder, fail_ids={2})
    ds = WithGeometry(base, c1, au_names=("AU12",), cache_dir=tmp_path / "cache")
    assert c1.calls == 5 and len(ds) == 4 and ds.dropped == 1
    s = ds[0]
    assert s["au_points"].shape == (1, 2, 2) and s["landmarks"].shape == (5, 2)
    c2 = _Counting(finder, fail_ids=set())
    again = WithGeometry(RafDB(root, "train", image="original", landmarks="manual"), c2,
                         cache_dir=tmp_path / "cache")
    assert c2.calls == 0 and len(again) == 4  # all from the cache, the miss included
    keep = WithGeometry(RafDB(root, "train", image="original", landmarks="manual"), c2,
                        cache_dir=tmp_path / "cache", fallback="dataset")
    assert len(keep) == 5
    miss = keep[1]  # no pipeline face: the dataset's manual landmarks are kept
    np.testing.assert_array_equal(miss["landmarks"], base.load(1)["landmarks"])
    assert keep.labels().tolist() == [base.records[i].label for i in range(5)]
