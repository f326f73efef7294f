"""Composition: a base ultralytics model YAML with attention modules written in at a placement's layers.

Two modes (where they apply is :mod:`ablate.placement`):

* ``after`` — insert ``AttentionResidual(C, attn)`` as a new layer after each listed base index.
  Every ``from`` reference is remapped: a reference to base layer ``i`` now points at the last layer
  inserted after ``i`` (so every consumer of ``i``, including Concat and Detect, sees the refined map),
  and references to other layers follow their shifted positions.
* ``replace`` — swap the attention inside attention-bearing blocks (YOLO12's ``A2C2f`` with area
  attention, YOLO11's ``C2PSA``) for the chosen module, keeping the block's width and heads.

Layer indices are the base model's own YAML indices. Channel counts written into the composed YAML are
read from the base model built at the chosen scale (:func:`ablate.measure.model.layer_table`), so they are
right for every scale n…x. The result is a standalone YAML dict that ``ultralytics`` parses after
``import modules``; :func:`write_yaml` writes it. This module edits YAML only: the base YAML, the built
model and its numbers are :mod:`ablate.measure.model`'s.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import yaml
from torch import nn

import modules
from modules.hosts import HOSTS
from modules.hosts import module_kwargs as host_module_kwargs

from .errors import AblateError
from .measure.model import INSERTED, LayerInfo, build_model, layer_table, rows
from .placement import Placement, attention_layers, check_placement

log = logging.getLogger(__name__)

__all__ = [
    "base_indices",
    "compose",
    "insert_after",
    "marks",
    "replace_attention",
    "write_yaml",
]


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
            out_rows.append([-1, 1, INSERTED, [channels, placement.attn, dict(placement.attn_kwargs), gamma]])
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
    """Composed YAML dict of the base model YAML ``d`` (of ``model_name``) with ``placement`` (``None`` = the
    baseline, returned unchanged). Raises :class:`AblateError` for a placement the base model does not
    allow or module hyperparameters the module refuses."""
    if placement is None:
        return copy.deepcopy(d)
    check_placement(placement, d, model_name)
    base = build_model(d)
    if placement.mode == "after":
        return insert_after(d, placement, layer_table(base))
    return replace_attention(d, placement, base, model_name)


def marks(d: dict[str, Any]) -> dict[int, str]:
    """Composed-model index -> "inserted"/"replaced" for the layers a placement added or changed."""
    names = {INSERTED: "inserted", **dict.fromkeys(HOSTS, "replaced")}
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
