"""AffectNet, manually annotated part (expression, valence, arousal).

Format source: the AffectNet release README of Mollahosseini, Hasani & Mahoor, "AffectNet: A
Database for Facial Expression, Valence, and Arousal Computing in the Wild", IEEE TAFFC 10(1)
2019, doi:10.1109/TAFFC.2017.2740923 (Section 3 and the distributed ``README.txt``). Expected
layout under ``root``::

    Manually_Annotated_file_lists/training.csv     (split="train")
    Manually_Annotated_file_lists/validation.csv   (split="val"; the paper's test protocol)
    Manually_Annotated_Images/<subDirectory_filePath>

Each CSV has the header ``subDirectory_filePath,face_x,face_y,face_width,face_height,
facial_landmarks,expression,valence,arousal``: the image path relative to the images folder, the
face box (x, y, width, height in pixels), 68 landmarks as ``"x1;y1;x2;y2;..."``, the expression code
(0 Neutral, 1 Happiness, 2 Sadness, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt, 8 None,
9 Uncertain, 10 No-Face) and valence/arousal in [-1, 1] (-2 where not annotated).

``classes=7`` keeps codes 0-6 (AffectNet-7), ``classes=8`` keeps 0-7 (AffectNet-8); codes 8-10
are always dropped.
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
    five_from_68,
    parse_float,
    read_image,
    require_dir,
    require_file,
)

AFFECTNET_CODES: tuple[str, ...] = (
    "neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
"""Canonical emotion name of AffectNet expression codes 0..7."""

COLUMNS: tuple[str, ...] = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
    "expression", "valence", "arousal")
"""Header of the AffectNet file lists."""


@dataclasses.dataclass(frozen=True)
class _Rec:
    rel_path: str
    bbox_xyxy: np.ndarray
    landmarks68: np.ndarray | None
    label: int
    valence: float
    arousal: float


class AffectNet(FaceDataset):
    """AffectNet-7 / AffectNet-8 with the published face boxes, landmarks, valence and arousal.

    Args:
        root: folder holding ``Manually_Annotated_file_lists/`` and ``Manually_Annotated_Images/``.
        split: ``"train"`` (``training.csv``) or ``"val"`` (``validation.csv``).
        classes: 7 or 8.
        landmark_points: 5 (eyes, nose, mouth corners from the 68) or 68.

    Samples: ``id``, ``image`` (the whole photo, RGB), ``bbox_xyxy``, ``landmarks`` ((5|68, 2)
    pixels of ``image``; absent where the CSV has none), ``label``, ``valence``, ``arousal``
    (NaN where AffectNet has -2).

    Raises:
        DatasetFormatError: missing CSV / images folder, wrong header or malformed row (the
            message names the file and line).
    """

    def __init__(self, root: str | Path, split: Literal["train", "val"] = "train",
                 classes: Literal[7, 8] = 7, landmark_points: Literal[5, 68] = 5) -> None:
        super().__init__()
        if classes not in (7, 8):
            raise ValueError(f"classes must be 7 or 8, got {classes}")
        if landmark_points not in (5, 68):
            raise ValueError(f"landmark_points must be 5 or 68, got {landmark_points}")
        self.root = Path(root)
        self.classes, self.landmark_points = classes, landmark_points
        self.label_names = AFFECTNET_CODES[:classes]
        fname = {"train": "training.csv", "val": "validation.csv"}.get(split)
        if fname is None:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        path = require_file(self.root / "Manually_Annotated_file_lists" / fname,
                            "AffectNet file list")
        self.image_root = require_dir(self.root / "Manually_Annotated_Images",
                                      "AffectNet image folder")
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != COLUMNS:
                raise DatasetFormatError(
                    f"{path}:1: expected header {','.join(COLUMNS)}, got {header}")
            for no, row in enumerate(reader, 2):
                if not row:
                    continue
                if len(row) != len(COLUMNS):
                    raise DatasetFormatError(
                        f"{path}:{no}: expected {len(COLUMNS)} columns, got {len(row)}")
                code = int(parse_float(row[6], path, no))
                if not 0 <= code <= 10:
                    raise DatasetFormatError(f"{path}:{no}: expression code {code} not in 0..10")
                if code >= classes:
                    continue
                x, y, w, h = (parse_float(v, path, no) for v in row[1:5])
                lm = None
                if row[5].strip():
                    vals = [parse_float(v, path, no) for v in row[5].split(";") if v.strip()]
                    if len(vals) != 136:
                        raise DatasetFormatError(
                            f"{path}:{no}: facial_landmarks must hold 68 x;y pairs, got "
                            f"{len(vals)} numbers")
                    lm = np.asarray(vals, np.float32).reshape(68, 2)
                va = [parse_float(v, path, no) for v in row[7:9]]
                va = [float("nan") if v <= -2 else v for v in va]
                self.records.append(_Rec(row[0], np.array([x, y, x + w, y + h], np.float32), lm,
                                         code, va[0], va[1]))
        if not self.records:
            raise DatasetFormatError(f"{path}: no usable rows for AffectNet-{classes}")

    def sample_id(self, index: int) -> str:
        return self.records[index].rel_path

    def load(self, index: int) -> Sample:
        rec = self.records[index]
        s: Sample = {"id": rec.rel_path, "image": read_image(self.image_root / rec.rel_path),
                     "bbox_xyxy": rec.bbox_xyxy.copy(), "label": rec.label,
                     "valence": rec.valence, "arousal": rec.arousal}
        if rec.landmarks68 is not None:
            s["landmarks"] = (five_from_68(rec.landmarks68) if self.landmark_points == 5
                              else rec.landmarks68.copy())
        return s
