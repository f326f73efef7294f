"""The sweep directory's protocol (ablate/sweepdir.py): what the sweeper, the jobs and the launcher write,
read back by the summary, the live view, the status and the CLI's exit status."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from ablate import live, status, sweepdir
from ablate.records import RunRecord, write_json_atomic
from ablate.sweepdir import JobOutcome


def test_outcomes_round_trip_in_job_order_and_count_the_missing(tmp_path: Path) -> None:
    jobs = [["seed=0"], ["seed=1", "+attn=rala"], ["seed=1", "+attn=halo"]] + [
        [f"seed={i}"] for i in range(2, 11)
    ]
    sweepdir.write_sweep_info(tmp_path, jobs, baselines_added=1, bases_added=0, cached=1)
    assert sweepdir.sweep_info(tmp_path)["total"] == 12 and sweepdir.sweep_info(tmp_path)["jobs"] == jobs
    for number in (10, 2, 0):  # written out of order; job 10 sorts after job 2, not before it
        status = "failed" if number == 2 else "ok"
        sweepdir.write_outcome(
            tmp_path / str(number), JobOutcome(status, jobs[number], error="x" * (number == 2))
        )
    (tmp_path / "odd").mkdir()
    write_json_atomic(tmp_path / "odd" / sweepdir.OUTCOME_JSON, ["not", "an", "outcome"])
    result = sweepdir.read_outcomes(tmp_path)
    assert [o.overrides for o in result.outcomes] == [jobs[0], jobs[2], jobs[10]]
    assert result.expected == 12 and result.missing == 9 and result.failed
    assert sweepdir.format_result(result).startswith(
        f"sweep {tmp_path.name}: 3 job(s): 2 ok, 0 cached, 1 failed, 9 left no outcome (killed?)\n"
    )
    assert sweepdir.read_outcome(tmp_path / "1") is None
    assert sweepdir.sweep_info(tmp_path / "nowhere") == {}
    assert not sweepdir.read_outcomes(tmp_path / "nowhere").failed  # no sweep: nothing failed


def test_the_summary_line_is_what_the_live_view_reads_its_metric_from(tmp_path: Path) -> None:
    record = RunRecord(
        key="k", status="ok", model="yolo12n", attn="rala", pos="neck", map50=0.9, map50_95=0.4125
    )
    line = sweepdir.summary_line(record, tmp_path / "runs" / "k")
    assert "mAP50=0.900 mAP50-95=0.412 params=- GFLOPs=-" in line and line.endswith(f"-> {tmp_path}/runs/k")
    assert sweepdir.summary_map(line) == "0.412"
    assert sweepdir.summary_map(sweepdir.summary_line(RunRecord(key="k"), tmp_path)) is None
    assert live.JobState(0, "job", status="ok", summary=line).metric() == " mAP50-95=0.412"


def test_job_dirs_follow_the_sweeps_subdir_and_the_status_finds_the_sweeps(tmp_path: Path) -> None:
    cfg = OmegaConf.create(
        {"hydra": {"sweep": {"dir": str(tmp_path), "subdir": "job${hydra.job.num}"}, "job": {}}}
    )
    assert sweepdir.job_dir(cfg, 7) == tmp_path / "job7"
    results = tmp_path / "results"
    for name in ("multirun-2026-01-02_00-00-00-b", "multirun-2026-01-01_00-00-00-a"):
        sweepdir.write_sweep_info(results / "hydra" / name, [], 0, 0, 0)
    (results / "hydra" / "multirun-2026-01-03_00-00-00-c").mkdir()  # no sweep.json: not a sweep yet
    (results / "hydra" / "2026-01-01_00-00-00-d").mkdir()  # a single run's directory
    names = [p.name for p in sweepdir.sweep_dirs(results)]
    assert names == ["multirun-2026-01-01_00-00-00-a", "multirun-2026-01-02_00-00-00-b"]
    assert status.sweep_dirs is sweepdir.sweep_dirs
