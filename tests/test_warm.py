"""Warm start: the base run is an ordinary cached run chosen among from-scratch candidates by final training
loss, the choice pinned (ablate/warm.py), trained once, transferred into every variant; sweeps train it
first; calibration reads the spread of the baseline. The choice and the pin are tested on hand-written
records with fake training (tests/fakes.py); the transfer and the sweep train for real (tiny settings)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from ablate import warm
from ablate.errors import AblateError
from ablate.experiment import Experiment, experiment_from_config
from ablate.records import read_record, run_dir
from ablate.report.statistics import detectable_delta
from ablate.warm import execute

from .fakes import COARSE, FakeTraining, install_fake_training, write_candidate
from .helpers import SMALL, config

ROOT = Path(__file__).resolve().parents[1]
WARM = [*SMALL, "train.init=warm", "train.base.epochs=1", "train.base.seed=0", "train.base.candidates=1"]
TWO = [*WARM, "train.base.candidates=2", *COARSE]
RALA = ("+attn=rala", "+pos=p5")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTraining:
    return install_fake_training(monkeypatch)


def warm_exp(tmp_path: Path, *overrides: str, sweep: str | None = None, force: bool = False) -> Experiment:
    """A warm start with two base candidates (rala at p5 unless ``overrides`` name an attention)."""
    variant = () if any(o.startswith("+attn=") for o in overrides) else RALA
    cfg = config([*TWO, *variant, *overrides], tmp_path / "results", tmp_path / "data")
    return dataclasses.replace(experiment_from_config(cfg), sweep=sweep, force=force)


def pins(results: Path) -> list[Path]:
    return sorted((results / warm.BASES).glob("*.json"))


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


@pytest.mark.parametrize(
    ("written", "chosen_seed"),
    [
        ([("ok", 3.4), ("ok", 3.0)], 1000),  # the lower loss, not the first candidate
        ([("ok", 3.0), ("ok", 3.0)], 0),  # a tie: the lower seed
        ([("failed", 1.0), ("ok", 3.5)], 1000),  # a failed candidate's loss never counts
        ([("ok", 2.0), ("ok", None)], 0),  # nor a loss that was not recorded
    ],
)
def test_the_base_is_the_candidate_with_the_lowest_final_training_loss(
    tmp_path: Path, fake: FakeTraining, written: list[tuple[str, float | None]], chosen_seed: int
) -> None:
    """The rule, on hand-written candidate records (the failed one failed in this sweep: not retried)."""
    exp = warm_exp(tmp_path, sweep="multirun-1")
    candidates = exp.base_candidates()
    for candidate, (status, loss) in zip(candidates, written, strict=True):
        write_candidate(candidate, status, loss, sweep="multirun-1")
    base = warm.base_for(exp)
    assert (base.key, base.seed) == ({c.seed: c.key for c in candidates}[chosen_seed], chosen_seed)
    assert fake.trained == []


def test_no_candidate_that_trained_is_a_one_line_error(tmp_path: Path, fake: FakeTraining) -> None:
    exp = warm_exp(tmp_path, sweep="multirun-1")
    c0, c1 = exp.base_candidates()
    write_candidate(c0, "failed", None, "multirun-1", "RuntimeError: boom\nmore")
    write_candidate(c1, "failed", None, "multirun-1", "NonFiniteLossError: nan")
    message = f"no warm-start base candidate of this configuration trained: {c0.key}: RuntimeError: boom; "
    with pytest.raises(AblateError, match=f"^{message}{c1.key}: NonFiniteLossError: nan$"):
        warm.base_for(exp)
    assert pins(exp.results_dir) == [] and fake.trained == []


def test_the_choice_is_pinned_until_force(tmp_path: Path, fake: FakeTraining) -> None:
    """A candidate that failed when the base was chosen and trains later with a lower loss changes
    nothing: every later job, of any sweep, fine-tunes the pinned base. force=true chooses again, once per
    invocation: the next forced job of that sweep keeps the new pin."""
    first = warm_exp(tmp_path, sweep="multirun-1")
    c0, c1 = first.base_candidates()
    write_candidate(c0, "ok", 3.0, "multirun-1")
    write_candidate(c1, "failed", None, "multirun-1", "RuntimeError: diverged")
    assert warm.base_for(first).key == c0.key
    (pin,) = pins(first.results_dir)
    assert json.loads(pin.read_text())["chosen"] == c0.key

    # a later sweep: the failed candidate is not retried (it would train: the fake counts it)
    later = dataclasses.replace(first, sweep="multirun-2")
    assert warm.base_for(later).key == c0.key and fake.trained == []
    assert [c.key for c in warm.needed_candidates(later)] == [c0.key]
    # it trained meanwhile (an action=base job, another results root merged in): still the pinned base
    write_candidate(c1, "ok", 1.0, "multirun-2")
    assert warm.base_for(later).key == c0.key
    other_variant = warm_exp(tmp_path, "+attn=fla", "+pos=p4", "seed=2", sweep="multirun-3")
    assert warm.base_for(other_variant).key == c0.key and pins(first.results_dir) == [pin]

    forced = dataclasses.replace(first, sweep="multirun-4", force=True)
    assert [c.key for c in warm.needed_candidates(forced)] == [c0.key, c1.key]
    assert warm.base_for(forced).key == c1.key
    assert json.loads(pin.read_text())["chosen"] == c1.key
    write_candidate(c0, "ok", 0.5, "multirun-4")  # would win a new choice
    assert warm.base_for(forced).key == c1.key  # the same sweep: the pin it made is kept
    assert warm.base_for(dataclasses.replace(first, sweep="multirun-5")).key == c1.key
    assert fake.trained == []


def test_the_pin_names_the_choice_and_every_candidate(tmp_path: Path, fake: FakeTraining) -> None:
    """<results>/bases/<id>.json: one per candidate set (shared by every variant, seed and fine-tuning
    setting; another for other base settings), with the chosen run key and the candidates as they were."""
    exp = warm_exp(tmp_path, sweep="multirun-1")
    c0, c1 = exp.base_candidates()
    write_candidate(c0, "failed", None, "multirun-1", "RuntimeError: diverged")
    fake.losses[1000] = 2.5
    assert warm.base_for(exp).key == c1.key and fake.trained == [c1.key]  # c1 had no record: trained
    (path,) = pins(exp.results_dir)
    pin = json.loads(path.read_text())
    assert pin.pop("chosen_at").startswith("20")
    assert pin == {
        "chosen": c1.key,
        "rule": "lowest final training loss (ties: the lower seed)",
        "model": "yolo12n",
        "dataset": "shapes",
        "config_key": c0.config_key,
        "candidates": [
            {
                "key": c0.key,
                "seed": 0,
                "status": "failed",
                "train_loss": None,
                "error": "RuntimeError: diverged",
            },
            {"key": c1.key, "seed": 1000, "status": "ok", "train_loss": 2.5, "error": None},
        ],
        "sweep": "multirun-1",
    }
    assert c0.config_key == c1.config_key and c0.key != c1.key
    same = warm_exp(tmp_path, "+attn=tssa", "+pos=a2c2f", "seed=4", "train.lr0=0.0001")
    assert warm.pin_path(same.results_dir, same.base_candidates()) == path
    longer = warm_exp(tmp_path, "train.base.epochs=2")
    three = warm_exp(tmp_path, "train.base.candidates=3")
    other_paths = {warm.pin_path(e.results_dir, e.base_candidates()) for e in (longer, three)}
    assert len(other_paths) == 2 and path not in other_paths


def test_two_jobs_choosing_at_once_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeTraining
) -> None:
    """Job A finds the candidates (one failed); before it pins, job B (where that candidate trained with a
    lower loss) chooses and pins. A then finds B's pin under the lock and fine-tunes the same base."""
    a = warm_exp(tmp_path, sweep="multirun-1")
    b = dataclasses.replace(a, sweep="multirun-2")
    c0, c1 = a.base_candidates()
    write_candidate(c0, "ok", 3.0, "multirun-1")
    write_candidate(c1, "failed", None, "multirun-1", "RuntimeError: diverged")
    found = warm.candidate_records
    bases: dict[str, Any] = {}

    def then_b_chooses(exp: Experiment, candidates: list[Experiment]) -> list:
        records = found(exp, candidates)
        if exp is a:
            write_candidate(c1, "ok", 1.0, "multirun-2")
            bases["b"] = warm.base_for(b)
        return records

    monkeypatch.setattr(warm, "candidate_records", then_b_chooses)
    bases["a"] = warm.base_for(a)
    assert bases["a"].key == bases["b"].key == c1.key
    assert json.loads(pins(a.results_dir)[0].read_text())["sweep"] == "multirun-2"


