"""Fixtures of the training tests: a tiny registered classifier and tiny real-format datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from affectstream.models.registry import _REGISTRY, ModelCard, register_model
from tests.training import formats as F

TINY = "tiny_fer_test"


class TinyFER(nn.Module):
    """Conv-BN-ReLU x2, dropout, linear: small enough for exact-resume tests on CPU."""

    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(self.drop(self.features(x)))}


def tiny_fer_test(num_classes: int = 7) -> TinyFER:
    return TinyFER(num_classes)


@pytest.fixture(scope="session", autouse=True)
def _tiny_model():
    """Register the tiny test model for the training tests only (registry-driven tests of
    models/ never see it: it is removed again at the end of the session)."""
    if TINY not in _REGISTRY:
        register_model(ModelCard(name=TINY, task="expression", input_size=(32, 32), color="gray",
                                 mean=(0.5,), std=(0.5,), alignment="bbox",
                                 label_names=("anger", "disgust", "fear", "happiness", "sadness",
                                              "surprise", "neutral"),
                                 paper="test model", licence="test"))(tiny_fer_test)
    yield TINY
    _REGISTRY.pop(TINY, None)


@pytest.fixture(scope="session", autouse=True)
def _geometry_cache(tmp_path_factory: pytest.TempPathFactory):
    """Face-geometry caches of the test datasets go to a temp dir, not the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AFFECTSTREAM_GEOMETRY_CACHE", str(tmp_path_factory.mktemp("geometry")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def fer2013_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fer2013.csv + fer2013new.csv with 24 train / 4 val / 8 test real faces."""
    root = tmp_path_factory.mktemp("fer2013")
    F.write_fer2013(root, n_train=24, n_val=4, n_test=8)
    return root


@pytest.fixture(scope="session")
def rafdb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RAF-DB basic layout, 16 train / 8 test."""
    root = tmp_path_factory.mktemp("rafdb")
    F.write_rafdb(root, n_train=16, n_test=8)
    return root


@pytest.fixture(scope="session")
def disfa_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DISFA layout: SN001 (fold-1 train) and SN003 (fold-1 test), 16 frames each."""
    root = tmp_path_factory.mktemp("disfa")
    F.write_disfa(root, subjects=("SN003", "SN001"), n_frames=16)
    return root


@pytest.fixture(scope="session")
def cat2000_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CAT2000 trainSet layout, 3 categories x 6 scenes."""
    root = tmp_path_factory.mktemp("cat2000")
    F.write_cat2000(root, per_category=6)
    return root
