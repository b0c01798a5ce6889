"""Readers for the public datasets in their published on-disk formats.

Each reader's module docstring cites the format's documentation and lists which file it expects
where; a missing or malformed file raises :class:`DatasetFormatError` naming it.
"""

from affectstream.training.datasets.affectnet import AffectNet
from affectstream.training.datasets.base import CANONICAL_EMOTIONS, DatasetFormatError, FaceDataset, Sample
from affectstream.training.datasets.bp4d import BP4D
from affectstream.training.datasets.cat2000 import CAT2000
from affectstream.training.datasets.ckplus import CKPlus
from affectstream.training.datasets.disfa import DISFA, extract_frames
from affectstream.training.datasets.fer2013 import FER2013, FERPlus
from affectstream.training.datasets.rafdb import RafDB

__all__ = ["AffectNet", "BP4D", "CAT2000", "CANONICAL_EMOTIONS", "CKPlus", "DISFA",
           "DatasetFormatError", "FER2013", "FERPlus", "FaceDataset", "RafDB", "Sample",
           "extract_frames"]
