"""ablate's attention modules: one file per attention type, built by name through a registry.

Importing this package registers every module class in ultralytics' model-YAML namespace, so a
model YAML row such as ``[-1, 1, RALA, [128]]`` or ``[-1, 1, AttentionResidual, [128, rala]]``
builds through ``ultralytics.YOLO(yaml)`` without editing ultralytics' files (see
:func:`register_with_ultralytics`), and allows the classes in torch's weights-only loading, so
checkpoints load under ``ULTRALYTICS_SAFE_LOAD=1`` (:func:`register_safe_globals`).
"""

from __future__ import annotations

from . import area, fla, halo, identity, mhsa, rala, tssa  # noqa: F401  (imports register the modules)
from .area import AreaAttention
from .fla import FocusedLinearAttention
from .halo import HaloAttention
from .identity import ZeroAttention
from .mhsa import MHSA
from .rala import RALA
from .registry import (
    UnknownModuleError,
    attentions,
    available,
    build,
    controls,
    get,
    registered_classes,
    variant,
)
from .residual import AttentionResidual
from .ultralytics_names import register_safe_globals, register_with_ultralytics

__all__ = [
    "MHSA",
    "RALA",
    "TSSA",
    "AreaAttention",
    "AttentionResidual",
    "FocusedLinearAttention",
    "HaloAttention",
    "UnknownModuleError",
    "attentions",
    "available",
    "build",
    "controls",
    "get",
    "register_safe_globals",
    "register_with_ultralytics",
    "registered_classes",
    "variant",
    "ZeroAttention",
]

from .tssa import TSSA  # noqa: E402

register_with_ultralytics()
register_safe_globals()
