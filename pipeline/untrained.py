"""Refuse models without trained weights unless the user explicitly allows them.

A registered model whose :class:`models.registry.ModelCard` has ``weights=None`` (AMP-Net, DSAN,
DSR-FAU, the saliency networks) runs with random weights: its outputs look like real ones (e.g.
about 0.15 for every emotion, labelled "neutral") but mean nothing. The CLI therefore refuses such
a model with a one-line error that says how to train it or where to put a checkpoint;
``--allow-untrained`` (for tests and development) lets it through with a warning on every run.

The check runs in the CLI's driver, which loads no torch (the models run in Ray actors). The
model cards are declared next to their torch modules, so reading one costs the torch import (~2 s
on 2 cores); instead, the first process that loads the registry writes the cards' plain fields to
``<cache>/model-cards.json``, keyed by the digest of the ``models/`` sources, and later processes
read that index while it matches the code (:func:`card_fields`). The registry stays the one
source of truth: the index is a cache of it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from affectstream.paths import cache_dir, source_digest
from affectstream.pipeline.config import CONFIG_DIR


INDEX_FILE = "model-cards.json"
"""File name of the card index under the project cache."""


def _build() -> dict[str, dict[str, Any]]:
    from affectstream.models.registry import get_card, list_models

    return {n: {"task": c.task, "weights": c.weights, "label_names": list(c.label_names)}
            for n in list_models() for c in (get_card(n),)}


def card_fields() -> dict[str, dict[str, Any]]:
    """Registry id -> ``{"task": str, "weights": str | None, "label_names": [str, ...]}`` of
    every registered model (from the index when it matches the code, else from the registry,
    which then rewrites the index)."""
    path = cache_dir() / INDEX_FILE
    digest = source_digest(("models",))
    try:
        data = json.loads(path.read_text())
        if data.get("digest") == digest and isinstance(data.get("cards"), dict):
            return data["cards"]
    except (OSError, ValueError):
        pass
    cards = _build()
    tmp = path.with_suffix(f".{os.getpid()}.part")
    try:
        tmp.write_text(json.dumps({"digest": digest, "cards": cards}, indent=1))
        os.replace(tmp, path)
    except OSError:  # a read-only cache: answer anyway, rebuild next time
        tmp.unlink(missing_ok=True)
    return cards


def card_field(name: str, field: str) -> Any:
    """One field of registry model ``name``'s card (see :func:`card_fields`).

    Raises:
        KeyError: unknown name; the message lists the known names (as ``get_card``'s does).
    """
    cards = card_fields()
    if name not in cards:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(cards))}")
    return cards[name][field]


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
    from affectstream.operators.records import LANDMARK_AU_MODELS

    return [s for s in specs if s not in LANDMARK_AU_MODELS and not _is_checkpoint(s)
            and card_field(s, "weights") is None]


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
