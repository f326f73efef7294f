"""Where the measurement phase keeps its results, and reading them back (no torch: the tables read this).

``<results>/measures/<backend>-<settings key>/<architecture key>.json`` holds one architecture's
measurement (the :data:`FIELDS` a table row gets, plus the architecture and the phase's time stamp),
``settings.json`` beside it the settings; ``measures/latency.csv`` lists them all, ``measures/export/`` the
exported models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..records import read_json, write_text_atomic

MEASURES = "measures"
EXPORT_DIR = "export"
LATENCY_CSV = "latency.csv"
SETTINGS_JSON = "settings.json"
MODEL_YAML = "model.yaml"
# what a measurement adds to a run's row in the table (runs.csv columns)
FIELDS = (
    "latency_ms",
    "latency_p10_ms",
    "latency_p90_ms",
    "latency_ratio",
    "latency_ratio_p10",
    "latency_ratio_p90",
    "latency_backend",
    "latency_device",
    "latency_dtype",
    "latency_batch",
    "latency_threads",
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


def latest_by_architecture(
    measures: Iterable[Mapping[str, Any]], backend: str
) -> dict[str, Mapping[str, Any]]:
    """arch key -> its newest measurement on ``backend``."""
    out: dict[str, Mapping[str, Any]] = {}
    for m in sorted(measures, key=lambda m: str(m.get("phase", ""))):
        if m.get("latency_backend") == backend:
            out[str(m["arch_key"])] = m
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
