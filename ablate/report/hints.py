"""Hints for the researcher: the command that would produce a missing baseline, and the training
overrides that reproduce recorded settings."""

from __future__ import annotations

import functools
import json
import logging
import shlex
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ..paths import CONF_DIR
from .load import norm

log = logging.getLogger(__name__)


def baseline_command(r: Mapping[str, Any], seeds: str) -> str:
    """The command that would produce the baseline of configuration ``r`` on ``seeds``."""
    parts = ["python -m ablate"]
    if r.get("action") and r["action"] != "train":
        parts.append(f"action={r['action']}")
    parts += [f"model={r['model']}", *dataset_overrides(r)]
    if r.get("train"):
        parts.append(f"train={r['train']}")
        parts += train_overrides(str(r["train"]), r)
    parts.append("seed=" + ",".join(seeds.split()))
    return " ".join(parts) + " -m"


def dataset_overrides(r: Mapping[str, Any]) -> list[str]:
    """The overrides that select a row's dataset: ``dataset=NAME``, or for a user's YAML (the record's
    ``data.source`` is ``file``) ``dataset=custom dataset.path=YAML dataset.name=NAME``, quoted for a
    shell."""
    name = r.get("dataset_name")
    name = name if isinstance(name, str) and name else str(r.get("dataset") or "")
    path = r.get("data.yaml")
    if r.get("data.source") == "file" and isinstance(path, str) and path:
        path, name = _override_value(path), _override_value(name)
        return ["dataset=custom", shlex.quote(f"dataset.path={path}"), shlex.quote(f"dataset.name={name}")]
    return [f"dataset={name}"]


@functools.cache
def _train_preset(name: str) -> dict[str, Any]:
    """``conf/train/<name>.yaml`` ({} when absent or unreadable)."""
    conf = CONF_DIR / "train" / f"{name}.yaml"
    try:
        import yaml

        preset = yaml.safe_load(conf.read_text())
    except (OSError, ImportError, ValueError):
        return {}
    return preset if isinstance(preset, dict) else {}


_MISSING = object()


def _lookup(d: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return _MISSING
        d = d[part]
    return d


def _flat_settings(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def train_overrides(name: str, r: Mapping[str, Any]) -> list[str]:
    """Hydra overrides for the recorded settings that differ from ``conf/train/<name>.yaml``.

    The settings come from ``r["train_settings"]`` (a dict or runs.csv's JSON; else the ``epochs``,
    ``imgsz`` and ``batch`` columns). ``train.X=V`` for a key the preset has, ``+train.extra.X=V``
    for one it lacks; values keep their recorded type (1.0 stays 1.0: the training hash depends on it).
    """
    raw = r.get("train_settings")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raw = None
    if isinstance(raw, Mapping) and raw:
        settings = _flat_settings(raw)
    else:
        settings = {k: r.get(k) for k in ("epochs", "imgsz", "batch")}
    preset = _train_preset(name)
    out = []
    for k, v in settings.items():
        if k == "name" or norm(v) == "null":
            continue
        ref = _lookup(preset, k)
        if ref is _MISSING:
            out.append(f"+train.{k}={_override_value(v)}" if "." in k else f"train.{k}={_override_value(v)}")
        elif ref != v or type(ref) is not type(v):
            out.append(f"train.{k}={_override_value(v)}")
    return out


def _override_value(v: Any) -> str:
    """A value as a Hydra override writes it, read back by Hydra as the same value: true/false, numpy
    scalars as Python ones, lists in brackets, strings quoted where Hydra would read them otherwise
    (``'a,b'`` is no sweep, ``'1.0'`` no float)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | tuple):
        return "[" + ",".join(_override_value(x) for x in v) + "]"
    if isinstance(v, str):
        from ..overrides import quote  # Hydra's parser: only when a hint is written (make table stays light)

        return quote(v)
    return str(v)


def warn_missing_baselines(summary: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """Log one warning per baseline that is missing or shares no seed, with the command that would run it."""
    commands: list[str] = []
    s = summary[(summary["n"] > 0) & ~summary["is_baseline"]]
    s = s[~s["baseline_found"] | (s["paired_seeds"] == 0)].drop_duplicates("baseline_key")
    if s.empty:
        return commands
    first = runs.drop_duplicates("config_key").set_index("config_key")
    for r in s.to_dict("records"):
        key = str(r["config_key"]).split("@")[0]  # a configuration split by its data: <key>@<data hash>
        src = first.loc[key].to_dict() if key in first.index else {}
        cmd = baseline_command({**src, **r}, str(r["seeds"]))
        why = "has no ok run" if not r["baseline_found"] else "shares no seed with it"
        log.warning(
            "no baseline for %s attn=%s pos=%s dataset=%s (%s): its baseline configuration %s %s; "
            "to produce it: %s",
            r["model"],
            r["attn"],
            r["pos_label"],
            r["dataset"],
            r["block"],
            r["baseline_key"],
            why,
            cmd,
        )
        commands.append(cmd)
    return commands
