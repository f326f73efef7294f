"""Statistics of an ablation table, as pure functions of numbers and DataFrames (no labels, no layout).

Per configuration (``config_key``: everything but the seed) the mean, sample std (ddof 1) and count of
every metric over its ok runs; per configuration and metric of :data:`~.columns.DELTA_METRICS` the
paired comparison with its baseline (``baseline_key``) over the seeds both have:

* ``delta_<m>``: mean of the per-seed differences d_i = variant − baseline; ``delta_<m>_std``,
  ``delta_<m>_n`` their sample std and count;
* ``delta_<m>_ci_low`` / ``delta_<m>_ci_high``: the (1 − α) confidence interval of the mean difference,
  per comparison: paired t (mean ± t_{1−α/2, n−1}·s/√n) by default, or a paired bootstrap (percentile
  interval of the mean over ``resamples`` resamples of the seeds, fixed seed). n < 2: none. With few
  seeds the bootstrap interval is too narrow (it cannot be wider than the observed differences); the
  t interval is the default for that reason;
* ``delta_<m>_p``: two-sided paired t-test (t = mean/(s/√n), n − 1 degrees of freedom; n ≥ 2). Zero
  spread (every paired seed gave the same Δ, s ≤ :data:`ZERO_SPREAD`) is no evidence: no p, no interval,
  no mark, and no place in the family; ``delta_<m>_identical`` flags it (the seed usually varied
  nothing: ultralytics issue #6820);
* ``delta_<m>_p_adj``: p adjusted over the table's family — every comparison with a p value on the
  metrics of :data:`~.columns.FAMILY_METRICS` (the Δ cells the table prints) — by Holm (default) or
  Benjamini–Hochberg; NaN for comparisons outside the family;
* ``delta_<m>_sig``: ``p_adj`` < α (so never for n < 2);
* ``delta_<m>_sigma``: the seed-to-seed spread behind the seeds hint: pooled over the paired seeds,
  σ² = (s²_variant + s²_baseline)/2, or, with fewer than 2 paired seeds, the baseline's std over its own
  seeds (else the variant's);
* ``delta_<m>_seeds_needed``: where not significant (and the spread is not zero), the seeds per arm
  n ≈ 2(z_{1−α'/2} + z_{0.8})²σ²/δ² (at least 2) that a Δ of the observed size needs, with α' = α/m
  (the strictest step of the correction, m the family size; α' = α uncorrected). A paired test usually
  needs fewer.

A variant and its baseline are paired on a seed only when they started from the same run: ``init_run``
(the warm start's base run; empty from scratch) equal, and were trained on the same data: ``data_hash``
equal (a record without one pairs with any). Seeds where both have ok runs but different data are left
out of Δ and counted in ``data_mismatch``; those on the same data but with different bases in
``base_mismatch``.

Runs on different data are never averaged either (:func:`by_data`): a configuration whose runs hold two or
more data hashes becomes one row per data (``config_key`` ``<key>@<hash>``), and a dataset name that holds
several data is shown as ``name@hash`` (``dataset``; the name itself in ``dataset_name``, the data's YAML
and image counts in ``data_note``), so two datasets never share a column.

Per configuration, ``seeds_identical`` flags metrics identical on ≥ 2 seeds (every AP metric with ≥ 2
values has zero spread) and ``evaluated`` says which checkpoint on which split the AP comes from (the
records' field; distinct values joined by ``; ``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..data_identity import describe, label, short
from ..errors import AblateError
from .columns import AP_METRICS, CONFIG_COLUMNS, DELTA_METRICS, FAMILY_METRICS, METRICS

ALPHA = 0.05  # two-sided significance level (the CIs are at 1 − α)
POWER = 0.8
CI_METHODS = ("t", "bootstrap")
CORRECTIONS = ("holm", "bh", "none")
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg", "none": "no correction"}
DELTA_SUFFIXES = (
    "",
    "_std",
    "_n",
    "_ci_low",
    "_ci_high",
    "_p",
    "_p_adj",
    "_sig",
    "_identical",
    "_sigma",
    "_seeds_needed",
)
# a spread at or below this is zero: metrics are fractions that ultralytics rounds to 5 decimals, and
# equal per-seed differences of unequal values differ by float rounding (~1e-17), not by training
ZERO_SPREAD = 1e-9
# why identical seeds are suspicious, for the table and the terminal
IDENTICAL_CAUSE = (
    "usually the seed varied nothing (ultralytics issue #6820: YOLO gave identical results for "
    "different seeds)"
)


@dataclass(frozen=True)
class StatOptions:
    """How the table tests and corrects: CI method, multiple-comparison correction, α, bootstrap size.

    Raises :class:`AblateError` naming a bad value and the valid ones.
    """

    ci: str = "t"
    correction: str = "holm"
    alpha: float = ALPHA
    resamples: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.ci not in CI_METHODS:
            raise AblateError(f"--ci {self.ci!r} is not valid; valid: {', '.join(CI_METHODS)}")
        if self.correction not in CORRECTIONS:
            raise AblateError(
                f"--correction {self.correction!r} is not valid; valid: {', '.join(CORRECTIONS)}"
            )
        if not 0 < self.alpha < 1:
            raise AblateError(f"--alpha {self.alpha!r} is not valid; it must lie between 0 and 1")
        if self.resamples < 100:
            raise AblateError(f"bootstrap resamples {self.resamples!r} is not valid; use at least 100")

    @property
    def level(self) -> float:
        return 1.0 - self.alpha


# ------------------------------------------------------------------------------------ elementary tests


def t_test_p(t: object, df: object) -> np.ndarray:
    """Two-sided p value P(|T| ≥ |t|) of Student's t with ``df`` ≥ 1 degrees of freedom (scipy's ``stdtr``).

    NaN where ``df`` < 1 or ``t`` is NaN.
    """
    from scipy.special import stdtr

    t, df = np.broadcast_arrays(np.abs(np.asarray(t, float)), np.asarray(df, float))
    valid = (df >= 1) & ~np.isnan(t)
    p = 2.0 * stdtr(np.where(valid, df, 1.0), -np.where(valid, t, 0.0))
    return np.where(valid, np.clip(p, 0.0, 1.0), np.nan)


def t_interval(
    mean: object, std: object, n: object, level: float = 1 - ALPHA
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided ``level`` confidence interval of a mean from its sample std and count (Student's t).

    NaN where n < 2; a zero std gives the point itself.
    """
    from scipy.special import stdtrit

    mean, std, n = np.broadcast_arrays(*(np.asarray(x, float) for x in (mean, std, n)))
    valid = n >= 2
    q = stdtrit(np.where(valid, n - 1, 1.0), 1 - (1 - level) / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(valid, q * std / np.sqrt(np.where(valid, n, 1.0)), np.nan)
    return mean - half, mean + half


def bootstrap_interval(
    diffs: np.ndarray, level: float = 1 - ALPHA, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile ``level`` interval of the mean of ``diffs`` over ``resamples`` resamples with replacement.

    The generator is seeded with ``seed`` for every call, so one comparison's interval does not depend
    on the others in the table. NaN for fewer than 2 values.
    """
    diffs = np.asarray(diffs, float)
    diffs = diffs[~np.isnan(diffs)]
    if len(diffs) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def adjust_p(p: object, method: str = "holm") -> np.ndarray:
    """p values adjusted for the number of comparisons (NaN entries are not comparisons and stay NaN).

    ``holm``: step-down, p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j)) (family-wise error ≤ α);
    ``bh``: Benjamini–Hochberg step-up, p̃_(i) = min_{j ≥ i} min(1, m·p_(j)/j) (false discovery rate
    ≤ α for independent or positively dependent tests); ``none``: p itself.
    """
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    if method == "none" or idx.size == 0:
        out[idx] = p[idx]
        return out
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    ranked = p[order]
    if method == "holm":
        adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked))
    elif method == "bh":
        adjusted = np.minimum.accumulate(np.minimum(1.0, m * ranked / np.arange(1, m + 1))[::-1])[::-1]
    else:
        raise AblateError(f"correction {method!r} is not valid; valid: {', '.join(CORRECTIONS)}")
    out[order] = adjusted
    return out


def seeds_factor(alpha: float = ALPHA, power: float = POWER) -> float:
    """2·(z_{1−α/2} + z_power)²: seeds per arm ≈ factor·σ²/δ² to detect δ with run spread σ (15.7 at 0.05)."""
    from scipy.special import ndtri

    return float(2 * (ndtri(1 - alpha / 2) + ndtri(power)) ** 2)


def detectable_delta(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference a two-sided paired t-test on ``n`` seeds detects with ``power``.

    ``sd_diff`` is the standard deviation of the per-seed differences (variant − baseline). Uses the
    usual t approximation ``δ = (t_{1−α/2, n−1} + t_{power, n−1}) · sd_diff / √n``; inf for n < 2.
    """
    from scipy.special import stdtrit

    if n < 2:
        return math.inf
    df = n - 1
    return float((stdtrit(df, 1 - alpha / 2) + stdtrit(df, power)) * sd_diff / math.sqrt(n))


