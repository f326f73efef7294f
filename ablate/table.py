"""Ablation tables from run records: ``runs.csv``, ``summary.csv``, LaTeX and Markdown tables, figures.

    python -m ablate.table [--results results] [--where COLUMN=VALUE[,VALUE...]]... [--no-figures] [-q] [-v]
    make table [RESULTS=results] [WHERE="dataset=shapes attn=rala,fla"]

Reads every ``<results>/runs/*/record.json`` and writes into ``<results>``:

* ``runs.csv``: one row per run (failed runs included), every record field in RunRecord order, then
  ``record_path``. Nested dicts become dotted columns (``versions.torch``, ``train_settings.lr0``,
  ``attn_params.rope``; ``{}`` where every dict is empty; ``attn_params`` is also kept whole as JSON),
  lists are JSON (``layers`` = ``[14, 17, 20]``).
* ``summary.csv``: one row per configuration (the record's ``config_key``: everything but the seed,
  training settings included; ``train_hash`` names the training settings) with ``<metric>_mean``,
  ``<metric>_std`` (sample std, ddof=1) and ``<metric>_n`` over the ``ok`` runs for every metric in
  :data:`METRICS`, ``n`` (ok runs), ``n_failed``, ``seeds``, the labels the table uses (``block``,
  ``pos_label``, ``attn_label``, ``is_baseline``), and the paired comparison with the baseline (the
  configuration named by ``baseline_key``: same model, dataset and training settings, no attention):
  ``baseline_found`` (it has ok runs), ``paired_seeds`` (seeds both have) and for every metric in
  :data:`DELTA_METRICS` ``delta_<m>`` (mean over the paired seeds of variant − baseline),
  ``delta_<m>_std`` (std of those differences), ``delta_<m>_n``, ``delta_<m>_p`` (two-sided paired
  t-test on the per-seed differences: t = mean/(std/√n), n − 1 degrees of freedom, needs n ≥ 2; a
  non-zero difference with zero spread has p = 0), ``delta_<m>_sig`` (p < :data:`ALPHA` = 0.05) and,
  where the Δ is not significant, ``delta_<m>_seeds_needed``: n ≈ 15.7·σ²/δ² (two-sided α = 0.05,
  power 0.8; at least 2) with δ the observed mean Δ and σ the seed-to-seed std of the runs pooled over
  the two arms on the paired seeds (σ² = (s²_variant + s²_baseline)/2), i.e. the seeds per arm an
  unpaired comparison would need; the paired test usually needs fewer.
* ``tables/ablation.tex`` (needs ``\\usepackage{booktabs}``, nothing else) and ``tables/ablation.md``:
  one block per model × training setting (``train`` name, short ``train_hash``, epochs, image size:
  different settings are never averaged) × action (``profile`` runs: measures only, ``—`` for AP);
  the baseline first, then rows by position (preset order), then attention; Params (M), GFLOPs and
  Latency (ms), taken from the configuration's runs on the first dataset column that has them (the
  Detect head, hence the counts, depends on the number of classes; params and GFLOPs are
  deterministic, so their std is left out when it is 0). Latency is the measurement phase's median for
  the run's architecture (``arch_key``; :mod:`ablate.measure.phase`, ``--latency-backend``, default
  torch), with ``(r×)``: its ratio to the baseline timed in the same rounds; the footnote names the
  backend, device, threads, dtype and batch. Then mAP50, mAP50-95 and AP_S per dataset in
  %, as ``mean ± std`` with the Δ to the baseline in parentheses, ``†`` where the paired t-test is
  significant, ``(—)`` where no baseline run shares a seed, and ``n`` where it differs from the
  usual. Bold: the best value per column and block, baseline included: highest AP, lowest params,
  GFLOPs and latency (ties at the printed precision are all bold). Caption, label ``tab:ablation`` and
  a footnote (n, the test, failed runs excluded). A table wider than the text compiles with an overfull
  box; wrap it in ``\\resizebox`` (graphicx) or use ``table*`` if needed.
* ``figures/``: mAP50-95 against latency and GFLOPs with std error bars and the Pareto front, the
  attention × position heat map of Δ mAP50-95, and the module complexity curves when
  ``<results>/bench/modules.csv`` exists (see :mod:`ablate.figures`).

Failed runs (status ≠ ok) are excluded from every statistic and counted; unreadable records are
skipped with a warning; a missing baseline logs a warning with the command that would produce it.
``--where`` selects the runs reported (``runs.csv``, summary, tables, figures); Δs are always taken
against the baseline runs found under the results root, on the selected seeds. The terminal table
(:func:`format_summary`) gives per configuration the means, the Δ mAP50-95, its p value and the seeds
hint.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import figures as figures_module  # light (matplotlib is imported when drawing); samples idle CPUs
from .errors import AblateError
from .records import RECORD, RUNS, RunRecord, results_lock, run_key, write_text_atomic
from .stats import ALPHA

log = logging.getLogger(__name__)

SEEDS_FACTOR = 15.7  # 2·(z_{0.975} + z_{0.8})²: seeds per arm to detect δ with spread σ
AP_METRICS = (
    "map50",
    "map50_95",
    "ap_small",
    "ap_medium",
    "ap_large",
    "map50_coco",
    "map50_95_coco",
    "precision",
    "recall",
)
COST_METRICS = (
    "params",
    "params_attn",
    "gflops",
    "gflops_ultralytics",
    "latency_ms",  # the measurement phase's, joined by arch_key (ablate.measure.phase)
    "latency_p10_ms",
    "latency_p90_ms",
    "latency_ratio",
    "peak_memory_train_mb",
)
METRICS = (*AP_METRICS, *COST_METRICS, "train_seconds")
HIGHER_IS_BETTER = frozenset(AP_METRICS)
DELTA_METRICS = ("map50", "map50_95", "ap_small", "ap_medium", "ap_large")
LATENCY_SETTINGS = ("latency_backend", "latency_device", "latency_dtype", "latency_batch", "latency_threads")
# descriptive columns of a configuration (identical for every seed of one config_key)
CONFIG_COLUMNS = (
    "action",
    "model",
    "scale",
    "dataset",
    "pos",
    "layers",
    "mode",
    "attn",
    "attn_params",
    "attn_variant",
    "train",
    "train_hash",
    "init",
    "epochs",
    "imgsz",
    "batch",
    "baseline_key",
    *LATENCY_SETTINGS,
)
# table columns: (metric, header, scale)
MEASURE_COLUMNS = (
    ("params", "Params (M)", 1e-6),
    ("gflops", "GFLOPs", 1.0),
    ("latency_ms", "Latency (ms)", 1.0),
)
AP_COLUMNS = (("map50", "mAP50"), ("map50_95", "mAP50-95"), ("ap_small", "AP_S"))
AP_LATEX = {"map50": "mAP50", "map50_95": "mAP50-95", "ap_small": "AP$_S$"}
POS_ORDER = ("none", "backbone", "a2c2f", "c2psa", "neck", "p3", "p4", "p5", "custom")
RUNS_CSV, SUMMARY_CSV = "runs.csv", "summary.csv"
TABLE_TEX, TABLE_MD = "tables/ablation.tex", "tables/ablation.md"
RECORD_FIELDS = tuple(f.name for f in fields(RunRecord))
INT_FIELDS = tuple(f.name for f in fields(RunRecord) if str(f.type).startswith("int"))
DASH = "—"
INIT_LABELS = {"warm": "warm start", "scratch": "from scratch", "weights": "from model.weights"}
WHOLE_JSON = ("attn_params", "train_settings")  # dict fields also kept whole in runs.csv, as JSON
DAGGER_TEX, GEQ_TEX = r"^\dagger", r"$\geq$"


# ------------------------------------------------------------------------------------------- loading


@dataclass
class Loaded:
    """The readable records (as dicts, with their path under ``record_path``) and the skipped paths."""

    records: list[dict[str, Any]]
    skipped: list[Path] = field(default_factory=list)


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


def _read_all(paths: Sequence[str]) -> list[bytes | None]:
    """The bytes of each file; None when it does not exist (a run in progress), b"" when unreadable."""
    out: list[bytes | None] = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                out.append(fh.read())
        except FileNotFoundError:
            out.append(None)
        except OSError as e:
            log.warning("skipping %s: unreadable record (%s)", path, e)
            out.append(b"")
    return out


def _parse(path: str, data: bytes) -> dict[str, Any] | None:
    try:
        d = json.loads(data)
    except ValueError as e:
        log.warning("skipping %s: unreadable record (%s)", path, " ".join(str(e).split())[:120])
        return None
    if not isinstance(d, dict) or not isinstance(d.get("key"), str) or not isinstance(d.get("status"), str):
        log.warning("skipping %s: not a run record (no key/status)", path)
        return None
    for k, default in _DEFAULTS.items():
        if d.get(k) is None:
            d[k] = default
    if not (d.get("config_key") and d.get("train_hash") and d.get("baseline_key")):
        _fill_keys(d)
    d["record_path"] = path
    return d


def record_paths(results_dir: Path) -> list[Path]:
    """``runs/<key>/record.json`` for every run directory under ``results_dir``, sorted by key."""
    return [Path(p) for p in _record_files(results_dir)]


def _record_files(results_dir: Path) -> list[str]:
    root = os.path.join(results_dir, RUNS)
    if not os.path.isdir(root):
        return []
    with os.scandir(root) as it:
        names = sorted(e.name for e in it if e.is_dir())
    return [os.path.join(root, n, RECORD) for n in names]


def load_records(results_dir: Path, threads: int = 4) -> Loaded:
    """Read every record; skip unreadable ones with a warning.

    ``threads`` threads read the files, one slice each (overlapping the I/O of a cold cache); the JSON
    is parsed in this thread (parsing in the threads only adds GIL contention).
    """
    paths = _record_files(results_dir)
    if len(paths) >= 512 and threads > 1:
        step = -(-len(paths) // threads)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = pool.map(_read_all, [paths[i : i + step] for i in range(0, len(paths), step)])
            data = [b for part in parts for b in part]
    else:
        data = _read_all(paths)
    records: list[dict[str, Any]] = []
    skipped: list[Path] = []
    for path, raw in zip(paths, data, strict=True):
        if raw is None:
            continue
        d = _parse(path, raw)
        if d is None:
            skipped.append(Path(path))
        else:
            records.append(d)
    log.info("read %d records from %s (%d skipped)", len(records), Path(results_dir) / RUNS, len(skipped))
    return Loaded(records, skipped)


# ----------------------------------------------------------------------------------------- runs.csv


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


# ----------------------------------------------------------------------------------------- filtering


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


def _norm(value: Any) -> str:
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
        wanted = {_norm(_number(v)) for v in _where_values(value)}
        if column not in runs:
            keep &= "null" in wanted
            continue
        keep &= runs[column].map(_norm).isin(wanted)
    return runs[keep]


def write_runs_csv(results_dir: Path, where: dict | None = None) -> Path:
    """Write ``<results_dir>/runs.csv`` (one row per run, every field) for the runs matching ``where``."""
    runs = filter_runs(runs_frame(load_records(Path(results_dir)).records), where)
    return _write_runs(Path(results_dir), runs)


def _write_runs(results_dir: Path, runs: pd.DataFrame) -> Path:
    path = results_dir / RUNS_CSV
    with results_lock(results_dir):  # concurrent sweeps may refresh it at the same time
        write_text_atomic(path, runs.to_csv(index=False))
    log.info("wrote %s (%d runs)", path, len(runs))
    return path


def _pos_rank(pos: pd.Series) -> pd.Series:
    rank = {p: i for i, p in enumerate(POS_ORDER)}
    return pos.map(lambda p: rank.get(p, len(POS_ORDER)))


SUMMARY_FRONT = (
    "config_key",
    "baseline_key",
    "block",
    "dataset",
    "pos_label",
    "attn_label",
    "is_baseline",
    "n",
    "n_failed",
    "seeds",
    "baseline_found",
    "paired_seeds",
)


def summarize(runs: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per configuration: stats of every metric over its ok runs, paired Δs to its baseline.

    ``reference`` holds the runs baselines are looked up in (default: ``runs``). Columns: see the
    module docstring; rows in table order (block, baseline first, position, attention, dataset).
    """
    runs = _with_metrics(runs)
    reference = runs if reference is None else _with_metrics(reference)
    ok = runs[runs["status"] == "ok"]
    failed = runs[runs["status"] != "ok"].groupby("config_key").size().rename("n_failed")
    metrics = list(METRICS)
    g = ok.groupby("config_key", sort=False)
    summary = g[list(CONFIG_COLUMNS)].first().join(g.size().rename("n"))
    summary = summary.join(g["init_run"].nunique().rename("init_runs"))  # warm start: bases behind the seeds
    seed_pairs = ok[["config_key", "seed"]].dropna().drop_duplicates().sort_values("seed", kind="stable")
    seeds = seed_pairs.groupby("config_key", sort=False)["seed"].agg(
        lambda v: " ".join(str(int(x)) for x in v)
    )
    means, stds, counts = g[metrics].mean(), g[metrics].std(ddof=1), g[metrics].count()
    stats = pd.concat(
        {
            f"{m}_{k}": frame[m]
            for m in metrics
            for k, frame in (("mean", means), ("std", stds), ("n", counts))
        },
        axis=1,
    )
    summary = summary.join(seeds.rename("seeds")).join(stats)
    summary = summary.join(_deltas(ok, reference, summary))
    only_failed = runs[~runs["config_key"].isin(summary.index)]
    if not only_failed.empty:  # configurations whose every run failed: listed, n = 0
        extra = only_failed.groupby("config_key", sort=False)[list(CONFIG_COLUMNS)].first().assign(n=0)
        summary = pd.concat([summary, extra])
    summary = summary.join(failed)
    summary["n_failed"] = summary["n_failed"].fillna(0).astype(int)
    summary["n"] = summary["n"].fillna(0).astype(int)
    summary["seeds"] = [v if isinstance(v, str) else "" for v in summary["seeds"]]
    summary["paired_seeds"] = summary["paired_seeds"].fillna(0).astype(int)
    summary["baseline_found"] = summary["baseline_found"].astype("boolean").fillna(False).astype(bool)
    for m in DELTA_METRICS:
        summary[f"delta_{m}_n"] = summary[f"delta_{m}_n"].fillna(0).astype(int)
        summary[f"delta_{m}_sig"] = summary[f"delta_{m}_sig"].astype("boolean").fillna(False).astype(bool)
    summary.index.name = "config_key"
    summary = _label(summary.reset_index(), _train_notes(runs))
    front = [c for c in SUMMARY_FRONT if c in summary]
    return summary[front + [c for c in summary.columns if c not in set(front)]]


