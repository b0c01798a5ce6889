"""RAF-DB (Real-world Affective Faces Database), basic-emotion subset.

Format source: the RAF-DB release README ("basic" folder) of Li, Deng & Du, "Reliable
Crowdsourcing and Deep Locality-Preserving Learning for Expression Recognition in the Wild",
CVPR 2017, doi:10.1109/CVPR.2017.277 (http://www.whdeng.cn/RAF/model1.html). Expected layout
under ``root`` (the ``basic`` folder)::

    EmoLabel/list_patition_label.txt          "<name>.jpg <code>" per line, e.g. "train_00001.jpg 5"
                                              (sic: "patition"); code 1..7 = surprise, fear,
                                              disgust, happiness, sadness, anger, neutral
    Image/aligned/<name>_aligned.jpg          100x100 aligned faces   (image="aligned")
    Image/original/<name>.jpg                 original photos         (image="original")
    Annotation/manual/<name>_manu_attri.txt   5 lines "x<TAB>y" (left eye, right eye, nose tip,
                                              left mouth corner, right mouth corner; pixels of the
                                              original image), then gender (0 male, 1 female,
                                              2 unsure), race (0 Caucasian, 1 African-American,
                                              2 Asian), age (0: 0-3, 1: 4-19, 2: 20-39, 3: 40-69,
                                              4: 70+), one integer per line
    Annotation/boundingbox/<name>_boundingbox.txt   "x1 y1 x2 y2" (original image pixels)

The split is given by the name prefix (``train_`` / ``test_``). Only the files a configuration
needs are required: the manual annotation when ``attributes`` or ``landmarks="manual"``, the
bounding box when ``image="original"`` and it exists (used as ``bbox_xyxy``).
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
    parse_float,
    read_image,
    require_dir,
    require_file,
)

RAFDB_CODES: tuple[str, ...] = (
    "surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
"""Canonical emotion name of RAF-DB basic codes 1..7 (index = code - 1)."""

GENDERS: tuple[str, ...] = ("male", "female", "unsure")
RACES: tuple[str, ...] = ("caucasian", "african-american", "asian")
AGES: tuple[str, ...] = ("0-3", "4-19", "20-39", "40-69", "70+")
ATTRIBUTE_CLASSES: dict[str, tuple[str, ...]] = {"gender": GENDERS, "race": RACES, "age": AGES}
"""Class names of the RAF-DB manual attributes, in code order (used by DSAN's first stage)."""


@dataclasses.dataclass(frozen=True)
class _Rec:
    name: str  # e.g. "train_00001"
    label: int
    landmarks: np.ndarray | None
    attributes: dict[str, int] | None


def read_partition_list(path: Path) -> list[tuple[str, int]]:
    """Parse ``EmoLabel/list_patition_label.txt`` into ``[(stem, code 1..7), ...]``.

    Raises:
        DatasetFormatError: missing file, or a line that is not "<name>.jpg <1..7>".
    """
    require_file(path, "RAF-DB partition label list")
    out = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].endswith(".jpg") or parts[1] not in "1234567":
            raise DatasetFormatError(f"{path}:{no}: expected '<name>.jpg <1..7>', got {line!r}")
        out.append((parts[0][:-4], int(parts[1])))
    if not out:
        raise DatasetFormatError(f"{path}: no entries")
    return out


def read_manual_annotation(path: Path) -> tuple[np.ndarray, dict[str, int]]:
    """Parse a ``*_manu_attri.txt``: (5, 2) float32 landmarks and gender/race/age codes.

    Raises:
        DatasetFormatError: missing file, fewer than 8 lines, or a value out of range.
    """
    require_file(path, "RAF-DB manual annotation")
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 8:
        raise DatasetFormatError(
            f"{path}: expected 5 landmark lines and gender/race/age lines, got {len(lines)} lines")
    pts = []
    for i in range(5):
        xy = lines[i].split()
        if len(xy) != 2:
            raise DatasetFormatError(f"{path}:{i + 1}: expected 'x y', got {lines[i]!r}")
        pts.append([parse_float(xy[0], path, i + 1), parse_float(xy[1], path, i + 1)])
    attrs = {}
    for j, key in enumerate(("gender", "race", "age")):
        v = parse_float(lines[5 + j].strip(), path, 6 + j)
        if v != int(v) or not 0 <= v < len(ATTRIBUTE_CLASSES[key]):
            raise DatasetFormatError(
                f"{path}:{6 + j}: {key} code must be 0..{len(ATTRIBUTE_CLASSES[key]) - 1}, got {v}")
        attrs[key] = int(v)
    return np.asarray(pts, np.float32), attrs


