"""The sweep's plan (ablate/plan.py): cached jobs, added baselines, wall-time estimates, ``dry_run=true``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ablate.experiment import experiment_from_config
from ablate.plan import Plan, PlannedJob, finished_runs, format_plan, launcher_parallelism, make_plan
from ablate.records import RunRecord, read_records, run_dir, write_record
from ablate.report.load import load_records

from .helpers import config
from .test_sweep import PROFILE, ROOT

JOB = [*PROFILE, "dataset=shapes", "+attn=rala", "+pos=p5"]


def loader(results: Path, data: Path):
    return lambda overrides: config(list(overrides), results, data)


def finished(results: Path, data: Path, overrides: list[str], seconds: float, status: str = "ok") -> str:
    """An ok record for ``overrides`` that took ``seconds`` (as a finished run would have written it)."""
    exp = experiment_from_config(config(overrides, results, data))
    record = RunRecord(
        key=exp.key,
        status=status,
        action=exp.action,
        model=exp.model,
        dataset=str(exp.dataset["name"]),
        seed=exp.seed,
        config_key=exp.config_key,
        train_hash=exp.train_hash,
        started_at="2026-01-01T10:00:00+00:00",
        finished_at=f"2026-01-01T10:{int(seconds) // 60:02d}:{int(seconds) % 60:02d}+00:00",
    )
    write_record(run_dir(results, exp.key), record)
    return exp.key


def test_plan_resolves_cached_jobs_baselines_and_estimates(tmp_path: Path) -> None:
    results, data = tmp_path / "r", tmp_path / "d"
    cached_key = finished(results, data, [*JOB, "seed=0"], 30)
    finished(results, data, [*JOB, "seed=5"], 50)  # the same configuration, another seed
    finished(results, data, [*JOB, "seed=6"], 70)
    finished(results, data, [*JOB, "seed=7"], 1, status="failed")  # failed runs estimate nothing
    finished(results, data, [*PROFILE, "dataset=shapes", "seed=9"], 10)  # a baseline of other seeds
    tssa = [*PROFILE, "dataset=shapes", "+attn=tssa", "+pos=p5", "seed=1"]
    jobs = [[*JOB, "seed=0"], [*JOB, "seed=1"], tssa]
    plan = make_plan(jobs, loader(results, data), parallel=2)

    assert [j.cached for j in plan.jobs] == [True, False, False, False, False]  # cached first
    assert plan.jobs[0].key == cached_key and plan.jobs[0].record.status == "ok"
    assert plan.jobs[0].overrides == jobs[0]
    # the baselines of seeds 0 and 1 have no ok record: both added, and run before the jobs
    assert [j.role for j in plan.to_run] == ["baseline", "baseline", "job", "job"]
    assert plan.added("baseline") == 2 and plan.added("base") == 0
    # estimates: the baselines from the baseline's other seed (10 s); rala from its other seeds' ok runs
    # (30, 50, 70 s); tssa, never run, from every run with its action, model, dataset and training
    # settings (10, 30, 50, 70 s)
    assert [j.estimate_s for j in plan.to_run] == [10.0, 10.0, 50.0, 40.0]
    # two at a time, each job on the first free slot: 10 + 50 | 10 + 40
    assert plan.wall_seconds() == 60.0
    # the batches hand the launcher only what runs
    assert plan.batches(None) == [[j.overrides for j in plan.to_run]]
    assert [len(b) for b in plan.batches(3)] == [3, 1]

    text = format_plan(plan)
    assert "5 job(s): 4 to run, 1 cached; 2 baseline(s)" in text
    assert "cached job" in text and "~0:50 (from 3 runs)" in text
    assert "estimated wall time: 1:00 for 4 job(s), 2 at a time" in text


def test_force_is_never_cached_and_unknown_settings_have_no_estimate(tmp_path: Path) -> None:
    results, data = tmp_path / "r", tmp_path / "d"
    finished(results, data, [*JOB, "seed=0"], 30)
    plan = make_plan([[*JOB, "seed=0", "force=true"]], loader(results, data), add_baselines=False)
    assert [j.cached for j in plan.jobs] == [False]
    assert plan.jobs[0].estimate_s == 30.0  # its own earlier run is the similar one
    plan = make_plan([[*JOB, "seed=0", "train.epochs=3"]], loader(results, data), add_baselines=False)
    assert plan.jobs[0].estimate_s is None and plan.wall_seconds() is None
    assert "no estimate (no similar finished runs" in format_plan(plan)


def test_a_bad_configuration_is_planned_to_run_and_reports_itself() -> None:
    plan = Plan([PlannedJob(["+attn=rala", "attn.params.head_dim=-1"], error="head_dim must be positive")])
    assert "bad configuration: head_dim must be positive" in format_plan(plan)


def test_launcher_parallelism() -> None:
    assert launcher_parallelism(None) == 1
    assert launcher_parallelism({"n_jobs": 3}) == 3
    assert launcher_parallelism({"array_parallelism": 32, "partition": None}) == 32
    assert (
        launcher_parallelism({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}) == 1
    )


def test_dry_run_lists_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    results, data = tmp_path / "r", tmp_path / "d"
    finished(results, data, [*JOB, "seed=0"], 30)
    common = [f"results.dir={results}", f"data.dir={data}", "dry_run=true"]
    cmd = [
        sys.executable,
        "-m",
        "ablate",
        *JOB,
        "seed=0,1",
        *common,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=3",
        "-m",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: 4 job(s): 3 to run, 1 cached; 2 baseline(s) and 0 base run(s) added" in proc.stdout
    assert "estimated wall time: 0:30 for 3 job(s)" in proc.stdout  # 30 s each, side by side
    assert "sweep " not in proc.stdout  # no summary: nothing ran
    assert len(list((results / "runs").iterdir())) == 1  # no record written
    assert not list(results.glob("hydra/multirun-*"))  # no sweep directory
    # a single run: its own plan
    cmd = [sys.executable, "-m", "ablate", *JOB, "seed=0", *common]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: 1 job(s): 0 to run, 1 cached" in proc.stdout and "nothing to run" in proc.stdout


def test_a_device_the_planning_machine_lacks_does_not_hide_the_cache(tmp_path: Path) -> None:
    """A login node without GPUs plans a sweep of ``train.device=0`` jobs: the device is not part of the
    run key, so caching and auto-baselines work there as on the node that runs them."""
    results, data = tmp_path / "r", tmp_path / "d"
    key = finished(results, data, [*JOB, "seed=0"], 30)
    on_gpu = [*JOB, "seed=0", "train.device=7", "measure.latency.device=7"]  # no GPU 7 here
    plan = make_plan([on_gpu, [*JOB, "seed=1", "train.device=7"]], loader(results, data))
    assert plan.jobs[0].cached and plan.jobs[0].key == key and plan.jobs[0].error is None
    assert plan.added("baseline") == 2


def test_the_planner_and_the_tables_read_records_with_one_reader(tmp_path: Path) -> None:
    """``read_records``: every readable record in key order, unreadable ones skipped (named), runs without a
    record left out; the planner's estimates take its ok records, the tables all of them."""
    results, data = tmp_path / "r", tmp_path / "d"
    ok = {finished(results, data, [*JOB, f"seed={s}"], 30) for s in (0, 1)}
    failed = finished(results, data, [*JOB, "seed=2"], 30, status="failed")
    (results / "runs" / "truncated").mkdir()
    (results / "runs" / "truncated" / "record.json").write_text('{"key": "trunc')
    (results / "runs" / "notarecord").mkdir()
    (results / "runs" / "notarecord" / "record.json").write_text("[1, 2]")
    (results / "runs" / "running").mkdir()  # a run in progress: no record yet
    loaded = read_records(results)
    assert [d["key"] for d in loaded.records] == sorted([*ok, failed])
    assert sorted(p.parent.name for p in loaded.skipped) == ["notarecord", "truncated"]
    assert {r.key for r in finished_runs(results)} == ok
    assert [d["key"] for d in load_records(results).records] == [d["key"] for d in loaded.records]
