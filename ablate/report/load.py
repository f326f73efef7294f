"""Loading and filtering run records: ``runs.csv`` as a DataFrame, ``--where`` selection, the measurement
phase's latency joined by architecture."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import AblateError
from ..records import RUNS, Loaded, read_records, results_lock, run_key, write_text_atomic
from .columns import INT_FIELDS, METRICS, RECORD_FIELDS, RUNS_CSV, WHOLE_JSON

log = logging.getLogger(__name__)


_DEFAULTS = {"action": "train", "model": "", "attn": "none", "pos": "none", "mode": "none", "dataset": ""}


def _fill_keys(d: dict[str, Any]) -> None:
    """Grouping keys for records written before ``config_key``/``baseline_key``/``train_hash`` existed."""
    settings = d.get("train_settings") or {k: d.get(k) for k in ("train", "epochs", "imgsz", "batch")}
    if not d.get("train_hash"):
        d["train_hash"] = run_key(settings)
    if not d.get("config_key"):
        spec = {k: d.get(k) for k in ("action", "model", "attn", "mode", "dataset")}
        spec.update(attn_params=d.get("attn_params") or {}, layers=d.get("layers") or [])
        spec["train"] = settings
        d["config_key"] = "~" + run_key(spec)[:15]
        base = {**spec, "attn": "none", "attn_params": {}, "layers": [], "mode": "none"}
        d["baseline_key"] = d.get("baseline_key") or "~" + run_key(base)[:15]


def load_records(results_dir: Path, threads: int = 4) -> Loaded:
    """Every record (:func:`ablate.records.read_records`) with the defaults and grouping keys of records
    written before those fields existed filled in."""
    loaded = read_records(results_dir, threads)
    for d in loaded.records:
        for k, default in _DEFAULTS.items():
            if d.get(k) is None:
                d[k] = default
        if not (d.get("config_key") and d.get("train_hash") and d.get("baseline_key")):
            _fill_keys(d)
    log.info(
        "read %d records from %s (%d skipped)",
        len(loaded.records),
        Path(results_dir) / RUNS,
        len(loaded.skipped),
    )
    return loaded


def _json_each(values: Iterable[Any]) -> list[Any]:
    """Lists and dicts as JSON (sorted keys), other values as they are; each distinct value encoded once."""
    cache: dict[str, str] = {}
    out: list[Any] = []
    for v in values:
        if isinstance(v, list | tuple | dict):
            key = repr(v)
            text = cache.get(key)
            if text is None:
                text = cache[key] = json.dumps(v, sort_keys=True, default=str)
            out.append(text)
        else:
            out.append(v)
    return out


def _expand(df: pd.DataFrame) -> pd.DataFrame:
    """Dict columns -> dotted columns (recursively; ``{}`` when every dict is empty), lists -> JSON."""
    parts: list[pd.DataFrame | pd.Series] = []
    for col in df.columns:
        s = df[col]
        if s.dtype != object:
            parts.append(s)
            continue
        values = s.to_numpy()
        kinds = {type(v) for v in values}
        if dict in kinds:
            dicts = [v if type(v) is dict else {} for v in values]
            if col in WHOLE_JSON:  # kept whole too (exact types; configurations differ by them)
                parts.append(pd.Series(_json_each(dicts), index=df.index, name=col))
            sub = pd.DataFrame.from_records(dicts, index=df.index)
            if sub.shape[1]:
                parts.append(_expand(sub).add_prefix(f"{col}."))
            elif col not in WHOLE_JSON:
                parts.append(pd.Series("{}", index=df.index, name=col))
        elif list in kinds or tuple in kinds:
            parts.append(pd.Series(_json_each(values), index=df.index, name=col))
        else:
            parts.append(s)
    return pd.concat(parts, axis=1) if parts else df


def runs_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """runs.csv as a DataFrame: RunRecord fields in order (dotted sub-columns in place), then the rest."""
    if not records:
        return pd.DataFrame(columns=[*RECORD_FIELDS, "record_path"])
    df = _expand(pd.DataFrame.from_records(records))
    seen = list(df.columns)
    order: list[str] = []
    for name in RECORD_FIELDS:
        order += [c for c in seen if c == name or c.startswith(name + ".")]
    placed = set(order)
    order += [c for c in seen if c not in placed]
    df = df[order]
    numeric = [m for m in METRICS if m in df and not pd.api.types.is_numeric_dtype(df[m])]
    if numeric:
        df = df.assign(**{m: pd.to_numeric(df[m], errors="coerce") for m in numeric})
    # integer fields with gaps (None in some records) stay integers: 2560000, not 2560000.0
    ints = {c: df[c] for c in INT_FIELDS if c in df and df[c].dtype != np.int64}
    for c, col in ints.items():
        col = pd.to_numeric(col, errors="coerce")
        if col.dropna().mod(1).eq(0).all():
            ints[c] = col.astype("Int64")
    return df.assign(**ints) if ints else df


def _where_values(value: Any) -> list[str]:
    if isinstance(value, list | tuple | set):
        return [str(v) for v in value]
    text = str(value)
    if text.startswith("["):  # a JSON list (layers=[14,17,20]) is one value
        return [text]
    return [v.strip() for v in text.split(",")]


def parse_where(items: Iterable[str]) -> dict[str, list[str]]:
    """``["dataset=shapes", "attn=rala,fla"]`` -> ``{"dataset": ["shapes"], "attn": ["rala", "fla"]}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column.strip():
            raise AblateError(f"--where expects COLUMN=VALUE[,VALUE...], got {item!r}")
        out.setdefault(column.strip(), []).extend(_where_values(value))
    return out


