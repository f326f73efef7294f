"""The table model: cells (mean ± std, the paired Δ with its interval and mark), rows, blocks, best marks.

Built from the labelled summary; renderers (:mod:`.render`) turn it into LaTeX, Markdown or text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..families import family_of
from .columns import AP_COLUMNS, HIGHER_IS_BETTER, LATENCY_SETTINGS, MEASURE_COLUMNS
from .statistics import StatOptions, detectable_delta, family_size, identical_rows

DETECT_AT = (3, 5, 10)  # seed counts of the single-seed hint (as make calibrate prints them)


@dataclass
class Cell:
    """One table cell: the mean ± std over n seeds and, for AP cells, the paired Δ to the baseline."""

    mean: float | None = None
    std: float | None = None
    n: int = 0
    delta: float | None = None
    delta_n: int = 0
    ci: tuple[float, float] | None = None  # the Δ's confidence interval (n ≥ 2 paired seeds)
    sig: bool = False  # adjusted p < α
    identical: bool = False  # the same Δ on every paired seed (n ≥ 2): no interval, no p, no mark
    seeds_identical: bool = False  # the configuration's metrics are identical on its ≥ 2 seeds
    baseline_missing: bool = False
    bold: bool = False
    ratio: float | None = None  # latency: the ratio to the baseline timed in the same rounds
    apart: bool = False  # latency: timed in another phase than the baseline's ms shown: no ratio, no bold


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
    options: StatOptions = field(default_factory=StatOptions)  # CI method, correction, α
    family: int = 0  # comparisons the p values were adjusted over
    single_seed: list[SingleSeed] = field(default_factory=list)  # Δ cells from one paired seed: not evidence
    latency_apart: int = 0  # latency cells timed in another phase than their baseline's (no ratio)
    latency_load: list[str] = field(default_factory=list)  # the load of measurements timed on a busy machine
    identical: list[str] = field(default_factory=list)  # rows whose seeds gave identical results
    base_mismatch: int = 0  # (variant, baseline) seed pairs left out of Δ: different base runs
    data_mismatch: int = 0  # (variant, baseline) seed pairs left out of Δ: trained on different data
    data_versions: list[str] = field(default_factory=list)  # names holding several data: their columns
    evaluated: dict[str, int] = field(default_factory=dict)  # how AP was evaluated -> configurations
    families: list[str] = field(default_factory=list)  # the model families of its rows (ablate.families)


@dataclass
class SingleSeed:
    """Δ cells of one dataset that rest on one paired seed, and what the observed spread says about more.

    ``sigma``: the seed-to-seed std of mAP50-95 (points) the hint uses (the baselines' own seeds);
    ``detectable``: n -> the smallest Δ mAP50-95 (points) a paired test on n seeds detects at that spread.
    """

    dataset: str
    cells: int
    sigma: float | None
    detectable: dict[int, float]


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


def build_table(summary: pd.DataFrame, n_failed: int = 0, options: StatOptions | None = None) -> Table:
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
                _latency_ratio(cells[("", "latency_ms")], by_ds, datasets)
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
        options or StatOptions(),
        family_size(s),
        single_seed_hints(s, options or StatOptions()),
        identical=_identical_labels(s),
        base_mismatch=int(s["base_mismatch"].sum()) if "base_mismatch" in s else 0,
        evaluated=_evaluated(s),
        data_mismatch=int(s["data_mismatch"].sum()) if "data_mismatch" in s else 0,
        data_versions=data_versions(s),
    )
    table.latency_apart = sum(r.cells[("", "latency_ms")].apart for b in blocks for r in b.rows)
    table.latency_load = _latency_load(s)
    table.families = sorted({family_of(str(m)) for m in s["model"]})
    _mark_best(table)
    return table


def _latency_ratio(cell: Cell, by_ds: Mapping[str, Mapping[str, Any]], datasets: Sequence[str]) -> None:
    """A variant's latency cell: the ratio of the record its ms come from (the first dataset with a latency),
    or none and ``apart`` where that measurement is from another phase than its baseline's."""
    r = next((r for ds in datasets if (r := by_ds.get(ds)) is not None and _f(r["latency_ms_mean"])), None)
    if r is None:
        return
    cell.apart = _true(r.get("latency_apart"))
    cell.ratio = None if cell.apart else _f(r["latency_ratio_mean"])


def _true(v: Any) -> bool:
    return isinstance(v, bool | np.bool_) and bool(v)


def _latency_load(s: pd.DataFrame) -> list[str]:
    """Each distinct load reading behind latency cells timed on a busy machine, as one phrase."""
    reading = ["latency_load", "latency_cores", "latency_jobs"]
    if not {"latency_loaded", *reading} <= set(s):
        return []
    rows = s.loc[s["latency_loaded"].map(_true).astype(bool), reading].drop_duplicates()
    out = []
    for r in rows.to_dict("records"):
        cores, jobs = int(r["latency_cores"]), int(r["latency_jobs"] or 0)
        text = f"load {float(r['latency_load']):.2f} on {cores} core{'s' * (cores != 1)}"
        out.append(text + (f", {jobs} running job{'s' * (jobs != 1)}" if jobs else ""))
    return out


def _identical_labels(s: pd.DataFrame) -> list[str]:
    """``dataset: position attention`` of every row whose seeds gave identical results."""
    rows = identical_rows(s).to_dict("records")
    return [f"{r['dataset']}: {r['pos_label']} {r['attn_label']}" for r in rows]


def data_versions(s: pd.DataFrame) -> list[str]:
    """Per dataset name whose rows were trained on different data (columns ``name@hash``): ``name@hash
    (its YAML and image counts)`` for each, joined by ``; ``."""
    if "dataset_name" not in s:
        return []
    out = []
    for name, rows in s.groupby(s["dataset_name"].astype(str), sort=True):
        shown = rows.drop_duplicates("dataset")
        if len(shown) < 2:
            continue
        notes = shown["data_note"] if "data_note" in shown else pd.Series("", index=shown.index)
        parts = [
            f"{ds} ({note})" if isinstance(note, str) and note else str(ds)
            for ds, note in zip(shown["dataset"], notes, strict=True)
        ]
        out.append(f"{name}: {'; '.join(parts)}")
    return out


def _evaluated(s: pd.DataFrame) -> dict[str, int]:
    """How the table's AP was evaluated (the records' ``evaluated``) -> number of configurations; rows with
    AP but no such record field count under ""."""
    if "evaluated" not in s:
        return {}
    has_ap = s[[f"{m}_mean" for m, _ in AP_COLUMNS]].notna().any(axis=1)
    counts: dict[str, int] = {}
    for value in s.loc[has_ap, "evaluated"].fillna("").astype(str):
        counts[value] = counts.get(value, 0) + 1
    return counts


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
    cell.seeds_identical = bool(r.get("seeds_identical", False)) and cell.n >= 2
    if not base:
        delta = _f(r.get(f"delta_{m}"))
        k = int(r.get(f"delta_{m}_n", 0) or 0)
        if delta is None or k == 0:
            cell.baseline_missing = True
        else:
            cell.delta, cell.delta_n = delta * 100, k
            low, high = _f(r.get(f"delta_{m}_ci_low")), _f(r.get(f"delta_{m}_ci_high"))
            if k >= 2 and bool(r.get(f"delta_{m}_identical", False)):
                cell.identical = True
            elif k >= 2 and low is not None and high is not None:
                cell.ci = (low * 100, high * 100)
                cell.sig = bool(r.get(f"delta_{m}_sig", False))
    return cell


def single_seed_hints(s: pd.DataFrame, options: StatOptions, metric: str = "map50_95") -> list[SingleSeed]:
    """Per dataset, the Δ cells from one paired seed and the calibrate-style hint from the spread seen.

    The spread is the median over the dataset's baselines with at least 2 seeds of their std (the runs'
    seed-to-seed spread); the detectable Δ assumes per-seed differences with sd √2·σ (as make calibrate).
    """
    if f"delta_{metric}_n" not in s:
        return []
    out = []
    one = s[~s["is_baseline"] & (s[f"delta_{metric}_n"] == 1)]
    for ds, cells in one.groupby(one["dataset"].astype(str), sort=True):
        base = s[s["is_baseline"] & (s["dataset"].astype(str) == ds) & (s[f"{metric}_n"] >= 2)]
        stds = base[f"{metric}_std"].dropna()
        sigma = float(stds.median()) * 100 if not stds.empty else None
        detectable = (
            {n: detectable_delta(sigma * math.sqrt(2), n, options.alpha) for n in DETECT_AT}
            if sigma is not None
            else {}
        )
        out.append(SingleSeed(ds, len(cells), sigma, detectable))
    return out


def _mark_best(table: Table) -> None:
    keys = [("", m) for m, _, _ in MEASURE_COLUMNS] + [
        (ds, m) for ds in table.datasets for m, _ in AP_COLUMNS
    ]
    for block in table.blocks:
        for key in keys:
            decimals = table.decimals.get(key[1], 1)
            shown = [
                (round(c.mean, decimals), c)
                for r in block.rows
                if (c := r.cells[key]).mean is not None and not c.apart
            ]
            if not shown:
                continue
            pick = max if key[1] in HIGHER_IS_BETTER else min
            best = pick(v for v, _ in shown)
            for v, c in shown:
                c.bold = v == best
