"""BP4D-Spontaneous as distributed for FERA 2015: AU intensity of AU06, AU10, AU12, AU14, AU17.

Format sources: Valstar et al., "FERA 2015 - Second Facial Expression Recognition and Analysis
Challenge", IEEE FG 2015, doi:10.1109/FG.2015.7284874 (Section 3: BP4D training and development
partitions, intensity sub-challenge on these five AUs) and Zhang et al., "BP4D-Spontaneous",
Image Vis. Comput. 32(10) 2014, doi:10.1016/j.imavis.2014.06.002. Expected layout under ``root``::

    AUCoding/AU_INT/AU06/F001_T1_AU06.csv     one per subject, task and AU; lines
    AUCoding/AU_INT/AU10/F001_T1_AU10.csv     "<frame>,<intensity>" (no header; a header line,
    ...                                       if present, is skipped), intensity 0..5, 9 = not coded
    BP4D-training/F001/T1/<frame>.jpg         FERA 2015 training partition frames
    BP4D-development/F002/T1/<frame>.jpg      FERA 2015 development partition frames
    (or Sequences/F001/T1/<frame>.jpg, the BP4D-Spontaneous release's 2D frames)

Frame image names are the frame number, with or without zero padding. Splits: ``train`` and
``dev`` are FERA 2015's subject lists (21 and 20 subjects). Frames where any of the AUs is 9 are
dropped (``drop_uncoded``) or kept with NaN.
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

BP4D_INTENSITY_AUS: tuple[str, ...] = ("AU06", "AU10", "AU12", "AU14", "AU17")
"""The five AUs with intensity codes in BP4D / FERA 2015."""

FERA2015_TRAIN: tuple[str, ...] = (
    "F001", "F003", "F005", "F007", "F009", "F011", "F013", "F015", "F017", "F019", "F021", "F023",
    "M001", "M003", "M005", "M007", "M009", "M011", "M013", "M015", "M017")
FERA2015_DEV: tuple[str, ...] = (
    "F002", "F004", "F006", "F008", "F010", "F012", "F014", "F016", "F018", "F020", "F022", "M002",
    "M004", "M006", "M008", "M010", "M012", "M014", "M016", "M018")
"""FERA 2015 subject partitions (BP4D-training, BP4D-development)."""

_IMAGE_DIRS = ("BP4D-training", "BP4D-development", "Sequences")


def read_intensity_csv(path: Path) -> dict[int, float]:
    """Parse a FERA 2015 ``<subj>_<task>_AUxx.csv`` into ``{frame: intensity}`` (9 -> NaN).

    Raises:
        DatasetFormatError: missing file or a malformed line.
    """
    require_file(path, "BP4D AU intensity file")
    out: dict[int, float] = {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        parts = [p.strip() for p in line.split(",")]
        if not line.strip():
            continue
        if no == 1 and not parts[0].lstrip("-").replace(".", "").isdigit():
            continue  # header
        if len(parts) < 2:
            raise DatasetFormatError(f"{path}:{no}: expected 'frame,intensity', got {line!r}")
        fr, v = parse_float(parts[0], path, no), parse_float(parts[1], path, no)
        if v == 9:
            v = float("nan")
        elif not 0 <= v <= 5:
            raise DatasetFormatError(f"{path}:{no}: intensity must be 0..5 or 9, got {v}")
        out[int(fr)] = v
    return out


@dataclasses.dataclass(frozen=True)
class _Rec:
    path: Path
    subject: str
    au: np.ndarray


class BP4D(FaceDataset):
    """BP4D / FERA 2015 AU-intensity frames.

    Args:
        root: folder holding ``AUCoding/AU_INT/`` and the frame folders.
        split: ``"train"`` (FERA 2015 training subjects), ``"dev"`` (development subjects) or
            ``"all"``.
        frame_step: take every ``frame_step``-th coded frame.
        drop_uncoded: drop frames where any AU is 9 (not coded).
        subjects: explicit subject list (overrides ``split``).

    Samples: ``id`` (``"F001/T1/2440"``), ``subject``, ``image`` (RGB), ``au_intensity`` (5,)
    float32 in :data:`BP4D_INTENSITY_AUS` order (NaN: not coded).

    Raises:
        DatasetFormatError: missing folders/files, malformed lines, or a coded frame without an
            image (the message names the session folder).
    """

    label_names = BP4D_INTENSITY_AUS

    def __init__(self, root: str | Path, split: Literal["train", "dev", "all"] = "train",
                 frame_step: int = 1, drop_uncoded: bool = True,
                 subjects: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        int_root = require_dir(self.root / "AUCoding" / "AU_INT", "BP4D AU intensity folder")
        for au in BP4D_INTENSITY_AUS:
            require_dir(int_root / au, f"BP4D {au} intensity folder")
        if subjects is None:
            subjects = {"train": FERA2015_TRAIN, "dev": FERA2015_DEV,
                        "all": FERA2015_TRAIN + FERA2015_DEV}[split]
        img_roots = [self.root / d for d in _IMAGE_DIRS if (self.root / d).is_dir()]
        if not img_roots:
            raise DatasetFormatError(
                f"{self.root}: no frame folder (expected one of {', '.join(_IMAGE_DIRS)})")
        sessions = sorted({p.name[: -len("_AU06.csv")] for p in (int_root / "AU06").glob("*.csv")})
        for sess in sessions:
            subj, _, task = sess.partition("_")
            if subj not in subjects:
                continue
            codes = [read_intensity_csv(int_root / au / f"{sess}_{au}.csv")
                     for au in BP4D_INTENSITY_AUS]
            frames = sorted(set(codes[0]).intersection(*codes[1:]))
            sess_dir = next((r / subj / task for r in img_roots if (r / subj / task).is_dir()),
                            None)
            if sess_dir is None:
                raise DatasetFormatError(
                    f"no frame folder for {sess}: expected {img_roots[0] / subj / task}")
            by_num = {}
            for p in sess_dir.iterdir():
                if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.stem.isdigit():
                    by_num[int(p.stem)] = p
            kept = 0
            for fr in frames:
                vec = np.array([c[fr] for c in codes], np.float32)
                if drop_uncoded and np.isnan(vec).any():
                    continue
                if fr not in by_num:
                    continue  # coded frames without an image (FERA only ships a subset)
                if kept % frame_step == 0:
                    self.records.append(_Rec(by_num[fr], subj, vec))
                kept += 1
        if not self.records:
            raise DatasetFormatError(f"{int_root}: no coded frames with images for split {split!r}")

    def sample_id(self, index: int) -> str:
        rec = self.records[index]
        return f"{rec.subject}/{rec.path.parent.name}/{rec.path.stem}"

    def load(self, index: int) -> Sample:
        rec = self.records[index]
        p = rec.path
        return {"id": f"{rec.subject}/{p.parent.name}/{p.stem}", "subject": rec.subject,
                "image": read_image(p), "au_intensity": rec.au.copy()}