class RafDB(FaceDataset):
    """RAF-DB basic: 7 emotion classes, 12,271 train / 3,068 test images in the full release.

    Args:
        root: the ``basic`` folder (holding ``EmoLabel/``, ``Image/``, ``Annotation/``).
        split: ``"train"`` or ``"test"``.
        image: ``"aligned"`` (``Image/aligned/*_aligned.jpg``, 100x100) or ``"original"``.
        landmarks: ``"manual"`` to attach the 5 manual landmarks (only with ``image="original"``:
            they are in original-image pixels), ``"none"`` otherwise.
        attributes: attach the manual gender/race/age codes (``sample["attributes"]``).

    Returns samples with ``id``, ``image``, ``label`` (index into :attr:`label_names`, which are
    canonical emotion names in RAF-DB code order), and optionally ``landmarks``,
    ``attributes``, ``bbox_xyxy``.

    Raises:
        DatasetFormatError: a required file is missing or malformed (the message names it).
        ValueError: bad arguments.
    """

    label_names = RAFDB_CODES

    def __init__(self, root: str | Path, split: Literal["train", "test"] = "train",
                 image: Literal["aligned", "original"] = "aligned",
                 landmarks: Literal["manual", "none"] = "none", attributes: bool = False) -> None:
        super().__init__()
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if image not in ("aligned", "original"):
            raise ValueError(f"image must be 'aligned' or 'original', got {image!r}")
        if landmarks == "manual" and image != "original":
            raise ValueError("manual landmarks are in original-image pixels: use image='original'")
        self.root = Path(root)
        self.split, self.image, self.with_landmarks = split, image, landmarks == "manual"
        self.with_attributes = attributes
        entries = read_partition_list(self.root / "EmoLabel" / "list_patition_label.txt")
        img_dir = self.root / "Image" / image
        require_dir(img_dir, f"RAF-DB {image} image folder")
        for stem, code in entries:
            if not stem.startswith(split + "_"):
                continue
            lm = attrs = None
            if self.with_landmarks or attributes:
                lm, attrs = read_manual_annotation(
                    self.root / "Annotation" / "manual" / f"{stem}_manu_attri.txt")
            self.records.append(_Rec(stem, code - 1, lm if self.with_landmarks else None,
                                     attrs if attributes else None))
        if not self.records:
            raise DatasetFormatError(
                f"{self.root / 'EmoLabel' / 'list_patition_label.txt'}: no '{split}_' entries")

    def sample_id(self, index: int) -> str:
        return self.records[index].name

    def image_path(self, index: int) -> Path:
        """Path of sample ``index``'s image file."""
        name = self.records[index].name
        if self.image == "aligned":
            return self.root / "Image" / "aligned" / f"{name}_aligned.jpg"
        return self.root / "Image" / "original" / f"{name}.jpg"

    def load(self, index: int) -> Sample:
        rec = self.records[index]
        s: Sample = {"id": rec.name, "image": read_image(self.image_path(index)),
                     "label": rec.label}
        if rec.landmarks is not None:
            s["landmarks"] = rec.landmarks.copy()
        if rec.attributes is not None:
            s["attributes"] = dict(rec.attributes)
        if self.image == "original":
            bb = self.root / "Annotation" / "boundingbox" / f"{rec.name}_boundingbox.txt"
            if bb.is_file():
                vals = bb.read_text().split()
                if len(vals) != 4:
                    raise DatasetFormatError(f"{bb}: expected 'x1 y1 x2 y2', got {vals}")
                s["bbox_xyxy"] = np.array([parse_float(v, bb, 1) for v in vals], np.float32)
        return s
