"""Sweeps: the job list with auto-baselines, per-job outcomes, and the end-of-multirun summary.

``python -m ablate +attn=rala +pos=neck -m`` expands ``hydra.sweeper.params`` (datasets × seeds by default)
and command-line sweeps into jobs. :class:`AblateSweeper` adds, once per (model, dataset, seed, training
settings), the matching baseline job when the results root has no ``ok`` record for it, and runs the
baselines first. Every job writes ``outcome.json`` into its Hydra job directory; at the end
:class:`SweepSummary` reads them all (whatever launcher ran the jobs), refreshes ``runs.csv``, prints a
summary, and marks the sweep failed when any job failed so that the CLI exits non-zero.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins

Plugins.instance()  # scan plugins first: the scan re-executes plugin modules, basic_sweeper included
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from hydra.core.utils import JobReturn  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from .records import read_json, run_dir, write_json_atomic  # noqa: E402
from .scan import expand_scans  # noqa: E402

log = logging.getLogger(__name__)

SWEEP_JSON = "sweep.json"
OUTCOME_JSON = "outcome.json"
# overrides that choose the attention and its placement; a job without them is its own baseline
_PLACEMENT_KEY = re.compile(r"^[+~]*(attn|pos)(\.|$)")
# overrides that never apply to an auto-added baseline
_NOT_FOR_BASELINE = re.compile(r"^[+~]*(force|baseline)$")


@dataclass
class JobOutcome:
    """What one job did: ``ok``, ``cached`` or ``failed`` (``error`` says why)."""

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


# the last sweep run in this process (read by the CLI for its exit status)
LAST_SWEEP: SweepResult | None = None


def baseline_overrides(overrides: list[str]) -> list[str]:
    """The job's overrides without the attention, its placement and ``force`` / ``baseline``."""
    out = []
    for o in overrides:
        key = o.split("=", 1)[0]
        if not _PLACEMENT_KEY.match(key) and not _NOT_FOR_BASELINE.match(key):
            out.append(o)
    return out


def is_baseline(overrides: list[str]) -> bool:
    """A job with no attention: its own baseline."""
    return not any(_PLACEMENT_KEY.match(o.split("=", 1)[0]) for o in overrides)


class AblateSweeper(BasicSweeper):
    """Hydra's basic sweeper (cartesian product of ``params`` and command-line sweeps) plus auto-baselines.

    Args:
        max_batch_size: jobs handed to the launcher at once (None = all).
        params: the default sweep grid, e.g. ``{dataset: "shapes,shapes_small", seed: "0,1,2"}``.
    """

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [job for batch in self.split_arguments(parsed, None) for job in batch]
        jobs = expand_scans(jobs, self._load)  # +pos=scan: one job per layer index
        from . import plan as planning

        plan = planning.make_plan(
            jobs, self._load, planning.launcher_parallelism(self.config.hydra.get("launcher"))
        )
        if bool(self.config.get("dry_run", False)):  # the CLI prints the plan; nothing is launched
            planning.LAST_PLAN = plan
            self.overrides = []
            return []
        # cached jobs are resolved here, before anything is submitted: they come first in the job
        # numbering and get their outcome now; the launcher sees only the jobs to run (base runs first)
        self.overrides = plan.batches(self.max_batch_size)
        jobs = [j.overrides for j in plan.jobs]

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        write_json_atomic(
            sweep_dir / SWEEP_JSON,
            {
                "total": len(jobs),
                "baselines_added": plan.added("baseline"),
                "bases_added": plan.added("base"),
                "cached": len(plan.cached),
                "jobs": jobs,
            },
        )
        self.write_cached(plan)
        returns: list[list[JobReturn]] = []
        first = len(plan.cached)
        from .live import watch_sweep

        with watch_sweep(sweep_dir, self.config):  # the live view (plain lines when stdout is no terminal)
            while not self.is_done():
                batch = self.get_job_batch()
                self.validate_batch_is_legal(batch)
                results = self.launcher.launch(batch, initial_job_idx=first)
                first += len(batch)
                returns.append(list(results))
        return returns

    def _load(self, overrides: list[str]) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def write_cached(self, plan: Any) -> None:
        """The ``cached`` outcome of every cached job of ``plan``, in its job directory (jobs 0..n-1)."""
        from .cli import summary_line

        for number, job in enumerate(plan.jobs):
            if not job.cached:
                continue
            record = job.record
            summary = summary_line(record, run_dir(Path(str(self.config.results.dir)), record.key))
            outcome = JobOutcome("cached", list(job.overrides), key=job.key, seconds=0.0, summary=summary)
            write_outcome(job_dir(self._load(job.overrides), number), outcome)


# Hydra instantiates sweepers only from the ``hydra_plugins`` namespace (found by scanning installed
# packages). Registering this module under such a name lets the sweeper ship inside ablate.
PLUGIN_MODULE = "hydra_plugins.ablate_sweeper"
AblateSweeper.__module__ = PLUGIN_MODULE
sys.modules.setdefault(PLUGIN_MODULE, sys.modules[__name__])
Plugins.instance().register(AblateSweeper)


def sweep_info(sweep_dir: Path) -> dict[str, Any]:
    """``sweep.json`` of a sweep directory (total jobs, the job list), or {} when absent."""
    data = read_json(Path(sweep_dir) / SWEEP_JSON)
    return data if isinstance(data, dict) else {}


