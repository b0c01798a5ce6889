"""affectstream: facial-affect analytics on live video.

This file is the ``affectstream`` package itself. The project's top-level folders are fixed
(``pipeline/ operators/ models/ training/``), so ``pyproject.toml`` maps them under this one
import namespace: ``affectstream.pipeline``, ``affectstream.operators``, ``affectstream.models``
and ``affectstream.training``. Nothing generic is installed at the top of site-packages.

Attributes:
    __version__ (str): the installed distribution's version (PEP 440), e.g. ``"0.2.0"``.

The Python API (imported on first use, so ``import affectstream`` stays light):
    analyze_video(source, ...) -> pandas.DataFrame: one row per face per analysed frame.
    analyze_image(image, ...) -> pandas.DataFrame: one row per face.
    read_timeline(session_id, redis_url=...) -> pandas.DataFrame: a stored session, same columns.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("affectstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_API = {"analyze_video", "analyze_image", "analyze_frames", "read_timeline", "points_frame"}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):  # PEP 562: the API loads torch and the models only when used
    if name in _API:
        from affectstream.pipeline.runtime import inprocess

        return getattr(inprocess, name)
    raise AttributeError(f"module 'affectstream' has no attribute {name!r}")
