"""Sweeps: the job list with auto-baselines, per-job outcomes, and the end-of-multirun summary.

``python -m ablate +attn=rala +pos=neck -m`` expands ``hydra.sweeper.params`` (datasets × seeds by default)
and command-line sweeps into jobs. :class:`AblateSweeper` adds, once per (model, dataset, seed, training
settings), the matching baseline job when the results root has no ``ok`` record for it, and runs the
baselines first. Every job writes ``outcome.json`` into its Hydra job directory; at the end
:class:`SweepSummary` reads them all (whatever launcher ran the jobs), refreshes ``runs.csv``, prints a
summary, and marks the sweep failed when any job failed so that the CLI exits non-zero.
"""

from __future__ import annotations

import contextlib
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
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from .errors import AblateError  # noqa: E402
from .records import read_json, read_record, run_dir, write_json_atomic  # noqa: E402

log = logging.getLogger(__name__)

SWEEP_JSON = "sweep.json"
OUTCOME_JSON = "outcome.json"
# overrides that choose the attention and its placement; a job without them is its own baseline
_PLACEMENT_KEY = re.compile(r"^[+~]*(attn|pos)(\.|$)")
# overrides that never apply to an auto-added baseline
_NOT_FOR_BASELINE = re.compile(r"^[+~]*(force|baseline)$")
_BASE_JOB_KEYS = re.compile(r"^[+~]*(action|train\.base\.seed|train\.base\.candidates)$")  # set per base job


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
        baselines = self.missing_baselines(jobs)
        if baselines:
            log.info("auto-baseline: adding %d baseline job(s) not yet in the results root", len(baselines))
        jobs = baselines + jobs
        bases = self.missing_bases(jobs)
        if bases:
            log.info(
                "warm start: training %d base run(s) first, then the %d job(s) that fine-tune them",
                len(bases),
                len(jobs),
            )
        size = self.max_batch_size or len(jobs)
        # the base runs are a batch of their own: every launcher finishes it before the jobs start
        self.overrides = ([bases] if bases else []) + [jobs[i : i + size] for i in range(0, len(jobs), size)]
        jobs = bases + jobs

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        write_json_atomic(
            sweep_dir / SWEEP_JSON,
            {
                "total": len(jobs),
                "baselines_added": len(baselines),
                "bases_added": len(bases),
                "jobs": jobs,
            },
        )
        returns: list[list[JobReturn]] = []
        first = 0
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

    def missing_bases(self, jobs: list[list[str]]) -> list[list[str]]:
        """``action=base`` jobs for the warm-start base candidates the jobs need and the results root lacks
        (one job per candidate, so that a launcher trains them side by side)."""
        from .experiment import experiment_from_config

        added: dict[str, list[str]] = {}
        for job in jobs:
            try:
                exp = experiment_from_config(self._load(job))
            except AblateError:
                continue  # the job itself reports its bad configuration
            if not exp.warm:
                continue
            keep = [o for o in baseline_overrides(job) if not _BASE_JOB_KEYS.match(o.split("=", 1)[0])]
            for candidate in exp.base_candidates():
                if candidate.key in added:
                    continue
                previous = read_record(run_dir(candidate.results_dir, candidate.key))
                if previous is not None and previous.status == "ok":
                    continue
                one = [f"train.base.seed={candidate.seed}", "train.base.candidates=1"]
                added[candidate.key] = [*keep, "action=base", *one]
        return list(added.values())

    def missing_baselines(self, jobs: list[list[str]]) -> list[list[str]]:
        """Baseline jobs the sweep needs and neither it nor the results root already has (deduplicated)."""
        from .experiment import experiment_from_config

        if not jobs or not bool(self._load(jobs[0]).get("baseline", True)):
            return []
        in_sweep: set[str] = set()
        for job in jobs:
            if is_baseline(job):
                with contextlib.suppress(AblateError):  # the job itself reports its bad configuration
                    in_sweep.add(experiment_from_config(self._load(job)).key)
        added: dict[str, list[str]] = {}
        for job in jobs:
            if is_baseline(job):
                continue
            overrides = baseline_overrides(job)
            try:
                exp = experiment_from_config(self._load(overrides)).baseline()
            except AblateError:
                continue  # the job itself reports its bad configuration
            key = exp.key
            if key in in_sweep or key in added:
                continue
            previous = read_record(run_dir(exp.results_dir, key))
            if previous is not None and previous.status == "ok":
                continue
            added[key] = overrides
        return list(added.values())


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
        result = read_outcomes(Path(config.hydra.sweep.dir))
        LAST_SWEEP = result
        results_dir = Path(str(config.results.dir))
        print(format_result(result), flush=True)
        try:
            for phase in measure_after_sweep(config):
                print(phase, flush=True)
        except Exception as e:  # the runs stand without latency; make measure can add it later
            log.warning("the measurement phase failed (%s: %s); run make measure later", type(e).__name__, e)
        if not self.table:
            return
        report = None
        try:
            from . import table

            report = table.make_tables(results_dir)
            print(table.format_summary(report.summary), flush=True)
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


def measure_after_sweep(config: DictConfig) -> list[str]:
    """The measurement phase after the sweep's last training job: on this machine, or, under a submitit
    launcher, as one final job of that launcher (same cluster and resources). Returns the printed tables."""
    from .measure.phase import format_phase, run_phase, settings_from_config

    latency = OmegaConf.to_container(config.measure.latency, resolve=True)
    assert isinstance(latency, dict)
    if not latency.get("after_sweep", True):
        return []
    settings = settings_from_config(latency, config.train.get("device"))
    results_dir = Path(str(config.results.dir)).resolve()
    launcher = config.hydra.launcher
    if "submitit" in str(launcher.get("_target_", "")).lower():
        results = submitit_job(launcher, Path(str(config.hydra.sweep.dir)), run_phase, results_dir, settings)
    else:
        results = run_phase(results_dir, settings)
    return [format_phase(r) for r in results]


def submitit_job(launcher: DictConfig, sweep_dir: Path, func: Any, *args: Any) -> Any:
    """Run ``func(*args)`` as one job of the sweep's submitit launcher (its executor and resources, as
    hydra-submitit-launcher maps them) and return its result."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = OmegaConf.to_container(launcher, resolve=True)
    assert isinstance(params, dict)
    cluster = "slurm" if "slurm" in str(params.pop("_target_", "")).lower() else "local"
    params.pop("submitit_folder", None)
    init = (
        {f"{cluster}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
    )
    executor = submitit.AutoExecutor(folder=str(sweep_dir / ".submitit" / "measure"), cluster=cluster, **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{cluster}_{k}": v for k, v in params.items()})
    executor.update_parameters(name="ablate-measure")
    job = executor.submit(func, *args)
    log.info("measurement phase: submitit %s job %s", cluster, job.job_id)
    return job.result()
