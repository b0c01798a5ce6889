"""Crop preparation equals the serving crop; augmentation moves every label with the image."""

from __future__ import annotations

import numpy as np
import pytest

from affectstream.operators.crops import bbox_affines, five_point_affines, transform_points, warp_crops
from tests.training import formats as F
from affectstream.training.augment import (
    FLIP_PERM_5,
    FLIP_PERM_68,
    AugmentConfig,
    FaceTransform,
    Preprocess,
    color_jitter,
    flip_permutation,
    random_affine,
)

STRONG = AugmentConfig(rotation_deg=25, scale=(0.8, 1.2), shift_frac=0.1, flip_p=0.5)


@pytest.mark.parametrize("perm", [FLIP_PERM_5, FLIP_PERM_68])
def test_flip_permutations_are_involutions(perm: tuple[int, ...]) -> None:
    p = np.array(perm)
    assert sorted(p) == list(range(len(p)))
    np.testing.assert_array_equal(p[p], np.arange(len(p)))


@pytest.mark.parametrize(("a", "b"), [(36, 45), (39, 42), (48, 54), (0, 16), (17, 26), (31, 35),
                                      (60, 64), (8, 8), (30, 30), (51, 51), (57, 57), (62, 62)])
def test_68_point_mirror_pairs(a: int, b: int) -> None:
    assert FLIP_PERM_68[a] == b and FLIP_PERM_68[b] == a


def test_flip_permutation_unknown_count() -> None:
    with pytest.raises(ValueError, match="468"):
        flip_permutation(468)


@pytest.mark.parametrize("alignment", ["5pt", "bbox"])
@pytest.mark.parametrize("color", ["rgb", "gray"])
def test_eval_crop_is_the_serving_crop(alignment: str, color: str) -> None:
    photo, box, lm = F.face_photo(3, 256)
    size = (112, 96)
    pre = Preprocess(size, color, (0.5,) * (1 if color == "gray" else 3),
                     (0.25,) * (1 if color == "gray" else 3), alignment, 1.2)
    out = FaceTransform(pre, None, want_landmarks=True)(
        {"image": photo, "bbox_xyxy": box, "landmarks": lm, "label": 2})
    # what operators.facetrack does for the serving crop
    aff = (five_point_affines(lm[None], size) if alignment == "5pt"
           else bbox_affines(box[None], size, 1.2))
    crop = warp_crops(photo, aff, size, gray=color == "gray")[0].astype(np.float32) / 255
    x = out["image"].numpy() * 0.25 + 0.5
    x = x[0] if color == "gray" else x.transpose(1, 2, 0)
    np.testing.assert_allclose(x, crop, atol=1e-6)
    np.testing.assert_allclose(out["landmarks"].numpy(), transform_points(lm[None], aff)[0],
                               atol=1e-4)
    assert int(out["label"]) == 2


def _dot_image(pts: np.ndarray, size: int = 200) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    for i, (x, y) in enumerate(pts):
        img[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2, i % 3] = 255
    return img


@pytest.mark.parametrize("seed", range(6))
def test_landmarks_and_au_points_follow_the_image(seed: int) -> None:
    lm = np.array([[70, 80], [130, 80], [100, 110], [78, 140], [122, 140]], np.float32)
    au = np.array([[[60, 60], [140, 60]], [[100, 125], [100, 150]]], np.float32)  # AU01, AU25
    img = _dot_image(np.concatenate([lm, au.reshape(-1, 2)]))
    pre = Preprocess((128, 128), "rgb", (0, 0, 0), (1, 1, 1), "bbox")
    tf = FaceTransform(pre, STRONG, want_landmarks=True, au_names=("AU01", "AU25"))
    s = {"image": img, "bbox_xyxy": np.array([10, 10, 190, 190], np.float32), "landmarks": lm,
         "au_points": au}
    rng = np.random.default_rng(seed)
    out = tf(s, rng)
    x = out["image"].numpy().transpose(1, 2, 0)
    _, flip = random_affine(np.random.default_rng(seed), (128, 128), STRONG)
    for p in np.concatenate([out["landmarks"].numpy(), out["au_points"].numpy().reshape(-1, 2)]):
        xi, yi = int(round(p[0])), int(round(p[1]))
        assert x[yi - 1:yi + 2, xi - 1:xi + 2].max() > 0.3, (seed, p)
    lm_out, au_out = out["landmarks"].numpy(), out["au_points"].numpy()
    # order is kept in image terms: landmark 0 is the image-left eye, AU pairs left first
    assert lm_out[0, 0] < lm_out[1, 0] and lm_out[3, 0] < lm_out[4, 0]
    assert au_out[0, 0, 0] < au_out[0, 1, 0]
    # the midline AU keeps upper-then-lower whatever the flip
    assert au_out[1, 0, 1] < au_out[1, 1, 1]
    assert isinstance(flip, bool)


