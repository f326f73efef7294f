"""Calibrate the protocol: the baseline over N seeds per dataset, its spread, and the smallest Δ the
table's paired test would detect.

    python -m ablate.calibrate [--seeds 5] [--jobs 2] [--results results] [OVERRIDE ...]
    make calibrate [SEEDS=5] [JOBS=2] [ARGS="dataset=shapes train.epochs=10"]

OVERRIDEs are ``python -m ablate`` overrides (model, dataset, train, …; ``dataset=a,b`` lists datasets;
without one, the default sweep grid's datasets). The runs go through the ordinary sweep (warm-start base
runs first, cached runs reused), then every (dataset, seed) is read back and written to
``<results>/calibration.csv``. The detectable Δ assumes the variant's seeds spread as the baseline's and
independently of them (per-seed differences with sd √2·σ): pairing by seed can only make it smaller.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from . import overrides as hydra_overrides
from .errors import AblateError
from .experiment import experiment_from_config
from .paths import CONF_DIR
from .records import RunRecord, read_record, run_dir, write_text_atomic
from .report.statistics import ALPHA, POWER, detectable_delta

log = logging.getLogger(__name__)

CALIBRATION_CSV = "calibration.csv"
COLUMNS = (
    "dataset",
    "seed",
    "status",
    "map50",
    "map50_95",
    "ap_small",
    "train_seconds",
    "init",
    "key",
    "init_run",
)
DETECT_AT = (3, 5, 10)
_FORBIDDEN = ("attn", "pos", "seed", "action", "baseline", "hydra/launcher", "results.dir")


@dataclass
class Calibration:
    """The per-seed records of one dataset."""

    dataset: str
    records: list[RunRecord]

    def values(self, metric: str) -> list[float]:
        return [v for r in self.records if r.status == "ok" and (v := getattr(r, metric)) is not None]

    def spread(self, metric: str) -> tuple[float, float]:
        """Mean and sample std (ddof 1) over the ok seeds."""
        v = self.values(metric)
        return (
            statistics.fmean(v) if v else float("nan"),
            statistics.stdev(v) if len(v) > 1 else float("nan"),
        )


def check_overrides(overrides: list[str]) -> None:
    for o in overrides:
        multirun = o in ("-m", "--multirun")
        key = "" if multirun else hydra_overrides.key(o)
        if multirun or key in _FORBIDDEN or key.startswith(("attn.", "pos.")):
            raise AblateError(
                f"{o!r} is set by ablate.calibrate (it trains the baseline over --seeds); "
                "valid: model, dataset and train overrides"
            )


def datasets_of(overrides: list[str]) -> tuple[list[str | None], list[str]]:
    """The datasets to calibrate (None: the config's own) and the overrides without ``dataset=``.

    ``dataset=a,b`` (or any Hydra sweep of the group) lists them; without one, the default sweep grid's."""
    given = [o for o in overrides if hydra_overrides.key(o) == "dataset"]
    rest = [o for o in overrides if o not in given]
    if given:
        return [d for d in _dataset_choices(given[-1]) if d], rest
    if any(hydra_overrides.key(o).startswith("dataset.") for o in rest):  # a custom dataset.path
        return [None], rest
    grid = OmegaConf.load(CONF_DIR / "config.yaml").hydra.sweeper.params.dataset
    return [d for d in _dataset_choices(f"dataset={grid}") if d], rest


def _dataset_choices(override: str) -> list[str]:
    values = [str(v) for v in hydra_overrides.values(override) or [] if v is not None]
    if not values:
        raise AblateError(f"{override!r} names no dataset; valid: dataset=NAME or dataset=NAME1,NAME2")
    return values


def sweep_command(
    datasets: list[str | None], rest: list[str], seeds: int, jobs: int, results: Path
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "ablate",
        *rest,
        f"seed={','.join(map(str, range(seeds)))}",
        "baseline=false",
    ]
    if datasets != [None]:
        cmd.append(f"dataset={','.join(str(d) for d in datasets)}")
    cmd += [f"results.dir={results}", "hydra.callbacks.sweep_summary.table=false"]
    if jobs > 1:
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    return [*cmd, "-m"]


def read_back(datasets: list[str | None], rest: list[str], seeds: int, results: Path) -> list[Calibration]:
    """The record of every (dataset, seed), found by its run key (absent records count as missing)."""
    out = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for ds in datasets:
            records = []
            for seed in range(seeds):
                extra = [f"dataset={ds}"] if ds is not None else []
                cfg = compose("config", overrides=[*rest, *extra, f"seed={seed}", f"results.dir={results}"])
                exp = experiment_from_config(cfg)
                rec = read_record(run_dir(exp.results_dir, exp.key))
                records.append(
                    rec if rec is not None else RunRecord(key=exp.key, status="missing", seed=seed)
                )
            name = str(records[0].dataset or ds or exp.dataset.get("name"))
            out.append(Calibration(name, records))
    return out


def write_csv(path: Path, calibrations: list[Calibration]) -> Path:
    rows = [
        [c.dataset, *(_cell(getattr(r, k)) for k in COLUMNS[1:])] for c in calibrations for r in c.records
    ]
    lines = [",".join(COLUMNS), *(",".join(row) for row in rows)]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5f}"
    text = str(value)
    return f'"{text}"' if "," in text else text


