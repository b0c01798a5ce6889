"""Refuse models without trained weights unless the user explicitly allows them.

A registered model whose :class:`models.registry.ModelCard` has ``weights=None`` (AMP-Net, DSAN,
DSR-FAU, the saliency networks) runs with random weights: its outputs look like real ones (e.g.
about 0.15 for every emotion, labelled "neutral") but mean nothing. The CLI therefore refuses such
a model with a one-line error that says how to train it or where to put a checkpoint;
``--allow-untrained`` (for tests and development) lets it through with a warning on every run.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from affectstream.pipeline.config import CONFIG_DIR


class UntrainedModelError(ValueError):
    """A model without trained weights was requested without ``--allow-untrained``."""


def _is_checkpoint(spec: str) -> bool:
    return spec.endswith((".pt", ".pth")) or Path(spec).exists()


def untrained_models(specs: list[str]) -> list[str]:
    """The registry ids among ``specs`` whose card has no trained weights.

    Args:
        specs: model specs as given on the command line or in the config: registry ids,
            checkpoint paths (trained by definition), ``"geometric"`` or ``"blendshape"`` (no
            network of their own to train).

    Raises:
        KeyError: an unknown registry id (the message lists the known ones).
    """
    from affectstream.models.registry import get_card

    from affectstream.operators.analyze import LANDMARK_AU_MODELS

    return [s for s in specs if s not in LANDMARK_AU_MODELS and not _is_checkpoint(s)
            and get_card(s).weights is None]


def _recipe_for(name: str) -> tuple[Path, str] | None:
    """(path, run_name) of the first recipe in ``configs/train`` whose ``model.name`` is ``name``."""
    for p in sorted((CONFIG_DIR / "train").glob("*.yaml")):
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(doc, dict) and (doc.get("model") or {}).get("name") == name:
            return p, str(doc.get("run_name") or name)
    return None


def check_trained(specs: list[str], allow_untrained: bool, how: str) -> list[str]:
    """Check that every model in ``specs`` has trained weights.

    Args:
        specs: see :func:`untrained_models`.
        allow_untrained: let untrained models through (the caller prints the returned warnings).
        how: how the user names a checkpoint instead, completed by its path in the message,
            e.g. ``"pass --fer-model"`` or ``"set inference.fer_model to"``.

    Returns:
        One warning line per untrained model (empty when all are trained).

    Raises:
        UntrainedModelError: an untrained model and ``allow_untrained`` is False; the message is
            one line saying how to train it and where to pass the checkpoint.
        KeyError: an unknown registry id.
    """
    names = untrained_models(specs)
    if not names:
        return []
    if allow_untrained:
        return [f"model {n!r} has no trained weights: its outputs are random "
                f"(running anyway because of --allow-untrained)" for n in names]
    n = names[0]
    recipe = _recipe_for(n)
    if recipe:
        path, run = recipe
        train = (f"train it (affectstream train {path.relative_to(CONFIG_DIR.parent)} --data "
                 f"DATASET_DIR) and {how} runs/{run}/best.pt")
    else:
        train = f"{how} a trained checkpoint, path/to/best.pt"
    raise UntrainedModelError(
        f"model {n!r} has no trained weights, so its outputs would be random: {train}; "
        f"or add --allow-untrained to run it anyway (tests, development)")