def test_a_warm_job_fine_tunes_the_pinned_base(tmp_path: Path, fake: FakeTraining) -> None:
    """The job entry point: the base found (pinned), then the run itself, whose record names the base."""
    exp = warm_exp(tmp_path, sweep="multirun-1")
    c0, c1 = exp.base_candidates()
    write_candidate(c0, "ok", 3.0, "multirun-1")
    write_candidate(c1, "ok", 2.0, "multirun-1")
    record = execute(exp)
    assert (record.status, record.init, record.init_run) == ("ok", "warm", c1.key)
    assert read_record(run_dir(exp.results_dir, exp.key)).init_run == c1.key
    assert fake.trained == [exp.key]  # the candidates were found, not trained
    write_candidate(c0, "ok", 1.0, "multirun-2")
    later = warm_exp(tmp_path, "+attn=fla", "+pos=p4", sweep="multirun-2")
    assert execute(later).init_run == c1.key and fake.trained == [exp.key, later.key]


def test_action_base_trains_the_candidates_and_pins_the_choice(tmp_path: Path, fake: FakeTraining) -> None:
    """action=base: all candidates (chosen and pinned); a sweep's per-candidate base job: that one only."""
    base_job = warm_exp(tmp_path, "action=base", sweep="multirun-1")
    c0, c1 = base_job.base_candidates()
    fake.losses.update({0: 3.2, 1000: 2.9})
    assert execute(base_job).key == c1.key and fake.trained == [c0.key, c1.key]
    assert json.loads(pins(base_job.results_dir)[0].read_text())["chosen"] == c1.key

    one = warm_exp(
        tmp_path, "action=base", "train.base.seed=7", "train.base.candidates=1", sweep="multirun-2"
    )
    (candidate,) = one.base_candidates()
    record = execute(one)
    assert (record.key, record.seed, record.role) == (candidate.key, 7, "base")
    assert fake.trained == [c0.key, c1.key, candidate.key] and len(pins(one.results_dir)) == 1


