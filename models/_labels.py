"""Label sets shared by the paper models (private module: not an architecture file).

Emotion names are the canonical ones of DESIGN.md §4 (``operators.records.EMOTIONS``); each tuple
here is in the *dataset's own* order, which is the order of a model's output columns.
"""

from __future__ import annotations

RAF_DB_LABELS: tuple[str, ...] = (
    "surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
"""RAF-DB basic-expression classes in RAF-DB's own order (its labels 1..7)."""

DISFA_AUS: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU09", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26")
"""The 12 DISFA action units with intensity labels (FACS 0-5)."""

BP4D_INTENSITY_AUS: tuple[str, ...] = ("AU06", "AU10", "AU12", "AU14", "AU17")
"""The 5 BP4D (FERA 2015) action units with intensity labels."""
