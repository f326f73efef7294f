"""Sweeps via the CLI: auto-baselines, caching, failures, kill -9 recovery, concurrency, launchers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ablate.experiment import experiment_from_config
from ablate.overrides import baseline_overrides, is_baseline
from ablate.records import RunRecord, read_record, run_lock, write_record
from ablate.run import execute
from ablate.sweepdir import read_outcomes
from ablate.train import resumable_epoch

from .helpers import TINY, config

ROOT = Path(__file__).resolve().parents[1]
# profile jobs: the model is built and measured, nothing is trained
PROFILE = [
    "action=profile",
    "logger=none",
    "measure.latency.rounds=2",
    "measure.latency.passes=2",
    "measure.latency.min_time_s=0",
    "measure.latency.force_load=true",  # the test machine is busy with the tests themselves
]


def ablate(
    args: list[str], results: Path, data: Path, multirun: bool = True, **kw
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ablate", *args, f"results.dir={results}", f"data.dir={data}"]
    return subprocess.run(
        [*cmd, "-m"] if multirun else cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, **kw
    )


def records(results: Path) -> dict[str, RunRecord]:
    out = {}
    for path in sorted((results / "runs").glob("*/record.json")):
        data = json.loads(path.read_text())  # every record must be valid JSON
        out[path.parent.name] = RunRecord.from_dict(data)
    return out


def sweep_dirs(results: Path) -> list[Path]:
    return sorted((results / "hydra").glob("multirun-*"), key=lambda p: p.stat().st_mtime)


def test_baseline_overrides_drop_placement_and_force() -> None:
    job = ["dataset=shapes", "seed=1", "+attn=rala", "+pos=neck", "attn.params.head_dim=16", "force=true"]
    assert baseline_overrides(job) == ["dataset=shapes", "seed=1"]
    assert baseline_overrides(["+pos.layers=[6,8]", "+attn=fla", "train.epochs=3"]) == ["train.epochs=3"]
    assert is_baseline(["dataset=digits", "seed=0", "force=true"])
    assert not is_baseline(["dataset=digits", "+attn=tssa"])


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """rala at p5 for two seeds, once with a valid and once with an invalid head_dim, plus baselines."""
    results, data = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("data")
    args = [*PROFILE, "+attn=rala", "+pos=p5", "attn.params.head_dim=32,-1", "dataset=shapes", "seed=0,1"]
    return results, data, ablate(args, results, data)


def test_failed_job_is_recorded_and_the_others_complete(failing_sweep) -> None:
    results, _, proc = failing_sweep
    assert proc.returncode == 1, proc.stderr[-3000:]
    recs = records(results)
    by_status = {s: [r for r in recs.values() if r.status == s] for s in ("ok", "failed")}
    assert len(recs) == 6
    # 2 auto-added baselines (seeds 0, 1) + 2 valid rala jobs
    assert sorted((r.attn, r.seed) for r in by_status["ok"]) == [
        ("none", 0),
        ("none", 1),
        ("rala", 0),
        ("rala", 1),
    ]
    assert len(by_status["failed"]) == 2
    for r in by_status["failed"]:
        assert r.attn == "rala" and r.attn_params.get("head_dim") == -1
        assert "head_dim" in r.error
        assert (results / "runs" / r.key / "traceback.txt").read_text().strip()
    assert "6 job(s): 4 ok, 0 cached, 2 failed" in proc.stdout
    assert proc.stdout.count("  failed: ") == 2 and "attn.params.head_dim=-1" in proc.stdout
    sweep = sweep_dirs(results)[-1]
    assert json.loads((sweep / "sweep.json").read_text())["baselines_added"] == 2
    # progress lines [k/6] for every job, baselines first
    assert all(f"[{k}/6] " in proc.stdout for k in range(1, 7))
    first = proc.stdout.index("[1/6] ")
    assert "+attn" not in proc.stdout[first : proc.stdout.index("\n", first)]
    runs_csv = (results / "runs.csv").read_text().splitlines()
    assert len(runs_csv) == 1 + 6


def test_second_sweep_is_all_cached_and_adds_no_baseline(failing_sweep) -> None:
    results, data, _ = failing_sweep
    before = {k: (results / "runs" / k / "record.json").stat().st_mtime_ns for k in records(results)}
    args = [*PROFILE, "+attn=rala", "+pos=p5", "attn.params.head_dim=32", "dataset=shapes", "seed=0,1"]
    proc = ablate(args, results, data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 job(s): 0 ok, 2 cached, 0 failed" in proc.stdout
    assert json.loads((sweep_dirs(results)[-1] / "sweep.json").read_text())["baselines_added"] == 0
    after = {k: (results / "runs" / k / "record.json").stat().st_mtime_ns for k in records(results)}
    assert after == before  # nothing re-run, nothing re-written


def test_baseline_false_adds_no_baseline_and_force_reruns(failing_sweep) -> None:
    results, data, _ = failing_sweep
    args = [*PROFILE, "+attn=tssa", "+pos=p5", "dataset=shapes", "seed=0", "baseline=false"]
    proc = ablate(args, results, data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((sweep_dirs(results)[-1] / "sweep.json").read_text())["baselines_added"] == 0
    assert "1 job(s): 1 ok, 0 cached, 0 failed" in proc.stdout
    proc = ablate([*args, "force=true"], results, data)
    assert "1 job(s): 1 ok, 0 cached, 0 failed" in proc.stdout


def test_a_running_key_is_waited_for_not_run_twice(tmp_path: Path) -> None:
    """Two jobs with one run key: the second waits on the run's lock, then reuses the first's record."""
    results, data = tmp_path / "results", tmp_path / "data"
    overrides = [*PROFILE, "+attn=fla", "+pos=p5"]
    exp = experiment_from_config(config(overrides, results, data))
    directory = results / "runs" / exp.key
    with run_lock(directory):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ablate", *overrides, f"results.dir={results}", f"data.dir={data}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(15)  # start-up, then it waits on the lock
        assert proc.poll() is None, proc.communicate()
        write_record(
            directory, RunRecord(key=exp.key, status="ok", attn="fla", error="written by the holder")
        )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert read_record(directory).error == "written by the holder"  # the waiting job did not run it again


def test_concurrent_writers_lose_no_record(tmp_path: Path) -> None:
    """8 processes write 40 records each plus one shared record, and refresh runs.csv, all at once."""
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from ablate.records import RunRecord, write_record
        from ablate.report.load import write_runs_csv
        root, worker = Path({str(tmp_path)!r}), int(sys.argv[1])
        for i in range(40):
            key = f"w{{worker}}-{{i}}"
            write_record(root / "runs" / key, RunRecord(key=key, status="ok", seed=i, map50=i / 40))
            write_record(root / "runs" / "shared", RunRecord(key="shared", status="ok", seed=worker))
            if i % 10 == 0:
                write_runs_csv(root)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)], cwd=ROOT) for w in range(8)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    recs = records(tmp_path)
    assert len(recs) == 8 * 40 + 1
    assert all(recs[f"w{w}-{i}"].map50 == i / 40 for w in range(8) for i in range(40))
    assert recs["shared"].seed in range(8)
    assert not list((tmp_path / "runs").rglob("*.tmp"))
    import pandas as pd

    assert len(pd.read_csv(tmp_path / "runs.csv")) >= 1


@pytest.mark.parametrize(
    "launcher",
    [
        ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"],
    ],
    ids=["joblib", "submitit_local"],
)
def test_launchers_run_a_sweep(tmp_path: Path, launcher: list[str]) -> None:
    results, data = tmp_path / "results", tmp_path / "data"
    proc = ablate([*PROFILE, *launcher, "+attn=rala,tssa", "+pos=p5", "seed=0"], results, data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outcome = read_outcomes(sweep_dirs(results)[-1])
    # shapes and shapes_small (the default grid) x 2 modules, plus 2 baselines
    assert outcome.expected == 6 and len(outcome.outcomes) == 6
    assert {o.status for o in outcome.outcomes} == {"ok"}
    recs = records(results)
    assert sorted(r.attn for r in recs.values()) == ["none", "none", "rala", "rala", "tssa", "tssa"]
    assert {r.dataset for r in recs.values()} == {"shapes", "shapes_small"}
    # the measurement phase ran after the last job (under submitit: as a job of its own): one latency per
    # architecture (both datasets have the same classes, so 3 architectures), each with its ratio
    (store,) = (results / "measures").glob("torch-*")
    measured = [json.loads(p.read_text()) for p in store.glob("*.json") if p.name != "settings.json"]
    assert {m["attn"] for m in measured} == {"none", "rala", "tssa"} and len(measured) == 3
    assert {r.arch_key for r in recs.values()} == {m["arch_key"] for m in measured}
    assert "latency on torch" in proc.stdout
    if "submitit" in launcher[0]:
        assert list((sweep_dirs(results)[-1] / ".submitit" / "measure").glob("*_result.pkl"))


def test_killed_run_is_resumed_cleanly(tmp_path: Path) -> None:
    """SIGKILL during training leaves no ok record; the re-run sweep resumes it from last.pt."""
    results, data = tmp_path / "results", tmp_path / "data"
    args = [*TINY, "train.epochs=6", "measure.coco_eval=false", "dataset=shapes", "seed=0", "baseline=false"]
    cmd = [sys.executable, "-m", "ablate", *args, f"results.dir={results}", f"data.dir={data}", "-m"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 600
    # kill once an epoch's last.pt is complete (a kill while ultralytics writes it leaves a truncated file,
    # which ablate rightly ignores by starting over: not what this test is about)
    while time.time() < deadline and not any(
        resumable_epoch(p) is not None for p in results.glob("runs/*/ultralytics/weights/last.pt")
    ):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run,) = list((results / "runs").iterdir())
    assert read_record(run) is None  # no record, let alone an ok one

    again = ablate(args, results, data)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    recs = records(results)
    assert list(recs) == [run.name]  # the same run key, no duplicate
    record = recs[run.name]
    assert record.status == "ok" and record.map50 is not None
    assert record.resumed_from_epoch is not None and 1 <= record.resumed_from_epoch < 6
    csv = (run / "ultralytics" / "results.csv").read_text().splitlines()
    assert len(csv) == 1 + 6  # every epoch exactly once


def test_non_finite_loss_fails_the_run(tmp_path: Path) -> None:
    """An attention output scaled by inf makes the loss NaN: the run is recorded failed, not trained on."""
    cfg = config(
        [*TINY, "train.epochs=3", "+attn=rala", "+pos=p5", "attn.gamma=inf"], tmp_path / "r", tmp_path / "d"
    )
    record = execute(experiment_from_config(cfg), cfg)
    assert record.status == "failed"
    assert "NonFiniteLossError" in record.error and "epoch 1" in record.error
    directory = tmp_path / "r" / "runs" / record.key
    assert "nan_guard" in (directory / "traceback.txt").read_text()
    assert read_record(directory).status == "failed"


def test_resuming_drops_results_rows_of_the_epoch_last_pt_missed(tmp_path: Path) -> None:
    """ultralytics writes an epoch's results.csv row before its last.pt: a kill between the two must not
    leave that epoch twice once the run resumes from the epoch before."""
    from ablate.train import trim_results_csv

    path = tmp_path / "results.csv"
    path.write_text("epoch,time,loss\n" + "".join(f"{e},{e}.0,0.{e}\n" for e in range(1, 6)))
    trim_results_csv(path, 3)
    assert path.read_text() == "epoch,time,loss\n1,1.0,0.1\n2,2.0,0.2\n3,3.0,0.3\n"
    trim_results_csv(tmp_path / "absent.csv", 3)  # nothing to trim: no error


def test_cached_jobs_are_resolved_before_anything_is_launched(tmp_path: Path) -> None:
    """A job with an ok record is never handed to the launcher: its ``cached`` outcome is written into its
    job directory (numbered first, whatever ``hydra.sweep.subdir`` says) before the others launch."""
    results, data = tmp_path / "results", tmp_path / "data"
    job = [*PROFILE, "measure.latency.after_sweep=false", "dataset=shapes", "+attn=rala", "+pos=p5"]
    for overrides in ([*job, "seed=0"], [*baseline_overrides(job), "seed=0"]):
        exp = experiment_from_config(config(overrides, results, data))
        write_record(results / "runs" / exp.key, RunRecord(key=exp.key, status="ok", error="planted"))
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.subdir=job${hydra.job.num}"]
    proc = ablate([*job, "seed=0,1", *launcher], results, data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 job(s): 2 ok, 1 cached, 0 failed" in proc.stdout  # rala seed 0 cached; seed 1 + its baseline
    sweep = sweep_dirs(results)[-1]
    info = json.loads((sweep / "sweep.json").read_text())
    assert info["total"] == 3 and info["cached"] == 1 and info["baselines_added"] == 1
    assert "seed=0" in info["jobs"][0] and "+attn=rala" in info["jobs"][0]
    cached = json.loads((sweep / "job0" / "outcome.json").read_text())
    assert cached["status"] == "cached" and "seed=0" in cached["summary"]
    assert not (sweep / "job0" / ".hydra").exists()  # no job process ever ran it
    assert {json.loads((sweep / f"job{n}" / "outcome.json").read_text())["status"] for n in (1, 2)} == {"ok"}
    assert [o.status for o in read_outcomes(sweep).outcomes] == ["cached", "ok", "ok"]
    assert all(r.error == "planted" for r in records(results).values() if r.seed == 0)  # not re-run


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path: Path, umask: int) -> None:
    """Records and the other atomically written files get 0666 less the umask, as open() would give."""
    from ablate.records import current_umask, write_json_atomic

    previous = os.umask(umask)
    try:
        assert current_umask() == umask
        write_record(tmp_path / "run", RunRecord(key="k", status="ok"))
        write_json_atomic(tmp_path / "predictions.json", [])
    finally:
        os.umask(previous)
    assert (tmp_path / "run" / "record.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "predictions.json").stat().st_mode & 0o777 == 0o666 & ~umask