def write_outcome(job_dir: Path, outcome: JobOutcome) -> None:
    write_json_atomic(Path(job_dir) / OUTCOME_JSON, asdict(outcome))


def job_dir(sweep_config: DictConfig, number: int) -> Path:
    """The directory of job ``number`` of a sweep (``hydra.sweep.dir/hydra.sweep.subdir``), as Hydra's
    launchers name it, from that job's composed config."""
    cfg = copy.deepcopy(sweep_config)
    with open_dict(cfg):
        cfg.hydra.job.num = number
        cfg.hydra.job.id = str(number)
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def read_outcomes(sweep_dir: Path) -> SweepResult:
    """Every job's outcome under ``sweep_dir`` (job subdirectories), in job order."""
    result = SweepResult(Path(sweep_dir), expected=int(sweep_info(sweep_dir).get("total", 0)))
    paths = sorted(Path(sweep_dir).glob(f"*/{OUTCOME_JSON}"), key=lambda p: _job_number(p.parent.name))
    for path in paths:
        data = read_json(path)
        if isinstance(data, dict):
            result.outcomes.append(JobOutcome(**{k: data.get(k) for k in JobOutcome.__dataclass_fields__}))
    return result


def _job_number(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (10**9, name)


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


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, report the outcomes and refresh the results root's outputs.

    Args:
        table: also rewrite ``runs.csv``, ``summary.csv``, the LaTeX/Markdown tables and the figures
            (as ``make table`` does) and print the summary table.
    """

    def __init__(self, table: bool = True) -> None:
        self.table = table

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global LAST_SWEEP
        if config.get("dry_run", False):  # nothing ran: the CLI prints the plan
            return
        result = read_outcomes(Path(config.hydra.sweep.dir))
        LAST_SWEEP = result
        results_dir = Path(str(config.results.dir))
        print(format_result(result), flush=True)
        try:
            for phase in measure_after_sweep(config, ran=len(result.outcomes) > result.count("cached")):
                print(phase, flush=True)
        except Exception as e:  # the runs stand without latency; make measure can add it later
            log.warning("the measurement phase failed (%s: %s); run make measure later", type(e).__name__, e)
        if not self.table:
            return
        report = None
        try:
            from .report import make_tables
            from .report.render import format_summary

            report = make_tables(results_dir)
            print(format_summary(report.summary, report.options), flush=True)
            print(f"runs: {report.runs_csv}  table: {report.tex}", flush=True)
        except Exception as e:  # a summary problem must not hide the sweep's own outcome
            log.warning("could not refresh the tables under %s: %s", results_dir, e)
        if report is not None:
            self.log_to_tracker(config, results_dir, result, report)

    @staticmethod
    def log_to_tracker(config: DictConfig, results_dir: Path, result: SweepResult, report: Any) -> None:
        logger = OmegaConf.to_container(config.get("logger"), resolve=True) if config.get("logger") else {}
        if not logger or logger.get("name") == "none":
            return
        try:
            from . import tracking

            figures = [p for p in report.figures if p.suffix == ".png"]
            tracking.log_sweep_summary(results_dir, logger, result.sweep_dir.name, report.summary, figures)
        except Exception as e:
            log.warning("sweep summary not logged to %s: %s", logger.get("name"), e)


def measure_after_sweep(config: DictConfig, ran: bool = True) -> list[str]:
    """The measurement phase after the sweep's last training job: on this machine, or, under a submitit
    launcher, as one final job of that launcher (same cluster and resources). Returns the printed tables.
    A sweep whose every job was cached (``ran`` false) submits nothing to a cluster's queue."""
    from .measure.phase import format_phase, run_phase, settings_from_config

    latency = OmegaConf.to_container(config.measure.latency, resolve=True)
    assert isinstance(latency, dict)
    if not latency.get("after_sweep", True):
        return []
    settings = settings_from_config(latency, config.train.get("device"))
    results_dir = Path(str(config.results.dir)).resolve()
    launcher = config.hydra.launcher
    if "submitit" in str(launcher.get("_target_", "")).lower():
        if not ran:
            log.info(
                "every job was cached: no measurement job submitted (make measure measures what is missing)"
            )
            return []
        results = submitit_job(launcher, Path(str(config.hydra.sweep.dir)), run_phase, results_dir, settings)
    else:
        results = run_phase(results_dir, settings)
    return [format_phase(r) for r in results]


def submitit_job(launcher: DictConfig, sweep_dir: Path, func: Any, *args: Any) -> Any:
    """Run ``func(*args)`` as one job of the sweep's submitit launcher (its executor and resources, as
    hydra-submitit-launcher maps them) and return its result."""
    from .launcher import executor_for

    params = OmegaConf.to_container(launcher, resolve=True)
    assert isinstance(params, dict)
    cluster = "slurm" if "slurm" in str(params.get("_target_", "")).lower() else "local"
    executor = executor_for(params, cluster, folder=str(sweep_dir / ".submitit" / "measure"))
    executor.update_parameters(name="ablate-measure")
    job = executor.submit(func, *args)
    log.info("measurement phase: submitit %s job %s", cluster, job.job_id)
    return job.result()
