"""Random access to the frames of a video file, for datasets distributed as videos (DISFA)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from affectstream.training.datasets.base import DatasetFormatError


class VideoFrames:
    """Frames of one video by 0-based index, decoded with OpenCV.

    Sequential access (index = last + 1) reads on; anything else seeks. The capture is opened
    lazily and not pickled, so a dataset holding one can go to DataLoader workers.

    Args:
        path: the video file.

    Raises:
        DatasetFormatError: the file is missing or cannot be opened, or a frame cannot be read.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetFormatError(f"video not found: {self.path}")
        self._cap: cv2.VideoCapture | None = None
        self._next = 0
        self._count: int | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_cap": None, "_next": 0, "_count": self._count}

    def _open(self) -> cv2.VideoCapture:
        if self._cap is None:
            cap = cv2.VideoCapture(str(self.path))
            if not cap.isOpened():
                raise DatasetFormatError(f"cannot open video: {self.path}")
            self._cap, self._next = cap, 0
        return self._cap

    def __len__(self) -> int:
        if self._count is None:
            self._count = int(self._open().get(cv2.CAP_PROP_FRAME_COUNT))
        return self._count

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` (0-based) as (H, W, 3) uint8 RGB."""
        cap = self._open()
        if index != self._next:
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, img = cap.read()
        if not ok or img is None:
            raise DatasetFormatError(f"{self.path}: cannot read frame {index}")
        self._next = index + 1
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        """Release the capture."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None
