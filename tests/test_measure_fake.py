"""The measurement phase on a fake backend whose pass times are known: the stored figures, one phase per
baseline and its variants (and the table that shows them), the load check before timing."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ablate import report as reporting
from ablate.measure import latency, phase, quiet, store
from ablate.measure.__main__ import main as measure_main
from ablate.measure.model import architecture_key
from ablate.records import RunRecord, run_dir, write_record
from ablate.report import layout, render

IMGSZ = (64, 64)
FAST = {"rounds": 3, "passes": 2, "warmup": 1, "threads": 1, "min_time_s": 0.0}


class FakeBackend:
    """Every forward advances a fake clock by the next of its architecture's known pass times (ms)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ms: dict[str, Iterator[float]] = {}

    def set(self, key: str, ms: float | Iterable[float]) -> None:
        self.ms[key] = itertools.repeat(float(ms)) if isinstance(ms, int | float) else iter(ms)

    def clock(self) -> float:
        return self.now

    def make_call(self, arch: phase.Architecture, settings: phase.Settings, export_dir: Path) -> Any:
        def call() -> None:
            self.now += next(self.ms[arch.key]) / 1e3

        return call


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    backend = FakeBackend()
    monkeypatch.setattr(phase, "make_call", backend.make_call)
    monkeypatch.setattr(
        phase, "time_interleaved", functools.partial(latency.time_interleaved, clock=backend.clock)
    )
    monkeypatch.setattr(quiet, "machine_load", lambda: (0.0, 4))  # a quiet machine unless a test says not
    return backend


def variant(attn: str) -> phase.Architecture:
    d = {"nc": 5, "variant": attn}  # never built: the fake backend times it
    return phase.Architecture(architecture_key(d, IMGSZ), "yolo12n", attn, "neck", 5, IMGSZ, d, (14, 17, 20))


A, B = variant("rala"), variant("halo")
BASE = A.baseline()


def by_attn(result: phase.PhaseResult) -> dict[str, dict[str, Any]]:
    return {m["attn"]: m for m in result.measured}


# ------------------------------------------------------------------------------------ stored figures


def test_stored_figures_are_the_known_ones(fake: FakeBackend, tmp_path: Path) -> None:
    # per round (2 passes each, after 1 warm-up pass) the baseline takes 10, 20, 30 ms (the machine drifts)
    # and the variant 1.1x, 1.2x, 1.3x that: per-round ratios 1.1, 1.2, 1.3
    fake.set(BASE.key, [5, 10, 10, 20, 20, 30, 30])
    fake.set(A.key, [5, 11, 11, 24, 24, 39, 39])
    result = phase.measure([A], phase.Settings(**FAST), tmp_path)
    base, a = by_attn(result)["none"], by_attn(result)["rala"]
    assert (base["latency_ms"], base["latency_p10_ms"], base["latency_p90_ms"]) == (20.0, 10.0, 30.0)
    # median of 11, 11, 24, 24, 39, 39; p10 and p90 interpolated between equal neighbours
    assert (a["latency_ms"], a["latency_p10_ms"], a["latency_p90_ms"]) == (24.0, 11.0, 39.0)
    # the ratio is per round (paired: the drift cancels), then the median and p10/p90 over the 3 rounds
    assert (a["latency_ratio"], a["latency_ratio_p10"], a["latency_ratio_p90"]) == (1.2, 1.12, 1.28)
    assert (base["latency_ratio"], base["latency_ratio_p10"], base["latency_ratio_p90"]) == (1.0, 1.0, 1.0)
    assert a["latency_count"] == 6 and a["rounds"] == 3 and a["baseline_arch_key"] == BASE.key
    assert result.timed_s == pytest.approx((10 + 10 + 20 + 20 + 30 + 30 + 11 + 11 + 24 + 24 + 39 + 39) / 1e3)
    # the model YAML is stored with the measurement: it can be timed again without its runs
    assert (tmp_path / "measures" / "models" / f"{A.key}.yaml").is_file()


def test_load_options_are_not_part_of_the_settings_key() -> None:
    # measure.latency.force_load (the end-of-sweep phase, action=profile) reaches the phase's settings
    (relaxed,) = phase.settings_from_config(
        {"after_sweep": True, "force_load": True, "max_load": 2.0, "load_wait_s": 0}
    )
    assert (relaxed.force_load, relaxed.max_load, relaxed.load_wait_s) == (True, 2.0, 0)
    assert relaxed.key == phase.Settings().key
    assert phase.Settings(threads=2).key != phase.Settings().key
    with pytest.raises(ValueError, match="max_load=0"):
        phase.Settings(max_load=0).check()


# ------------------------------------------------------------------------------ one phase per table


def _record(attn: str, arch: phase.Architecture, map50_95: float) -> RunRecord:
    ckey = f"cfg-{attn}"
    return RunRecord(
        key=f"{ckey}-s0",
        status="ok",
        action="train",
        model="yolo12n",
        scale="n",
        attn=attn,
        pos="none" if attn == "none" else "neck",
        layers=[] if attn == "none" else [14, 17, 20],
        mode="none" if attn == "none" else "after",
        dataset="shapes",
        seed=0,
        epochs=1,
        imgsz=64,
        batch=8,
        train="quick",
        config_key=ckey,
        baseline_key="cfg-none",
        train_hash="q" * 16,
        train_settings={"epochs": 1},
        map50=map50_95 + 0.2,
        map50_95=map50_95,
        ap_small=map50_95 / 2,
        params=2_560_000,
        gflops=0.15,
        arch_key=arch.key,
    )


