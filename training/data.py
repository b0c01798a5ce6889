"""From a recipe's data section to readers with the right geometry and transform."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from affectstream.training.augment import AugmentConfig, FaceTransform, Preprocess
from affectstream.training.datasets import (
    BP4D,
    CAT2000,
    DISFA,
    FER2013,
    AffectNet,
    CKPlus,
    FaceDataset,
    FERPlus,
    RafDB,
)
from affectstream.training.recipes import AugmentSpec, Recipe

log = logging.getLogger(__name__)


def open_reader(spec: Any, root: Path, split: str, *, attributes: bool = False) -> FaceDataset:
    """The reader of ``spec.dataset`` for ``split`` (``"train"`` or ``"eval"``)."""
    train = split == "train"
    kind = spec.dataset
    if kind == "rafdb":
        manual = spec.manual_landmarks and spec.image == "original"
        return RafDB(root, spec.train_split if train else spec.eval_split, image=spec.image,
                     landmarks="manual" if manual else "none",
                     attributes=spec.attributes or attributes)
    if kind == "affectnet":
        return AffectNet(root, spec.train_split if train else spec.eval_split,
                         classes=spec.classes, landmark_points=5)
    if kind == "fer2013":
        return FER2013(root, spec.train_split if train else spec.eval_split)
    if kind == "ferplus":
        return FERPlus(root, spec.train_split if train else spec.eval_split,
                       label_mode=spec.label_mode)
    if kind == "ckplus":
        return CKPlus(root, "train" if train else "test", fold=spec.fold, n_folds=spec.n_folds,
                      peak_frames=spec.peak_frames, include_neutral=spec.include_neutral)
    if kind == "disfa":
        return DISFA(root, "train" if train else "test", fold=spec.fold, camera=spec.camera,
                     frame_step=spec.frame_step if train else spec.eval_frame_step,
                     frames_dir=spec.frames_dir)
    if kind == "bp4d":
        return BP4D(root, spec.train_split if train else spec.eval_split,
                    frame_step=spec.frame_step if train else spec.eval_frame_step)
    if kind == "cat2000":
        return CAT2000(root, "train" if train else "val", val_per_category=spec.val_per_category)
    raise ValueError(f"unknown dataset {kind!r}")


def build_dataset(recipe: Recipe, root: str | Path, split: str, card: Any,
                  input_size: tuple[int, int] | None = None, augment: bool | None = None,
                  progress: Callable[[int, int], None] | None = None) -> FaceDataset:
    """A reader for ``split`` with face geometry, subsetting and the network transform attached.

    Args:
        recipe: the recipe (its ``data``, ``augment``, ``train.seed``, ``model``).
        root: dataset folder.
        split: ``"train"`` or ``"eval"``.
        card: the model card (preprocessing).
        input_size: override of the card's input size.
        augment: apply the recipe's augmentation (default: on for ``"train"``).
        progress: geometry progress callback ``(done, total)``.

    Raises:
        training.datasets.DatasetFormatError: missing / malformed dataset files.
    """
    spec = recipe.data
    root = Path(root)
    au_names: tuple[str, ...] = ()
    if card.task == "au":
        au_names = tuple(card.label_names)
    ds = open_reader(spec, root, split)
    limit = spec.max_train_samples if split == "train" else spec.max_eval_samples
    if limit is not None and len(ds) > limit:
        ds.subset(range(limit))
    if card.task == "au" and tuple(ds.label_names) != au_names:
        au_names = tuple(ds.label_names)
    if spec.geometry == "pipeline":
        from affectstream.training.align import WithGeometry

        finder = _finder(spec.detector)
        ds = WithGeometry(ds, finder, au_names=au_names, fallback=spec.geometry_fallback,
                          progress=progress)
    alignment = None if spec.alignment == "card" else spec.alignment
    pre = Preprocess.from_card(card, alignment=alignment, input_size=input_size)
    do_aug = (split == "train") if augment is None else augment
    aug = _augment_config(recipe.augment) if do_aug else None
    want_lm = "landmarks_in" in card.extra
    tmpl = card.extra.get("landmark_template")
    if tmpl is not None:  # template in card-input pixels -> this run's input size
        tmpl = np.asarray(tmpl, np.float32) * (np.array(pre.input_size[::-1], np.float32)
                                               / np.array(card.input_size[::-1], np.float32))
    ds.transform = FaceTransform(pre, aug, want_landmarks=want_lm,
                                 au_names=au_names if card.task == "au" else (),
                                 landmark_template=tmpl)
    ds.seed = recipe.train.seed
    return ds


_FINDERS: dict[str, Any] = {}


def _finder(model: str) -> Any:
    from affectstream.training.align import PipelineFaceFinder

    if model not in _FINDERS:
        _FINDERS[model] = PipelineFaceFinder(model)
    return _FINDERS[model]


def _augment_config(a: AugmentSpec) -> AugmentConfig:
    return AugmentConfig(a.rotation_deg, tuple(a.scale), a.shift_frac, a.flip_p, a.brightness,
                         a.contrast, a.saturation)
