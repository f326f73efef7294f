"""Sweeps on a real one-node SLURM cluster (tests/slurm_cluster.py: munge, MariaDB + slurmdbd, slurmctld,
slurmd on localhost), submitted through the project's own ``hydra/launcher=slurm`` preset.

Skipped, saying why, only where the cluster cannot run (not root, or the packages are missing: ``.ci/run``
installs them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pytest
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from ablate.launcher import AblateSlurmLauncher
from ablate.records import current_umask, read_record
from ablate.sweep import JobOutcome, read_outcomes, write_outcome
from ablate.train import resumable_epoch

from . import slurm_cluster
from .helpers import TINY, skip_or_fail_in_ci
from .test_sweep import PROFILE, records, sweep_dirs

ROOT = Path(__file__).resolve().parents[1]
# the slurm preset on the test node: no GPU, one CPU and 2 GB per task
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=20",
    f"hydra.launcher.partition={slurm_cluster.PARTITION}",
]
QUICK = [*PROFILE, "measure.latency.warmup=1", "measure.latency.after_sweep=false", "dataset=shapes"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[slurm_cluster.Cluster]:
    reason = slurm_cluster.missing_requirements()
    if reason:
        skip_or_fail_in_ci(f"no SLURM test cluster: {reason}")
    # not under pytest's tmp_path: munged and mariadbd (other users) must reach their directories
    root = Path(tempfile.mkdtemp(prefix="ablate-slurm-"))
    try:
        try:
            started = slurm_cluster.start(root)
        except slurm_cluster.ClusterUnavailableError as e:
            pytest.fail(f"the packages are installed but the SLURM test cluster did not start: {e}")
        print(f"\nSLURM test cluster up in {started.start_seconds} s ({root})")
        yield started
    finally:
        slurm_cluster.stop(root)
        shutil.rmtree(root, ignore_errors=True)


def sweep(
    cluster: slurm_cluster.Cluster, args: list[str], results: Path, data: Path
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ablate", *args, f"results.dir={results}", f"data.dir={data}", "-m"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=cluster.env())


def slurm_jobs(cluster: slurm_cluster.Cluster) -> list[str]:
    """Every job (array tasks included) the cluster's accounting has seen."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-a", "-o", "JobID", "-S", "2000-01-01"],
        capture_output=True,
        text=True,
        env=cluster.env(),
        check=True,
    ).stdout
    return out.split()


@pytest.fixture(scope="module")
def profile_sweep(cluster: slurm_cluster.Cluster, tmp_path_factory: pytest.TempPathFactory):
    """Two modules at p5 plus their auto-added baseline, profiled on the cluster (one job array), with the
    measurement phase as a job of its own."""
    results, data = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("data")
    args = [
        *SLURM,
        *PROFILE,
        "measure.latency.warmup=1",
        "dataset=shapes",
        "seed=0",
        "+attn=rala,tssa",
        "+pos=p5",
    ]
    return args, results, data, sweep(cluster, args, results, data)


def test_profile_sweep_with_auto_baseline_on_slurm(profile_sweep) -> None:
    _, results, _, proc = profile_sweep
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 job(s): 3 ok, 0 cached, 0 failed" in proc.stdout
    recs = records(results)
    assert sorted(r.attn for r in recs.values()) == ["none", "rala", "tssa"]
    assert {r.status for r in recs.values()} == {"ok"}
    assert "latency on torch" in proc.stdout  # the measurement phase ran as a SLURM job
    sweep_dir = sweep_dirs(results)[-1]
    assert list((sweep_dir / ".submitit" / "measure").glob("*_result.pkl"))
    # submitit's lines are written once per task log (they were written twice)
    logs = sorted(sweep_dir.glob(".submitit/*_*/*_log.out"))  # the array's three tasks
    assert len(logs) == 3
    for log in logs:
        assert log.read_text().count("Job completed successfully") == 1, log.read_text()
    # records get the submitter's umask (SLURM passes it on), not mkstemp's 0600
    mode = 0o666 & ~current_umask()
    for key in recs:
        assert (results / "runs" / key / "record.json").stat().st_mode & 0o777 == mode