def test_flip_really_happens_and_is_reproducible() -> None:
    flips = [random_affine(np.random.default_rng(s), (64, 64), STRONG)[1] for s in range(40)]
    assert 5 < sum(flips) < 35
    photo, box, lm = F.face_photo(0, 128)
    tf = FaceTransform(Preprocess((64, 64), "rgb", (0, 0, 0), (1, 1, 1), "5pt"), STRONG,
                       want_landmarks=True)
    s = {"image": photo, "landmarks": lm}
    a = tf(s, np.random.default_rng([1, 2, 3]))
    b = tf(s, np.random.default_rng([1, 2, 3]))
    c = tf(s, np.random.default_rng([1, 2, 4]))
    assert np.array_equal(a["image"].numpy(), b["image"].numpy())
    assert not np.array_equal(a["image"].numpy(), c["image"].numpy())


def test_color_jitter_range() -> None:
    img = np.full((8, 8, 3), 100, np.uint8)
    img[0, 0] = (200, 20, 60)
    cfg = AugmentConfig(brightness=0.5, contrast=0.5, saturation=0.5)
    outs = [color_jitter(img, np.random.default_rng(s), cfg) for s in range(20)]
    assert all(o.dtype == np.uint8 and o.shape == img.shape for o in outs)
    assert len({int(o[4, 4, 0]) for o in outs}) > 5  # brightness varies
    assert np.array_equal(color_jitter(img, np.random.default_rng(0), AugmentConfig()), img)


def test_saliency_maps_and_fixations_move_together() -> None:
    img = np.zeros((90, 160, 3), np.uint8)
    fix = np.zeros((90, 160), np.uint8)
    fix[30, 40] = fix[60, 120] = 1
    smap = np.zeros((90, 160), np.float32)
    smap[25:36, 35:46] = 1.0
    pre = Preprocess((45, 80), "rgb", (0, 0, 0), (1, 1, 1), "none")
    out = FaceTransform(pre, None)({"image": img, "saliency_map": smap, "fixations": fix})
    f = out["fixations"][0].numpy()
    assert f.sum() == 2 and f[15, 20] == 1 and f[30, 60] == 1
    assert out["saliency_map"][0, 15, 20] > 0.9 and out["saliency_map"][0, 30, 60] == 0


def test_missing_geometry_is_a_clear_error() -> None:
    photo, box, lm = F.face_photo(0, 64)
    with pytest.raises(ValueError, match="sample x: 5pt alignment needs"):
        FaceTransform(Preprocess((32, 32), alignment="5pt"))({"id": "x", "image": photo})


def test_pre_aligned_faces_get_template_landmarks() -> None:
    crop = F.face_crop(2, 100)
    tmpl = np.array([[30, 40], [70, 40], [50, 60], [35, 80], [65, 80]], np.float32)
    tf = FaceTransform(Preprocess((100, 100), alignment="none"), None, want_landmarks=True,
                       landmark_template=tmpl)
    np.testing.assert_allclose(tf({"image": crop})["landmarks"].numpy(), tmpl)