# ---------------------------------------------------------------------------------------- the summary


def summarize(
    runs: pd.DataFrame, reference: pd.DataFrame | None = None, options: StatOptions | None = None
) -> pd.DataFrame:
    """One row per configuration: stats of every metric over its ok runs, paired Δs to its baseline.

    ``reference`` holds the runs baselines are looked up in (default: ``runs``). Columns: ``n`` (ok
    runs), ``n_failed``, ``seeds``, ``init_runs`` (warm start: bases behind the seeds), the
    configuration columns, ``<m>_mean``/``_std``/``_n`` for every metric, ``seeds_identical``,
    ``evaluated``, ``baseline_found``, ``paired_seeds``, ``base_mismatch``, ``data_mismatch`` and the
    ``delta_<m>_*`` columns of the module docstring. Rows in first-seen order; labels and table order are
    added by :mod:`.labels`.
    """
    options = options or StatOptions()
    runs = with_metric_columns(runs)
    reference = runs if reference is None else with_metric_columns(reference)
    runs = by_data(runs)
    ok = runs[runs["status"] == "ok"]
    failed = runs[runs["status"] != "ok"].groupby("config_key").size().rename("n_failed")
    metrics = list(METRICS)
    g = ok.groupby("config_key", sort=False)
    summary = g[list(CONFIG_COLUMNS)].first().join(g.size().rename("n"))
    summary = summary.join(g["init_run"].nunique().rename("init_runs"))
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
    summary = summary.join(identical_seeds(stats).rename("seeds_identical"))
    summary = summary.join(g["evaluated"].agg(_distinct).rename("evaluated"))
    summary = summary.join(paired_deltas(ok, reference, summary, options))
    only_failed = runs[~runs["config_key"].isin(summary.index)]
    if not only_failed.empty:  # configurations whose every run failed: listed, n = 0
        extra = only_failed.groupby("config_key", sort=False)[list(CONFIG_COLUMNS)].first().assign(n=0)
        summary = pd.concat([summary, extra])
    summary = summary.join(failed)
    summary["n_failed"] = summary["n_failed"].fillna(0).astype(int)
    summary["n"] = summary["n"].fillna(0).astype(int)
    summary["seeds"] = [v if isinstance(v, str) else "" for v in summary["seeds"]]
    summary["paired_seeds"] = summary["paired_seeds"].fillna(0).astype(int)
    summary["base_mismatch"] = summary["base_mismatch"].fillna(0).astype(int)
    summary["data_mismatch"] = summary["data_mismatch"].fillna(0).astype(int)
    summary["seeds_identical"] = summary["seeds_identical"].astype("boolean").fillna(False).astype(bool)
    summary["evaluated"] = [v if isinstance(v, str) else "" for v in summary["evaluated"]]
    summary["baseline_found"] = summary["baseline_found"].astype("boolean").fillna(False).astype(bool)
    for m in DELTA_METRICS:
        summary[f"delta_{m}_n"] = summary[f"delta_{m}_n"].fillna(0).astype(int)
        identical = summary[f"delta_{m}_identical"].astype("boolean").fillna(False)
        summary[f"delta_{m}_identical"] = identical.astype(bool)
    summary = summary.copy()  # one block per dtype, not hundreds (reset_index would warn)
    summary.index.name = "config_key"
    return correct(summary.reset_index(), options)