def report(calibrations: list[Calibration]) -> str:
    """Per-seed metrics, mean and std per dataset, and the detectable Δ mAP50-95 at n = 3, 5, 10."""
    lines = []
    for c in calibrations:
        lines.append(f"{c.dataset}:")
        lines.append(f"  {'seed':>4} {'mAP50':>7} {'mAP50-95':>9} {'AP_S':>6} {'train s':>8}  status")
        for r in c.records:
            lines.append(
                f"  {r.seed:>4} {_pct(r.map50):>7} {_pct(r.map50_95):>9} {_pct(r.ap_small):>6} "
                f"{_num(r.train_seconds):>8}  {r.status}"
            )
        for metric, name in (("map50", "mAP50"), ("map50_95", "mAP50-95"), ("ap_small", "AP_S")):
            mean, sd = c.spread(metric)
            lines.append(
                f"  {name:<9} mean {_pct(mean)}  std {_pct(sd)} points (n = {len(c.values(metric))})"
            )
        _, sd = c.spread("map50_95")
        detect = ", ".join(f"n = {n}: {_pct(detectable_delta(sd * 2**0.5, n))}" for n in DETECT_AT)
        lines.append(
            f"  smallest Δ mAP50-95 the paired t-test detects (α = {ALPHA}, power {POWER}): {detect} points"
        )
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ablate.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per dataset (default 5)")
    parser.add_argument("--jobs", type=int, default=2, help="jobs at a time (joblib; 1: one after another)")
    parser.add_argument("--results", default="results", help="results root (default: results)")
    parser.add_argument("overrides", nargs="*", help="python -m ablate overrides (model, dataset, train...)")
    args = parser.parse_args(argv)
    try:
        if args.seeds < 2:
            raise AblateError(f"--seeds={args.seeds} is not valid; a spread needs at least 2 seeds")
        if args.jobs < 1:
            raise AblateError(f"--jobs={args.jobs} is not valid; it must be at least 1")
        check_overrides(args.overrides)
        datasets, rest = datasets_of(args.overrides)
        results = Path(args.results).expanduser().resolve()
        read_back(datasets, rest, 1, results)  # bad overrides fail here, before anything trains
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    status = subprocess.call(sweep_command(datasets, rest, args.seeds, args.jobs, results))
    calibrations = read_back(datasets, rest, args.seeds, results)
    print(report(calibrations))
    print(f"wrote {write_csv(results / CALIBRATION_CSV, calibrations)}")
    sys.exit(1 if status else 0)


if __name__ == "__main__":
    main()
