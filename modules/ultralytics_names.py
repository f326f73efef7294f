"""Make our module classes resolvable by name in ultralytics' model-YAML parser, and loadable from
checkpoints under ``ULTRALYTICS_SAFE_LOAD=1``.

``ultralytics.nn.tasks.parse_model`` resolves a YAML module name through ``globals()`` of
``ultralytics.nn.tasks``. Setting attributes on that module is enough; no ultralytics file is edited.
Because this runs on ``import modules``, any process that imports ``modules`` (a DDP child, a
checkpoint loader) can parse a YAML that names our classes.

ultralytics' restricted checkpoint loading (``ULTRALYTICS_SAFE_LOAD=1``: ``torch.load(weights_only=True)``
against an allow-list) accepts only its own and torch's classes; :func:`register_safe_globals` adds ours
to torch's allow-list, so a ``best.pt`` of any composed model loads that way too.
"""

from __future__ import annotations

import logging

from torch import nn

from ._common import LayerNorm2d
from .hosts import HOSTS
from .registry import registered_classes
from .residual import AttentionResidual

log = logging.getLogger(__name__)


def yaml_classes() -> dict[str, type[nn.Module]]:
    """Class name -> class for every class a model YAML may name."""
    classes = {cls.__name__: cls for cls in registered_classes().values()}
    classes[AttentionResidual.__name__] = AttentionResidual
    classes.update(HOSTS)
    return classes


def register_with_ultralytics() -> list[str]:
    """Expose :func:`yaml_classes` in ``ultralytics.nn.tasks``; returns the names made resolvable."""
    import ultralytics.nn.tasks as tasks

    names = []
    for name, cls in yaml_classes().items():
        existing = getattr(tasks, name, None)
        if existing is not None and existing is not cls and existing.__module__ != cls.__module__:
            raise RuntimeError(
                f"cannot register {name!r} with ultralytics: the name is already used by {existing!r}"
            )
        setattr(tasks, name, cls)
        names.append(name)
    log.debug("registered with ultralytics.nn.tasks: %s", names)
    return names


def register_safe_globals() -> list[type]:
    """Allow every class our checkpoints pickle in ``torch.load(weights_only=True)``; returns them."""
    import torch

    classes = [*yaml_classes().values(), LayerNorm2d]
    torch.serialization.add_safe_globals(classes)
    return classes