def _with_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    missing = {
        c: np.nan
        for c in (*METRICS, *CONFIG_COLUMNS, "seed", "config_key", "status", "init_run")
        if c not in runs
    }
    return runs.assign(**missing) if missing else runs


def t_test_p(t: Any, df: Any) -> np.ndarray:
    """Two-sided p value P(|T| ≥ |t|) of Student's t with ``df`` ≥ 1 degrees of freedom (scipy's ``stdtr``).

    NaN where ``df`` < 1 or ``t`` is NaN.
    """
    from scipy.special import stdtr

    t, df = np.broadcast_arrays(np.abs(np.asarray(t, float)), np.asarray(df, float))
    valid = (df >= 1) & ~np.isnan(t)
    p = 2.0 * stdtr(np.where(valid, df, 1.0), -np.where(valid, t, 0.0))
    return np.where(valid, np.clip(p, 0.0, 1.0), np.nan)


def _delta_columns(m: str) -> list[str]:
    return [f"delta_{m}{suffix}" for suffix in ("", "_std", "_n", "_p", "_sig", "_seeds_needed")]


def _deltas(ok: pd.DataFrame, reference: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Paired Δ statistics per configuration over the seeds it shares with its baseline.

    ``baseline_found``: the baseline configuration has ok runs; ``paired_seeds``: seeds both have;
    per metric the mean, std and count of the per-seed differences, the two-sided paired t-test p
    value (n ≥ 2; zero spread: p = 0 for a non-zero difference, 1 for none), significance at
    :data:`ALPHA` and, where not significant, the seeds-per-arm hint n ≈ 15.7·σ²/δ² (σ² the mean of
    the two arms' variances over the paired seeds, at least 2).
    """
    cols = list(DELTA_METRICS)
    out = pd.DataFrame(index=summary.index)
    out["baseline_found"] = summary["baseline_key"].isin(
        reference.loc[reference["status"] == "ok", "config_key"]
    ) | (summary["baseline_key"] == summary.index)
    variant = ok.groupby(["config_key", "seed"], sort=False)[cols].mean().reset_index()
    variant["baseline_key"] = variant["config_key"].map(summary["baseline_key"])
    variant = variant[variant["baseline_key"] != variant["config_key"]]
    ref_ok = reference[(reference["status"] == "ok") & reference["config_key"].isin(variant["baseline_key"])]
    base = ref_ok.groupby(["config_key", "seed"], sort=False)[cols].mean().reset_index()
    base = base.rename(columns={"config_key": "baseline_key"})
    pairs = variant.merge(base, on=["baseline_key", "seed"], suffixes=("", "_b"))
    out["paired_seeds"] = pairs.groupby("config_key", sort=False).size()
    diff = pd.DataFrame({m: pairs[m] - pairs[f"{m}_b"] for m in cols}).set_axis(pairs["config_key"])
    dg = diff.groupby(level=0, sort=False)
    mean, std, n = dg.mean(), dg.std(ddof=1), dg.count()
    vv = pairs[cols].set_axis(pairs["config_key"]).groupby(level=0, sort=False).var(ddof=1)
    vb = pairs[[f"{m}_b" for m in cols]].set_axis(cols, axis=1).set_axis(pairs["config_key"])
    vb = vb.groupby(level=0, sort=False).var(ddof=1)
    for m in cols:
        d, s, k = mean[m], std[m], n[m]
        if pairs.empty:
            p = need = d
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = d / (s / np.sqrt(k))
                p = pd.Series(t_test_p(t, k - 1), index=d.index)
                need = np.ceil(SEEDS_FACTOR * (vv[m] + vb[m]) / 2 / d**2)
            p = p.where(s > 0, np.where(d != 0, 0.0, 1.0)).where(k >= 2)
        sig = p < ALPHA
        need = need.where(~sig & (k >= 2)).clip(lower=2)
        values = (d, s, k, p, sig, need)
        out = out.join(pd.DataFrame(dict(zip(_delta_columns(m), values, strict=True))))
    return out


def _train_notes(runs: pd.DataFrame) -> dict[str, str]:
    """train_hash -> the recorded settings that differ from the named preset (epochs and imgsz aside)."""
    if "train_settings" not in runs or "train_hash" not in runs:
        return {}
    out = {}
    for r in runs.drop_duplicates("train_hash")[["train_hash", "train", "train_settings"]].to_dict("records"):
        overrides = _train_overrides(str(r.get("train") or ""), r)
        skip = ("train.epochs=", "train.imgsz=")  # in the label already
        keep = [o.removeprefix("+").removeprefix("train.") for o in overrides if not o.startswith(skip)]
        out[str(r["train_hash"])] = " ".join(keep)
    return out


def _label(s: pd.DataFrame, train_notes: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Block, row labels and sort order shared by the tables and the figures."""
    s["is_baseline"] = (s["attn"] == "none") | (s["config_key"] == s["baseline_key"])
    s["train_label"] = (
        s["train"].fillna("").astype(str) + " (" + s["train_hash"].fillna("").astype(str).str[:8] + ")"
    )
    action = s["action"].fillna("train").astype(str)
    schedule = s["epochs"].map(lambda e: "" if pd.isna(e) else f", {int(e)} ep") + s["imgsz"].map(
        lambda i: "" if pd.isna(i) else f", {int(i)} px"
    )
    notes = s["train_hash"].astype(str).map(lambda h: (train_notes or {}).get(h, ""))
    init = s["init"].fillna("scratch").astype(str).map(lambda i: INIT_LABELS.get(i, i))
    s["block"] = (
        s["model"].astype(str)
        + ", train "
        + s["train_label"]
        + schedule
        + notes.map(lambda n: f", {n}" if n else "")
        + init.where(action == "train", "").map(lambda i: f", {i}" if i else "")
        + action.where(action != "train", "").map(lambda a: f", {a}" if a else "")
    )
    pos_label = s["pos"].astype(str).where(s["pos"] != "custom", "custom " + s["layers"].astype(str))
    pos_label = pos_label.where(s["mode"] != "replace", pos_label + " (replace)")
    s["pos_label"] = pos_label.where(~s["is_baseline"], DASH)
    variant = (
        s["attn_variant"].fillna("").astype(str) if "attn_variant" in s else pd.Series("", index=s.index)
    )
    attn = s["attn"].astype(str).where(variant == "", s["attn"].astype(str) + " (" + variant + ")")
    params = pd.Series([v if isinstance(v, str) else "{}" for v in s["attn_params"]], index=s.index)
    # hyper-parameter variants of one module at one position: name the parameters
    ambiguous = s.groupby(["block", "pos_label", "attn"])["attn_params"].transform("nunique") > 1
    attn = attn.where(~ambiguous, attn + " " + params)
    s["attn_label"] = attn.where(~s["is_baseline"], "none (baseline)")
    # configurations that agree on every label but differ otherwise (dataset size, measure settings...)
    dup = s.groupby(["block", "dataset", "pos_label", "attn_label"])["config_key"].transform("nunique") > 1
    s.loc[dup, "attn_label"] = s.loc[dup, "attn_label"] + " [cfg " + s.loc[dup, "config_key"].str[:6] + "]"
    s["_pos_rank"] = _pos_rank(s["pos"])
    block_keys = s[["action", "model", "train", "train_hash"]].astype(str)
    s["_block_rank"] = (block_keys["action"] != "train").astype(int)
    s = s.sort_values(
        [
            "_block_rank",
            "model",
            "train",
            "train_hash",
            "action",
            "is_baseline",
            "_pos_rank",
            "pos_label",
            "attn_label",
            "dataset",
        ],
        ascending=[True, True, True, True, True, False, True, True, True, True],
        kind="stable",
    )
    return s.drop(columns=["_pos_rank", "_block_rank"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------- table model


@dataclass
class Cell:
    """One table cell: the mean ± std over n seeds and, for AP cells, the paired Δ to the baseline."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    delta: float | None = None
    delta_n: int = 0
    sig: bool = False
    baseline_missing: bool = False
    bold: bool = False
    ratio: float | None = None  # latency: the ratio to the baseline timed in the same rounds


@dataclass
class Row:
    pos: str
    attn: str
    baseline: bool
    cells: dict[tuple[str, str], Cell]  # (dataset or "", metric) -> cell


@dataclass
class Block:
    label: str
    rows: list[Row]


@dataclass
class Table:
    blocks: list[Block]
    datasets: list[str]
    decimals: dict[str, int]  # measure column -> decimals
    n_modal: int
    n_failed: int
    seeds: str
    missing_baseline: bool
    warm: str = ""  # "shared": every seed fine-tunes one base checkpoint; "per_seed": one base per seed
    latency: list[str] = field(default_factory=list)  # the measurement settings behind the latency column


def _warm(s: pd.DataFrame) -> str:
    """How the seeds of the table's warm-start rows relate to their base runs ("" when none warm-starts)."""
    if "init" not in s or "init_runs" not in s:
        return ""
    warm = s[(s["init"] == "warm") & (s["n"] > 1)]
    if warm.empty:
        return ""
    return (
        "shared"
        if (warm["init_runs"] <= 1).all()
        else "per_seed"
        if (warm["init_runs"] > 1).all()
        else "mixed"
    )


def _f(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) or pd.isna(x) else float(x)


def _decimals(values: Sequence[float]) -> int:
    """Decimals that give the smallest value three significant digits (0..3)."""
    vals = [abs(v) for v in values if v]
    if not vals:
        return 1
    return int(min(3, max(0, 2 - math.floor(math.log10(min(vals))))))


def build_table(summary: pd.DataFrame, n_failed: int = 0) -> Table:
    """The layout of ablation.tex/.md from the summary (configurations with no ok run are left out)."""
    s = summary[summary["n"] > 0]
    datasets = sorted(s["dataset"].astype(str).unique())
    blocks: list[Block] = []
    ns: list[int] = []
    grouped: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {}
    for rec in s.to_dict("records"):  # summary order: block, baseline first, position, attention
        key = (str(rec["pos_label"]), str(rec["attn_label"]))
        grouped.setdefault(str(rec["block"]), {}).setdefault(key, []).append(rec)
    for label, row_groups in grouped.items():
        rows: list[Row] = []
        for (pos, attn), rs in row_groups.items():
            base = bool(rs[0]["is_baseline"])
            cells: dict[tuple[str, str], Cell] = {}
            by_ds = {str(r["dataset"]): r for r in rs}
            for ds in datasets:
                r = by_ds.get(ds)
                for m, _ in AP_COLUMNS:
                    cells[(ds, m)] = _ap_cell(r, m, base) if r is not None else Cell()
                    if r is not None and cells[(ds, m)].mean is not None:
                        ns.append(cells[(ds, m)].n)
            for m, _, scale in MEASURE_COLUMNS:
                cells[("", m)] = next(
                    (
                        Cell(_f(r[f"{m}_mean"]) * scale, (_f(r[f"{m}_std"]) or 0.0) * scale, int(r[f"{m}_n"]))
                        for ds in datasets
                        if (r := by_ds.get(ds)) is not None and _f(r[f"{m}_mean"]) is not None
                    ),
                    Cell(),
                )
            if not base:
                cells[("", "latency_ms")].ratio = next(
                    (
                        v
                        for ds in datasets
                        if (r := by_ds.get(ds)) is not None and (v := _f(r["latency_ratio_mean"]))
                    ),
                    None,
                )
            rows.append(Row(str(pos), str(attn), base, cells))
        blocks.append(Block(str(label), rows))
    decimals = {
        m: _decimals([c.mean for b in blocks for r in b.rows if (c := r.cells[("", m)]).mean is not None])
        for m, _, _ in MEASURE_COLUMNS
    }
    table = Table(
        blocks,
        datasets,
        decimals,
        max(set(ns), key=ns.count) if ns else 0,
        n_failed,
        _common_seeds(s),
        any(c.baseline_missing for b in blocks for r in b.rows for c in r.cells.values()),
        _warm(s),
        _latency_settings(s),
    )
    _mark_best(table)
    return table


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def _latency_settings(s: pd.DataFrame) -> list[str]:
    """Each distinct measurement setting behind the latency column, as one phrase."""
    if "latency_backend" not in s:
        return []
    rows = s.dropna(subset=["latency_backend"])[list(LATENCY_SETTINGS)].drop_duplicates()
    return [
        f"{r['latency_backend']} on {r['latency_device']}, {_threads(int(r['latency_threads']))}, "
        f"{r['latency_dtype']}, batch {int(r['latency_batch'])}"
        for r in rows.to_dict("records")
    ]


def _common_seeds(s: pd.DataFrame) -> str:
    seeds = s["seeds"].dropna().astype(str).unique()
    return seeds[0] if len(seeds) == 1 else ""


def _ap_cell(r: Mapping[str, Any], m: str, base: bool) -> Cell:
    mean = _f(r[f"{m}_mean"])
    if mean is None:
        return Cell()
    cell = Cell(mean * 100, (_f(r[f"{m}_std"]) or 0.0) * 100, int(r[f"{m}_n"]))
    if not base:
        delta = _f(r.get(f"delta_{m}"))
        k = int(r.get(f"delta_{m}_n", 0) or 0)
        if delta is None or k == 0:
            cell.baseline_missing = True
        else:
            cell.delta, cell.delta_n, cell.sig = delta * 100, k, bool(r.get(f"delta_{m}_sig", False))
    return cell


def _mark_best(table: Table) -> None:
    keys = [("", m) for m, _, _ in MEASURE_COLUMNS] + [
        (ds, m) for ds in table.datasets for m, _ in AP_COLUMNS
    ]
    for block in table.blocks:
        for key in keys:
            decimals = table.decimals.get(key[1], 1)
            shown = [(round(c.mean, decimals), c) for r in block.rows if (c := r.cells[key]).mean is not None]
            if not shown:
                continue
            pick = max if key[1] in HIGHER_IS_BETTER else min
            best = pick(v for v, _ in shown)
            for v, c in shown:
                c.bold = v == best


# ------------------------------------------------------------------------------------------ writers

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "—": "---",
    "–": "--",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
}


def latex_escape(text: str) -> str:
    """``text`` safe in LaTeX text mode (specials escaped, non-ASCII dropped to ``?``)."""
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return out.encode("ascii", "replace").decode("ascii")


def _num(v: float, decimals: int) -> str:
    return f"{v:.{decimals}f}"


def _cell_text(cell: Cell, decimals: int, n_modal: int, latex: bool, measure: bool = False) -> str:
    """``mean ± std`` (bold when best), ``n`` when unusual, then the Δ; a measure drops a zero std."""
    if cell.mean is None:
        return "---" if latex else DASH
    mean = _num(cell.mean, decimals)
    mean = (rf"\textbf{{{mean}}}" if latex else f"**{mean}**") if cell.bold else mean
    text = mean
    if cell.n >= 2 and cell.std is not None and not (measure and round(cell.std, decimals) == 0):
        text += (r" $\pm$ " if latex else " ± ") + _num(cell.std, decimals)
    if cell.n != n_modal:
        text += rf"${{}}_{{n={cell.n}}}$" if latex else f" (n={cell.n})"
    if cell.ratio is not None:
        text += rf" ({cell.ratio:.2f}$\times$)" if latex else f" ({cell.ratio:.2f}×)"
    if cell.baseline_missing:
        text += " (---)" if latex else f" ({DASH})"
    elif cell.delta is not None:
        delta = f"{cell.delta:+.{decimals}f}"
        if latex:
            text += f" (${delta}{DAGGER_TEX if cell.sig else ''}$)"
        else:
            text += f" ({delta}{'†' if cell.sig else ''})"
    return text


def _notes(table: Table, latex: bool) -> list[str]:
    """The footnote lines (n and the seeds, Δ and the test, where the measures come from, bold, failures)."""
    seeds = f" (seeds {table.seeds.replace(' ', ', ')})" if table.seeds else ""
    n = f"$n$ = {table.n_modal}" if latex else f"n = {table.n_modal}"
    dagger, pm, delta = (r"$^\dagger$", r"$\pm$", r"$\Delta$") if latex else ("†", "±", "Δ")
    geq, p05, pct = (GEQ_TEX, "$p < 0.05$", "\\%") if latex else ("≥", "p < 0.05", "%")
    first = (
        f"{n} seeds per cell{seeds} unless marked; mean {pm} sample std (ddof 1); AP in {pct}."
        if table.n_modal
        else "No successful run."
    )
    notes = [
        first,
        f"{delta} (in parentheses): mean over the seeds both have of the per-seed difference to the baseline "
        f"of the same dataset and training settings; {dagger}: {p05}, two-sided paired t-test on the "
        f"per-seed differences (n {geq} 2 paired seeds).",
        "Params, GFLOPs and latency: of the architecture on the first dataset column that has them "
        "(the Detect head depends on the number of classes).",
        _latency_note(table, latex),
        "Bold: best in its column and block (highest AP; lowest params, GFLOPs, latency), baseline included.",
    ]
    if table.warm == "shared":
        notes.append(
            "Warm start: every seed of a row fine-tunes one base checkpoint (the baseline trained from "
            "scratch, the lowest-training-loss of its candidates), so the spread over seeds leaves out the "
            "variance of training that base."
        )
    elif table.warm:
        notes.append(
            "Warm start: each seed fine-tunes its own base checkpoint, trained from scratch with that seed."
        )
    if table.missing_baseline:
        notes.append(f"({'---' if latex else DASH}): no baseline run with the same seeds.")
    if table.n_failed:
        notes.append(f"{table.n_failed} failed run{'s' if table.n_failed != 1 else ''} excluded.")
    return notes


def _latency_note(table: Table, latex: bool) -> str:
    """Where the latency column comes from: the measurement phase and its settings."""
    times = r"$\times$" if latex else "×"
    if not table.latency:
        return "Latency: not measured yet (python -m ablate.measure)."
    where = "; ".join(latex_escape(t) if latex else t for t in table.latency)
    return (
        f"Latency (ms): median forward pass of the measurement phase ({where}), every architecture timed "
        f"alone on the machine in interleaved rounds; ({times}): ratio to the baseline timed in the same "
        "rounds (median over rounds)."
    )


def _value_cells(table: Table, row: Row, latex: bool) -> list[str]:
    """A row's measure cells, then its AP cells per dataset, as LaTeX or Markdown text."""
    cells = [
        _cell_text(row.cells[("", m)], table.decimals[m], row.cells[("", m)].n, latex, True)
        for m, _, _ in MEASURE_COLUMNS
    ]
    return cells + [
        _cell_text(row.cells[(ds, m)], 1, table.n_modal, latex)
        for ds in table.datasets
        for m, _ in AP_COLUMNS
    ]


def to_latex(table: Table) -> str:
    """The booktabs table (needs ``\\usepackage{booktabs}`` only)."""
    nd = len(table.datasets)
    ncols = 2 + len(MEASURE_COLUMNS) + len(AP_COLUMNS) * nd
    lines = [
        "% generated by ablate.table; needs \\usepackage{booktabs} (no other package)",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\caption{Attention ablation: mean $\pm$ std over seeds; in parentheses $\Delta$ vs the baseline on "
        r"the same seeds; $^\dagger$ significant at $\alpha = 0.05$ by a two-sided paired $t$-test on the "
        r"per-seed differences; bold: best per column.}",
        r"\label{tab:ablation}",
        r"\begin{tabular}{ll" + "r" * len(MEASURE_COLUMNS) + "c" * (len(AP_COLUMNS) * nd) + "}",
        r"\toprule",
    ]
    first_ap = 3 + len(MEASURE_COLUMNS)
    if nd:
        head = " & " * (first_ap - 2) + " & ".join(
            rf"\multicolumn{{{len(AP_COLUMNS)}}}{{c}}{{{latex_escape(ds)}}}" for ds in table.datasets
        )
        rules = " ".join(
            rf"\cmidrule(lr){{{first_ap + i * len(AP_COLUMNS)}-{first_ap + (i + 1) * len(AP_COLUMNS) - 1}}}"
            for i in range(nd)
        )
        lines += [head + r" \\", rules]
    names = ["Position", "Attention", *(h for _, h, _ in MEASURE_COLUMNS)] + [
        AP_LATEX[m] for _ in table.datasets for m, _ in AP_COLUMNS
    ]
    lines += [" & ".join(names) + r" \\", r"\midrule"]
    for i, block in enumerate(table.blocks):
        if i:
            lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{ncols}}}{{l}}{{\textit{{{latex_escape(block.label)}}}}} \\")
        for row in block.rows:
            cells = [latex_escape(row.pos) if not row.baseline else "---", latex_escape(row.attn)]
            cells += _value_cells(table, row, latex=True)
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"{\footnotesize\raggedright"]
    lines.append(" \\\\\n".join(_notes(table, True)))
    lines += [r"\par}", r"\end{table}", ""]
    return "\n".join(lines)


def to_markdown(table: Table) -> str:
    """The same table in Markdown: one table per block."""
    out: list[str] = []
    names = ["Position", "Attention", *(h for _, h, _ in MEASURE_COLUMNS)] + [
        f"{ds} {h}" for ds in table.datasets for _, h in AP_COLUMNS
    ]
    for block in table.blocks:
        out += [f"**{block.label}**", "", "| " + " | ".join(names) + " |"]
        out.append("|" + "|".join([":--", ":--"] + ["--:"] * (len(names) - 2)) + "|")
        for row in block.rows:
            cells = [row.pos, row.attn, *_value_cells(table, row, latex=False)]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    out += [f"- {note}" for note in _notes(table, False)]
    return "\n".join(out) + "\n"


def _fmt(v: Any, spec: str, scale: float = 1.0) -> str:
    x = _f(v)
    return DASH if x is None else format(x * scale, spec)


def _p(p: Any) -> str:
    x = _f(p)
    return DASH if x is None else ("<0.001" if x < 0.001 else f"{x:.3f}")


def _hint(r: Mapping[str, Any], m: str = "map50_95") -> str:
    """Significance and the seeds hint of the Δ of ``m``, for the terminal."""
    if r["is_baseline"] or _f(r.get(f"{m}_mean")) is None:
        return ""
    if not r.get("baseline_found", False):
        return "no baseline"
    k = int(r.get(f"delta_{m}_n", 0) or 0)
    if k == 0:
        return "no common seed with baseline" if not r.get("paired_seeds") else "baseline lacks it"
    if k < 2:
        return "1 paired seed: no test"
    if r[f"delta_{m}_sig"]:
        return "significant"
    need = _f(r.get(f"delta_{m}_seeds_needed"))
    if need is None:
        return "not significant"
    return f"n.s.: ~{int(need) if need < 1000 else '1000+'} seeds"


def format_summary(summary: pd.DataFrame) -> str:
    """The plain-text terminal table: one line per configuration, grouped by block."""
    header = (
        "dataset", "position", "attention", "n", "mAP50", "mAP50-95", "AP_S", "Δ mAP50-95", "p",
        "seeds hint (Δ mAP50-95)", "params M", "GFLOPs", "latency ms",
    )  # fmt: skip
    out: list[str] = []
    s = summary[summary["n"] > 0]
    decimals = {m: _decimals(list(s[f"{m}_mean"].dropna() * scale)) for m, _, scale in MEASURE_COLUMNS}
    grouped: dict[str, list[dict[str, Any]]] = {}
    for rec in s.to_dict("records"):
        grouped.setdefault(str(rec["block"]), []).append(rec)
    for label, recs in grouped.items():
        rows = [header]
        for r in recs:
            delta = (
                ""
                if r["is_baseline"]
                else _fmt(r.get("delta_map50_95"), "+.1f", 100) + ("†" if r.get("delta_map50_95_sig") else "")
            )
            rows.append(
                (
                    str(r["dataset"]),
                    str(r["pos_label"]),
                    str(r["attn_label"]),
                    str(r["n"]),
                    *(
                        _fmt(r[f"{m}_mean"], ".1f", 100)
                        + ("±" + _fmt(r[f"{m}_std"], ".1f", 100) if (r[f"{m}_n"] or 0) > 1 else "")
                        for m in ("map50", "map50_95", "ap_small")
                    ),
                    delta,
                    "" if r["is_baseline"] else _p(r.get("delta_map50_95_p")),
                    _hint(r),
                    *(_fmt(r[f"{m}_mean"], f".{decimals[m]}f", scale) for m, _, scale in MEASURE_COLUMNS),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        out.append(f"== {label} ==")
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        out.append("")
    failed = int(summary["n_failed"].sum())
    if s.empty:
        out.append("no successful run")
    out.append(
        "mean±std over seeds, AP in %; Δ paired by seed vs the baseline, † p<0.05 (two-sided paired t-test); "
        f"seeds hint: n ≈ 15.7·σ²/δ² per arm (σ: run std); {failed} failed run{'s' * (failed != 1)} excluded"
    )
    return "\n".join(out)


def summary_table(results_dir: Path, where: dict | None = None) -> str:
    """A short plain-text summary table of the results under ``results_dir`` (for the terminal)."""
    all_runs = with_latency(runs_frame(load_records(Path(results_dir)).records), Path(results_dir))
    runs = filter_runs(all_runs, where)
    if runs.empty:
        return f"no run records under {Path(results_dir) / RUNS}"
    return format_summary(summarize(runs, all_runs))


# ------------------------------------------------------------------------------------ baseline hints


def baseline_command(r: Mapping[str, Any], seeds: str) -> str:
    """The command that would produce the baseline of configuration ``r`` on ``seeds``."""
    parts = ["python -m ablate"]
    if r.get("action") and r["action"] != "train":
        parts.append(f"action={r['action']}")
    parts += [f"model={r['model']}", f"dataset={r['dataset']}"]
    if r.get("train"):
        parts.append(f"train={r['train']}")
        parts += _train_overrides(str(r["train"]), r)
    parts.append("seed=" + ",".join(seeds.split()))
    return " ".join(parts) + " -m"


@functools.cache
def _train_preset(name: str) -> dict[str, Any]:
    """``conf/train/<name>.yaml`` ({} when absent or unreadable)."""
    conf = Path(__file__).resolve().parents[1] / "conf" / "train" / f"{name}.yaml"
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


def _train_overrides(name: str, r: Mapping[str, Any]) -> list[str]:
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
        if k == "name" or _norm(v) == "null":
            continue
        ref = _lookup(preset, k)
        if ref is _MISSING:
            out.append(f"+train.{k}={_override_value(v)}" if "." in k else f"train.{k}={_override_value(v)}")
        elif ref != v or type(ref) is not type(v):
            out.append(f"train.{k}={_override_value(v)}")
    return out


def _override_value(v: Any) -> str:
    """A value as a Hydra override writes it (true/false; numpy scalars as Python ones)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | tuple):
        return "[" + ",".join(_override_value(x) for x in v) + "]"
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
        src = first.loc[r["config_key"]].to_dict() if r["config_key"] in first.index else {}
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


# ------------------------------------------------------------------------------------------- driver


@dataclass
class Report:
    """What :func:`make_tables` wrote and found."""

    runs_csv: Path
    summary_csv: Path
    tex: Path
    md: Path
    figures: list[Path]
    summary: pd.DataFrame
    n_runs: int
    n_failed: int
    skipped: list[Path]
    baseline_commands: list[str]


def with_latency(runs: pd.DataFrame, results_dir: Path, backend: str = "torch") -> pd.DataFrame:
    """``runs`` with the measurement phase's latency of each run's architecture on ``backend`` (the newest
    measurement; columns :data:`ablate.measure.phase.FIELDS`, empty where none is stored)."""
    from .measure.phase import FIELDS, latest_by_architecture, read_measures

    runs = runs.drop(columns=[c for c in (*FIELDS, "throughput_ips", "peak_memory_infer_mb") if c in runs])
    chosen = latest_by_architecture(read_measures(results_dir), backend)
    if "arch_key" not in runs or not chosen:
        return runs
    measured = pd.DataFrame([{k: m.get(k) for k in ("arch_key", *FIELDS)} for m in chosen.values()])
    return runs.merge(measured, on="arch_key", how="left")


def make_tables(
    results_dir: Path,
    where: Mapping[str, Any] | None = None,
    figures: bool = True,
    latency_backend: str = "torch",
) -> Report:
    """Everything ``make table`` writes, for the runs under ``results_dir`` matching ``where``.

    Raises :class:`AblateError` (before writing anything) for an unknown ``where`` column or when no
    record matches.
    """
    results_dir = Path(results_dir)
    t0 = time.perf_counter()
    pool = None
    try:
        loaded = load_records(results_dir)
        if figures:  # workers (if any) forked now: their matplotlib import overlaps the statistics
            pool = figures_module.FigurePool()
        all_runs = with_latency(runs_frame(loaded.records), results_dir, latency_backend)
        listed = filter_runs(all_runs, where)
        runs = listed  # warm-start base runs are listed in runs.csv, not tabulated (unless asked for)
        if "role" in listed and "role" not in (where or {}):
            runs = listed[listed["role"] != "base"]
        if runs.empty:
            what = f" matching {dict(where)}" if where else ""
            raise AblateError(f"no run records{what} under {results_dir / RUNS} (run python -m ablate first)")
        t1 = time.perf_counter()
        summary = summarize(runs, all_runs)
        if pool is not None:  # drawn in the workers while the files below are written
            pool.submit(summary, results_dir / "figures", results_dir / "bench" / "modules.csv")
        commands = warn_missing_baselines(summary, runs)
        n_failed = int((runs["status"] != "ok").sum())
        table = build_table(summary, n_failed)
        t2 = time.perf_counter()
        runs_csv = _write_runs(results_dir, listed)
        summary_csv, tex, md = results_dir / SUMMARY_CSV, results_dir / TABLE_TEX, results_dir / TABLE_MD
        with results_lock(results_dir):
            write_text_atomic(summary_csv, summary.to_csv(index=False))
            write_text_atomic(tex, to_latex(table))
            write_text_atomic(md, to_markdown(table))
            t3 = time.perf_counter()
            figs = pool.wait() if pool is not None else []
            t4 = time.perf_counter()
    finally:
        if pool is not None:
            pool.close()
    log.info(
        "table: load %.2f s, summary + table %.2f s, csv/tex/md %.2f s, figures %.2f s more",
        t1 - t0,
        t2 - t1,
        t3 - t2,
        t4 - t3,
    )
    return Report(
        runs_csv, summary_csv, tex, md, figs, summary, len(runs), n_failed, loaded.skipped, commands
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ablate.table",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--results", default="results", help="results root holding runs/ (default: results)")
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="keep runs whose runs.csv COLUMN equals VALUE (comma: any of; repeatable: all of)",
    )
    parser.add_argument("--no-figures", action="store_true", help="skip the figures")
    parser.add_argument(
        "--latency-backend",
        default="torch",
        help="whose latency the table shows (torch, onnxruntime, tensorrt)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no terminal table (warnings still shown)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and phase times")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    try:
        report = make_tables(
            Path(args.results), parse_where(args.where), not args.no_figures, args.latency_backend
        )
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not args.quiet:
        print(format_summary(report.summary))
    skipped = f", {len(report.skipped)} unreadable record(s) skipped" if report.skipped else ""
    print(f"{report.n_runs} runs ({report.n_failed} failed{skipped})")
    for path in [report.runs_csv, report.summary_csv, report.tex, report.md, *report.figures]:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