def write_runs(results: Path, archs: Iterable[phase.Architecture]) -> None:
    for i, arch in enumerate(archs):
        record = _record(arch.attn, arch, 0.30 + i / 100)
        write_record(run_dir(results, record.key), record)


def table(results: Path) -> tuple[layout.Table, dict[str, layout.Cell], str]:
    """The table of ``results``, its latency cells by attention and its Markdown."""
    made = reporting.make_tables(results, figures=False)
    t = layout.build_table(made.summary, made.n_failed, made.options)
    cells = {}
    for row in t.blocks[0].rows:
        cells["none" if row.baseline else row.attn] = row.cells[("", "latency_ms")]
    return t, cells, render.to_markdown(t)


def test_a_table_shows_one_phase_per_baseline(fake: FakeBackend, tmp_path: Path) -> None:
    settings = phase.Settings(**FAST)
    write_runs(tmp_path, [BASE, A, B])
    fake.set(BASE.key, 10)
    fake.set(A.key, 12)
    first = phase.measure([BASE, A], settings, tmp_path)
    assert {m["attn"] for m in first.measured} == {"none", "rala"}
    # later, on a machine twice as slow, B alone is measured (as --where attn=halo selects it): its baseline
    # is timed again, and A with them, rebuilt from the model YAML the store keeps
    fake.set(BASE.key, 20)
    fake.set(A.key, 24)
    fake.set(B.key, 30)
    second = phase.measure([B], settings, tmp_path)
    assert {m["attn"] for m in second.measured} == {"none", "rala", "halo"}
    assert second.retimed == 1 and second.reused == 0
    assert len({m["phase_id"] for m in store.read_measures(tmp_path)}) == 1  # one phase in the store
    _, cells, md = table(tmp_path)
    base = cells["none"].mean
    for attn, ratio in (("rala", 1.2), ("halo", 1.5)):
        cell = cells[attn]
        assert cell.ratio == pytest.approx(ratio) and not cell.apart
        assert cell.mean / base == pytest.approx(cell.ratio, rel=0.01)  # ms ÷ baseline ms = printed ratio
    assert "| 20.0 |" in md.replace("**", "") and "24.0 (1.20×)" in md and "30.0 (1.50×)" in md
    assert cells["none"].bold and not cells["rala"].bold


def test_a_variant_from_another_phase_has_no_ratio_until_timed_again(
    fake: FakeBackend, tmp_path: Path
) -> None:
    settings = phase.Settings(**FAST)
    write_runs(tmp_path, [BASE, A])
    fake.set(BASE.key, 10)
    fake.set(A.key, 8)
    phase.measure([BASE, A], settings, tmp_path)
    # a store written before a baseline took its variants along: the baseline re-timed alone, 20 ms
    path = tmp_path / "measures" / settings.key / f"{BASE.key}.json"
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "latency_ms": 20.0, "phase_id": "another"}))
    t, cells, md = table(tmp_path)
    assert cells["rala"].mean == 8.0 and cells["rala"].ratio is None and cells["rala"].apart
    assert not cells["rala"].bold and cells["none"].bold  # not compared: the baseline is the best shown
    assert t.latency_apart == 1 and "8.00 (× n/a)" in md and "1 variant timed in another phase" in md
    # the phase notices and times the variant again with its baseline
    again = phase.measure([BASE, A], settings, tmp_path)
    assert {m["attn"] for m in again.measured} == {"none", "rala"}
    _, cells, md = table(tmp_path)
    assert cells["rala"].ratio == pytest.approx(0.8) and not cells["rala"].apart and "n/a" not in md


# ---------------------------------------------------------------------------------------- the load


def busy(monkeypatch: pytest.MonkeyPatch, load: float = 7.5, cores: int = 2) -> None:
    monkeypatch.setattr(quiet, "machine_load", lambda: (load, cores))


