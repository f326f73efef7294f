"""Agreement between a quick and a reference protocol: pure functions over per-seed pairs.

Input: the frame of :func:`ablate.fidelity.study.read_pairs` (one row per dataset, protocol, comparison
and seed, the variant's and the comparator's metric in points). Every Δ is paired by seed; CIs are paired
t intervals (:func:`ablate.report.statistics.t_interval`), as in the table.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from ..report.statistics import ALPHA, t_interval

# |quick Δ| bins (points) for the flip rate: YOLOBench's bins (shared/notes/validity.md)
BINS = (0.0, 0.5, 1.0, 2.0, 5.0, math.inf)
RESAMPLES = 2000


def deltas(pairs: pd.DataFrame, level: float = 1 - ALPHA) -> pd.DataFrame:
    """Per (dataset, protocol, comparison): mean Δ, its sd, n paired seeds, the CI, and ``identical`` (≥ 2
    seeds whose Δ are all equal: the seed varied nothing, so the interval says nothing)."""
    ok = pairs[pairs["same_base"].astype(bool)].dropna(subset=["variant", "versus"])
    ok = ok.assign(delta=ok["variant"] - ok["versus"])
    keys = ["dataset", "protocol", "comparison"]
    g = ok.groupby(keys, sort=False)["delta"]
    out = pd.DataFrame({"delta": g.mean(), "sd": g.std(ddof=1), "n": g.count()})
    low, high = t_interval(out["delta"], out["sd"].fillna(0.0), out["n"], level)
    out["ci_low"], out["ci_high"] = low, high
    out["identical"] = (out["n"] >= 2) & (out["sd"].fillna(1.0) == 0)
    kinds = pairs.drop_duplicates(keys).set_index(keys)[["kind", "expect"]]
    out = kinds.join(out, how="left")
    out["n"] = out["n"].fillna(0).astype(int)
    out["mismatched_bases"] = (
        pairs.assign(mis=~pairs["same_base"].astype(bool)).groupby(keys, sort=False)["mis"].sum().astype(int)
    )
    return out.reset_index()


def side_by_side(d: pd.DataFrame, protocols: tuple[str, str]) -> pd.DataFrame:
    """One row per (dataset, comparison): the quick and the reference Δ, CI and n next to each other."""
    quick, ref = protocols
    cols = ["delta", "sd", "n", "ci_low", "ci_high", "identical", "mismatched_bases"]
    base = d.drop_duplicates(["dataset", "comparison"])[["dataset", "comparison", "kind", "expect"]]
    out = base
    for label, name in (("quick", quick), ("reference", ref)):
        part = d[d["protocol"] == name].set_index(["dataset", "comparison"])[cols]
        out = out.join(part.add_prefix(f"{label}_"), on=["dataset", "comparison"])
    out["excludes_zero_reference"] = (out["reference_ci_low"] > 0) | (out["reference_ci_high"] < 0)
    out["excludes_zero_quick"] = (out["quick_ci_low"] > 0) | (out["quick_ci_high"] < 0)
    out["flip"] = np.sign(out["quick_delta"]) != np.sign(out["reference_delta"])
    return out.reset_index(drop=True)


def kendall_tau(quick: np.ndarray, reference: np.ndarray) -> float:
    """Kendall's τ-b between two vectors of Δ (NaN pairs dropped; NaN for fewer than 3 configurations)."""
    q, r = np.asarray(quick, float), np.asarray(reference, float)
    keep = ~(np.isnan(q) | np.isnan(r))
    if keep.sum() < 3:
        return math.nan
    tau = kendalltau(q[keep], r[keep]).statistic
    return float(tau) if tau == tau else math.nan