def first_forwards(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Spy on real training: each trained model's output (eval mode) for one fixed image when training
    starts, by run key (ultralytics' trainer has built its model and loaded the initial weights by then)."""
    import ablate.train

    original = ablate.train.train_and_validate
    image = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    out: dict[str, torch.Tensor] = {}

    def spy(model_yaml: Path, *args: Any, callbacks: dict | None = None, **kwargs: Any) -> dict[str, Any]:
        def capture(trainer: Any) -> None:
            trainer.model.eval()
            with torch.no_grad():
                out[Path(model_yaml).parent.name] = trainer.model(image)[0].clone()
            trainer.model.train()

        events = {k: list(v) for k, v in (callbacks or {}).items()}
        events.setdefault("on_train_start", []).append(capture)
        return original(model_yaml, *args, callbacks=events, **kwargs)

    monkeypatch.setattr(ablate.train, "train_and_validate", spy)
    out["image"] = image
    return out


def test_warm_runs_train_their_base_once_and_start_from_all_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm start's first forward is the base checkpoint's (an inserted module with gamma 0 is the
    identity): training starts from the transferred tensors, not only from a plan to transfer them."""
    from ultralytics import YOLO

    forwards = first_forwards(monkeypatch)
    results, data = tmp_path / "results", tmp_path / "data"
    variant = [*WARM, "+attn=rala", "+pos=p5", "attn.gamma=0"]
    cfg = config(variant, results, data)
    first = execute(experiment_from_config(cfg), cfg)
    (base_exp,) = experiment_from_config(cfg).base_candidates()
    base_key = base_exp.key
    assert first.status == "ok", first.error
    assert (first.init, first.init_run) == ("warm", base_key)
    assert first.weights_transferred == first.weights_total == 691 and first.weights_skipped == []
    base = read_record(run_dir(results, base_key))
    assert base.status == "ok" and base.role == "base" and base.init == "scratch" and base.epochs == 1
    best = run_dir(results, base_key) / "ultralytics" / "weights" / "best.pt"
    assert first.weights_path == str(best)
    with torch.no_grad():
        trained_base = YOLO(str(best)).model.float().eval()(forwards["image"])[0]
    assert torch.equal(forwards[first.key], trained_base)
    assert not torch.equal(forwards[base_key], trained_base)  # the base's training moved it from its init
    mtime = (run_dir(results, base_key) / "record.json").stat().st_mtime_ns

    cfg = config([*WARM, "+attn=fla", "+pos=p4", "seed=1"], results, data)
    second = execute(experiment_from_config(cfg), cfg)
    assert second.status == "ok" and second.init_run == base_key
    assert (run_dir(results, base_key) / "record.json").stat().st_mtime_ns == mtime  # not trained again
    assert second.weights_sha256 == first.weights_sha256

    # the same seed gives the same numbers (on one machine), base run included
    cfg = config(variant, tmp_path / "again", data)
    again = execute(experiment_from_config(cfg), cfg)
    assert again.key == first.key  # (the checkpoint files differ: ultralytics writes dates and paths)
    assert (again.map50, again.map50_95) == (first.map50, first.map50_95)


def test_a_warm_sweep_trains_the_base_candidates_first_and_once(tmp_path: Path) -> None:
    """Two base candidates as a first batch (side by side), then every job fine-tunes the one the first of
    them to choose pinned."""
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
    assert [b.seed for b in bases] == [0, 1000]
    (path,) = pins(results)  # the six warm jobs (two at a time) chose once, and agree
    pin = json.loads(path.read_text())
    listed = [(c["key"], c["status"], c["train_loss"]) for c in pin["candidates"]]
    assert listed == [(b.key, "ok", b.train_loss) for b in bases] and pin["sweep"] == sweep_dir.name
    assert pin["chosen"] in {b.key for b in bases}
    assert {r.init_run for r in records if r.role != "base"} == {pin["chosen"]}
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
