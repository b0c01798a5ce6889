"""Torch models: the registry, pretrained weight resolution and one architecture per file.

Every module in this package is imported here so its ``@register_model`` factories register;
a new architecture file needs no edit of this file.
"""

import importlib
import pkgutil

from affectstream.models.registry import ModelCard, create_model, get_card, list_models, register_model

_SKIP = {"registry", "weights"}
for _m in pkgutil.iter_modules(__path__):
    if _m.name not in _SKIP and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["ModelCard", "create_model", "get_card", "list_models", "register_model"]
