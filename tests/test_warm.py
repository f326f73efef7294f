"""Warm start: the base run is an ordinary cached run, trained once, transferred into every variant; sweeps
train it first; calibration reads the spread of the baseline."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ablate.errors import AblateError
from ablate.experiment import experiment_from_config
from ablate.records import read_record, run_dir
from ablate.report.statistics import detectable_delta
from ablate.run import execute

from .helpers import SMALL, config

ROOT = Path(__file__).resolve().parents[1]
WARM = [*SMALL, "train.init=warm", "train.base.epochs=1", "train.base.seed=0", "train.base.candidates=1"]


def test_the_base_experiment_is_the_baseline_from_scratch_with_the_base_settings(tmp_path: Path) -> None:
    exp = experiment_from_config(config([*WARM, "+attn=rala", "+pos=p5", "seed=3"], tmp_path, tmp_path))
    (base,) = exp.base_candidates()
    assert exp.warm and not base.warm and base.role == "base"
    assert base.placement is None and base.seed == 0 and base.train["init"] == "scratch"
    assert "base" not in base.train and base.train["epochs"] == 1
    # the variant and fine-tune settings do not change it
    other = config([*WARM, "+attn=fla", "+pos=p4", "seed=1", "train.lr0=0.0001"], tmp_path, tmp_path)
    assert [c.key for c in experiment_from_config(other).base_candidates()] == [base.key]
    # one base per seed on request; the base settings are part of the warm run's key
    per_seed = config([*WARM, "+attn=rala", "+pos=p5", "seed=3", "train.base.seed=null"], tmp_path, tmp_path)
    assert [c.seed for c in experiment_from_config(per_seed).base_candidates()] == [3]
    # candidates: seeds s + 1000·k, the same runs whatever the number asked for
    three = config([*WARM, "+attn=rala", "+pos=p5", "train.base.candidates=3"], tmp_path, tmp_path)
    candidates = experiment_from_config(three).base_candidates()
    assert [c.seed for c in candidates] == [0, 1000, 2000] and candidates[0].key == base.key
    longer = config([*WARM, "+attn=rala", "+pos=p5", "seed=3", "train.base.epochs=2"], tmp_path, tmp_path)
    assert experiment_from_config(longer).key != exp.key
    scratch = config([*WARM, "+attn=rala", "+pos=p5", "seed=3", "train.init=scratch"], tmp_path, tmp_path)
    assert not experiment_from_config(scratch).warm


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.init=hot"], r"train.init='hot' is not valid; valid: warm, scratch"),
        (["train.base.seed=-1"], r"train.base.seed=-1 is not valid"),
        (["train.base.epochs=0"], r"train.base.epochs=0 is not valid"),
    ],
)
def test_bad_warm_start_settings_are_one_line_errors(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    with pytest.raises(AblateError, match=message):
        experiment_from_config(config([*WARM, *overrides], tmp_path, tmp_path))
    with pytest.raises(AblateError, match=r"action=base needs train.base"):
        experiment_from_config(config([*SMALL, "train=paper", "action=base"], tmp_path, tmp_path))


def test_warm_runs_train_their_base_once_and_start_from_all_of_it(tmp_path: Path) -> None:
    results, data = tmp_path / "results", tmp_path / "data"
    cfg = config([*WARM, "+attn=rala", "+pos=p5"], results, data)
    first = execute(experiment_from_config(cfg), cfg)
    (base_exp,) = experiment_from_config(cfg).base_candidates()
    base_key = base_exp.key
    assert first.status == "ok", first.error
    assert (first.init, first.init_run) == ("warm", base_key)
    assert first.weights_transferred == first.weights_total == 691 and first.weights_skipped == []
    base = read_record(run_dir(results, base_key))
    assert base.status == "ok" and base.role == "base" and base.init == "scratch" and base.epochs == 1
    assert first.weights_path == str(run_dir(results, base_key) / "ultralytics" / "weights" / "best.pt")
    mtime = (run_dir(results, base_key) / "record.json").stat().st_mtime_ns

    cfg = config([*WARM, "+attn=fla", "+pos=p4", "seed=1"], results, data)
    second = execute(experiment_from_config(cfg), cfg)
    assert second.status == "ok" and second.init_run == base_key
    assert (run_dir(results, base_key) / "record.json").stat().st_mtime_ns == mtime  # not trained again
    assert second.weights_sha256 == first.weights_sha256

    # the same seed gives the same numbers (on one machine), base run included
    cfg = config([*WARM, "+attn=rala", "+pos=p5"], tmp_path / "again", data)
    again = execute(experiment_from_config(cfg), cfg)
    assert (
        again.key == first.key
    )  # (the checkpoint files differ: ultralytics writes dates and paths into them)
    assert (again.map50, again.map50_95) == (first.map50, first.map50_95)


def test_a_warm_sweep_trains_the_base_candidates_first_and_once(tmp_path: Path) -> None:
    """Two base candidates as a first batch (side by side), then every job fine-tunes the one with the
    lower final training loss."""
    results, data = tmp_path / "results", tmp_path / "data"
    args = [*WARM, "train.base.candidates=2", "+attn=rala,tssa", "+pos=p5", "dataset=shapes", "seed=0,1"]
    cmd = [sys.executable, "-m", "ablate", *args, "measure.coco_eval=false"]
    cmd += [f"results.dir={results}", f"data.dir={data}", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    out = subprocess.run(
        [*cmd, "hydra.callbacks.sweep_summary.table=false", "-m"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (sweep_dir,) = (results / "hydra").glob("multirun-*")
    info = json.loads((sweep_dir / "sweep.json").read_text())
    assert info["bases_added"] == 2 and info["baselines_added"] == 2 and info["total"] == 8
    jobs = [" ".join(j) for j in info["jobs"]]
    assert all("action=base" in j for j in jobs[:2]) and not any("action=base" in j for j in jobs[2:])
    assert "train.base.seed=0" in jobs[0] and "train.base.seed=1000" in jobs[1]
    records = [read_record(p) for p in (results / "runs").iterdir()]
    assert len(records) == 8 and all(r.status == "ok" for r in records)
    bases = sorted((r for r in records if r.role == "base"), key=lambda r: r.seed)
    assert [b.seed for b in bases] == [0, 1000] and all(b.train_loss > 0 for b in bases)
    chosen = min(bases, key=lambda r: (r.train_loss, r.seed))
    assert {r.init_run for r in records if r.role != "base"} == {chosen.key}
    outcomes = [json.loads((sweep_dir / str(i) / "outcome.json").read_text()) for i in (0, 1)]
    assert [o["key"] for o in outcomes] == [b.key for b in bases]


def test_calibrate_prints_the_spread_and_writes_calibration_csv(tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = [a for a in WARM if not a.startswith("train.base.seed")] + ["measure.coco_eval=false"]
    cmd = [sys.executable, "-m", "ablate.calibrate", "--seeds", "2", "--jobs", "1", "--results", str(results)]
    cmd += [*args, "dataset=shapes", f"data.dir={tmp_path / 'data'}"]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with open(results / "calibration.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["seed"], r["status"]) for r in rows] == [
        ("shapes", "0", "ok"),
        ("shapes", "1", "ok"),
    ]
    assert all(0 <= float(r["map50_95"]) <= 1 and r["init"] == "warm" for r in rows)
    assert "smallest Δ mAP50-95 the paired t-test detects" in out.stdout and "n = 10" in out.stdout
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0 and "2 cached" in again.stdout  # the seeds are not trained twice
    bad = subprocess.run([*cmd, "+attn=rala"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("error: '+attn=rala' is set by ablate.calibrate")


def test_detectable_delta_has_the_stated_power() -> None:
    """At δ = detectable_delta(sd, n), a simulated paired t-test rejects in about 80 % of trials."""
    rng = np.random.default_rng(0)
    for n in (3, 5, 10):
        delta = detectable_delta(1.0, n)
        diffs = rng.normal(delta, 1.0, size=(20000, n))
        p = stats.ttest_1samp(diffs, 0.0, axis=1).pvalue
        assert 0.74 <= (p < 0.05).mean() <= 0.86, (n, (p < 0.05).mean())
    assert math.isinf(detectable_delta(1.0, 1))
