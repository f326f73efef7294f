"""String registry of attention modules: ``build("rala", 128)`` makes a module by name.

Adding an attention type means writing one file in ``modules/`` whose class is decorated with
:func:`register`, and importing it from ``modules/__init__.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

__all__ = [
    "UnknownModuleError",
    "attentions",
    "available",
    "build",
    "controls",
    "get",
    "register",
    "registered_classes",
    "variant",
]

log = logging.getLogger(__name__)

_REGISTRY: dict[str, type[nn.Module]] = {}


class UnknownModuleError(KeyError):
    """Raised for a name that is not in the registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def register(name: str, control: bool = False) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator that makes ``cls`` buildable as ``build(name, channels, ...)``.

    ``control=True`` marks a control of the experiment (e.g. ``identity``, which computes nothing) rather
    than an attention: it is placed like any module but is not held to the attention contract.
    """

    def decorator(cls: type[nn.Module]) -> type[nn.Module]:
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"attention name {key!r} is already registered by {_REGISTRY[key].__qualname__}")
        _REGISTRY[key] = cls
        cls.registry_name = key
        cls.is_control = control
        return cls

    return decorator


def available() -> list[str]:
    """Sorted names of every registered attention module."""
    return sorted(_REGISTRY)


def controls() -> list[str]:
    """Sorted names of the registered controls (modules that test the harness, not attention)."""
    return sorted(k for k, cls in _REGISTRY.items() if getattr(cls, "is_control", False))


def attentions() -> list[str]:
    """Sorted names of the registered attention modules (every name but the controls)."""
    return sorted(k for k, cls in _REGISTRY.items() if not getattr(cls, "is_control", False))


def get(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (case-insensitive)."""
    try:
        return _REGISTRY[str(name).lower()]
    except KeyError:
        raise UnknownModuleError(
            f"unknown attention module {name!r}; available: {', '.join(available())}"
        ) from None


def build(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention module registered as ``name`` for ``channels`` input/output channels."""
    return get(name)(channels, **kwargs)


def registered_classes() -> dict[str, type[nn.Module]]:
    """Name -> class for every registered module (a copy)."""
    return dict(_REGISTRY)


def variant(name: str, kwargs: dict | None) -> str:
    """A short label for what ``kwargs`` change against the paper's module, e.g. ``"no RoPE"`` ("" = none).

    A module class may define ``variant_label(kwargs) -> str``; the table appends it to the module's name.
    """
    label = getattr(get(name), "variant_label", None)
    return label(dict(kwargs or {})) if callable(label) else ""
