"""Crop preparation and landmark-aware augmentation: one affine warp per sample.

Evaluation crops are cut exactly as the serving face-track stage cuts them
(:mod:`operators.facetrack`): the alignment matrix comes from
:func:`operators.crops.five_point_affines` (card alignment ``5pt``) or
:func:`operators.crops.bbox_affines` (``bbox``), and the warp is
:func:`operators.crops.warp_crops` (bilinear, replicated border, grey conversion before the warp).
Training composes a random similarity about the crop centre (rotation, scale, shift, horizontal
flip) with that matrix, so the image is resampled once, and moves every geometric label with the
same matrix: 5- or 68-point landmarks (a flip also swaps left/right indices,
:func:`flip_permutation`), AU point pairs (a flip swaps the two points of bilateral AUs,
:data:`training.align.MIDLINE_AUS` excepted), saliency maps and fixation points. Colour jitter
(brightness, contrast, saturation) follows the warp.

All randomness comes from the ``numpy.random.Generator`` passed in (seeded per sample and epoch by
:class:`training.datasets.base.FaceDataset`), so augmentation is reproducible and resumable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from affectstream.operators.crops import bbox_affines, five_point_affines, warp_crops
from affectstream.training.align import MIDLINE_AUS
from affectstream.training.datasets.base import Sample

FLIP_PERM_5: tuple[int, ...] = (1, 0, 2, 4, 3)
"""Mirror partner of each 5-point landmark (eyes, nose, mouth corners)."""


def _perm68() -> tuple[int, ...]:
    p = list(range(68))
    pairs = [(i, 16 - i) for i in range(8)]                       # jaw 0-16
    pairs += [(17 + i, 26 - i) for i in range(5)]                 # brows 17-26
    pairs += [(31, 35), (32, 34)]                                 # nostrils 31-35
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]   # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]                       # inner lips
    for a, b in pairs:
        p[a], p[b] = b, a
    return tuple(p)


FLIP_PERM_68: tuple[int, ...] = _perm68()
"""Mirror partner of each iBUG-68 landmark (300-W mark-up; nose bridge 27-30, 33, 51, 57, 62, 66
and chin 8 are their own partners)."""


def flip_permutation(num_points: int) -> np.ndarray:
    """Index permutation that restores left/right order after a horizontal flip.

    Args:
        num_points: 5 or 68.

    Raises:
        ValueError: another landmark count (pass an explicit permutation instead).
    """
    if num_points == 5:
        return np.array(FLIP_PERM_5)
    if num_points == 68:
        return np.array(FLIP_PERM_68)
    raise ValueError(f"no flip permutation for {num_points} landmarks (known: 5, 68)")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation (all zero = none).

    Attributes:
        rotation_deg: rotation drawn uniformly from [-rotation_deg, rotation_deg] degrees.
        scale: zoom factor drawn uniformly from [scale[0], scale[1]] (> 1 zooms in).
        shift_frac: shift drawn uniformly from [-shift_frac, shift_frac] times the crop side.
        flip_p: probability of a horizontal flip.
        brightness: factor drawn from [1 - brightness, 1 + brightness].
        contrast: factor drawn from [1 - contrast, 1 + contrast] around the mean grey.
        saturation: factor drawn from [1 - saturation, 1 + saturation] (colour crops only).
    """

    rotation_deg: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    shift_frac: float = 0.0
    flip_p: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0


def random_affine(rng: np.random.Generator, size_hw: tuple[int, int], cfg: AugmentConfig
                  ) -> tuple[np.ndarray, bool]:
    """A random similarity (plus optional mirror) about the crop centre.

    Pixel-centre coordinates (OpenCV): the centre is ``((W-1)/2, (H-1)/2)`` and a flip maps
    ``x -> W - 1 - x``.

    Returns:
        (3, 3) float64 matrix acting on crop coordinates, and whether it mirrors.
    """
    h, w = size_hw
    ang = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    s = rng.uniform(cfg.scale[0], cfg.scale[1])
    tx, ty = rng.uniform(-cfg.shift_frac, cfg.shift_frac, 2) * np.array([w, h])
    flip = bool(rng.random() < cfg.flip_p)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    ca, sa = np.cos(ang) * s, np.sin(ang) * s
    rs = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1.0]])
    f = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
    to0 = np.array([[1, 0, -c[0]], [0, 1, -c[1]], [0, 0, 1.0]])
    back = np.array([[1, 0, c[0] + tx], [0, 1, c[1] + ty], [0, 0, 1.0]])
    return back @ rs @ f @ to0, flip