def norm(value: Any) -> str:
    """A cell or a ``--where`` value as compared: case-insensitive, no spaces, 1.0 == 1, null for missing."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).replace(" ", "").lower()


def _number(text: str) -> Any:
    try:
        return float(text) if any(ch in text for ch in ".eE") else int(text)
    except ValueError:
        return text


def filter_runs(runs: pd.DataFrame, where: Mapping[str, Any] | None) -> pd.DataFrame:
    """The runs matching every column of ``where`` (any of a column's values; ``null``: missing).

    Columns are runs.csv's (``versions.torch`` too). Raises :class:`AblateError` naming an unknown
    column and the valid ones.
    """
    if not where:
        return runs
    valid = set(RECORD_FIELDS) | set(runs.columns)
    keep = pd.Series(True, index=runs.index)
    for column, value in where.items():
        if column not in valid:
            raise AblateError(
                f"--where column {column!r} is not a run column; valid: {', '.join(sorted(valid))}"
            )
        wanted = {norm(_number(v)) for v in _where_values(value)}
        if column not in runs:
            keep &= "null" in wanted
            continue
        keep &= runs[column].map(norm).isin(wanted)
    return runs[keep]


def write_runs_csv(results_dir: Path, where: dict | None = None) -> Path:
    """Write ``<results_dir>/runs.csv`` (one row per run, every field) for the runs matching ``where``."""
    runs = filter_runs(runs_frame(load_records(Path(results_dir)).records), where)
    return write_runs(Path(results_dir), runs)


def write_runs(results_dir: Path, runs: pd.DataFrame) -> Path:
    path = results_dir / RUNS_CSV
    with results_lock(results_dir):  # concurrent sweeps may refresh it at the same time
        write_text_atomic(path, runs.to_csv(index=False))
    log.info("wrote %s (%d runs)", path, len(runs))
    return path


def with_latency(runs: pd.DataFrame, results_dir: Path, backend: str = "torch") -> pd.DataFrame:
    """``runs`` with the measurement phase's latency of each run's architecture on ``backend``: columns
    :data:`ablate.measure.store.FIELDS`, empty where none is stored.

    One measurement per table: a baseline's newest measurement, and each variant's from the same phase and
    settings key (:func:`ablate.measure.store.for_table`), so ms ÷ the baseline's ms is the printed ratio; a
    variant timed in another phase keeps its ms, loses its ratio and has ``latency_apart`` true.
    """
    from ..measure.store import FIELDS, for_table, read_measures

    runs = runs.drop(columns=[c for c in (*FIELDS, "throughput_ips", "peak_memory_infer_mb") if c in runs])
    chosen = for_table(read_measures(results_dir), backend)
    if "arch_key" not in runs or not chosen:
        return runs
    measured = pd.DataFrame([{k: m.get(k) for k in ("arch_key", *FIELDS)} for m in chosen.values()])
    return runs.merge(measured, on="arch_key", how="left")
