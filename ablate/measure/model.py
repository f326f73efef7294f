"""The model a YAML builds, and the numbers read off it.

ultralytics' base YAML of a model at its one scale (:func:`base_model_yaml`), the ``DetectionModel`` a YAML
dict builds (:func:`build_model`), its layer table (output channels and stride of every layer, from one
forward: :func:`layer_table`), its parameters, the strides of a placement's layers, the input size FLOPs
and latency are measured at (:func:`stride_size`) and the architecture key the measurement phase files
latency under (:func:`architecture_key`). :func:`model_fields` is what a run records of its model before
it trains. Nothing here edits a YAML (:mod:`ablate.compose`) or decides a placement (:mod:`ablate.placement`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import modules  # noqa: F401  (registers ablate's layers with ultralytics' YAML parser)

from ..errors import AblateError
from ..records import run_key

PROBE_SIZE = 256  # the size ultralytics' own stride probe uses
INSERTED = "AttentionResidual"  # the layer type a placement in insert mode adds


def base_model_yaml(model: str, nc: int) -> dict[str, Any]:
    """The ultralytics YAML dict of ``model`` (e.g. ``yolo12n``) reduced to its one scale, with ``nc``.

    Keeping only the chosen scale makes the written file standalone: ultralytics guesses the scale from
    a file name, and ``model.yaml`` names none, so it falls back to the first (here: only) scale.
    """
    from ultralytics.nn.tasks import guess_model_scale, yaml_model_load

    scale = guess_model_scale(f"{model}.yaml")
    try:
        d = yaml_model_load(f"{model}.yaml")
    except FileNotFoundError:
        raise AblateError(f"unknown model {model!r}: ultralytics has no {model}.yaml") from None
    scales = d.get("scales") or {}
    if scale not in scales:
        raise AblateError(f"model {model!r} has no scale {scale!r}; valid scales: {', '.join(scales)}")
    out = {k: copy.deepcopy(v) for k, v in d.items() if k not in ("yaml_file", "scale")}
    out["nc"] = int(nc)
    out["scales"] = {scale: list(scales[scale])}
    return out


def scale_of(d: Mapping[str, Any]) -> str:
    """The one scale of a model YAML dict (``n`` for yolo12n)."""
    return next(iter(d["scales"]))


def rows(d: Mapping[str, Any]) -> list[list[Any]]:
    """Every layer row of a model YAML dict, backbone then head, in index order."""
    return list(d["backbone"]) + list(d["head"])


def head_index(d: Mapping[str, Any]) -> int:
    """The index of the model's last row: its Detect head."""
    return len(rows(d)) - 1


def build_model(d: Mapping[str, Any], verbose: bool = False) -> nn.Module:
    """Build an ultralytics ``DetectionModel`` from a YAML dict (a deep copy: parse_model edits args); the
    layers a placement adds are ablate's (:mod:`modules`, imported here)."""
    from ultralytics.nn.tasks import DetectionModel

    cfg = copy.deepcopy(dict(d))
    cfg["scale"] = scale_of(d)
    return DetectionModel(cfg, ch=3, nc=d["nc"], verbose=verbose)


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a built model: YAML index, ``from``, module type, output channels, stride."""

    index: int
    source: int | list[int]
    module: str
    channels: int
    stride: int
    mark: str = ""  # "inserted" / "replaced" in composed tables


def layer_table(model: nn.Module, size: int = PROBE_SIZE) -> list[LayerInfo]:
    """Index, from, type, output channels and stride of every layer, from one forward at ``size``."""
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [
        layer.register_forward_hook(lambda mod, inp, out, i=i: shapes.__setitem__(i, tuple(out.shape)))
        for i, layer in enumerate(model.model)
        if i < len(model.model) - 1
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    table = []
    for i, layer in enumerate(model.model):
        if i in shapes:
            channels, stride = shapes[i][1], size // shapes[i][2]
        else:  # the head (Detect): no single map
            channels, stride = 0, 0
        table.append(LayerInfo(i, layer.f, type(layer).__name__, channels, stride))
    return table


def count_params(model: nn.Module) -> int:
    """Every parameter of ``model``."""
    return sum(p.numel() for p in model.parameters())


def placement_strides(model: nn.Module, layers: Sequence[int], size: int = PROBE_SIZE) -> list[int]:
    """Output stride of each base-model layer in ``layers`` (8 for a P3 map), read off the (composed) model.

    Every layer of a composed model is a base layer, in base order, except those insert mode added: base
    layer ``j`` is the ``j``-th layer that is no :data:`INSERTED` one (replaced blocks keep their index).
    """
    base = [r for r in layer_table(model, size) if r.module != INSERTED]
    return [base[i].stride for i in layers if 0 <= i < len(base)]


def stride_size(model: nn.Module, imgsz: int | tuple[int, int]) -> tuple[int, int]:
    """``imgsz`` as (h, w) rounded up to a multiple of the model's largest stride (1 without strides)."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    if min(h, w) <= 0:
        raise ValueError(f"imgsz must be positive, got {imgsz!r}")
    stride = int(max(model.stride)) if hasattr(model, "stride") else 1
    return tuple(max(stride, math.ceil(s / stride) * stride) for s in (h, w))


def architecture_key(model_yaml: Mapping[str, Any], imgsz: Sequence[int]) -> str:
    """The key of an architecture: hash of its composed model YAML (nc included) and input size (h, w)."""
    return run_key({"model_yaml": dict(model_yaml), "imgsz": [int(v) for v in imgsz]})


def model_fields(model: nn.Module, d: Mapping[str, Any], layers: Sequence[int], imgsz: int) -> dict[str, Any]:
    """Record fields of a composed model before it trains: its scale, parameters, the strides of the
    placement's ``layers``, and the architecture key the measurement phase times it under (its YAML ``d``
    and the input size ``imgsz`` rounded up to its stride)."""
    return {
        "scale": scale_of(d),
        "params": count_params(model),
        "strides": placement_strides(model, layers) if layers else [],
        "arch_key": architecture_key(d, stride_size(model, imgsz)),
    }
