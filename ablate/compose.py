"""Placement: compose a base ultralytics model YAML with attention modules at chosen layer indices.

Two modes:

* ``after`` — insert ``AttentionResidual(C, attn)`` as a new layer after each listed base index.
  Every ``from`` reference is remapped: a reference to base layer ``i`` now points at the last layer
  inserted after ``i`` (so every consumer of ``i``, including Concat and Detect, sees the refined map),
  and references to other layers follow their shifted positions.
* ``replace`` — swap the attention inside attention-bearing blocks (YOLO12's ``A2C2f`` with area
  attention, YOLO11's ``C2PSA``) for the chosen module, keeping the block's width and heads.

Layer indices are the base model's own YAML indices. Channel counts written into the composed YAML are
read from the base model built at the chosen scale, so they are right for every scale n…x. The result is
a standalone YAML dict that ``ultralytics`` parses after ``import modules``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

import modules
from modules.hosts import HOSTS
from modules.hosts import module_kwargs as host_module_kwargs
from modules.residual import DEFAULT_GAMMA

from .errors import AblateError

log = logging.getLogger(__name__)

MODES = ("after", "replace")
PROBE_SIZE = 256  # the size ultralytics' own stride probe uses


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a built model: YAML index, ``from``, module type, output channels, stride."""

    index: int
    source: int | list[int]
    module: str
    channels: int
    stride: int
    mark: str = ""  # "inserted" / "replaced" in composed tables


@dataclass(frozen=True)
class Placement:
    """Where and how an attention module enters the base model."""

    attn: str
    layers: tuple[int, ...]
    mode: str = "after"
    attn_kwargs: dict[str, Any] = field(default_factory=dict)
    gamma: float | None = DEFAULT_GAMMA


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


def scale_of(d: dict[str, Any]) -> str:
    return next(iter(d["scales"]))


def rows(d: dict[str, Any]) -> list[list[Any]]:
    return list(d["backbone"]) + list(d["head"])


def build_model(d: dict[str, Any], verbose: bool = False) -> nn.Module:
    """Build an ultralytics ``DetectionModel`` from a YAML dict (a deep copy: parse_model edits args)."""
    from ultralytics.nn.tasks import DetectionModel

    cfg = copy.deepcopy(d)
    cfg["scale"] = scale_of(d)
    return DetectionModel(cfg, ch=3, nc=d["nc"], verbose=verbose)


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


def head_index(d: dict[str, Any]) -> int:
    return len(rows(d)) - 1


def check_layers(d: dict[str, Any], layers: tuple[int, ...], model: str) -> None:
    last = head_index(d)
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise AblateError(f"layer index {i!r} is not an integer; valid: 0..{last - 1}")
        if i < 0 or i > last:
            raise AblateError(f"layer index {i} is out of range for {model}; valid: 0..{last - 1}")
        if i == last:
            raise AblateError(f"layer index {i} is the {rows(d)[i][2]} head of {model}; valid: 0..{last - 1}")


def attention_layers(model: nn.Module) -> list[int]:
    """Base indices whose block holds an attention that replace mode can swap."""
    return [i for i, layer in enumerate(model.model) if any(h.holds_attention(layer) for h in HOSTS.values())]


def _check_module_args(placement: Placement, channels: int) -> None:
    """Build the module once so bad hyperparameters fail here with the module's own message."""
    try:
        modules.build(placement.attn, channels, **placement.attn_kwargs)
    except modules.UnknownModuleError as e:
        raise AblateError(str(e)) from None
    except (ValueError, TypeError) as e:
        raise AblateError(f"attn={placement.attn} at {channels} channels: {e}") from None


def insert_after(d: dict[str, Any], placement: Placement, table: list[LayerInfo]) -> dict[str, Any]:
    """Insert ``AttentionResidual`` rows after each index in ``placement.layers``; remap every ``from``."""
    base = rows(d)
    n_backbone = len(d["backbone"])
    after = sorted(set(placement.layers))
    new_index: dict[int, int] = {}  # base index -> index of the layer that now represents it
    out_rows: list[list[Any]] = []
    backbone_len = 0
    for j, row in enumerate(base):
        f, n, m, args = copy.deepcopy(row)
        out_rows.append([_remap(f, j, new_index), n, m, args])
        new_index[j] = len(out_rows) - 1
        if j in after:
            channels = table[j].channels
            _check_module_args(placement, channels)
            gamma = placement.gamma
            out_rows.append(
                [-1, 1, "AttentionResidual", [channels, placement.attn, dict(placement.attn_kwargs), gamma]]
            )
            new_index[j] = len(out_rows) - 1
        if j == n_backbone - 1:
            backbone_len = len(out_rows)
    out = dict(d)
    out["backbone"], out["head"] = out_rows[:backbone_len], out_rows[backbone_len:]
    return out


