"""Model registry: ``@register_model`` factories and ``create_model`` as the one entry point.

Every registered factory carries a :class:`ModelCard` — the preprocessing and labels a caller
needs to feed the model (input size, colour, normalisation, alignment, label names), plus where its
weights come from and under which licence. Operators read the card instead of hard-coding
preprocessing, so swapping a model by config changes nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

Task = Literal["detection", "landmarks", "expression", "au", "blendshapes", "saliency", "backbone"]


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """What a caller must know to use a model.

    Attributes:
        name: registry id (the factory's function name).
        task: what the model predicts (``expression``, ``au``, ``saliency``, ...).
        input_size: ``(H, W)`` in pixels of the network input.
        color: ``"gray"``, ``"rgb"`` or ``"bgr"`` channel order expected by the network.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel std divided after subtracting ``mean``.
        alignment: how the face crop is prepared: ``"bbox"`` (square crop around the detector box),
            ``"5pt"`` (similarity transform of 5 landmarks to a template), ``"none"`` (whole image).
        label_names: output labels in the model's own order (canonical emotion names for
            expression models, ``AU01``... for AU models).
        paper: citation (title, venue, DOI) or the source of the pretrained weights.
        licence: licence of the weights.
        weights: name of the default pretrained artifact (see :mod:`models.weights`), or ``None``
            when the model has no pretrained weights yet.
        extra: free-form small metadata (e.g. ``{"landmarks_in": (5, 2)}``).
    """

    name: str
    task: Task
    input_size: tuple[int, int]
    color: Literal["gray", "rgb", "bgr"] = "rgb"
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    alignment: Literal["bbox", "5pt", "none"] = "bbox"
    label_names: tuple[str, ...] = ()
    paper: str = ""
    licence: str = ""
    weights: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelCard]] = {}


def register_model(card: ModelCard) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory under ``card.name``.

    The factory takes keyword arguments only and returns an ``nn.Module`` with random or default
    initialisation; :func:`create_model` loads weights afterwards.

    Raises:
        ValueError: if the name is taken.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if card.name in _REGISTRY:
            raise ValueError(f"model {card.name!r} is already registered")
        if fn.__name__ != card.name:
            raise ValueError(f"factory name {fn.__name__!r} must equal card name {card.name!r}")
        _REGISTRY[card.name] = (fn, card)
        fn.card = card  # type: ignore[attr-defined]
        return fn

    return deco


def list_models(task: str | None = None) -> list[str]:
    """Registered model ids, sorted; only those of ``task`` when given."""
    return sorted(n for n, (_, c) in _REGISTRY.items() if task is None or c.task == task)


def get_card(name: str) -> ModelCard:
    """The :class:`ModelCard` of ``name``.

    Raises:
        KeyError: unknown name; the message lists the known names.
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name][1]


def create_model(name: str, weights: str | Path | None = "default", **kwargs: Any) -> nn.Module:
    """Build a registered model and load its weights.

    Args:
        name: registry id.
        weights: ``"default"`` for the card's pretrained artifact (random init when the card has
            none), ``None`` for random init, or a path to a ``.pt`` file holding either a plain
            state_dict or a checkpoint dict with a ``"state_dict"`` (or ``"model"``) key.
        **kwargs: passed to the factory.

    Returns:
        The model in eval mode, with ``model.card`` set to its :class:`ModelCard`.

    Raises:
        KeyError: unknown name.
        FileNotFoundError: a weights path that does not exist.
    """
    card = get_card(name)
    fn = _REGISTRY[name][0]
    model = fn(**kwargs)
    if weights == "default":
        if card.weights is not None:
            from affectstream.models.weights import load_state_dict

            try:
                model.load_state_dict(load_state_dict(card.weights))
            except RuntimeError:  # a stale cached conversion from older code: convert again
                model.load_state_dict(load_state_dict(card.weights, refresh=True))
    elif weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        obj = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(obj, dict) and ("state_dict" in obj or "model" in obj):
            obj = obj.get("state_dict", obj.get("model"))
        model.load_state_dict(obj)
    model.card = card  # type: ignore[attr-defined]
    return model.eval()