def with_metric_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with every column the statistics read (NaN where a record lacks it)."""
    missing = {
        c: np.nan
        for c in (*METRICS, *CONFIG_COLUMNS, "seed", "config_key", "status", "init_run", "evaluated", "data")
        if c not in runs
    }
    return runs.assign(**missing) if missing else runs


def _hashes(runs: pd.DataFrame) -> pd.Series:
    """Each run's ``data_hash`` as text ("" where the record has none)."""
    h = runs["data_hash"].astype(object)
    return h.where(h.notna() & (h.astype(str) != ""), "").astype(str)


def _note(data: Any) -> str:
    """The data a record's ``data`` names, in a few words (a dict, or runs.csv's JSON text)."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return ""
    return describe(data) if isinstance(data, Mapping) and data else ""


def by_data(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` split by the data they were trained on, so that runs on different data are never averaged
    and two datasets never share a column.

    ``data_hash`` ("" when not recorded), ``dataset_name`` (the record's name) and ``data_note`` (YAML and
    image counts) are added; ``dataset`` becomes ``name@hash`` where one name holds runs on two or more
    data hashes; a configuration whose runs hold two or more data hashes becomes one per data:
    ``config_key`` ``<key>@<hash>`` (its own ``baseline_key`` too when it is a baseline). Runs without a
    hash keep their name and key.
    """
    h = _hashes(runs)
    names = runs["dataset"].astype(str)
    known = h != ""
    several = h[known].groupby(names[known]).nunique()
    shared = names.isin(several.index[several > 1]) & known
    labels = pd.Series([label(n, d) for n, d in zip(names, h, strict=True)], index=runs.index)
    keys = runs["config_key"].astype(str)
    split_keys = h[known].groupby(keys[known]).nunique()
    split = keys.isin(split_keys.index[split_keys > 1]) & known
    group = keys.where(~split, keys + "@" + h.map(short))
    own_baseline = runs["baseline_key"].astype(str) == keys
    return runs.assign(
        data_hash=h,
        dataset_name=names,
        dataset=names.where(~shared, labels),
        data_note=[_note(d) for d in runs["data"]],
        config_key=group,
        baseline_key=runs["baseline_key"].where(~(split & own_baseline), group),
    )


