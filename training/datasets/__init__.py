"""Readers for the public datasets in their published on-disk formats.

Each reader's module docstring cites the format's documentation and lists which file it expects
where; a missing or malformed file raises :class:`DatasetFormatError` naming it.
"""

from training.datasets.affectnet import AffectNet
from training.datasets.base import CANONICAL_EMOTIONS, DatasetFormatError, FaceDataset, Sample
from training.datasets.bp4d import BP4D
from training.datasets.cat2000 import CAT2000
from training.datasets.ckplus import CKPlus
from training.datasets.disfa import DISFA, extract_frames
from training.datasets.fer2013 import FER2013, FERPlus
from training.datasets.rafdb import RafDB

__all__ = ["AffectNet", "BP4D", "CAT2000", "CANONICAL_EMOTIONS", "CKPlus", "DISFA",
           "DatasetFormatError", "FER2013", "FERPlus", "FaceDataset", "RafDB", "Sample",
           "extract_frames"]
