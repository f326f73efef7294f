"""ablate's attention modules: one file per attention type, built by name through a registry.

Importing this package registers every module class in ultralytics' model-YAML namespace, so a
model YAML row such as ``[-1, 1, RALA, [128]]`` or ``[-1, 1, AttentionResidual, [128, rala]]``
builds through ``ultralytics.YOLO(yaml)`` without editing ultralytics' files (see
:func:`register_with_ultralytics`).
"""

from __future__ import annotations

from . import area, fla, halo, mhsa, rala, tssa  # noqa: F401  (imports register the modules)
from .area import AreaAttention
from .fla import FocusedLinearAttention
from .halo import HaloAttention
from .mhsa import MHSA
from .rala import RALA
from .registry import UnknownModuleError, available, build, get, registered_classes
from .residual import AttentionResidual
from .ultralytics_names import register_with_ultralytics

__all__ = [
    "MHSA",
    "RALA",
    "TSSA",
    "AreaAttention",
    "AttentionResidual",
    "FocusedLinearAttention",
    "HaloAttention",
    "UnknownModuleError",
    "available",
    "build",
    "get",
    "register_with_ultralytics",
    "registered_classes",
]

from .tssa import TSSA  # noqa: E402

register_with_ultralytics()
