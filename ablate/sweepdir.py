"""The sweep directory's protocol: what a multirun writes where, and how to read it back.

A sweep is a directory ``<results>/hydra/multirun-<time>-<uid>`` (``hydra.sweep.dir``) holding:

* ``sweep.json`` (:data:`SWEEP_JSON`): the job list in job-number order and the plan's counts, written by
  the sweeper before anything runs (:func:`write_sweep_info`, :func:`sweep_info`);
* ``multirun.yaml``: the sweep's composed config (Hydra's own name), with the launcher overrides;
* ``sweep.log`` (:data:`SWEEP_LOG`): what the submitting process printed while the live view held the
  terminal;
* one job directory per job (``hydra.sweep.subdir``, the job number by default; :func:`job_dir`) with
  ``progress.json`` (:data:`PROGRESS_JSON`, from the job's start; :mod:`ablate.progress` writes it) and
  ``outcome.json`` (:data:`OUTCOME_JSON`, a :class:`JobOutcome`, once the job ended: written by the job, by
  the sweeper for a cached job, or by the SLURM launcher for a task the cluster lost).

Writers: the sweeper (:mod:`ablate.sweep`), the jobs (:mod:`ablate.cli`), the launcher
(:mod:`ablate.launcher`). Readers: the end-of-sweep summary, the live view (:mod:`ablate.live`), the
status (:mod:`ablate.status`), the CLI's exit status. This module imports none of them.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from .records import RunRecord, read_json, write_json_atomic

SWEEP_JSON = "sweep.json"
OUTCOME_JSON = "outcome.json"
PROGRESS_JSON = "progress.json"
SWEEP_LOG = "sweep.log"
MULTIRUN_YAML = "multirun.yaml"
HYDRA_DIR = "hydra"  # under the results root: the runs' and sweeps' Hydra directories
SWEEP_GLOB = "multirun-*"  # a sweep directory's name (conf/config.yaml hydra.sweep.dir)

OUTCOMES = ("ok", "cached", "failed")  # a job's outcome status
_MAP = re.compile(r"mAP50-95=([0-9.]+)")


@dataclass
class JobOutcome:
    """What one job did: ``ok``, ``cached`` or ``failed`` (``error`` says why); ``summary`` is its
    :func:`summary_line`."""

    status: str
    overrides: list[str]
    key: str | None = None
    error: str | None = None
    seconds: float | None = None
    summary: str | None = None


@dataclass
class SweepResult:
    """The outcomes of one multirun, read back from its job directories."""

    sweep_dir: Path
    outcomes: list[JobOutcome] = field(default_factory=list)
    expected: int = 0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def missing(self) -> int:
        """Jobs that left no outcome (killed, or their launcher lost them)."""
        return max(0, self.expected - len(self.outcomes))

    @property
    def failed(self) -> bool:
        return self.count("failed") > 0 or self.missing > 0


def sweep_dirs(results: Path) -> list[Path]:
    """The sweeps of a results root that wrote their ``sweep.json``, oldest first (their names start
    with the start time)."""
    found = (Path(results) / HYDRA_DIR).glob(SWEEP_GLOB)
    return sorted(p for p in found if (p / SWEEP_JSON).is_file())


def write_sweep_info(
    sweep_dir: Path, jobs: list[list[str]], baselines_added: int, bases_added: int, cached: int
) -> Path:
    """``sweep.json``: the job list (job-number order) and how many jobs the plan added or found cached."""
    return write_json_atomic(
        Path(sweep_dir) / SWEEP_JSON,
        {
            "total": len(jobs),
            "baselines_added": baselines_added,
            "bases_added": bases_added,
            "cached": cached,
            "jobs": jobs,
        },
    )


def sweep_info(sweep_dir: Path) -> dict[str, Any]:
    """``sweep.json`` of a sweep directory (total jobs, the job list), or {} when absent."""
    data = read_json(Path(sweep_dir) / SWEEP_JSON)
    return data if isinstance(data, dict) else {}


def job_dir(sweep_config: DictConfig, number: int) -> Path:
    """The directory of job ``number`` of a sweep (``hydra.sweep.dir/hydra.sweep.subdir``), as Hydra's
    launchers name it, from that job's composed config."""
    cfg = copy.deepcopy(sweep_config)
    with open_dict(cfg):
        cfg.hydra.job.num = number
        cfg.hydra.job.id = str(number)
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def job_number(name: str) -> int | None:
    """The job number a job directory's name gives (None for another name)."""
    return int(name) if name.isdigit() else None


def write_outcome(job_dir: Path, outcome: JobOutcome) -> Path:
    return write_json_atomic(Path(job_dir) / OUTCOME_JSON, asdict(outcome))


def read_outcome(job_dir: Path) -> JobOutcome | None:
    """A job directory's ``outcome.json`` (None when absent or unreadable)."""
    data = read_json(Path(job_dir) / OUTCOME_JSON)
    if not isinstance(data, dict):
        return None
    return JobOutcome(**{k: data.get(k) for k in JobOutcome.__dataclass_fields__})


def read_outcomes(sweep_dir: Path) -> SweepResult:
    """Every job's outcome under ``sweep_dir`` (job subdirectories), in job order."""
    result = SweepResult(Path(sweep_dir), expected=int(sweep_info(sweep_dir).get("total", 0)))

    def order(path: Path) -> tuple[int, str]:
        number = job_number(path.parent.name)
        return (number if number is not None else 10**9, path.parent.name)

    for path in sorted(Path(sweep_dir).glob(f"*/{OUTCOME_JSON}"), key=order):
        outcome = read_outcome(path.parent)
        if outcome is not None:
            result.outcomes.append(outcome)
    return result


def format_result(result: SweepResult) -> str:
    """The end-of-sweep report: counts, then every failed job with its overrides and error."""
    lines = [
        f"sweep {result.sweep_dir.name}: {len(result.outcomes)} job(s): {result.count('ok')} ok, "
        f"{result.count('cached')} cached, {result.count('failed')} failed"
        + (f", {result.missing} left no outcome (killed?)" if result.missing else "")
    ]
    for o in result.outcomes:
        if o.status == "failed":
            lines.append(f"  failed: {' '.join(o.overrides)}: {o.error}")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_line(record: RunRecord, directory: Path) -> str:
    """One line per finished run (a job's ``summary``, and what a single run prints): what ran, its
    metrics and measures, where its files are."""
    return (
        f"{record.status}: {record.model} attn={record.attn} pos={record.pos} dataset={record.dataset} "
        f"seed={record.seed} mAP50={_fmt(record.map50, '.3f')} mAP50-95={_fmt(record.map50_95, '.3f')} "
        f"params={_fmt(record.params, ',')} GFLOPs={_fmt(record.gflops, '.2f')} -> {directory}"
    )


def summary_map(summary: str | None) -> str | None:
    """The ``mAP50-95`` a :func:`summary_line` gives (``"0.412"``), None when it has none."""
    found = _MAP.search(summary or "")
    return found.group(1) if found else None
