"""DISFA (Denver Intensity of Spontaneous Facial Action): 12 AU intensities per video frame.

Format source: Mavadati et al., "DISFA: A Spontaneous Facial Action Intensity Database", IEEE
TAFFC 4(2) 2013, doi:10.1109/T-AFFC.2013.4, and the release's ``README``. Expected layout under
``root``::

    ActionUnit_Labels/SN001/SN001_au1.txt ... SN001_au26.txt   one line per frame
                                                            "<frame>,<intensity>", frame 1-based,
                                                            intensity 0..5 (FACS A-E)
    Videos_LeftCamera/LeftVideoSN001_comp.avi                 (camera="left")
    Videos_RightCamera/RightVideoSN001_comp.avi               (camera="right")

Labelled frame ``n`` is video frame ``n - 1`` (0-based). Decoding 27 long AVIs at random is slow;
:func:`extract_frames` writes ``<frames_dir>/SN001/<n:05d>.jpg`` once, and the reader uses them
when given ``frames_dir``.

Protocol: subject-exclusive 3-fold cross-validation over the 27 subjects with the partition used
by JAA-Net (Shao et al., ECCV 2018) and later AU papers: parts P1-P3 below; fold 1 tests on P3,
fold 2 on P2, fold 3 on P1, training on the other two.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from affectstream.operators.records import DISFA_AUS
from affectstream.training.datasets.base import (
    DatasetFormatError,
    FaceDataset,
    Sample,
    parse_float,
    read_image,
    require_dir,
    require_file,
)
from affectstream.training.datasets.video import VideoFrames

log = logging.getLogger(__name__)

DISFA_PARTS: tuple[tuple[str, ...], ...] = (
    ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
    ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
    ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
)
"""The three subject parts P1, P2, P3 of the DISFA 3-fold protocol."""

FOLD_TEST_PART = {1: 2, 2: 1, 3: 0}
"""Fold number -> index of the part it tests on."""


def fold_subjects(fold: int, split: Literal["train", "test"]) -> tuple[str, ...]:
    """Subjects of ``split`` in 3-fold ``fold`` (1..3)."""
    if fold not in FOLD_TEST_PART:
        raise ValueError(f"DISFA fold must be 1, 2 or 3, got {fold}")
    t = FOLD_TEST_PART[fold]
    if split == "test":
        return DISFA_PARTS[t]
    return tuple(s for i, p in enumerate(DISFA_PARTS) if i != t for s in p)


def read_au_file(path: Path) -> dict[int, float]:
    """Parse an ``SNxxx_auN.txt`` into ``{frame (1-based): intensity}``.

    Raises:
        DatasetFormatError: missing file or a line that is not "frame,intensity" with 0..5.
    """
    require_file(path, "DISFA AU label file")
    out: dict[int, float] = {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(" ", "").split(",")
        if len(parts) != 2:
            raise DatasetFormatError(f"{path}:{no}: expected 'frame,intensity', got {line!r}")
        fr, v = parse_float(parts[0], path, no), parse_float(parts[1], path, no)
        if fr != int(fr) or fr < 1 or not 0 <= v <= 5:
            raise DatasetFormatError(f"{path}:{no}: bad frame {fr} / intensity {v} (want 0..5)")
        out[int(fr)] = v
    if not out:
        raise DatasetFormatError(f"{path}: empty")
    return out


def video_path(root: Path, subject: str, camera: Literal["left", "right"]) -> Path:
    """Path of a subject's video in the DISFA release."""
    cam = "Left" if camera == "left" else "Right"
    return root / f"Videos_{cam}Camera" / f"{cam}Video{subject}_comp.avi"


@dataclasses.dataclass(frozen=True)
class _Rec:
    subject: str
    frame: int  # 1-based, as in the label files
    au: np.ndarray  # (12,) float32


