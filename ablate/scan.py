"""Position scans: ``+pos=scan`` in a sweep becomes one job per layer index (``+pos=custom pos.layers=[i]``).

The indices are ``pos.layers`` when given, else every layer of the base model before its Detect head
(insert mode) or every block that holds attention (``pos.mode=replace``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from . import overrides
from .errors import AblateError

log = logging.getLogger(__name__)

SCAN = "scan"


def scan_index(job: list[str]) -> int | None:
    """Position of the ``pos=scan`` override in ``job`` (None when the job is no scan)."""
    for i, o in enumerate(job):
        if overrides.key(o) == "pos" and overrides.values(o) == [SCAN]:
            return i
    return None


def scan_layers(cfg: DictConfig) -> list[int]:
    """The layer indices a scan visits for the composed config ``cfg`` (see the module docstring)."""
    from .compose import attention_layers, base_model_yaml, build_model, head_index

    layers = (
        OmegaConf.to_container(cfg.pos.layers, resolve=True) if cfg.pos.get("layers") is not None else None
    )
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
    """Every ``pos=scan`` job replaced by its single-layer jobs (``load`` composes a job's config)."""
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
