"""The cache check after the run lock: a job whose key finished in another job while it started (built its
model, found its warm-start base, waited) reuses that record instead of training it again; ``force=true``
re-runs once per invocation, not once per job that reaches the lock; the one test of a reusable ok record
(planner and run alike); the run's failure policy. Training is faked (tests/fakes.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from ablate import run
from ablate.errors import AblateError
from ablate.experiment import Experiment, experiment_from_config
from ablate.plan import make_plan
from ablate.records import RECORD, RunRecord, Seen, read_record, reusable_record, run_dir, write_record
from ablate.tracking import Tracker

from .fakes import COARSE, FakeTraining, install_fake_training
from .helpers import SMALL, TINY, config


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTraining:
    return install_fake_training(monkeypatch)


def experiment(tmp_path: Path, *overrides: str) -> Experiment:
    return experiment_from_config(
        config([*TINY, *COARSE, *overrides], tmp_path / "results", tmp_path / "data")
    )


def record_bytes(exp: Experiment) -> bytes:
    return (run_dir(exp.results_dir, exp.key) / RECORD).read_bytes()


def before_the_lock(monkeypatch: pytest.MonkeyPatch, other_job: Callable[[], RunRecord | None]) -> list:
    """Run ``other_job`` to its end just before the next job takes its run lock (that job has passed its
    first cache check by then: the other job finished while it started). Returns [the other's record]."""
    lock, other = run.run_lock, []

    def late_lock(directory: Path):  # noqa: ANN202
        if not other:
            other.append(None)
            other[0] = other_job()
        return lock(directory)

    monkeypatch.setattr(run, "run_lock", late_lock)
    return other


@pytest.mark.parametrize(
    ("force", "sweep"),
    [(False, None), (True, "multirun-a"), (True, None)],
    ids=["unforced", "forced-same-sweep", "forced-single-runs"],
)
def test_a_job_that_reaches_the_lock_after_its_run_finished_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeTraining, force: bool, sweep: str | None
) -> None:
    """Two jobs with one key: the second passed its first cache check before the first finished and takes
    the free lock after it. It returns the first's record (cached), leaves its bytes alone, trains nothing.
    Forced jobs too: of one sweep, or two single runs where the record was written while the second
    started."""
    exp = dataclasses.replace(experiment(tmp_path), force=force, sweep=sweep)
    written = []

    def first_job() -> RunRecord | None:
        record = run.execute(exp)
        written.append(record_bytes(exp))
        return record

    other = before_the_lock(monkeypatch, first_job)
    second = run.execute(exp)
    (first,) = other
    assert first.status == "ok" and not first.cached
    assert second.cached and second.key == first.key and second.finished_at == first.finished_at
    assert record_bytes(exp) == written[0]
    assert fake.trained == [exp.key]


def test_force_reruns_once_per_sweep_and_once_per_single_run(tmp_path: Path, fake: FakeTraining) -> None:
    """An ok record of an earlier invocation is re-run by force; the next forced job of the same sweep
    (started after the first finished) reuses the fresh record; a later invocation re-runs again."""
    exp = experiment(tmp_path)
    run.execute(exp)
    old = record_bytes(exp)
    forced = dataclasses.replace(exp, force=True, sweep="multirun-b")
    first = run.execute(forced)
    assert not first.cached and record_bytes(exp) != old and fake.count(exp.key) == 2
    fresh = record_bytes(exp)
    assert run.execute(forced).cached and record_bytes(exp) == fresh and fake.count(exp.key) == 2
    assert not run.execute(dataclasses.replace(forced, sweep="multirun-c")).cached
    assert not run.execute(dataclasses.replace(forced, sweep=None)).cached  # a single forced run
    assert fake.count(exp.key) == 4
    assert run.execute(exp).cached and fake.count(exp.key) == 4  # unforced: any ok record


def test_a_warm_start_without_its_base_is_refused(tmp_path: Path) -> None:
    exp = experiment_from_config(config([*SMALL, "train.init=warm"], tmp_path / "results", tmp_path / "data"))
    assert exp.warm
    with pytest.raises(ValueError, match=r"needs its warm-start base: run it with ablate.warm.execute"):
        run.execute(exp)


