"""``figures/fidelity``: quick Δ against reference Δ per comparison, CI bars on both axes, the diagonal.

A panel whose values reach beyond ±``LINEAR_UP_TO`` points (a large positive control beside module-sized
effects) is drawn on symmetric-log axes, linear within ±``LINTHRESH``, so that both stay readable.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

MARKERS = {"module": "o", "null": "s", "positive": "^"}
LINEAR_UP_TO = 5.0
LINTHRESH = 2.0


def plot_fidelity(rows: pd.DataFrame, path: Path, metric_label: str = "Δ mAP50-95 (points)") -> list[Path]:
    """One panel per dataset; writes ``path`` as PNG and PDF and returns the files."""
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(rows["dataset"]))
    fig = Figure(figsize=(4.2 * max(1, len(datasets)), 4.2), dpi=100)
    axes = fig.subplots(1, max(1, len(datasets)), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets, strict=False):
        part = rows[rows["dataset"] == dataset].dropna(subset=["quick_delta", "reference_delta"])
        for _, r in part.iterrows():
            x, y = r["reference_delta"], r["quick_delta"]
            xerr = (
                [[x - r["reference_ci_low"]], [r["reference_ci_high"] - x]] if r["reference_n"] >= 2 else None
            )
            yerr = [[y - r["quick_ci_low"]], [r["quick_ci_high"] - y]] if r["quick_n"] >= 2 else None
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=MARKERS.get(r["kind"], "o"), ms=5, capsize=2, lw=0.8)
            ax.annotate(r["comparison"], (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
        values = pd.concat(
            [part[c] for c in ("quick_ci_low", "quick_ci_high", "reference_ci_low", "reference_ci_high")]
            + [part["quick_delta"], part["reference_delta"]]
        ).dropna()
        lo, hi = (float(values.min()), float(values.max())) if len(values) else (-1.0, 1.0)
        pad = 0.1 * max(hi - lo, 1.0)
        lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="quick = reference")
        ax.axhline(0, color="black", lw=0.4)
        ax.axvline(0, color="black", lw=0.4)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        scale = ""
        if max(abs(lo), abs(hi)) > LINEAR_UP_TO:
            ax.set_xscale("symlog", linthresh=LINTHRESH)
            ax.set_yscale("symlog", linthresh=LINTHRESH)
            scale = f" (symlog axes, linear within ±{LINTHRESH:g})"
        ax.set_title(f"{dataset}{scale}", fontsize=9)
        ax.set_xlabel(f"reference {metric_label}", fontsize=8)
        ax.set_ylabel(f"quick {metric_label}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9, wspace=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in ("png", "pdf"):
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target)
        out.append(target)
    return out
