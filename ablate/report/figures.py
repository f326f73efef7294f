"""Figures for the ablation table (PDF and PNG, written by ``make table`` into ``<results>/figures``).

* ``map_vs_latency`` / ``map_vs_gflops``: mAP50-95 (%) of every configuration against its latency or
  GFLOPs, mean with std error bars over seeds, one panel per dataset; each block (model × training
  setting) in its own colour with its own Pareto front (no other configuration of the block is both at
  least as fast/cheap and at least as accurate), drawn as a step line, its points ringed and labelled
  (every point is labelled when a panel has at most :data:`LABEL_ALL_UP_TO`). Baselines are stars.
* ``delta_heatmap``: attention × position of Δ mAP50-95 (points of %, paired by seed, vs the
  baseline), one panel per block and dataset; each cell prints its Δ, † marking a significant paired
  t-test (α = 0.05); above :data:`ANNOTATE_CELLS_UP_TO` cells per figure the numbers are left out and
  a dot marks the significant cells.
* ``position_scan``: for position scans (one attention inserted at one layer index per configuration,
  ``+pos=scan`` or ``+pos=custom pos.layers=[i]``, at two or more indices), Δ mAP50-95 (points) with its
  confidence interval against the layer index, one line per attention, one panel per block and dataset;
  under each index its output stride (/8 = P3); filled markers where the adjusted p is below α, hollow
  where one paired seed gives no interval.
* ``bench_complexity``: when ``<results>/bench/modules.csv`` (``make bench``) exists, forward FLOPs and
  forward latency against the token count N, log–log, per module at one channel count (128 when
  measured), peers dashed.

matplotlib is driven through ``matplotlib.figure.Figure`` (no pyplot state, Agg canvas), with fixed
margins (a layout engine measured every tick label on each save). The figures are drawn in two
forked worker processes when two CPUs are free of other work, else in the calling process
(:mod:`.workers`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DPI = 100
FORMATS = ("png", "pdf")
LABEL_ALL_UP_TO = 12  # label every point of a panel with at most this many; otherwise the front only
FIGURE_COLUMNS = (
    "block", "dataset", "n", "is_baseline", "attn_label", "pos_label", "map50_95_mean", "map50_95_std",
    "latency_ms_mean", "latency_ms_std", "gflops_mean", "gflops_std", "delta_map50_95", "delta_map50_95_sig",
    "pos", "layers", "strides", "mode", "attn", "pos_order", "delta_map50_95_ci_low",
    "delta_map50_95_ci_high", "delta_map50_95_n",
)  # fmt: skip
ANNOTATE_CELLS_UP_TO = 200  # print the Δ in every heat-map cell up to this many cells per figure


def _figure(
    nrows: int,
    ncols: int,
    w: float,
    h: float,
    left: float = 0.75,
    right: float = 0.2,
    bottom: float = 0.6,
    top: float = 0.55,
    wgap: float | None = None,
    hgap: float = 0.95,
):  # noqa: ANN202 (matplotlib types are imported lazily)
    """A figure of ``nrows``×``ncols`` panels of ``w``×``h`` inches with fixed margins and gaps (inches).

    Fixed margins instead of a layout engine: constrained layout measures every tick label once per
    save and dominated the run time.
    """
    from matplotlib.figure import Figure

    wgap = left if wgap is None else wgap
    width = left + right + ncols * w + (ncols - 1) * wgap
    height = bottom + top + nrows * h + (nrows - 1) * hgap
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wgap / w,
        hspace=hgap / h,
    )
    return fig, axes


def _save(fig, path: Path) -> list[Path]:  # noqa: ANN001
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in FORMATS:
        p = path.with_suffix(f".{ext}")
        if ext == "png":
            fig.savefig(p, dpi=DPI, pil_kwargs={"compress_level": 1})  # fast zlib level: ~2x larger
        else:
            fig.savefig(p, dpi=DPI)
        out.append(p)
    log.info("wrote %s (%s)", path.with_suffix(""), ", ".join(FORMATS))
    return out


def _few_ticks(ax) -> None:  # noqa: ANN001
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(5))


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of the points no other point dominates (lower or equal x and higher or equal y, one strict)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    order = np.lexsort((-y, x))  # by x, then best y first
    front = np.zeros(len(x), bool)
    best = -math.inf
    for i in order:
        if y[i] > best:
            front[i] = True
            best = y[i]
    return front


def _panels(s: pd.DataFrame) -> tuple[list[str], list[str]]:
    return list(dict.fromkeys(s["block"])), sorted(s["dataset"].astype(str).unique())


def _by_panel(s: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    return {(str(b), str(d)): g for (b, d), g in s.groupby(["block", "dataset"], sort=False)}


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return -(-n // cols), cols


def plot_tradeoff(summary: pd.DataFrame, x: str, xlabel: str, path: Path) -> list[Path]:
    """mAP50-95 against ``x`` per dataset, std error bars, Pareto front per block; nothing without data.

    Blocks (model × training setting) share a dataset's panel in different colours, each with its own
    front: runs with different training settings are never pooled, only drawn side by side.
    """
    s = summary[(summary["n"] > 0) & summary["map50_95_mean"].notna() & summary[f"{x}_mean"].notna()]
    if s.empty:
        return []
    from matplotlib.transforms import ScaledTranslation

    blocks, datasets = _panels(s)
    panels = _by_panel(s)
    nrows, ncols = _grid(len(datasets))
    top = 0.55 + (0.16 * len(blocks) if len(blocks) > 1 else 0.0)  # room for the legend
    fig, axes = _figure(nrows, ncols, 3.8, 2.8, right=0.6, top=top)
    for ax in axes.ravel()[len(datasets) :]:
        ax.set_visible(False)
    for j, ds in enumerate(datasets):
        ax = axes.ravel()[j]
        for i, block in enumerate(blocks):
            p = panels.get((block, ds))
            if p is None:
                continue
            color = f"C{i % 10}"
            xs, ys = p[f"{x}_mean"].to_numpy(float), 100 * p["map50_95_mean"].to_numpy(float)
            xe = p[f"{x}_std"].fillna(0).to_numpy(float)
            ye = 100 * p["map50_95_std"].fillna(0).to_numpy(float)
            base = p["is_baseline"].to_numpy(bool)
            ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt="none", ecolor=color, lw=0.7, alpha=0.6)
            ax.scatter(xs[~base], ys[~base], s=14, color=color, zorder=2)
            if base.any():
                ax.scatter(
                    xs[base], ys[base], s=90, marker="*", color=color, edgecolors="k", lw=0.6, zorder=3
                )
            front = pareto_front(xs, ys)
            order = np.argsort(xs[front])
            ax.step(xs[front][order], ys[front][order], where="post", color=color, lw=1, alpha=0.8)
            ax.scatter(xs[front], ys[front], s=55, facecolors="none", edgecolors=color, lw=1.1, zorder=3)
            labels = [
                "baseline" if b else f"{a} @ {q}"
                for b, a, q in zip(base, p["attn_label"], p["pos_label"], strict=True)
            ]
            offset = ax.transData + ScaledTranslation(3 / 72, 3 / 72, fig.dpi_scale_trans)  # 3 pt up right
            for k in range(len(p)):
                if front[k] or len(p) <= LABEL_ALL_UP_TO:
                    ax.text(xs[k], ys[k], labels[k], fontsize=6, transform=offset)
        ax.set_title(
            ds if len(blocks) > 1 else f"{ds}\n{blocks[0]}", fontsize=8, y=1.0
        )  # set y: no bbox search
        _few_ticks(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mAP50-95 (%)")
        ax.grid(True, alpha=0.3)
    if len(blocks) > 1:  # one legend for the figure: a dataset's panel may lack some blocks
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], ls="", marker="o", color=f"C{i % 10}") for i in range(len(blocks))]
        fig.legend(handles, blocks, loc="upper center", fontsize=7, frameon=False)
    return _save(fig, path)


def plot_delta_heatmap(summary: pd.DataFrame, path: Path) -> list[Path]:
    """Attention × position heat map of Δ mAP50-95 (points of %), one panel per block and dataset.

    Every panel has the same rows (attentions) and columns (positions); tick labels are on the outer
    panels only.
    """
    if "delta_map50_95" not in summary:
        return []
    s = summary[(summary["n"] > 0) & ~summary["is_baseline"] & summary["delta_map50_95"].notna()]
    if s.empty:
        return []
    blocks, datasets = _panels(s)
    panels = _by_panel(s)
    attns = sorted(s["attn_label"].astype(str).unique())
    if "pos_order" in s:  # presets in order, then custom placements by layer index
        first = s.groupby(s["pos_label"].astype(str))["pos_order"].min()
        positions = list(first.sort_values(kind="stable").index)
    else:
        positions = list(dict.fromkeys(s["pos_label"].astype(str)))
    a_index, p_index = {a: i for i, a in enumerate(attns)}, {q: i for i, q in enumerate(positions)}
    vmax = float(np.nanmax(np.abs(100 * s["delta_map50_95"].to_numpy(float)))) or 1.0
    w, h = max(2.5, 0.42 * len(positions) + 0.6), max(1.6, 0.3 * len(attns) + 0.6)
    char = 0.06  # inches per character at 7 pt
    below = 0.3 + 0.75 * char * max(map(len, positions))  # rotated 45°
    fig, axes = _figure(
        len(blocks),
        len(datasets),
        w,
        h,
        left=0.45 + char * max(map(len, attns)),
        right=1.35,
        bottom=below,
        top=0.75,
        wgap=0.25,
        hgap=0.35,
    )
    annotate = len(s) <= ANNOTATE_CELLS_UP_TO
    image = None
    shown = np.zeros((len(blocks), len(datasets)), bool)
    for i, block in enumerate(blocks):
        for j, ds in enumerate(datasets):
            ax = axes[i, j]
            p = panels.get((block, ds))
            if p is None:
                ax.set_visible(False)
                continue
            shown[i, j] = True
            grid = np.full((len(attns), len(positions)), np.nan)
            sig = np.zeros_like(grid, bool)
            rows = [a_index[a] for a in p["attn_label"].astype(str)]
            cols = [p_index[q] for q in p["pos_label"].astype(str)]
            grid[rows, cols] = 100 * p["delta_map50_95"].to_numpy(float)
            sig[rows, cols] = p["delta_map50_95_sig"].to_numpy(bool)
            image = ax.imshow(grid, cmap="RdBu", vmin=-vmax, vmax=vmax, aspect="auto")
            if annotate:
                for (a, q), v in np.ndenumerate(grid):
                    if not np.isnan(v):
                        text = f"{v:+.1f}" + ("†" if sig[a, q] else "")
                        ax.text(q, a, text, ha="center", va="center", fontsize=7)
            elif sig.any():  # too many cells to print: a dot marks the significant ones
                a, q = np.nonzero(sig)
                ax.scatter(q, a, s=6, c="k", marker="o")
            ax.tick_params(length=0)
            ax.set_title(ds, fontsize=8, y=1.0)  # a set y skips the tick-label bbox search
    for i in range(len(blocks)):
        for j in range(len(datasets)):
            if not shown[i, j]:
                continue
            ax = axes[i, j]
            if i == max(k for k in range(len(blocks)) if shown[k, j]):
                ax.set_xticks(range(len(positions)), positions, rotation=45, ha="right", fontsize=7)
            else:
                ax.set_xticks([])
            if j == min(k for k in range(len(datasets)) if shown[i, k]):
                ax.set_yticks(range(len(attns)), attns, fontsize=7)
                ax.set_ylabel(blocks[i], fontsize=7)
            else:
                ax.set_yticks([])
    if image is not None:
        width, height = fig.get_size_inches()
        cax = fig.add_axes((1 - 1.1 / width, 0.2, 0.12 / width, 0.6))
        fig.colorbar(image, cax=cax, label="Δ mAP50-95 vs baseline (points)")
    height = fig.get_size_inches()[1]
    fig.suptitle("Δ mAP50-95 (points of %) vs the baseline, paired by seed", fontsize=9, y=1 - 0.12 / height)
    return _save(fig, path)


def _single(value: Any) -> int | None:
    """The one index of a single-element list (or its JSON text), else None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, list | tuple) and len(value) == 1 and isinstance(value[0], int | float):
        return int(value[0])
    return None