def test_second_run_is_cached_without_submitting(cluster, profile_sweep) -> None:
    args, results, data, first = profile_sweep
    assert first.returncode == 0
    before = slurm_jobs(cluster)
    proc = sweep(cluster, args, results, data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 job(s): 0 ok, 2 cached, 0 failed" in proc.stdout  # the baseline is no longer added
    assert slurm_jobs(cluster) == before  # nothing went through the queue, not even the measurement phase
    outcomes = read_outcomes(sweep_dirs(results)[-1])
    assert [o.status for o in outcomes.outcomes] == ["cached", "cached"] and outcomes.expected == 2


def test_failing_job_leaves_the_others_ok(cluster, tmp_path: Path) -> None:
    """The CPU-partition preset of the README; one configuration fails in its job (a bad head_dim)."""
    results, data = tmp_path / "results", tmp_path / "data"
    args = [
        "hydra/launcher=slurm_cpu",
        'hydra.launcher.setup=["source .venv/bin/activate"]',  # as the README's example has it
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        *QUICK,
        "seed=0",
        "+attn=rala",
        "+pos=p5",
        "attn.params.head_dim=32,-1",
    ]
    proc = sweep(cluster, args, results, data)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "3 job(s): 2 ok, 0 cached, 1 failed" in proc.stdout
    assert "attn.params.head_dim=-1" in proc.stdout
    recs = records(results)
    assert sorted((r.attn, r.status) for r in recs.values()) == [
        ("none", "ok"),
        ("rala", "failed"),
        ("rala", "ok"),
    ]


def test_cancelled_sweep_fails_cleanly_and_resumes(cluster, tmp_path: Path) -> None:
    """scancel mid-training: the submitter waits for every task, reports them failed with the SLURM state,
    prints the summary and exits 1 (no traceback); the re-run resumes and ends with one ok record each."""
    results, data = tmp_path / "results", tmp_path / "data"
    # long enough that the cancel (SIGTERM, then SIGKILL after KillWait = 5 s) lands mid-training on a
    # quiet machine too (~0.9 s per epoch here; at 8 epochs a run could finish first and not be resumable)
    epochs = 20
    args = [
        *SLURM,
        *TINY,
        f"train.epochs={epochs}",
        "measure.coco_eval=false",
        "measure.latency.after_sweep=false",
    ]
    args += ["dataset=shapes", "seed=0,1", "baseline=false"]
    cmd = [sys.executable, "-m", "ablate", *args, f"results.dir={results}", f"data.dir={data}", "-m"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env()
    )
    try:
        deadline = time.time() + 300
        # cancel once an epoch's last.pt is complete (resumable), well before the last epoch
        while time.time() < deadline and not any(
            resumable_epoch(p) is not None for p in results.glob("runs/*/ultralytics/weights/last.pt")
        ):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        # the array's id: submitit names each task's folder <array>_<task>
        (array,) = {p.name.split("_")[0] for p in sweep_dirs(results)[-1].glob(".submitit/[0-9]*_[0-9]*")}
        subprocess.run(["scancel", array], env=cluster.env(), check=True)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # a failed assertion: the submitter must not outlive the test
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert "Traceback" not in err and "UncompletedJobError" not in err
    assert "2 job(s): 0 ok, 0 cached, 2 failed" in out
    outcomes = read_outcomes(sweep_dirs(results)[-1]).outcomes
    assert len(outcomes) == 2 and all("CANCELLED" in (o.error or "") for o in outcomes), outcomes
    assert all(read_record(d) is None or read_record(d).status != "ok" for d in (results / "runs").iterdir())

    again = sweep(cluster, args, results, data)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 job(s): 2 ok, 0 cached, 0 failed" in again.stdout
    recs = records(results)
    assert len(recs) == 2 and {r.status for r in recs.values()} == {"ok"}
    assert sorted(r.seed for r in recs.values()) == [0, 1]
    assert any(r.resumed_from_epoch is not None for r in recs.values())
    for key in recs:
        rows = (results / "runs" / key / "ultralytics" / "results.csv").read_text().splitlines()
        assert len(rows) == 1 + epochs  # every epoch exactly once
    assert json.loads((sweep_dirs(results)[-1] / "sweep.json").read_text())["total"] == 2


# ---------------------------------------------------------------------------------------------------------
# the launcher's parts that need no cluster


class _LostJob:
    """A submitit job as it looks once SLURM cancelled it: no result, state CANCELLED."""

    job_id = "41_1"
    state = "CANCELLED by 0"
    paths = SimpleNamespace(
        stderr=Path("/nowhere/41_1_0_log.err"), result_pickle=Path("/nowhere/41_1_0_result.pkl")
    )

    def results(self) -> list:
        raise AssertionError("no result file: nothing to wait for")


def _launcher(sweep_dir: Path) -> AblateSlurmLauncher:
    launcher = AblateSlurmLauncher(submitit_folder=str(sweep_dir / ".submitit" / "%j"), partition="debug")
    sweep = {"dir": str(sweep_dir), "subdir": "job${hydra.job.num}"}
    config = OmegaConf.create({"hydra": {"sweep": sweep, "job": {"num": None, "id": None}}})
    launcher.config = config
    loader = SimpleNamespace(load_sweep_config=lambda cfg, overrides: OmegaConf.merge(cfg, {"x": overrides}))
    launcher.hydra_context = SimpleNamespace(config_loader=loader)
    return launcher


def test_a_lost_task_becomes_a_failed_outcome(tmp_path: Path) -> None:
    launcher = _launcher(tmp_path)
    ret = launcher.collect(_LostJob(), ["seed=1", "+attn=rala"], 3)
    assert ret.status == JobStatus.FAILED
    (outcome,) = read_outcomes(tmp_path).outcomes
    assert (tmp_path / "job3" / "outcome.json").exists()  # the job directory per hydra.sweep.subdir
    assert outcome.status == "failed" and outcome.overrides == ["seed=1", "+attn=rala"]
    assert "task 41_1 ended CANCELLED by 0 without a result" in outcome.error
    assert "\n" not in outcome.error
    # an outcome the task wrote before it was lost stands
    write_outcome(tmp_path / "job4", JobOutcome("ok", ["seed=2"]))
    launcher.collect(_LostJob(), ["seed=2"], 4)
    assert json.loads((tmp_path / "job4" / "outcome.json").read_text())["status"] == "ok"


def test_a_task_whose_function_raised_reports_the_error(tmp_path: Path) -> None:
    from submitit.core.utils import FailedJobError

    class Raised(_LostJob):
        state = "FAILED"
        paths = SimpleNamespace(stderr=tmp_path / "err", result_pickle=tmp_path / "result.pkl")

        def results(self) -> list:
            trace = (
                "Traceback (most recent call last):\n  File x\nModuleNotFoundError: No module named 'ablate'"
            )
            raise FailedJobError(f"Job (task=0) failed during processing with trace:\n----\n{trace}\n----\n")

    (tmp_path / "result.pkl").write_bytes(b"")
    _launcher(tmp_path).collect(Raised(), ["seed=0"], 0)
    (outcome,) = read_outcomes(tmp_path).outcomes
    assert outcome.status == "failed"
    assert (
        "task 41_1 failed on the node (FAILED): ModuleNotFoundError: No module named 'ablate'"
        in outcome.error
    )


def test_the_launcher_unpickles_where_ablate_was_not_imported(tmp_path: Path) -> None:
    """The node unpickles the launcher before anything imported ablate (no hydra_plugins alias yet)."""
    path = tmp_path / "launcher.pkl"
    path.write_bytes(cloudpickle.dumps(_launcher(tmp_path)))
    script = (
        "import pickle, sys; launcher = pickle.load(open(sys.argv[1], 'rb')); "
        "print(type(launcher).__name__, launcher.params['partition'])"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["AblateSlurmLauncher", "debug"]
