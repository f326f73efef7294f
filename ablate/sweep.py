"""Sweeps: the sweeper that launches a plan, and the end-of-multirun summary.

``python -m ablate +attn=rala +pos=neck -m`` expands ``hydra.sweeper.params`` (datasets × seeds by default)
and command-line sweeps into jobs. :class:`AblateSweeper` launches the plan of :func:`ablate.plan.plan_sweep`:
once per (model, dataset, seed, training settings) the matching baseline job when the results root has no
``ok`` record for it, warm-start base runs first, cached jobs never. Every job writes ``outcome.json`` into
its job directory (the sweep directory's protocol: :mod:`ablate.sweepdir`); at the end
:class:`SweepSummary` reads them all (whatever launcher ran the jobs), runs the measurement phase,
refreshes ``runs.csv`` and prints a summary. The CLI reads the same outcomes for its exit status.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins

Plugins.instance()  # scan plugins first: the scan re-executes plugin modules, basic_sweeper included
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: E402
from hydra.core.utils import JobReturn  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .launcher import executor_for  # noqa: E402
from .live import watch_sweep  # noqa: E402
from .plan import Plan, format_plan, plan_sweep  # noqa: E402
from .records import run_dir  # noqa: E402
from .sweepdir import (  # noqa: E402
    MULTIRUN_YAML,
    JobOutcome,
    SweepResult,
    format_result,
    job_dir,
    read_outcomes,
    summary_line,
    write_outcome,
    write_sweep_info,
)

log = logging.getLogger(__name__)


class AblateSweeper(BasicSweeper):
    """Hydra's basic sweeper (cartesian product of ``params`` and command-line sweeps) plus auto-baselines.

    Args:
        max_batch_size: jobs handed to the launcher at once (None = all).
        params: the default sweep grid, e.g. ``{dataset: "shapes,shapes_small", seed: "0,1,2"}``.
    """

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        plan = plan_sweep(self.config, list(arguments), self._load, self.hydra_context.config_loader)
        if bool(self.config.get("dry_run", False)):
            # the CLI prints the plan of a dry run without starting Hydra; a dry run that reaches the
            # sweeper (a command line with Hydra flags) logs it, and nothing is launched either
            log.info("%s", format_plan(plan))
            self.overrides = []
            return []
        # cached jobs are resolved here, before anything is submitted: they come first in the job
        # numbering and get their outcome now; the launcher sees only the jobs to run (base runs first)
        self.overrides = plan.batches(self.max_batch_size)

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN_YAML)
        write_sweep_info(
            sweep_dir,
            [j.overrides for j in plan.jobs],
            baselines_added=plan.added("baseline"),
            bases_added=plan.added("base"),
            cached=len(plan.cached),
        )
        self.write_cached(plan)
        returns: list[list[JobReturn]] = []
        first = len(plan.cached)
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

    def write_cached(self, plan: Plan) -> None:
        """The ``cached`` outcome of every cached job of ``plan``, in its job directory (jobs 0..n-1)."""
        for number, job in enumerate(plan.jobs):
            if not job.cached or job.record is None:
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


class SweepSummary(Callback):
    """Hydra callback: at the end of a multirun, report the outcomes and refresh the results root's outputs.

    Args:
        table: also rewrite ``runs.csv``, ``summary.csv``, the LaTeX/Markdown tables and the figures
            (as ``make table`` does) and print the summary table.
    """

    def __init__(self, table: bool = True) -> None:
        self.table = table

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("dry_run", False):  # nothing ran
            return
        result = read_outcomes(Path(config.hydra.sweep.dir))
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
    params = OmegaConf.to_container(launcher, resolve=True)
    assert isinstance(params, dict)
    cluster = "slurm" if "slurm" in str(params.get("_target_", "")).lower() else "local"
    executor = executor_for(params, cluster, folder=str(sweep_dir / ".submitit" / "measure"))
    executor.update_parameters(name="ablate-measure")
    job = executor.submit(func, *args)
    log.info("measurement phase: submitit %s job %s", cluster, job.job_id)
    return job.result()