def test_one_test_says_which_ok_record_a_job_reuses(tmp_path: Path, fake: FakeTraining) -> None:
    """``reusable_record``: any ok record without force; with force only one of this invocation (a job of the
    same sweep, or written since the job first read it); never a failed one. The planner asks the same."""
    exp = experiment(tmp_path)
    load = lambda job: config([*TINY, *COARSE, *job], tmp_path / "results", tmp_path / "data")  # noqa: E731
    assert reusable_record(exp.results_dir, exp.key) is None and not make_plan([[]], load).jobs[0].cached
    before = Seen.read(run_dir(exp.results_dir, exp.key) / RECORD)
    run.execute(dataclasses.replace(exp, sweep="multirun-a"))
    found = reusable_record(exp.results_dir, exp.key)
    assert found is not None and found.cached and found.key == exp.key and found.status == "ok"
    assert make_plan([[]], load).jobs[0].cached and not make_plan([["force=true"]], load).jobs[0].cached
    assert reusable_record(exp.results_dir, exp.key, force=True) is None  # the planner's view of force
    assert reusable_record(exp.results_dir, exp.key, force=True, sweep="multirun-a") is not None
    assert reusable_record(exp.results_dir, exp.key, force=True, sweep="multirun-b") is None
    assert reusable_record(exp.results_dir, exp.key, force=True, seen=before) is not None  # written since
    now = Seen.read(run_dir(exp.results_dir, exp.key) / RECORD)
    assert reusable_record(exp.results_dir, exp.key, force=True, seen=now) is None
    failed = RunRecord.from_dict({**found.to_dict(), "status": "failed", "error": "RuntimeError: boom"})
    write_record(run_dir(exp.results_dir, exp.key), failed)
    assert reusable_record(exp.results_dir, exp.key) is None and not make_plan([[]], load).jobs[0].cached


def test_the_failure_policy_raises_bad_input_and_records_every_other_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeTraining
) -> None:
    """Before the run starts, bad input is raised (nothing written), or recorded under ``record_errors``;
    once it started, any exception is recorded with its traceback; a stopped job writes nothing and leaves
    the lock free; every record is written once, tracking finished once."""
    exp = experiment(tmp_path)
    directory = run_dir(exp.results_dir, exp.key)

    def bad_model(exp: Experiment, nc: int | None = None) -> None:
        raise AblateError("yolo12n with attn=none does not build: no")

    with monkeypatch.context() as m:
        m.setattr(run, "composed_model", bad_model)
        with pytest.raises(AblateError, match="does not build: no"):
            run.execute(exp)
        assert not (exp.results_dir / "runs").exists()
        record = run.execute(exp, record_errors=True)
        assert (
            record.status == "failed"
            and record.error == "AblateError: yolo12n with attn=none does not build: no"
        )
        assert read_record(directory) == record and (directory / run.TRACEBACK).is_file()
        assert record.params is None and record.arch_key == "" and fake.trained == []

    finished: list[RunRecord] = []

    class Counting(Tracker):
        def finish(self, record: RunRecord) -> None:
            finished.append(record)

    monkeypatch.setattr(run, "start_run", lambda *args: Counting())

    def boom(*args: object) -> dict:
        raise RuntimeError("the trainer fell over")

    monkeypatch.setattr(run, "train", boom)
    record = run.execute(exp)  # started: recorded, never raised
    assert record.status == "failed" and record.error == "RuntimeError: the trainer fell over"
    assert "the trainer fell over" in (directory / run.TRACEBACK).read_text()
    assert record.params is not None and record.arch_key and finished == [record]

    def stopped(*args: object) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train", stopped)
    (directory / RECORD).unlink()
    with pytest.raises(KeyboardInterrupt):
        run.execute(exp)
    assert not (directory / RECORD).exists() and len(finished) == 1
    with run.run_lock(directory) as waited:  # released on the way out
        assert not waited
