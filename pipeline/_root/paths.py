"""Where affectstream keeps files on this machine (no torch, no Ray: the CLI's driver and the
warm-cluster bookkeeping read it without loading the models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the project cache (created): ``$AFFECTSTREAM_CACHE_DIR``, else the platform user
    cache dir + ``/affectstream`` (``platformdirs``). Pinned artifacts, converted weights, ONNX
    exports and the warm cluster's state file live under it."""
    env = os.environ.get("AFFECTSTREAM_CACHE_DIR")
    if env:
        root = Path(env)
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("affectstream"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def source_digest(packages: tuple[str, ...]) -> str:
    """sha256 (16 hex) of the ``.py`` sources of ``affectstream.<package>`` for each of
    ``packages`` (e.g. ``("models",)``), located without importing them (no torch). Names what a
    cache built from that code must match."""
    import hashlib
    import importlib.util

    h = hashlib.sha256()
    for pkg in packages:
        spec = importlib.util.find_spec(f"affectstream.{pkg}")
        root = Path(spec.submodule_search_locations[0])
        for p in sorted(root.rglob("*.py")):
            h.update(f"{pkg}/{p.relative_to(root)}".encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]
