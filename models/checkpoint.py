"""Trained checkpoints that carry their model id, preprocessing and labels.

A checkpoint written by the trainer (``best.pt``, ``last.pt``) is a dict::

    {"format": "affectstream.checkpoint/1",
     "model_name": "ampnet",                 # registry id
     "model_kwargs": {"num_classes": 7},     # factory arguments
     "state_dict": {...},                    # model weights (what create_model(weights=...) reads)
     "card": {...},                          # the ModelCard fields to use in serving: input_size,
                                             # color, mean, std, alignment, label_names, ...
     "recipe": {...}, "metrics": {...}, "epoch": 12, ...}

:func:`load_checkpoint` rebuilds the model and its card from the file alone, so the pipeline
swaps a trained model in by path (``--fer-model runs/ampnet/best.pt``).
:func:`models.registry.create_model` ``(name, weights=path)`` also accepts such a file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Any

import torch
from torch import nn

from affectstream.models.registry import ModelCard, create_model, get_card

FORMAT = "affectstream.checkpoint/1"
"""Value of the ``format`` key."""

_CARD_FIELDS = ("input_size", "color", "mean", "std", "alignment", "label_names")


def card_to_dict(card: ModelCard) -> dict[str, Any]:
    """A card as plain JSON-able data (tuples become lists)."""
    d = dataclasses.asdict(card)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def card_from_dict(d: dict[str, Any]) -> ModelCard:
    """Inverse of :func:`card_to_dict`; fields default to the registered card of ``d["name"]``.

    Raises:
        KeyError: no ``name``, or an unknown registry id.
    """
    base = get_card(d["name"])
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(ModelCard):
        if f.name in d and f.name != "name":
            v = d[f.name]
            kw[f.name] = tuple(v) if isinstance(v, list) else v
    return dataclasses.replace(base, **kw)


def make_card(name: str, **overrides: Any) -> ModelCard:
    """The registered card of ``name`` with trained-model overrides (label names, size...)."""
    return dataclasses.replace(get_card(name), **overrides)


def checkpoint_dict(model: nn.Module, model_name: str, model_kwargs: dict[str, Any],
                    card: ModelCard, **extra: Any) -> dict[str, Any]:
    """The exportable part of a checkpoint (weights on CPU, card, provenance)."""
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"format": FORMAT, "model_name": model_name, "model_kwargs": dict(model_kwargs),
            "state_dict": sd, "card": card_to_dict(card),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__} | extra


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Write atomically (``path.part`` then rename), so an interruption never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict (CPU) and check its format.

    Raises:
        FileNotFoundError: missing file.
        ValueError: not an affectstream checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not an affectstream training checkpoint (format {FORMAT!r}); "
                         "plain state_dicts load with models.create_model(name, weights=path)")
    return obj


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ModelCard]:
    """Rebuild a trained model and its card from a checkpoint file.

    Args:
        path: a ``.pt`` written by the trainer.
        device: where to put the model.

    Returns:
        ``(model, card)``: the model in eval mode with ``model.card = card``; the card is the
        registered one with the trained overrides (label names, input size, preprocessing).

    Raises:
        FileNotFoundError: missing file.
        ValueError: not an affectstream checkpoint.
        KeyError: its model id is not registered (the message lists known ids).
    """
    obj = read_checkpoint(path)
    card = card_from_dict(obj["card"] | {"name": obj["model_name"]})
    model = create_model(obj["model_name"], weights=None, **obj.get("model_kwargs", {}))
    model.load_state_dict(obj["state_dict"])
    model.card = card  # type: ignore[attr-defined]
    return model.to(device).eval(), card