def _remap(f: int | list[int], j: int, new_index: dict[int, int]) -> int | list[int]:
    """New ``from`` for base row ``j``: -1 stays -1, any other reference points at its representative."""
    if isinstance(f, list):
        return [_remap(x, j, new_index) for x in f]
    if f == -1:
        return -1
    return new_index[f if f >= 0 else j + f]


def replace_attention(
    d: dict[str, Any], placement: Placement, model: nn.Module, model_name: str
) -> dict[str, Any]:
    """Swap the attention inside the host blocks at ``placement.layers`` for ``placement.attn``."""
    out = copy.deepcopy(d)
    n_backbone = len(d["backbone"])
    for i in sorted(set(placement.layers)):
        layer = model.model[i]
        host = next((h for h in HOSTS.values() if h.holds_attention(layer)), None)
        if host is None:
            where = ", ".join(map(str, attention_layers(model))) or "none"
            raise AblateError(
                f"pos.mode=replace: layer {i} of {model_name} ({type(layer).__name__}) holds no attention; "
                f"layers with attention: {where}"
            )
        for dim, heads, area in host.attention_dims(layer):
            kwargs = _host_kwargs(placement, dim, heads, area)
            _check_module_args(Placement(placement.attn, (), attn_kwargs=kwargs), dim)
        part, k = ("backbone", i) if i < n_backbone else ("head", i - n_backbone)
        f = out[part][k][0]
        out[part][k] = [f, 1, host.__name__, host.yaml_args(layer, placement.attn, placement.attn_kwargs)]
    return out


def _host_kwargs(placement: Placement, dim: int, heads: int, area: int | None) -> dict[str, Any]:
    try:
        return host_module_kwargs(placement.attn, placement.attn_kwargs, dim, heads, area)
    except modules.UnknownModuleError as e:
        raise AblateError(str(e)) from None


def compose(d: dict[str, Any], placement: Placement | None, model_name: str) -> dict[str, Any]:
    """Composed YAML dict for ``placement`` (``None`` = the baseline, returned unchanged)."""
    if placement is None:
        return copy.deepcopy(d)
    if placement.mode not in MODES:
        raise AblateError(f"pos.mode={placement.mode!r} is not valid; valid: {', '.join(MODES)}")
    if not placement.layers:
        raise AblateError("pos.layers is empty; give at least one layer index")
    check_layers(d, placement.layers, model_name)
    base = build_model(d)
    if placement.mode == "after":
        return insert_after(d, placement, layer_table(base))
    return replace_attention(d, placement, base, model_name)


def marks(d: dict[str, Any]) -> dict[int, str]:
    """Composed-model index -> "inserted"/"replaced" for the layers a placement added or changed."""
    names = {"AttentionResidual": "inserted", **{name: "replaced" for name in HOSTS}}
    return {i: names[r[2]] for i, r in enumerate(rows(d)) if r[2] in names}


def base_indices(d: dict[str, Any]) -> dict[int, int]:
    """Base-model index -> composed-model index of the same layer, read off a composed YAML dict.

    Every row of a composed model is a base row, in base order, except the rows insert mode added
    (:func:`marks` ``inserted``); replaced hosts keep their index. So base layer ``j`` is the ``j``-th
    row that was not inserted. The base model itself maps to itself.
    """
    inserted = {i for i, m in marks(d).items() if m == "inserted"}
    kept = [i for i in range(len(rows(d))) if i not in inserted]
    return dict(enumerate(kept))


def placement_strides(
    model: nn.Module, d: dict[str, Any], layers: Sequence[int], size: int = PROBE_SIZE
) -> list[int]:
    """Output stride of each base-model layer in ``layers`` (8 for a P3 map), read off the composed model."""
    table = layer_table(model, size)
    where = base_indices(d)
    return [table[where[i]].stride for i in layers if i in where]


def write_yaml(d: dict[str, Any], path: Path, header: str = "") -> Path:
    """Write a composed model YAML laid out like ultralytics' own files: one flow-style row per layer."""
    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in d.items():
        if key in ("backbone", "head"):
            lines += [f"{key}:", *(f"  - {_flow(row)}" for row in value)]
        elif isinstance(value, dict):
            lines += [f"{key}:", *(f"  {k}: {_flow(v)}" for k, v in value.items())]
        else:
            lines.append(f"{key}: {_flow(value)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _flow(value: Any) -> str:
    """One-line YAML for ``value``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def format_table(table: list[LayerInfo]) -> str:
    """The layer table that ``action=inspect`` prints."""
    lines = [f"{'idx':>4} {'from':>14}  {'module':<26} {'out ch':>7} {'stride':>6}  note"]
    for r in table:
        ch = str(r.channels) if r.channels else "-"
        st = str(r.stride) if r.stride else "-"
        lines.append(f"{r.index:>4} {str(r.source):>14}  {r.module:<26} {ch:>7} {st:>6}  {r.mark}")
    return "\n".join(lines)
