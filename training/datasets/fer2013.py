"""FER2013 (``fer2013.csv``) and FERPlus (``fer2013new.csv``).

Format sources:

* FER2013: Goodfellow et al., "Challenges in Representation Learning: A report on three machine
  learning contests", ICONIP 2013, doi:10.1007/978-3-642-42051-1_16, and the Kaggle release
  ``fer2013.csv``: header ``emotion,pixels,Usage``; ``emotion`` 0..6 = Angry, Disgust, Fear, Happy,
  Sad, Surprise, Neutral; ``pixels`` 2304 space-separated grey values (48x48, row-major);
  ``Usage`` one of ``Training``, ``PublicTest``, ``PrivateTest``.
* FERPlus: Barsoum et al., "Training Deep Networks for Facial Expression Recognition with
  Crowd-Sourced Label Distribution", ICMI 2016, doi:10.1145/2993148.2993165, and the
  ``microsoft/FERPlus`` README: ``fer2013new.csv`` has the header ``Usage,Image name,neutral,
  happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF``, one row per row of
  ``fer2013.csv`` in the same order, with the votes of 10 taggers; rows with an empty
  ``Image name`` are images FERPlus removed.

Expected layout: ``root/fer2013.csv`` (and ``root/fer2013new.csv`` for FERPlus). Splits:
``train`` = Training, ``val`` = PublicTest, ``test`` = PrivateTest.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from affectstream.training.datasets.base import (
    DatasetFormatError,
    FaceDataset,
    Sample,
    parse_float,
    require_file,
)

FER2013_CODES: tuple[str, ...] = (
    "anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
"""Canonical emotion name of FER2013 codes 0..6."""

FERPLUS_CLASSES: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
"""Canonical names of the 8 FERPlus emotion vote columns, in file order."""

_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
_FERPLUS_HEADER = ("Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger",
                   "disgust", "fear", "contempt", "unknown", "NF")


@dataclasses.dataclass(frozen=True)
class _Rec:
    row: int  # 0-based data row in fer2013.csv
    pixels: np.ndarray  # (48, 48) uint8
    label: int
    soft: np.ndarray | None = None


def _parse_pixels(text: str, path: Path, no: int) -> np.ndarray:
    try:
        px = np.array(text.split(), dtype=np.int64)
    except ValueError:
        raise DatasetFormatError(f"{path}:{no}: pixels must be integers") from None
    if px.size != 48 * 48 or px.min(initial=0) < 0 or px.max(initial=0) > 255:
        raise DatasetFormatError(f"{path}:{no}: expected 2304 grey values 0..255, got {px.size}")
    return px.astype(np.uint8).reshape(48, 48)


def _read_fer2013(path: Path) -> list[tuple[int, np.ndarray, str]]:
    require_file(path, "FER2013 csv")
    out = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["emotion", "pixels", "Usage"]:
            raise DatasetFormatError(
                f"{path}:1: expected header emotion,pixels,Usage, got {header}")
        for no, row in enumerate(reader, 2):
            if len(row) != 3:
                raise DatasetFormatError(f"{path}:{no}: expected 3 columns, got {len(row)}")
            code = int(parse_float(row[0], path, no))
            if not 0 <= code <= 6:
                raise DatasetFormatError(f"{path}:{no}: emotion code {code} not in 0..6")
            if row[2] not in _USAGE.values():
                raise DatasetFormatError(f"{path}:{no}: unknown Usage {row[2]!r}")
            out.append((code, _parse_pixels(row[1], path, no), row[2]))
    return out


class FER2013(FaceDataset):
    """FER2013: 48x48 grey faces, 7 classes (28,709 / 3,589 / 3,589).

    Args:
        root: folder holding ``fer2013.csv``.
        split: ``"train"``, ``"val"`` (PublicTest) or ``"test"`` (PrivateTest).

    Samples: ``id`` (``"fer<row:07d>"``, the FERPlus image name), ``image`` (48, 48, 3) uint8
    (grey replicated), ``label``.

    Raises:
        DatasetFormatError: missing or malformed ``fer2013.csv`` (file and line named).
    """

    label_names = FER2013_CODES

    def __init__(self, root: str | Path, split: Literal["train", "val", "test"] = "train") -> None:
        super().__init__()
        if split not in _USAGE:
            raise ValueError(f"split must be one of {sorted(_USAGE)}, got {split!r}")
        self.root = Path(root)
        rows = _read_fer2013(self.root / "fer2013.csv")
        self.records = [_Rec(i, px, code) for i, (code, px, use) in enumerate(rows)
                        if use == _USAGE[split]]

    def sample_id(self, index: int) -> str:
        return f"fer{self.records[index].row:07d}"

    def load(self, index: int) -> Sample:
        rec = self.records[index]
        s: Sample = {"id": f"fer{rec.row:07d}", "image": np.repeat(rec.pixels[:, :, None], 3, 2),
                     "label": rec.label}
        if rec.soft is not None:
            s["soft_label"] = rec.soft.copy()
        return s


class FERPlus(FER2013):
    """FERPlus: FER2013 images re-labelled by 10 taggers into 8 classes.

    Args:
        root: folder holding ``fer2013.csv`` and ``fer2013new.csv``.
        split: as :class:`FER2013`.
        label_mode: ``"majority"`` (Barsoum et al. §3.2: the most-voted emotion; images whose
            top vote is ``unknown``/``NF`` or tied are dropped) or ``"probability"`` (the vote
            distribution over the 8 emotions as ``soft_label``, ``label`` = its argmax; images
            without emotion votes are dropped).

    Raises:
        DatasetFormatError: missing or malformed CSVs, or row counts that differ.
    """

    label_names = FERPLUS_CLASSES

    def __init__(self, root: str | Path, split: Literal["train", "val", "test"] = "train",
                 label_mode: Literal["majority", "probability"] = "majority") -> None:
        FaceDataset.__init__(self)
        if split not in _USAGE:
            raise ValueError(f"split must be one of {sorted(_USAGE)}, got {split!r}")
        if label_mode not in ("majority", "probability"):
            raise ValueError(f"label_mode must be 'majority' or 'probability', got {label_mode!r}")
        self.root = Path(root)
        rows = _read_fer2013(self.root / "fer2013.csv")
        path = require_file(self.root / "fer2013new.csv", "FERPlus csv")
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != _FERPLUS_HEADER:
                raise DatasetFormatError(
                    f"{path}:1: expected header {','.join(_FERPLUS_HEADER)}, got {header}")
            votes_rows = list(reader)
        if len(votes_rows) != len(rows):
            raise DatasetFormatError(f"{path}: {len(votes_rows)} rows, but fer2013.csv has "
                                     f"{len(rows)}; the files must correspond row by row")
        for i, (vrow, (_, px, use)) in enumerate(zip(votes_rows, rows)):
            no = i + 2
            if len(vrow) != len(_FERPLUS_HEADER):
                raise DatasetFormatError(f"{path}:{no}: expected 12 columns, got {len(vrow)}")
            if vrow[0] != use:
                raise DatasetFormatError(
                    f"{path}:{no}: Usage {vrow[0]!r} differs from fer2013.csv ({use!r})")
            if use != _USAGE[split] or not vrow[1].strip():
                continue
            votes = np.array([parse_float(v, path, no) for v in vrow[2:]], np.float32)
            emo = votes[:8]
            if emo.sum() <= 0:
                continue
            if label_mode == "majority":
                top = votes.max()
                winners = np.flatnonzero(votes == top)
                if len(winners) != 1 or winners[0] >= 8:
                    continue
                self.records.append(_Rec(i, px, int(winners[0])))
            else:
                soft = emo / emo.sum()
                self.records.append(_Rec(i, px, int(np.argmax(soft)), soft))