def color_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness, contrast and (colour images) saturation jitter of a uint8 image."""
    b = rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    s = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
    if cfg.brightness == cfg.contrast == cfg.saturation == 0:
        return img
    x = img.astype(np.float32) * b
    grey = x if x.ndim == 2 else x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = (x - grey.mean()) * c + grey.mean()
    if x.ndim == 3:
        g = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        x = g + (x - g) * s
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def apply_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) or (3, 3) affine to (..., 2) points -> float32."""
    p = np.asarray(pts, np.float64)
    return (p @ m[:2, :2].T + m[:2, 2]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a network wants its input (from its :class:`models.ModelCard`).

    Attributes:
        input_size: (H, W) pixels.
        color: ``"rgb"``, ``"bgr"`` or ``"gray"``.
        mean, std: per-channel normalisation after scaling to [0, 1].
        alignment: ``"5pt"``, ``"bbox"`` (as serving) or ``"none"`` (whole image resized; for
            datasets of pre-aligned crops and for saliency scenes).
        crop_scale: bbox square side / box long side (``card.extra["crop_scale"]``, default 1).
    """

    input_size: tuple[int, int]
    color: str = "rgb"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    alignment: str = "bbox"
    crop_scale: float = 1.0

    @staticmethod
    def from_card(card: Any, alignment: str | None = None,
                  input_size: tuple[int, int] | None = None) -> Preprocess:
        """From a model card, optionally overriding the alignment or the input size."""
        return Preprocess(tuple(input_size or card.input_size), card.color, tuple(card.mean),
                          tuple(card.std), alignment or card.alignment,
                          float(card.extra.get("crop_scale", 1.0)))


class FaceTransform:
    """Raw sample -> network-ready dict of tensors (the ``transform`` of a reader).

    Args:
        pre: the network's preprocessing.
        augment: random augmentation, or ``None`` (evaluation: the serving crop exactly).
        want_landmarks: output ``landmarks`` (5 or 68, 2) in crop pixels (AMP-Net input).
        au_names: names of the ``au_points`` rows (flip swaps bilateral pairs); empty: no
            ``au_points`` output.

    Output keys: ``image`` (C, H, W) float32 normalised; ``id``; and, from the sample,
    ``label`` int64, ``soft_label``, ``attributes`` (dict of int64), ``au_intensity``,
    ``au_presence``, ``valence``, ``arousal``, ``landmarks``, ``au_points``, ``saliency_map``
    (1, H, W) in [0, 1], ``fixations`` (1, H, W) 0/1.

    Raises:
        ValueError: the sample lacks the geometry the alignment needs (the message names it).
    """

    def __init__(self, pre: Preprocess, augment: AugmentConfig | None = None,
                 want_landmarks: bool = False, au_names: Sequence[str] = (),
                 landmark_template: np.ndarray | None = None) -> None:
        if pre.alignment not in ("5pt", "bbox", "none"):
            raise ValueError(f"alignment must be 5pt, bbox or none, got {pre.alignment!r}")
        self.pre = pre
        self.augment = augment
        self.want_landmarks = want_landmarks
        self.au_names = tuple(au_names)
        self.au_swap = np.array([a not in MIDLINE_AUS for a in self.au_names], bool)
        self.landmark_template = (None if landmark_template is None
                                  else np.asarray(landmark_template, np.float32))
        self._mean = np.asarray(pre.mean, np.float32)
        self._std = np.asarray(pre.std, np.float32)

    # -- geometry -----------------------------------------------------------------------------

    def base_matrix(self, sample: Sample) -> np.ndarray:
        """(2, 3) matrix from sample pixels to crop pixels, as the serving face-track stage."""
        h, w = self.pre.input_size
        sid = sample.get("id", "?")
        if self.pre.alignment == "5pt":
            lm = sample.get("landmarks")
            if lm is None or len(lm) != 5:
                raise ValueError(f"sample {sid}: 5pt alignment needs (5, 2) 'landmarks'")
            return five_point_affines(np.asarray(lm, np.float32)[None], (h, w))[0]
        if self.pre.alignment == "bbox":
            bb = sample.get("bbox_xyxy")
            if bb is None:
                raise ValueError(f"sample {sid}: bbox alignment needs 'bbox_xyxy'")
            return bbox_affines(np.asarray(bb, np.float64)[None], (h, w), self.pre.crop_scale)[0]
        ih, iw = sample["image"].shape[:2]
        sx, sy = w / iw, h / ih
        return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> dict:
        h, w = self.pre.input_size
        gray = self.pre.color == "gray"
        m = np.vstack([self.base_matrix(sample), [0, 0, 1.0]])
        flip = False
        if self.augment is not None:
            if rng is None:
                rng = np.random.default_rng()
            a, flip = random_affine(rng, (h, w), self.augment)
            m = a @ m
        img = sample["image"]
        post = m @ np.linalg.inv(np.vstack([self.base_matrix(sample), [0, 0, 1.0]]))
        if self.pre.alignment == "none":
            # whole images (scenes, pre-aligned faces): anti-aliased resize, then the augmentation
            src = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            crop = warp_crops(src, post[None, :2], (h, w), gray=gray)[0]
        else:
            crop = warp_crops(img, m[None, :2], (h, w), gray=gray)[0]
        if self.augment is not None:
            crop = color_jitter(crop, rng, self.augment)
        x = crop.astype(np.float32) / 255.0
        if gray:
            x = ((x - self._mean[0]) / self._std[0])[None]
        else:
            if self.pre.color == "bgr":
                x = x[..., ::-1]
            x = ((x - self._mean) / self._std).transpose(2, 0, 1)
        out: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(x, np.float32)),
                               "id": str(sample.get("id", ""))}
        for k in ("label",):
            if k in sample:
                out[k] = torch.tensor(int(sample[k]), dtype=torch.int64)
        for k in ("soft_label", "au_intensity", "au_presence"):
            if k in sample:
                out[k] = torch.as_tensor(np.asarray(sample[k], np.float32))
        for k in ("valence", "arousal"):
            if k in sample:
                out[k] = torch.tensor(float(sample[k]), dtype=torch.float32)
        if "attributes" in sample:
            out["attributes"] = {k: torch.tensor(int(v)) for k, v in sample["attributes"].items()}
        if self.want_landmarks:
            lm = sample.get("landmarks")
            if lm is not None:
                p = apply_points(m, lm)
            elif self.pre.alignment == "none" and self.landmark_template is not None:
                # a pre-aligned face (e.g. RAF-DB Image/aligned): its points sit on the template
                p = apply_points(post, self.landmark_template)
            else:
                raise ValueError(f"sample {sample.get('id', '?')}: the model needs 'landmarks'")
            if flip:
                p = p[flip_permutation(len(p))]
            out["landmarks"] = torch.from_numpy(p)
        if self.au_names:
            ap = sample.get("au_points")
            if ap is None:
                raise ValueError(f"sample {sample.get('id', '?')}: AU heatmaps need 'au_points'")
            p = apply_points(m, ap)
            if flip:
                p[self.au_swap] = p[self.au_swap][:, ::-1]
            out["au_points"] = torch.from_numpy(np.ascontiguousarray(p))
        if "saliency_map" in sample:
            sm = sample["saliency_map"].astype(np.float32)
            if self.pre.alignment == "none":
                sm = cv2.resize(sm, (w, h), interpolation=cv2.INTER_AREA)
                sm = cv2.warpAffine(sm, post[:2], (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            else:
                sm = cv2.warpAffine(sm, m[:2], (w, h), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            out["saliency_map"] = torch.from_numpy(np.clip(sm, 0, 1))[None]
        if "fixations" in sample:
            ys, xs = np.nonzero(sample["fixations"])
            pts = apply_points(m, np.stack([xs, ys], 1).astype(np.float32))
            pr = np.rint(pts).astype(np.int64)
            ok = (pr[:, 0] >= 0) & (pr[:, 0] < w) & (pr[:, 1] >= 0) & (pr[:, 1] < h)
            fx = np.zeros((h, w), np.float32)
            fx[pr[ok, 1], pr[ok, 0]] = 1.0
            out["fixations"] = torch.from_numpy(fx)[None]
        return out