def _distinct(values: pd.Series) -> str:
    """The distinct non-empty strings of ``values`` in first-seen order, joined by ``; ``."""
    return "; ".join(dict.fromkeys(str(v) for v in values.dropna() if str(v)))


def identical_seeds(stats: pd.DataFrame) -> pd.Series:
    """Per configuration: its metrics are identical on ≥ 2 seeds (every AP metric with ≥ 2 values has zero
    spread, and there is one). Cost metrics are left out: they are the architecture's, equal by design."""
    checked = [m for m in AP_METRICS if f"{m}_n" in stats]
    counted = pd.DataFrame({m: stats[f"{m}_n"] >= 2 for m in checked})
    flat = pd.DataFrame({m: stats[f"{m}_std"].abs() <= ZERO_SPREAD for m in checked})
    return counted.any(axis=1) & (flat | ~counted).all(axis=1)


def _by_seed(runs: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Mean metrics per (configuration, seed), with the run it started from (``init_run``, "" when none) and
    the data it was trained on (``data_hash``, "" when not recorded)."""
    runs = runs.assign(
        init_run=runs["init_run"].astype(object).where(runs["init_run"].notna(), ""), data_hash=_hashes(runs)
    )
    g = runs.groupby(["config_key", "seed"], sort=False)
    return g[cols].mean().join(g[["init_run", "data_hash"]].first()).reset_index()


def paired_deltas(
    ok: pd.DataFrame, reference: pd.DataFrame, summary: pd.DataFrame, options: StatOptions
) -> pd.DataFrame:
    """Paired Δ statistics per configuration over the seeds it shares with its baseline (before correction).

    ``baseline_found``: the baseline configuration has ok runs; ``paired_seeds``: seeds both have;
    ``data_mismatch``: those of them on which the two were trained on different data (``data_hash``;
    unrecorded pairs with any); ``base_mismatch``: the others on which the two started from different base
    runs (``init_run``); both left out of every Δ; per metric the mean, std and count of the per-seed
    differences, the CI, the paired t-test p (none at zero spread: ``_identical``) and σ.
    """
    cols = list(DELTA_METRICS)
    out = pd.DataFrame(index=summary.index)
    ref_ok = reference[reference["status"] == "ok"]
    out["baseline_found"] = summary["baseline_key"].isin(ref_ok["config_key"]) | (
        summary["baseline_key"] == summary.index
    )
    variant = _by_seed(ok, cols)
    variant["baseline_key"] = variant["config_key"].map(summary["baseline_key"])
    variant = variant[variant["baseline_key"] != variant["config_key"]]
    ref_ok = ref_ok[ref_ok["config_key"].isin(variant["baseline_key"])]
    base = _by_seed(ref_ok, cols)
    base_std = base.groupby("config_key", sort=False)[cols].std(ddof=1)  # the baseline's own seed spread
    base = base.rename(columns={"config_key": "baseline_key"})
    own_std = variant.groupby("config_key", sort=False)[cols].std(ddof=1)
    pairs = variant.merge(base, on=["baseline_key", "seed"], suffixes=("", "_b"))
    out["paired_seeds"] = pairs.groupby("config_key", sort=False).size()
    same_data = (
        (pairs["data_hash"] == pairs["data_hash_b"])
        | (pairs["data_hash"] == "")
        | (pairs["data_hash_b"] == "")
    )
    same_base = pairs["init_run"] == pairs["init_run_b"]
    out["data_mismatch"] = (~same_data).groupby(pairs["config_key"], sort=False).sum()
    out["base_mismatch"] = (same_data & ~same_base).groupby(pairs["config_key"], sort=False).sum()
    pairs = pairs[same_data & same_base].reset_index(drop=True)
    keys = pairs["config_key"]
    diff = pd.DataFrame({m: pairs[m] - pairs[f"{m}_b"] for m in cols}).set_axis(keys)
    dg = diff.groupby(level=0, sort=False)
    mean, std, n = dg.mean(), dg.std(ddof=1), dg.count()
    vv = pairs[cols].set_axis(keys).groupby(level=0, sort=False).var(ddof=1)
    vb = (
        pairs[[f"{m}_b" for m in cols]]
        .set_axis(cols, axis=1)
        .set_axis(keys)
        .groupby(level=0, sort=False)
        .var(ddof=1)
    )
    baseline_of = summary["baseline_key"]
    for m in cols:
        d, s, k = mean[m], std[m], n[m]
        identical = (k >= 2) & (s.abs() <= ZERO_SPREAD)  # zero spread: no evidence either way
        if pairs.empty:
            p = low = high = d
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                p = pd.Series(t_test_p(d / (s / np.sqrt(k)), k - 1), index=d.index)
            p = p.where((k >= 2) & ~identical)
            if options.ci == "bootstrap":
                bounds = [
                    bootstrap_interval(g.to_numpy(), options.level, options.resamples, options.seed)
                    for _, g in dg[m]
                ]
                low = pd.Series([b[0] for b in bounds], index=d.index)
                high = pd.Series([b[1] for b in bounds], index=d.index)
            else:
                lo, hi = t_interval(d, s.fillna(0.0), k, options.level)
                low, high = pd.Series(lo, index=d.index), pd.Series(hi, index=d.index)
            low, high = low.where(~identical), high.where(~identical)
        pooled = np.sqrt((vv[m] + vb[m]) / 2) if not pairs.empty else d
        values = {
            "": d,
            "_std": s,
            "_n": k,
            "_ci_low": low,
            "_ci_high": high,
            "_p": p,
            "_identical": identical,
            "_sigma_paired": pooled,
        }
        out = out.join(pd.DataFrame({f"delta_{m}{suffix}": v for suffix, v in values.items()}))
        # the spread behind the seeds hint when fewer than 2 seeds pair up: the baseline's, else the variant's
        fallback = (
            baseline_of.map(base_std[m]) if not base_std.empty else pd.Series(np.nan, index=summary.index)
        )
        fallback = fallback.fillna(own_std[m].reindex(summary.index)) if not own_std.empty else fallback
        paired = out[f"delta_{m}_sigma_paired"]
        out[f"delta_{m}_sigma"] = paired.where(out[f"delta_{m}_n"].fillna(0) >= 2, fallback)
        out = out.drop(columns=f"delta_{m}_sigma_paired")
    return out


def identical_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The configurations with ok runs whose seeds gave identical results: metrics identical on ≥ 2 seeds
    (``seeds_identical``) or the same Δ on every paired seed (``delta_<m>_identical`` of a table metric)."""
    s = summary[summary["n"] > 0] if "n" in summary else summary
    columns = [c for c in ("seeds_identical", *(f"delta_{m}_identical" for m in FAMILY_METRICS)) if c in s]
    return s[s[columns].astype(bool).any(axis=1)] if columns else s.iloc[0:0]


def identical_text(r: Mapping[str, Any], where: str = "") -> str:
    """One line for a configuration whose seeds gave identical results (table footnote, terminal, log)."""
    seeds = str(r.get("seeds") or "").replace(" ", ", ")
    what = (
        f"metrics identical on seeds {seeds}"
        if r.get("seeds_identical")
        else f"the same Δ on every paired seed (seeds {seeds})"
    )
    return f"{where}{what}: zero spread, so no interval, p or mark; {IDENTICAL_CAUSE}."


def family_size(summary: pd.DataFrame) -> int:
    """Comparisons in the table's family: p values on :data:`FAMILY_METRICS` (n ≥ 2 paired seeds)."""
    return int(
        sum(summary[f"delta_{m}_p"].notna().sum() for m in FAMILY_METRICS if f"delta_{m}_p" in summary)
    )


def correct(summary: pd.DataFrame, options: StatOptions) -> pd.DataFrame:
    """Adjust the family's p values together, mark ``p_adj`` < α and add the seeds hint (see module doc)."""
    summary = summary.copy()
    family = [f"delta_{m}_p" for m in FAMILY_METRICS]
    stacked = summary[family].to_numpy(float).ravel()  # row-major: every metric of a row, row by row
    adjusted = adjust_p(stacked, options.correction).reshape(len(summary), len(family))
    m_family = int(np.count_nonzero(~np.isnan(stacked)))
    alpha_step = options.alpha / max(1, m_family) if options.correction != "none" else options.alpha
    factor = seeds_factor(alpha_step)
    for m in DELTA_METRICS:
        p_adj = (
            pd.Series(adjusted[:, family.index(f"delta_{m}_p")], index=summary.index)
            if m in FAMILY_METRICS
            else pd.Series(np.nan, index=summary.index)
        )
        summary[f"delta_{m}_p_adj"] = p_adj
        sig = (p_adj < options.alpha).fillna(False).astype(bool)
        summary[f"delta_{m}_sig"] = sig
        d, sigma = summary[f"delta_{m}"].astype(float), summary[f"delta_{m}_sigma"].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.ceil(factor * sigma**2 / d**2)
        has_delta = (summary[f"delta_{m}_n"] >= 1) & ~summary[f"delta_{m}_identical"].astype(bool)
        summary[f"delta_{m}_seeds_needed"] = need.where(~sig & has_delta & np.isfinite(need)).clip(lower=2)
    ordered = [f"delta_{m}{s}" for m in DELTA_METRICS for s in DELTA_SUFFIXES]
    rest = [c for c in summary.columns if c not in set(ordered)]
    return summary[rest + ordered]
