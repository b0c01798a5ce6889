"""CK+ (Extended Cohn-Kanade): posed expression sequences with emotion and FACS labels.

Format source: Lucey et al., "The Extended Cohn-Kanade Dataset (CK+): A complete dataset for action
unit and emotion-specified expression", CVPRW 2010, doi:10.1109/CVPRW.2010.5543262, and the
release's ``ReadMeCohnKanadeDatabase_website.txt``. Expected layout under ``root``::

    cohn-kanade-images/S005/001/S005_001_00000001.png ...   one folder per subject / sequence,
                                                           frames from neutral onset to peak
    Emotion/S005/001/S005_001_00000011_emotion.txt          one number, e.g. "   3.0000000e+00":
                                                           0 neutral, 1 anger, 2 contempt,
                                                           3 disgust, 4 fear, 5 happy, 6 sadness,
                                                           7 surprise (only 327 sequences have one)
    FACS/S005/001/S005_001_00000011_facs.txt                one line per AU of the peak frame:
                                                           "<AU> <intensity>" (intensity 0 =
                                                           unspecified, 1-5 = A-E)
    Landmarks/S005/001/S005_001_00000001_landmarks.txt      optional, 68 lines "x y"

Protocols: ``task="emotion"`` takes the last ``peak_frames`` frames of each emotion-labelled
sequence with its label (and the first frame as ``neutral`` when ``include_neutral``);
``task="au"`` takes the last ``peak_frames`` frames of each FACS-coded sequence with the AU
presence vector of ``au_codes``. Subject-exclusive ``n_folds``-fold cross-validation: subjects
sorted by id are dealt round-robin to folds; ``split="test"`` is fold ``fold``.
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
    five_from_68,
    parse_float,
    read_image,
    require_dir,
)

CKPLUS_CODES: tuple[str, ...] = (
    "neutral", "anger", "contempt", "disgust", "fear", "happiness", "sadness", "surprise")
"""Canonical emotion name of CK+ emotion codes 0..7."""

DEFAULT_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 12, 15, 17, 23, 24, 25, 27)
"""AUs commonly evaluated on CK+ (frequent enough for per-AU metrics)."""


@dataclasses.dataclass(frozen=True)
class _Rec:
    frame: Path
    subject: str
    label: int
    au: np.ndarray | None
    landmarks: Path | None


def read_emotion_file(path: Path) -> int:
    """Parse a ``*_emotion.txt`` into its code 0..7 (raises :class:`DatasetFormatError`)."""
    text = path.read_text().split()
    if len(text) != 1:
        raise DatasetFormatError(f"{path}: expected one number, got {len(text)} tokens")
    v = parse_float(text[0], path, 1)
    if v != int(v) or not 0 <= v <= 7:
        raise DatasetFormatError(f"{path}:1: emotion code must be 0..7, got {v}")
    return int(v)


def read_facs_file(path: Path) -> dict[int, float]:
    """Parse a ``*_facs.txt`` into ``{AU number: intensity 0..5}`` (0 = unspecified)."""
    out: dict[int, float] = {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DatasetFormatError(f"{path}:{no}: expected '<AU> <intensity>', got {line!r}")
        au, inten = parse_float(parts[0], path, no), parse_float(parts[1], path, no)
        if au != int(au) or au < 1 or not 0 <= inten <= 5:
            raise DatasetFormatError(f"{path}:{no}: bad AU {au} / intensity {inten}")
        out[int(au)] = inten
    return out


def read_landmarks_file(path: Path) -> np.ndarray:
    """Parse a CK+ ``*_landmarks.txt`` into (68, 2) float32."""
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if len(rows) != 68 or any(len(r) != 2 for r in rows):
        raise DatasetFormatError(f"{path}: expected 68 lines 'x y', got {len(rows)} lines")
    return np.array([[parse_float(v, path, i + 1) for v in r] for i, r in enumerate(rows)],
                    np.float32)


class CKPlus(FaceDataset):
    """CK+ frames with emotion labels or AU presence, subject-exclusive folds.

    Args:
        root: folder holding ``cohn-kanade-images/`` and ``Emotion/`` (and ``FACS/``).
        split: ``"train"`` (all folds but ``fold``), ``"test"`` (fold ``fold``) or ``"all"``.
        task: ``"emotion"`` or ``"au"``.
        fold: 1-based test fold.
        n_folds: number of subject-exclusive folds (10 is the usual CK+ protocol).
        peak_frames: how many last frames of each sequence to take.
        include_neutral: (emotion task) also take each labelled sequence's first frame as
            neutral.
        au_codes: (AU task) the AUs of the presence vector.
        landmark_points: 5 or 68 when ``Landmarks/`` exists (otherwise no landmarks).

    Samples: ``id``, ``image`` (RGB), ``subject``, ``label`` (emotion task, index into
    :attr:`label_names`) or ``au_presence`` ((A,) float32 0/1, AU task), ``landmarks`` if found.

    Raises:
        DatasetFormatError: missing folders, a label file without its image sequence, or a
            malformed label file.
    """

    label_names = CKPLUS_CODES

    def __init__(self, root: str | Path, split: Literal["train", "test", "all"] = "train",
                 task: Literal["emotion", "au"] = "emotion", fold: int = 1, n_folds: int = 10,
                 peak_frames: int = 3, include_neutral: bool = False,
                 au_codes: tuple[int, ...] = DEFAULT_AUS,
                 landmark_points: Literal[5, 68] = 5) -> None:
        super().__init__()
        if not 1 <= fold <= n_folds:
            raise ValueError(f"fold must be in 1..{n_folds}, got {fold}")
        if split not in ("train", "test", "all") or task not in ("emotion", "au"):
            raise ValueError(f"bad split {split!r} or task {task!r}")
        self.root = Path(root)
        self.task, self.landmark_points = task, landmark_points
        self.au_codes = tuple(au_codes)
        if task == "au":
            self.label_names = tuple(f"AU{a:02d}" for a in self.au_codes)
        img_root = require_dir(self.root / "cohn-kanade-images", "CK+ image folder")
        lab_root = require_dir(self.root / ("Emotion" if task == "emotion" else "FACS"),
                               "CK+ label folder")
        suffix = "_emotion.txt" if task == "emotion" else "_facs.txt"
        subjects = sorted(p.name for p in img_root.iterdir() if p.is_dir())
        if not subjects:
            raise DatasetFormatError(f"{img_root}: no subject folders")
        fold_of = {s: i % n_folds + 1 for i, s in enumerate(subjects)}
        for label_file in sorted(lab_root.glob(f"*/*/*{suffix}")):
            subj, seq = label_file.parent.parent.name, label_file.parent.name
            if split != "all" and (fold_of.get(subj) == fold) != (split == "test"):
                continue
            seq_dir = img_root / subj / seq
            frames = sorted(seq_dir.glob("*.png"))
            if not frames:
                raise DatasetFormatError(f"{label_file}: no frames in {seq_dir}")
            lm_dir = self.root / "Landmarks" / subj / seq
            def lm_of(fr: Path) -> Path | None:
                p = lm_dir / f"{fr.stem}_landmarks.txt"
                return p if p.is_file() else None
            peaks = frames[-peak_frames:]
            if task == "emotion":
                code = read_emotion_file(label_file)
                for fr in peaks:
                    self.records.append(_Rec(fr, subj, code, None, lm_of(fr)))
                if include_neutral and len(frames) > peak_frames:
                    self.records.append(_Rec(frames[0], subj, 0, None, lm_of(frames[0])))
            else:
                facs = read_facs_file(label_file)
                vec = np.array([1.0 if a in facs else 0.0 for a in self.au_codes], np.float32)
                for fr in peaks:
                    self.records.append(_Rec(fr, subj, -1, vec, lm_of(fr)))
        if not self.records:
            raise DatasetFormatError(f"{lab_root}: no '*{suffix}' files for split {split!r}")

    def sample_id(self, index: int) -> str:
        return self.records[index].frame.stem

    def load(self, index: int) -> Sample:
        rec = self.records[index]
        s: Sample = {"id": rec.frame.stem, "image": read_image(rec.frame), "subject": rec.subject}
        if rec.au is not None:
            s["au_presence"] = rec.au.copy()
        else:
            s["label"] = rec.label
        if rec.landmarks is not None:
            lm = read_landmarks_file(rec.landmarks)
            s["landmarks"] = five_from_68(lm) if self.landmark_points == 5 else lm
        return s