def test_a_busy_machine_is_refused_and_nothing_written(
    fake: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy(monkeypatch)
    fake.set(BASE.key, 10)
    fake.set(A.key, 12)
    with pytest.raises(quiet.MachineBusyError) as e:
        phase.measure([A], phase.Settings(**FAST, load_wait_s=0), tmp_path)
    text = str(e.value)
    assert "\n" not in text and "load 7.50 on 2 cores (limit 0.50)" in text and "--force-load" in text
    assert not (tmp_path / "measures").exists()


def test_cli_refuses_a_busy_machine_in_one_line(
    fake: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_runs(tmp_path, [BASE, A])
    for arch in (BASE, A):
        (run_dir(tmp_path, f"cfg-{arch.attn}-s0") / "model.yaml").write_text(json.dumps(arch.yaml))
    busy(monkeypatch)
    args = ["--results", str(tmp_path), "--rounds", "2", "--passes", "1", "--warmup", "0", "--min-time", "0"]
    with pytest.raises(SystemExit) as e:
        measure_main([*args, "--load-wait", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: the machine is busy: load 7.50")
    assert err.count("\n") == 1 and not (tmp_path / "measures").exists()
    fake.set(BASE.key, 10)
    fake.set(A.key, 12)
    measure_main([*args, "--force-load"])
    out = capsys.readouterr().out
    assert "timed under load (forced; the table says so): load 7.50 on 2 cores" in out
    assert {m["latency_loaded"] for m in store.read_measures(tmp_path)} == {True}


def test_forced_measurement_records_the_load_and_the_table_says_so(
    fake: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy(monkeypatch)
    monkeypatch.setattr(quiet, "running_jobs", lambda results: ["multirun-x/0, pid 4711"])
    write_runs(tmp_path, [BASE, A])
    fake.set(BASE.key, 10)
    fake.set(A.key, 12)
    result = phase.measure([BASE, A], phase.Settings(**FAST, force_load=True), tmp_path)
    for m in store.read_measures(tmp_path):
        assert (m["latency_loaded"], m["latency_load"], m["latency_cores"], m["latency_jobs"]) == (
            True,
            7.5,
            2,
            1,
        )
        assert m["load_forced"] and m["load_limit"] == 0.5
    assert "1 running job of this results root (multirun-x/0, pid 4711)" in phase.format_phase(result)
    t, _, md = table(tmp_path)
    assert t.latency_load == ["load 7.50 on 2 cores, 1 running job"]
    assert "1 running job; measured with -{}-force-load)" in render.to_latex(t)
    assert "Timed on a busy machine (load 7.50 on 2 cores, 1 running job; measured with --force-load)" in md


def test_a_busy_machine_is_waited_for(
    fake: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    readings = iter([(3.0, 2), (1.5, 2), (0.2, 2)])
    monkeypatch.setattr(quiet, "machine_load", lambda: next(readings))
    clock = [0.0]

    class FakeTime:
        monotonic = staticmethod(lambda: clock[0])

        @staticmethod
        def sleep(s: float) -> None:
            clock[0] += s

    monkeypatch.setattr(quiet, "time", FakeTime)
    fake.set(BASE.key, 10)
    fake.set(A.key, 12)
    with caplog.at_level(logging.INFO, logger="ablate.measure.quiet"):
        result = phase.measure([A], phase.Settings(**FAST, load_wait_s=60), tmp_path)
    assert "the machine is busy (load 3.00 on 2 cores (limit 0.50)): waiting up to 60 s" in caplog.text
    assert result.load is not None and result.load.waited_s == 2 * quiet.POLL_S and not result.load.busy
    assert {(m["latency_loaded"], m["load_waited_s"]) for m in result.measured} == {(False, 20.0)}


def _progress(root: Path, sweep: str, job: str, **fields: Any) -> None:
    path = root / "hydra" / sweep / job / "progress.json"
    path.parent.mkdir(parents=True)
    now = time.time()
    path.write_text(
        json.dumps({"status": "running", "host": socket.gethostname(), "started_at": now, **fields})
    )


def test_running_jobs_are_read_from_progress_files(tmp_path: Path) -> None:
    alive = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        _progress(tmp_path, "multirun-1", "0", pid=alive.pid)  # running here: counted
        _progress(tmp_path, "multirun-1", "1", pid=dead.pid)  # says running, its process is gone
        _progress(tmp_path, "multirun-1", "2", pid=alive.pid, status="done")
        _progress(tmp_path, "multirun-1", "3", pid=alive.pid, host="another-node")  # loads another machine
        _progress(tmp_path, "multirun-1", "4", pid=os.getpid())  # this process: the phase itself
        _progress(tmp_path, "multirun-2", "0", pid=alive.pid, started_at=time.time() - 3600)  # pid recycled
        assert quiet.running_jobs(tmp_path) == [f"multirun-1/0, pid {alive.pid}"]
        load = quiet.Load(0.1, 4, 0.25, quiet.running_jobs(tmp_path))
        assert load.busy and load.fields()["latency_jobs"] == 1  # a quiet CPU is not enough
    finally:
        alive.kill()
        alive.wait()
    assert quiet.running_jobs(tmp_path) == []


def test_the_load_is_other_processes_cpu_now_not_the_load_average(monkeypatch: pytest.MonkeyPatch) -> None:
    """Busy cores = the machine's busy share of its CPU time × its CPUs, less this process's own CPU."""
    samples = iter([(1000, 800), (1400, 1000)])  # 400 jiffies, 200 idle: half of the machine busy
    own = iter([10.0, 10.5])  # this process used half a core of it
    monkeypatch.setattr(quiet, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(quiet, "_own_cpu", lambda: next(own))
    monkeypatch.setattr(quiet.time, "sleep", lambda s: None)
    monkeypatch.setattr(quiet.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(quiet.os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # a lagging figure, not read
    load, _ = quiet.machine_load(window_s=1.0)
    assert load == pytest.approx(0.5 * 4 - 0.5)
