"""What the framework integrations share: turning a framework's settings into params a tracker can record."""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("tracked_train")

_SCALARS = (bool, int, float, str)


def trackable(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with only what every tracker can record: numbers, strings, booleans, None, lists of them and
    mappings of those. Enums become their values, paths strings, one-element tensors numbers; the rest (a module,
    a function, a tokenizer) is left out: a framework's settings hold such objects, and no tracker can show them."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if not isinstance(k, str):
            continue
        v = _plain(v)
        if isinstance(v, Mapping):
            out[k] = trackable(v)
        elif isinstance(v, (list, tuple)) and all(x is None or isinstance(x, _SCALARS) for x in v):
            out[k] = ["None" if x is None else x for x in v]
        elif v is None or isinstance(v, _SCALARS):
            out[k] = v
        else:
            log.debug("param %s (a %s) is not recorded: no tracker can show it", k, type(v).__name__)
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if hasattr(v, "item") and not isinstance(v, (str, bytes, Mapping, list, tuple)):  # a tensor or numpy number
        try:
            size = v.numel() if hasattr(v, "numel") else getattr(v, "size", None)
            return v.item() if size == 1 else v
        except (TypeError, ValueError, RuntimeError):
            return v
    return v


def number(v: Any) -> float | None:
    """``v`` as a float when it is one number (a tensor of one element too), else None."""
    if isinstance(v, bool) or isinstance(v, str):
        return None
    try:
        return float(v)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        return None
