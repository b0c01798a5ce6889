"""CAT2000 saliency benchmark, training set (images with fixation maps and locations).

Format source: Borji & Itti, "CAT2000: A Large Scale Fixation Dataset for Boosting Saliency
Research", CVPR 2015 workshop, arXiv:1505.03581, and the MIT/Tuebingen saliency benchmark's
``trainSet`` download (http://saliency.mit.edu). Expected layout under ``root`` (the ``trainSet``
folder, or its parent)::

    Stimuli/<Category>/001.jpg ...          20 categories x 100 images, 1920x1080
    FIXATIONMAPS/<Category>/001.jpg         continuous fixation map (grey, same size)
    FIXATIONLOCS/<Category>/001.mat         MATLAB file with variable ``fixLocs``: binary map of
                                            fixated pixels (same size)

Split: within each category, images sorted by name; the last ``val_per_category`` go to
``val``, the rest to ``train``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from affectstream.training.datasets.base import (
    DatasetFormatError,
    FaceDataset,
    Sample,
    read_grey,
    read_image,
    require_dir,
    require_file,
)


def read_fixlocs(path: Path) -> np.ndarray:
    """Read ``fixLocs`` from a CAT2000 ``.mat`` as (H, W) uint8 0/1.

    Raises:
        DatasetFormatError: missing file, not a MATLAB file, or no ``fixLocs`` variable.
    """
    import scipy.io

    require_file(path, "CAT2000 fixation locations")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types for non-MAT content
        raise DatasetFormatError(f"{path}: not a readable MATLAB file ({e})") from None
    if "fixLocs" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetFormatError(f"{path}: no variable 'fixLocs' (has {keys})")
    arr = np.asarray(mat["fixLocs"])
    if arr.ndim != 2:
        raise DatasetFormatError(f"{path}: fixLocs must be 2-D, got shape {arr.shape}")
    return (arr > 0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class _Rec:
    category: str
    stem: str
    label: int = -1


class CAT2000(FaceDataset):
    """CAT2000 train set as saliency samples.

    Args:
        root: the ``trainSet`` folder or its parent.
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_per_category: images per category held out for ``val``.
        categories: restrict to these categories.

    Samples: ``id`` (``"Action/001"``), ``image`` (RGB), ``saliency_map`` (H, W) float32 in
    [0, 1], ``fixations`` (H, W) uint8 0/1.

    Raises:
        DatasetFormatError: missing folders, a stimulus without its map / locations, or sizes
            that differ (the message names the files).
    """

    label_names = ("saliency",)

    def __init__(self, root: str | Path, split: Literal["train", "val", "all"] = "train",
                 val_per_category: int = 10, categories: tuple[str, ...] | None = None) -> None:
        super().__init__()
        root = Path(root)
        if not (root / "Stimuli").is_dir() and (root / "trainSet" / "Stimuli").is_dir():
            root = root / "trainSet"
        self.root = root
        stim = require_dir(root / "Stimuli", "CAT2000 Stimuli folder")
        require_dir(root / "FIXATIONMAPS", "CAT2000 FIXATIONMAPS folder")
        require_dir(root / "FIXATIONLOCS", "CAT2000 FIXATIONLOCS folder")
        cats = sorted(p.name for p in stim.iterdir() if p.is_dir())
        if categories is not None:
            cats = [c for c in cats if c in categories]
        for cat in cats:
            stems = sorted(p.stem for p in (stim / cat).glob("*.jpg"))
            cut = max(len(stems) - val_per_category, 0)
            chosen = {"train": stems[:cut], "val": stems[cut:], "all": stems}[split]
            for s in chosen:
                require_file(root / "FIXATIONMAPS" / cat / f"{s}.jpg", "CAT2000 fixation map")
                require_file(root / "FIXATIONLOCS" / cat / f"{s}.mat",
                             "CAT2000 fixation locations")
                self.records.append(_Rec(cat, s))
        if not self.records:
            raise DatasetFormatError(f"{stim}: no stimuli for split {split!r}")

    def sample_id(self, index: int) -> str:
        rec = self.records[index]
        return f"{rec.category}/{rec.stem}"

    def load(self, index: int) -> Sample:
        rec = self.records[index]
        img = read_image(self.root / "Stimuli" / rec.category / f"{rec.stem}.jpg")
        fmap_path = self.root / "FIXATIONMAPS" / rec.category / f"{rec.stem}.jpg"
        fmap = read_grey(fmap_path).astype(np.float32) / 255.0
        loc_path = self.root / "FIXATIONLOCS" / rec.category / f"{rec.stem}.mat"
        locs = read_fixlocs(loc_path)
        for p, a in ((fmap_path, fmap), (loc_path, locs)):
            if a.shape != img.shape[:2]:
                raise DatasetFormatError(
                    f"{p}: size {a.shape} differs from its stimulus {img.shape[:2]}")
        return {"id": f"{rec.category}/{rec.stem}", "image": img, "saliency_map": fmap,
                "fixations": locs}