def tau_with_ci(
    pairs: pd.DataFrame,
    dataset: str,
    protocols: tuple[str, str],
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = 1 - ALPHA,
) -> tuple[float, float, float]:
    """τ between the protocols' mean Δ over the comparisons of ``dataset``, with a percentile bootstrap CI
    over seeds: each resample draws seeds with replacement, the same draw for every comparison and both
    protocols (the seeds are shared), and recomputes every mean Δ and τ."""
    p = pairs[(pairs["dataset"] == dataset) & pairs["same_base"].astype(bool)]
    p = p.assign(delta=p["variant"] - p["versus"])
    table = p.pivot_table(index="seed", columns=["protocol", "comparison"], values="delta", aggfunc="mean")
    comparisons = list(dict.fromkeys(p["comparison"]))
    quick, ref = protocols
    if (
        table.empty
        or quick not in table.columns.get_level_values(0)
        or ref not in table.columns.get_level_values(0)
    ):
        return math.nan, math.nan, math.nan
    q = table[quick].reindex(columns=comparisons).to_numpy()
    r = table[ref].reindex(columns=comparisons).to_numpy()
    point = kendall_tau(np.nanmean(q, axis=0), np.nanmean(r, axis=0))
    rng = np.random.default_rng(seed)
    n = q.shape[0]
    taus = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        with warnings.catch_warnings():  # a comparison without a seed in this resample: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            taus.append(kendall_tau(np.nanmean(q[idx], axis=0), np.nanmean(r[idx], axis=0)))
    taus_a = np.asarray(taus)
    taus_a = taus_a[~np.isnan(taus_a)]
    if len(taus_a) == 0:
        return point, math.nan, math.nan
    low, high = np.quantile(taus_a, [(1 - level) / 2, 1 - (1 - level) / 2])
    return point, float(low), float(high)


def sign_agreement(rows: pd.DataFrame) -> tuple[int, int]:
    """(kept, of): among the comparisons whose reference CI excludes 0, how many quick Δ have its sign."""
    sure = rows[rows["excludes_zero_reference"]]
    return int((~sure["flip"]).sum()), len(sure)


def flips_by_bin(rows: pd.DataFrame, bins: tuple[float, ...] = BINS) -> list[tuple[str, int, int]]:
    """(bin label, flips, comparisons) by |quick Δ| in points; a flip is a sign change between protocols."""
    valid = rows.dropna(subset=["quick_delta", "reference_delta"])
    size = valid["quick_delta"].abs()
    out = []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        inside = valid[(size >= lo) & (size < hi)]
        label = f"≥ {lo:g}" if math.isinf(hi) else f"{lo:g}–{hi:g}"
        out.append((label, int(inside["flip"].sum()), len(inside)))
    return out


def kept_sign_from(rows: pd.DataFrame) -> tuple[float, int] | None:
    """The smallest |quick Δ| X such that every comparison with |quick Δ| ≥ X kept its sign under the
    reference protocol, and how many comparisons that is (None: the largest quick Δ itself flipped)."""
    valid = rows.dropna(subset=["quick_delta", "reference_delta"])
    ordered = valid.assign(size=valid["quick_delta"].abs()).sort_values("size", ascending=False)
    threshold, count = None, 0
    for _, row in ordered.iterrows():
        if row["flip"]:
            break
        threshold, count = float(row["size"]), count + 1
    return None if threshold is None else (threshold, count)


def control_verdicts(rows: pd.DataFrame) -> list[dict[str, object]]:
    """Per control and protocol: whether it reads as it must (null: CI contains 0 or the seeds gave
    identical Δ of 0; positive: CI excludes 0 with the expected sign)."""
    out = []
    for _, row in rows[rows["kind"] != "module"].iterrows():
        for label in ("quick", "reference"):
            d, lo, hi = row[f"{label}_delta"], row[f"{label}_ci_low"], row[f"{label}_ci_high"]
            if row["kind"] == "null":
                ok = bool(lo <= 0 <= hi) if lo == lo else bool(d == 0)
            else:
                ok = bool(hi < 0) if row["expect"] == "-" else bool(lo > 0)
            out.append(
                {
                    "dataset": row["dataset"],
                    "comparison": row["comparison"],
                    "kind": row["kind"],
                    "expect": row["expect"],
                    "protocol": label,
                    "delta": d,
                    "ci_low": lo,
                    "ci_high": hi,
                    "identical": bool(row[f"{label}_identical"])
                    if row[f"{label}_identical"] == row[f"{label}_identical"]
                    else False,
                    "ok": ok,
                }
            )
    return out
