"""Shared pieces of the dataset readers: the sample dict, errors, file and image helpers.

Every reader in :mod:`training.datasets` indexes its dataset's *published* on-disk layout at
construction (cheap text files only; images are opened lazily) and returns raw samples: plain
dicts of numpy arrays in the dataset's own pixel coordinates. Preparation for a network (face
alignment, augmentation, normalisation) is a separate step (:mod:`training.augment`), so the same
reader serves every model.

Sample keys (present only where the dataset provides them):

========================  ==================================================================
``id``                    str, unique within the dataset (e.g. ``"train_00001"``, ``"SN001/42"``)
``image``                 (H, W, 3) uint8 RGB
``label``                 int, index into the reader's ``label_names`` (-1: none)
``soft_label``            (C,) float32, sums to 1 (FERPlus vote distribution)
``landmarks``             (K, 2) float32 pixels of ``image`` (K = 5 or 68)
``bbox_xyxy``             (4,) float32 face box in pixels of ``image``
``attributes``            dict[str, int]: ``gender``, ``race``, ``age`` (RAF-DB codes)
``valence``, ``arousal``  float in [-1, 1] (AffectNet)
``au_intensity``          (A,) float32 FACS intensity 0-5, NaN where not coded
``au_presence``           (A,) float32 0/1, NaN where not coded
``saliency_map``          (H, W) float32 in [0, 1] (continuous fixation map)
``fixations``             (H, W) uint8 0/1 (binary fixation locations)
``subject``               str subject id (for subject-exclusive splits)
========================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch.utils.data

Sample = dict[str, Any]
"""A raw sample; see the module docstring for the keys."""

CANONICAL_EMOTIONS: tuple[str, ...] = (
    "anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
"""The project's canonical emotion names (DESIGN §4); readers map their codes onto these."""


class DatasetFormatError(ValueError):
    """A dataset file is missing or does not match the published format.

    The message always names the offending file (and line, where there is one).
    """


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise :class:`DatasetFormatError` naming it.

    Args:
        path: the expected file.
        what: what the file is, for the message (e.g. ``"RAF-DB partition label list"``).
    """
    if not path.is_file():
        raise DatasetFormatError(f"{what} not found: expected file {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise :class:`DatasetFormatError` naming it."""
    if not path.is_dir():
        raise DatasetFormatError(f"{what} not found: expected directory {path}")
    return path


def _decode(path: Path, flag: int) -> np.ndarray:
    if not path.is_file():
        raise DatasetFormatError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, flag) if data.size else None
    if img is None:
        raise DatasetFormatError(f"not a decodable image: {path}")
    return img


def read_image(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (grey images are replicated to 3 channels).

    Raises:
        DatasetFormatError: the file is missing or not a decodable image.
    """
    return cv2.cvtColor(_decode(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def read_grey(path: Path) -> np.ndarray:
    """Read an image file as (H, W) uint8 grey.

    Raises:
        DatasetFormatError: the file is missing or not a decodable image.
    """
    return _decode(path, cv2.IMREAD_GRAYSCALE)


def parse_float(text: str, path: Path, line_no: int) -> float:
    """``float(text)`` or a :class:`DatasetFormatError` naming ``path:line_no``."""
    try:
        return float(text)
    except ValueError:
        raise DatasetFormatError(f"{path}:{line_no}: expected a number, got {text!r}") from None


def five_from_68(pts: np.ndarray) -> np.ndarray:
    """Five points (left eye, right eye, nose tip, left / right mouth corner) from 68 (iBUG).

    "Left"/"right" are in image coordinates (the subject's right eye is the image-left one), the
    same order as RAF-DB's and the pipeline's 5-point landmarks.

    Args:
        pts: (68, 2) iBUG-68 landmarks (Sagonas et al., 300-W, 2013 mark-up).

    Returns:
        (5, 2) float32.
    """
    pts = np.asarray(pts, np.float32)
    if pts.shape != (68, 2):
        raise ValueError(f"landmarks must be of shape (68, 2), got {pts.shape}")
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]]).astype(
        np.float32)


class FaceDataset(torch.utils.data.Dataset):
    """Base of every reader: an indexed list of records plus a lazy loader.

    Subclasses fill ``self.records`` (one small object per sample) and implement
    :meth:`load`. ``__getitem__`` loads the raw sample and, when a ``transform`` is set, applies
    ``transform(sample, rng)`` with a generator seeded from ``(seed, epoch, index)``: random
    augmentation is then a pure function of those three numbers, so a resumed or multi-worker run
    draws exactly what an uninterrupted single-process run draws.

    Attributes:
        label_names: class names (canonical emotion names for FER datasets, ``AU06``... for AU
            datasets), in the order of the integer labels this reader returns.
        transform: ``(sample, rng) -> anything`` or ``None`` (raw samples).
        seed: base seed of the per-sample generators.
        epoch: current epoch (set by the trainer through :meth:`set_epoch`).
    """

    label_names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.records: list[Any] = []
        self.transform: Callable[[Sample, np.random.Generator], Any] | None = None
        self.seed = 0
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> Sample:  # pragma: no cover - abstract
        """The raw sample ``index`` (see the module docstring for its keys)."""
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        """The ``id`` of sample ``index`` without decoding its image (readers override this)."""
        return str(self.load(index)["id"])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator used for sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> Any:
        if index < 0 or index >= len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self.load(index)
        if self.transform is None:
            return sample
        return self.transform(sample, self.rng(index))

    def subset(self, indices: Sequence[int]) -> None:
        """Keep only ``records[i]`` for ``i`` in ``indices`` (in that order), in place."""
        self.records = [self.records[i] for i in indices]

    def labels(self) -> np.ndarray:
        """Integer labels of all records, without loading images (``-1`` where none)."""
        return np.array([getattr(r, "label", -1) for r in self.records], dtype=np.int64)
