"""affectstream: facial-affect analytics on live video.

This file is the ``affectstream`` package itself. The project's top-level folders are fixed
(``pipeline/ operators/ models/ training/``), so ``pyproject.toml`` maps them under this one
import namespace: ``affectstream.pipeline``, ``affectstream.operators``, ``affectstream.models``
and ``affectstream.training``. Nothing generic is installed at the top of site-packages.

Attributes:
    __version__ (str): the installed distribution's version (PEP 440), e.g. ``"0.2.0"``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("affectstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