class DISFA(FaceDataset):
    """DISFA frames with the 12 AU intensities, subject-exclusive 3-fold split.

    Args:
        root: folder holding ``ActionUnit_Labels/`` and ``Videos_LeftCamera/`` (or right).
        split: ``"train"``, ``"test"`` or ``"all"``.
        fold: 1, 2 or 3 (see the module docstring).
        camera: which camera's video to read.
        frame_step: take every ``frame_step``-th labelled frame (1 = all 4,845 per subject).
        frames_dir: folder written by :func:`extract_frames`; frames are read from there instead
            of the videos.
        subjects: explicit subject list (overrides ``split``/``fold``), e.g. for tiny runs.

    Samples: ``id`` (``"SN001/42"``), ``subject``, ``frame`` (1-based), ``image`` (RGB video
    frame), ``au_intensity`` (12,) float32 in :data:`operators.records.DISFA_AUS` order.

    Raises:
        DatasetFormatError: missing label folder / file / video, malformed label line, label
            files of one subject with different frame sets, or no subject of the split present.
    """

    label_names = DISFA_AUS

    def __init__(self, root: str | Path, split: Literal["train", "test", "all"] = "train",
                 fold: int = 1, camera: Literal["left", "right"] = "left", frame_step: int = 1,
                 frames_dir: str | Path | None = None,
                 subjects: tuple[str, ...] | None = None) -> None:
        super().__init__()
        if frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {frame_step}")
        self.root = Path(root)
        self.camera = camera
        self.frames_dir = Path(frames_dir) if frames_dir is not None else None
        lab_root = require_dir(self.root / "ActionUnit_Labels", "DISFA label folder")
        if subjects is None:
            if split == "all":
                wanted = tuple(s for p in DISFA_PARTS for s in p)
            else:
                wanted = fold_subjects(fold, split)  # type: ignore[arg-type]
            present = tuple(s for s in wanted if (lab_root / s).is_dir())
            if not present:
                raise DatasetFormatError(
                    f"{lab_root}: none of the {split} subjects of fold {fold} present "
                    f"({', '.join(wanted)})")
        else:
            present = tuple(subjects)
        self.subjects = present
        self._videos: dict[str, VideoFrames] = {}
        for subj in present:
            per_au = [read_au_file(lab_root / subj / f"{subj}_au{int(a[2:])}.txt")
                      for a in DISFA_AUS]
            frames = sorted(per_au[0])
            for a, d in zip(DISFA_AUS[1:], per_au[1:]):
                if sorted(d) != frames:
                    raise DatasetFormatError(
                        f"{lab_root / subj / f'{subj}_au{int(a[2:])}.txt'}: frame numbers differ "
                        f"from {subj}_au1.txt")
            if self.frames_dir is None:
                video = VideoFrames(video_path(self.root, subj, camera))
                self._videos[subj] = video
                n_video = len(video)
                if n_video and frames[-1] > n_video:
                    # the release's label files can run a frame past the video's end
                    log.warning("%s: %d labelled frames beyond the video's %d frames skipped",
                                video.path, sum(f > n_video for f in frames), n_video)
                    frames = [f for f in frames if f <= n_video]
            for fr in frames[::frame_step]:
                self.records.append(
                    _Rec(subj, fr, np.array([d[fr] for d in per_au], np.float32)))

    def sample_id(self, index: int) -> str:
        rec = self.records[index]
        return f"{rec.subject}/{rec.frame}"

    def load(self, index: int) -> Sample:
        rec = self.records[index]
        if self.frames_dir is not None:
            img = read_image(self.frames_dir / rec.subject / f"{rec.frame:05d}.jpg")
        else:
            img = self._videos[rec.subject].frame(rec.frame - 1)
        return {"id": f"{rec.subject}/{rec.frame}", "subject": rec.subject, "frame": rec.frame,
                "image": img, "au_intensity": rec.au.copy()}


def extract_frames(root: str | Path, frames_dir: str | Path,
                   camera: Literal["left", "right"] = "left",
                   subjects: tuple[str, ...] | None = None, quality: int = 95) -> int:
    """Decode DISFA videos once into ``<frames_dir>/<subject>/<frame:05d>.jpg`` (1-based).

    Args:
        root: the DISFA folder.
        frames_dir: output folder (created).
        camera: which camera.
        subjects: subjects to extract (default: every subject folder in ``ActionUnit_Labels``).
        quality: JPEG quality.

    Returns:
        Number of frames written.

    Raises:
        DatasetFormatError: a video is missing or unreadable.
    """
    root, out = Path(root), Path(frames_dir)
    if subjects is None:
        lab = require_dir(root / "ActionUnit_Labels", "DISFA label folder")
        subjects = tuple(sorted(p.name for p in lab.iterdir() if p.is_dir()))
    n = 0
    for subj in subjects:
        vp = video_path(root, subj, camera)
        if not vp.is_file():
            raise DatasetFormatError(f"video not found: {vp}")
        cap = cv2.VideoCapture(str(vp))
        if not cap.isOpened():
            raise DatasetFormatError(f"cannot open video: {vp}")
        (out / subj).mkdir(parents=True, exist_ok=True)
        i = 0
        while True:
            ok, img = cap.read()
            if not ok:
                break
            i += 1
            cv2.imwrite(str(out / subj / f"{i:05d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        cap.release()
        n += i
    return n