def scan_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The configurations of position scans: one attention at one custom layer index, with a Δ, in panels
    (block × dataset) where the same attention was placed at two or more indices."""
    need = {"pos", "layers", "delta_map50_95"}
    if not need <= set(summary.columns):
        return summary.iloc[0:0]
    s = summary[(summary["n"] > 0) & ~summary["is_baseline"] & (summary["pos"] == "custom")]
    s = s[s["delta_map50_95"].notna()].copy()
    s["layer"] = s["layers"].map(_single)
    s["stride"] = s["strides"].map(_single) if "strides" in s else None
    s = s[s["layer"].notna()]
    if s.empty:
        return s
    s["series"] = s["attn_label"].astype(str) + s["mode"].map(
        lambda m: " (replace)" if m == "replace" else ""
    )
    counts = s.groupby(["block", "dataset", "series"])["layer"].transform("nunique")
    return s[counts >= 2].sort_values(["block", "dataset", "series", "layer"], kind="stable")


def plot_position_scan(summary: pd.DataFrame, path: Path) -> list[Path]:
    """Δ mAP50-95 (points) with its interval against the layer index, per attention; strides marked."""
    s = scan_rows(summary)
    if s.empty:
        return []
    panels = list(s.groupby(["block", "dataset"], sort=False))
    nrows, ncols = _grid(len(panels), max_cols=2)
    layers_all = sorted(s["layer"].astype(int).unique())
    w = max(4.0, 0.28 * len(layers_all) + 1.2)
    fig, axes = _figure(nrows, ncols, w, 2.6, left=0.75, right=0.2, bottom=0.85, top=0.95, hgap=1.3)
    for ax in axes.ravel()[len(panels) :]:
        ax.set_visible(False)
    series_all = list(dict.fromkeys(s["series"]))
    colors = {name: f"C{i % 10}" for i, name in enumerate(series_all)}
    for ax, ((block, ds), p) in zip(axes.ravel(), panels, strict=False):
        strides: dict[int, int] = {}
        for name, g in p.groupby("series", sort=False):
            x = g["layer"].to_numpy(float)
            y = 100 * g["delta_map50_95"].to_numpy(float)
            low = 100 * g["delta_map50_95_ci_low"].to_numpy(float)
            high = 100 * g["delta_map50_95_ci_high"].to_numpy(float)
            has_ci = ~np.isnan(low) & ~np.isnan(high)
            sig = g["delta_map50_95_sig"].to_numpy(bool)
            color = colors[name]
            ax.plot(x, y, color=color, lw=1, alpha=0.8, label=name)
            yerr = np.vstack([np.where(has_ci, y - low, 0.0), np.where(has_ci, high - y, 0.0)])
            ax.errorbar(
                x[has_ci], y[has_ci], yerr=yerr[:, has_ci], fmt="none", ecolor=color, lw=0.8, capsize=2
            )
            ax.scatter(x[sig], y[sig], s=28, color=color, zorder=3)
            ax.scatter(x[~sig], y[~sig], s=28, facecolors="white", edgecolors=color, zorder=3)
            for layer, stride in zip(g["layer"], g["stride"], strict=True):
                if stride is not None and not (isinstance(stride, float) and math.isnan(stride)):
                    strides[int(layer)] = int(stride)
        ax.axhline(0.0, color="k", lw=0.7)
        ticks = sorted(p["layer"].astype(int).unique())
        ax.set_xticks(ticks, [f"{i}\n/{strides[i]}" if i in strides else str(i) for i in ticks], fontsize=7)
        ax.set_xlabel("layer index (output stride below)", fontsize=8)
        ax.set_ylabel("Δ mAP50-95 (points)", fontsize=8)
        ax.set_title(f"{ds}\n{block}", fontsize=7, y=1.0)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=6, frameon=False)
    height = fig.get_size_inches()[1]
    fig.suptitle(
        "Δ mAP50-95 vs the baseline by layer index\n"
        "(paired by seed, with its CI; filled: significant after correction)",
        fontsize=8,
        y=1 - 0.08 / height,
    )
    return _save(fig, path)


def plot_bench(csv_path: Path, path: Path, channels: int = 128) -> list[Path]:
    """Module complexity curves from ``make bench``'s ``modules.csv`` (FLOPs and forward ms vs N)."""
    rows = pd.read_csv(csv_path)
    need = {"module", "channels", "tokens", "status", "gflops_fwd", "fwd_ms"}
    if not need <= set(rows.columns):
        log.warning("%s lacks columns %s: no complexity figure", csv_path, sorted(need - set(rows.columns)))
        return []
    rows = rows[rows["status"] == "ok"]
    if rows.empty:
        return []
    available = sorted(rows["channels"].unique())
    c = channels if channels in available else available[len(available) // 2]
    rows = rows[rows["channels"] == c]
    fig, axes = _figure(1, 2, 4.2, 3.2)
    for name, r in rows.groupby("module", sort=False):
        r = r.sort_values("tokens")
        peer = "impl" in r and str(r["impl"].iloc[0]) != "ours"
        style = "--" if peer else "-"
        axes[0, 0].plot(r["tokens"], r["gflops_fwd"], style, marker="o", ms=3, label=name)
        axes[0, 1].plot(r["tokens"], r["fwd_ms"], style, marker="o", ms=3, label=name)
    for ax, ylabel in zip(axes[0], ("forward GFLOPs", "forward ms (median)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N = H·W")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_title(f"FLOPs, C={c}", fontsize=9, y=1.0)
    axes[0, 1].set_title(f"forward latency, C={c}", fontsize=9, y=1.0)
    axes[0, 1].legend(fontsize=7)
    return _save(fig, path)


def figure_jobs(
    summary: pd.DataFrame, out_dir: Path, bench_csv: Path | None = None
) -> list[tuple[Callable[..., list[Path]], tuple[Any, ...]]]:
    """The figures to draw, as (function, arguments)."""
    out_dir = Path(out_dir)
    summary = summary[[c for c in FIGURE_COLUMNS if c in summary]]  # less to pickle for the workers
    jobs: list[tuple[Callable[..., list[Path]], tuple[Any, ...]]] = [
        (plot_tradeoff, (summary, "latency_ms", "latency (ms)", out_dir / "map_vs_latency")),
        (plot_tradeoff, (summary, "gflops", "GFLOPs", out_dir / "map_vs_gflops")),
        (plot_delta_heatmap, (summary, out_dir / "delta_heatmap")),
    ]
    if not scan_rows(summary).empty:
        jobs.append((plot_position_scan, (summary, out_dir / "position_scan")))
    if bench_csv is not None and Path(bench_csv).is_file():
        jobs.append((plot_bench, (Path(bench_csv), out_dir / "bench_complexity")))
    return jobs
