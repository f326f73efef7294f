"""Where attention goes: the :class:`Placement`, the presets, the layer checks and position scans.

A placement names an attention module, base-model layer indices and a mode:

* ``after`` — a new ``AttentionResidual`` layer after each listed layer (:func:`ablate.compose.insert_after`);
* ``replace`` — the attention inside the listed attention-bearing blocks (YOLO12's ``A2C2f``, YOLO11's
  ``C2PSA``) swapped for the module (:func:`ablate.compose.replace_attention`); :func:`attention_layers`
  lists those blocks.

Indices are the base model's own YAML indices. A named position (``+pos=neck``) takes its layers and mode
from the model family's ``presets`` (``conf/model/_<family>.yaml``; ``conf/pos/<name>.yaml`` holds only
``layers: null``), ``+pos=custom pos.layers=[...]`` gives them, and ``+attn=NAME`` alone uses the module's
``default_pos``: :func:`resolve_placement` decides, :func:`check_placement` checks the indices against the
base model. A position scan (``+pos=scan`` in a sweep) becomes one job per layer index
(:func:`expand_scans`). How a placement is written into the model YAML is :mod:`ablate.compose`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

import modules
from modules.hosts import HOSTS
from modules.residual import DEFAULT_GAMMA

from . import overrides
from .errors import AblateError
from .measure.model import base_model_yaml, build_model, head_index, rows

log = logging.getLogger(__name__)

MODES = ("after", "replace")
SCAN = "scan"  # +pos=scan: one job per layer index


@dataclass(frozen=True)
class Placement:
    """Where and how an attention module enters the base model."""

    attn: str
    layers: tuple[int, ...]
    mode: str = "after"
    attn_kwargs: dict[str, Any] = field(default_factory=dict)
    gamma: float | None = DEFAULT_GAMMA


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def presets(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The named positions of ``cfg``'s model family: name -> ``{"layers": [...], "mode": ...}``."""
    return _container(cfg.model.get("presets")) or {}


def resolve_placement(cfg: DictConfig) -> tuple[Placement | None, str]:
    """The placement the config asks for, and the name of its position (preset name or ``custom``)."""
    attn_cfg, pos_cfg = cfg.get("attn"), cfg.get("pos")
    if attn_cfg is None:
        if pos_cfg is not None:
            raise AblateError(
                "pos is set but attn is not; add +attn=NAME (valid: " + ", ".join(modules.available()) + ")"
            )
        return None, "none"
    attn = str(attn_cfg.get("name"))
    if attn not in modules.available():
        raise AblateError(f"attn={attn!r} is not valid; valid: {', '.join(modules.available())}")
    named = presets(cfg)
    layers, mode = None, None
    if pos_cfg is None:
        name = str(attn_cfg.get("default_pos", "neck"))
        log.info("attn=%s: using its default placement pos=%s", attn, name)
    else:
        name = str(pos_cfg.get("name", "custom"))
        if name == SCAN:
            raise AblateError(
                "pos=scan is a sweep over layer indices: add -m (python -m ablate +attn=NAME +pos=scan -m), "
                "or use +pos=custom pos.layers=[i] for one index"
            )
        layers, mode = pos_cfg.get("layers"), pos_cfg.get("mode")
    if layers is None:
        if name not in named:
            valid = [*named, "custom (+pos.layers=[...])"]
            raise AblateError(f"pos={name!r} is not defined for {cfg.model.name}; valid: {', '.join(valid)}")
        layers, mode = named[name]["layers"], mode or named[name]["mode"]
    else:
        name = name if pos_cfg.get("name") else "custom"
    layers = _container(layers)
    if isinstance(layers, int):
        layers = [layers]
    mode = mode or "after"
    if mode not in MODES:
        raise AblateError(f"pos.mode={mode!r} is not valid; valid: {', '.join(MODES)}")
    # null-valued hyperparameters mean "the module's default" (or, in replace mode, the host block's)
    params = {k: v for k, v in (_container(attn_cfg.get("params")) or {}).items() if v is not None}
    gamma = attn_cfg.get("gamma", DEFAULT_GAMMA)
    return Placement(attn, tuple(layers), mode, params, gamma), name


def check_placement(placement: Placement, d: dict[str, Any], model: str) -> None:
    """Raise :class:`AblateError` for a mode or layer indices the base model YAML ``d`` of ``model`` does
    not allow (replace mode's blocks without attention are found when composing)."""
    if placement.mode not in MODES:
        raise AblateError(f"pos.mode={placement.mode!r} is not valid; valid: {', '.join(MODES)}")
    if not placement.layers:
        raise AblateError("pos.layers is empty; give at least one layer index")
    check_layers(d, placement.layers, model)


def check_layers(d: dict[str, Any], layers: tuple[int, ...], model: str) -> None:
    """Every index is an integer of a layer of ``d`` before its Detect head."""
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


# ------------------------------------------------------------------------------------------ position scans


def scan_index(job: list[str]) -> int | None:
    """Position of the ``pos=scan`` override in ``job`` (None when the job is no scan)."""
    for i, o in enumerate(job):
        if overrides.key(o) == "pos" and overrides.values(o) == [SCAN]:
            return i
    return None


def scan_layers(cfg: DictConfig) -> list[int]:
    """The layer indices a scan visits for the composed config ``cfg``: ``pos.layers`` when given, else
    every layer of the base model before its Detect head (insert mode) or every block that holds attention
    (``pos.mode=replace``)."""
    layers = _container(cfg.pos.layers) if cfg.pos.get("layers") is not None else None
    if isinstance(layers, int):
        layers = [layers]
    if layers:
        return [int(i) for i in layers]
    d = base_model_yaml(str(cfg.model.name), 80)  # the layer list does not depend on the class count
    if str(cfg.pos.get("mode") or "after") == "replace":
        found = attention_layers(build_model(d))
        if not found:
            raise AblateError(f"pos=scan pos.mode=replace: {cfg.model.name} has no block with attention")
        return found
    return list(range(head_index(d)))


def expand_scans(jobs: list[list[str]], load: Callable[[list[str]], DictConfig]) -> list[list[str]]:
    """Every ``pos=scan`` job replaced by its single-layer jobs (``+pos=custom pos.layers=[i]``; ``load``
    composes a job's config)."""
    out: list[list[str]] = []
    for job in jobs:
        at = scan_index(job)
        if at is None:
            out.append(job)
            continue
        layers = scan_layers(load(job))
        prefix = overrides.prefix(job[at])
        rest = overrides.without([o for i, o in enumerate(job) if i != at], ["pos.layers"])
        out += [[*rest, f"{prefix}pos=custom", f"pos.layers=[{i}]"] for i in layers]
        log.info("position scan: %d layer indices (%s)", len(layers), ", ".join(map(str, layers)))
    return out
