"""Where the measurement phase keeps its results, and reading them back (no torch: the tables read this).

``<results>/measures/<backend>-<settings key>/<architecture key>.json`` holds one architecture's
measurement (the :data:`FIELDS` a table row gets, plus the architecture, the phase's time stamp and id and
the load it was timed under), ``settings.json`` beside it the settings; ``measures/models/<arch key>.yaml``
the architecture's model YAML (so a stored measurement can be repeated without its runs),
``measures/latency.csv`` lists them all, ``measures/export/`` the exported models.

A baseline and its variants are timed together, in one phase: a table shows a variant's milliseconds and
ratio beside its baseline's milliseconds only when all three come from that one phase and settings key
(:func:`for_table`); a variant stored from another phase is shown without a ratio and flagged
(``latency_apart``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..records import read_json, write_text_atomic

MEASURES = "measures"
EXPORT_DIR = "export"
MODELS_DIR = "models"
LATENCY_CSV = "latency.csv"
SETTINGS_JSON = "settings.json"
RATIO_FIELDS = ("latency_ratio", "latency_ratio_p10", "latency_ratio_p90")
# what a measurement adds to a run's row in the table (runs.csv columns)
FIELDS = (
    "latency_ms",
    "latency_p10_ms",
    "latency_p90_ms",
    *RATIO_FIELDS,
    "latency_backend",
    "latency_device",
    "latency_dtype",
    "latency_batch",
    "latency_threads",
    "latency_apart",  # a variant timed in another phase than the baseline the table shows: no ratio
    "latency_loaded",  # timed on a busy machine (--force-load), with the reading:
    "latency_load",
    "latency_cores",
    "latency_jobs",
)


def read_measures(results_dir: Path) -> list[dict[str, Any]]:
    """Every stored measurement under ``<results>/measures`` (any backend and settings)."""
    root = Path(results_dir) / MEASURES
    out = []
    for path in sorted(root.glob("*/*.json")):
        if path.name == SETTINGS_JSON:
            continue
        data = read_json(path)
        if isinstance(data, dict) and data.get("arch_key"):
            out.append(data)
    return out


def phase_of(m: Mapping[str, Any]) -> tuple[str, str]:
    """(settings key, phase id) of a measurement; older measurements have their time stamp as the id."""
    return str(m.get("settings_key", "")), str(m.get("phase_id") or m.get("phase") or "")


def latest_by_architecture(
    measures: Iterable[Mapping[str, Any]], backend: str
) -> dict[str, Mapping[str, Any]]:
    """arch key -> its newest measurement on ``backend``."""
    out: dict[str, Mapping[str, Any]] = {}
    for m in sorted(measures, key=lambda m: str(m.get("phase", ""))):
        if m.get("latency_backend") == backend:
            out[str(m["arch_key"])] = m
    return out


def for_table(measures: Iterable[Mapping[str, Any]], backend: str) -> dict[str, dict[str, Any]]:
    """arch key -> the measurement a table shows on ``backend``, with ``latency_apart``.

    A baseline: its newest measurement. A variant: its measurement from the **same phase and settings
    key** as its baseline's (so its ms, its ratio and the baseline's ms agree); where it has none, its
    newest with ``latency_apart`` true and no ratio (its ratio is to a baseline timed in another phase,
    whose ms the table does not show). A variant whose baseline has no measurement on ``backend`` keeps
    its ratio: no baseline ms beside it can contradict it.
    """
    on = [m for m in measures if m.get("latency_backend") == backend]
    newest = latest_by_architecture(on, backend)
    by_phase = {(str(m["arch_key"]), *phase_of(m)): m for m in on}
    out: dict[str, dict[str, Any]] = {}
    for key, m in newest.items():
        base = m.get("baseline_arch_key")
        if not base or base == key or base not in newest:
            out[key] = {**m, "latency_apart": False}
            continue
        same = by_phase.get((key, *phase_of(newest[str(base)])))
        if same is not None:
            out[key] = {**same, "latency_apart": False}
        else:
            out[key] = {**m, "latency_apart": True, **dict.fromkeys(RATIO_FIELDS)}
    return out


def write_latency_csv(results_dir: Path) -> Path | None:
    """``<results>/measures/latency.csv``: one row per stored measurement (None when there is none)."""
    import pandas as pd

    rows = read_measures(results_dir)
    if not rows:
        return None
    df = pd.DataFrame(rows)
    df["layers"] = df["layers"].map(lambda v: "[" + ", ".join(map(str, v)) + "]")
    df["imgsz"] = df["imgsz"].map(lambda v: "x".join(map(str, v)))
    path = Path(results_dir) / MEASURES / LATENCY_CSV
    write_text_atomic(
        path, df.sort_values(["latency_backend", "settings_key", "model", "latency_ms"]).to_csv(index=False)
    )
    return path
