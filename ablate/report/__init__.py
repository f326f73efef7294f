"""Ablation tables from run records: ``runs.csv``, ``summary.csv``, LaTeX and Markdown tables, figures.

    python -m ablate.report [--results results] [--where COLUMN=VALUE[,VALUE...]]... [--ci t|bootstrap]
        [--correction holm|bh|none] [--alpha 0.05] [--no-figures] [-q] [-v]
    make table [RESULTS=results] [WHERE="dataset=shapes attn=rala,fla"] [ARGS="--correction bh"]

Reads every ``<results>/runs/*/record.json`` and writes into ``<results>``:

* ``runs.csv``: one row per run (failed runs included), every record field in RunRecord order, then
  ``record_path``. Nested dicts become dotted columns (``versions.torch``, ``train_settings.lr0``,
  ``attn_params.rope``; ``{}`` where every dict is empty; ``attn_params`` is also kept whole as JSON),
  lists are JSON (``layers`` = ``[14, 17, 20]``).
* ``summary.csv``: one row per configuration (the record's ``config_key``: everything but the seed,
  training settings included) with ``<metric>_mean``, ``<metric>_std`` (ddof 1) and ``<metric>_n`` over
  the ``ok`` runs, and the paired comparison with the baseline (same model, dataset and training
  settings, no attention) over the seeds both have: Δ, its confidence interval, p, p adjusted over the
  table's comparisons, the mark and the seeds hint (:mod:`.statistics` lists every column).
* ``tables/ablation.tex`` (needs ``\\usepackage{booktabs}``, nothing else) and ``tables/ablation.md``:
  one block per model × training setting × action; the baseline first, then rows by position (presets
  in order, custom placements by layer index), then attention; Params (M), GFLOPs and Latency (ms) (the
  measurement phase's median, ``(r×)`` its ratio to the baseline timed in the same rounds), then mAP50,
  mAP50-95 and AP_S per dataset in %, as ``mean ± std (Δ [CI low, CI high]†)``: † where the adjusted p
  is below α; a Δ on one paired seed shows ``n=1`` and never a mark; seeds that gave identical results
  (zero spread) show ``identical seeds``, no interval and no mark, and are warned about. The footnotes
  say how AP was evaluated (the records' ``evaluated``) and how many seed pairs were left out of Δ
  because variant and baseline fine-tuned different base runs or were trained on different data (the
  records' ``data_hash``). Runs on different data are never averaged: a dataset name whose runs hold
  several data hashes gets one column per data, headed ``name@hash``, named in a footnote. The caption
  names the test, the interval, the correction, the family size and α. Bold: the best value per column
  and block.
* ``figures/`` (:mod:`.figures`): mAP50-95 against latency and GFLOPs with the Pareto front, the
  attention × position heat map of Δ mAP50-95 and, for position scans (single-layer custom placements
  at two or more indices), Δ mAP50-95 with its interval against the layer index.

Failed runs are excluded from every statistic and counted; unreadable records are skipped with a
warning; a missing baseline logs a warning with the command that would produce it. ``--where`` selects
the runs reported; Δs are always taken against the baseline runs found under the results root, on the
selected seeds. Package layout: :mod:`.columns` (shared names), :mod:`.load` (records, filtering),
:mod:`.statistics` (pure functions), :mod:`.labels`, :mod:`.layout` (the table model), :mod:`.render`
(LaTeX, Markdown, terminal), :mod:`.hints` (baseline commands), :mod:`.figures`, ``__main__`` (the CLI).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import AblateError
from ..records import RUNS, results_lock, write_text_atomic
from .columns import SUMMARY_CSV, TABLE_MD, TABLE_TEX
from .hints import warn_missing_baselines
from .labels import label, train_notes
from .layout import build_table, data_versions
from .load import filter_runs, load_records, runs_frame, with_latency, write_runs
from .render import (
    base_mismatch_text,
    data_mismatch_text,
    data_versions_text,
    format_summary,
    to_latex,
    to_markdown,
)
from .statistics import StatOptions, identical_rows, identical_text, summarize
from .workers import FigurePool  # light (matplotlib is imported when drawing); samples idle CPUs

log = logging.getLogger(__name__)

__all__ = ["Report", "StatOptions", "labelled_summary", "make_tables", "summary_table"]


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
    options: StatOptions


def labelled_summary(
    runs: pd.DataFrame, reference: pd.DataFrame | None = None, options: StatOptions | None = None
) -> pd.DataFrame:
    """The statistics of ``runs`` (Δs against baselines in ``reference``), then their labels and order."""
    return label(summarize(runs, reference, options), train_notes(runs))


def warn_what_deltas_rest_on(summary: pd.DataFrame) -> None:
    """Log a warning per configuration whose seeds gave identical results, one for the dataset names whose
    runs were trained on different data, and one each for the (variant, baseline) seed pairs left out of Δ
    because they were trained on different data or fine-tuned different base runs."""
    for r in identical_rows(summary).to_dict("records"):
        log.warning("%s", identical_text(r, f"{r['dataset']} {r['pos_label']} {r['attn_label']}: "))
    versions = data_versions(summary[summary["n"] > 0]) if "n" in summary else []
    if versions:
        log.warning("%s", data_versions_text(versions))
    other_data = int(summary["data_mismatch"].sum()) if "data_mismatch" in summary else 0
    if other_data:
        log.warning("%s", data_mismatch_text(other_data))
    mismatched = int(summary["base_mismatch"].sum()) if "base_mismatch" in summary else 0
    if mismatched:
        log.warning("%s", base_mismatch_text(mismatched))


def cpus_text(runs: pd.DataFrame) -> str | None:
    """A warning when the ok runs of a table were trained on more than one CPU (``versions.cpu``; records
    written before it was recorded are not counted), else None."""
    if "versions.cpu" not in runs:
        return None
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    counts = ok["versions.cpu"].dropna().astype(str).value_counts()
    if len(counts) < 2:
        return None
    named = "; ".join(f"{cpu}: {n} run{'s' * (n != 1)}" for cpu, n in sorted(counts.items()))
    return (
        f"the runs of this table were trained on {len(counts)} CPUs ({named}): the last bits of every run, "
        "and which from-scratch base candidate takes off, depend on the CPU; compare numbers from one machine"
    )


def tabulated(runs: pd.DataFrame, where: Mapping[str, Any] | None) -> pd.DataFrame:
    """The runs a table shows: warm-start base runs are listed in runs.csv, not tabulated (unless asked)."""
    if "role" in runs and "role" not in (where or {}):
        return runs[runs["role"] != "base"]
    return runs


def summary_table(results_dir: Path, where: dict | None = None, options: StatOptions | None = None) -> str:
    """A short plain-text summary table of the results under ``results_dir`` (for the terminal)."""
    all_runs = with_latency(runs_frame(load_records(Path(results_dir)).records), Path(results_dir))
    runs = tabulated(filter_runs(all_runs, where), where)
    if runs.empty:
        return f"no run records under {Path(results_dir) / RUNS}"
    return format_summary(labelled_summary(runs, all_runs, options), options)


def make_tables(
    results_dir: Path,
    where: Mapping[str, Any] | None = None,
    figures: bool = True,
    latency_backend: str = "torch",
    options: StatOptions | None = None,
) -> Report:
    """Everything ``make table`` writes, for the runs under ``results_dir`` matching ``where``.

    Raises :class:`AblateError` (before writing anything) for an unknown ``where`` column or when no
    record matches.
    """
    results_dir = Path(results_dir)
    options = options or StatOptions()
    t0 = time.perf_counter()
    pool = None
    try:
        loaded = load_records(results_dir)
        if figures:  # workers (if any) forked now: their matplotlib import overlaps the statistics
            pool = FigurePool()
        all_runs = with_latency(runs_frame(loaded.records), results_dir, latency_backend)
        listed = filter_runs(all_runs, where)
        runs = tabulated(listed, where)
        if runs.empty:
            what = f" matching {dict(where)}" if where else ""
            raise AblateError(f"no run records{what} under {results_dir / RUNS} (run python -m ablate first)")
        t1 = time.perf_counter()
        summary = labelled_summary(runs, all_runs, options)
        if pool is not None:  # drawn in the workers while the files below are written
            pool.submit(summary, results_dir / "figures", results_dir / "bench" / "modules.csv")
        commands = warn_missing_baselines(summary, runs)
        warn_what_deltas_rest_on(summary)
        if mixed := cpus_text(runs):
            log.warning("%s", mixed)
        n_failed = int((runs["status"] != "ok").sum())
        table = build_table(summary, n_failed, options)
        t2 = time.perf_counter()
        runs_csv = write_runs(results_dir, listed)
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
        runs_csv, summary_csv, tex, md, figs, summary, len(runs), n_failed, loaded.skipped, commands, options
    )
