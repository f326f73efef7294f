"""The plan of a sweep: which jobs run, which are cached, which baselines and base runs it adds, and how
long it should take.

:func:`make_plan` is the one place that decides this, and :func:`plan_sweep` the one place that turns a
multirun's config and command line into its jobs (``hydra.sweeper.params`` × the command line's sweeps,
as Hydra's basic sweeper expands them, then position scans). :class:`ablate.sweep.AblateSweeper` launches
the plan's jobs that are not cached (their ``cached`` outcomes are written before anything is submitted);
``dry_run=true`` makes the CLI print the plan (:func:`format_plan` of :func:`plan_command`) instead:
nothing is trained, nothing is launched, no sweep directory is made.

A job is cached when its run key (:attr:`ablate.experiment.Experiment.key`, as the job computes it) has an
``ok`` record in the results root that the job would reuse: the test the job itself makes
(:func:`ablate.records.reusable_record`; ``force=true`` runs every job). Wall times are estimated from ok
records of similar finished runs: the same configuration with other seeds, else the same action, model,
dataset and training settings.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf, open_dict

from . import overrides
from .data_identity import current
from .errors import AblateError
from .paths import CONF_DIR
from .records import RunRecord, read_records, reusable_record
from .warm import needed_candidates

if TYPE_CHECKING:
    from .experiment import Experiment

log = logging.getLogger(__name__)

# keys a base job sets itself (the job's own overrides of them are dropped)
BASE_JOB_KEYS = ("action", "train.base.seed", "train.base.candidates")
# keys the dry run's listing leaves out (the same for every job, or where files go)
_HIDDEN = ("dry_run", "results.dir", "data.dir")

Loader = Callable[[list[str]], DictConfig]  # a job's overrides -> its composed config


@dataclass
class PlannedJob:
    """One job of the plan. ``role``: ``base`` (a warm-start base run), ``baseline`` (added by the sweep)
    or ``job`` (asked for)."""

    overrides: list[str]
    role: str = "job"
    key: str | None = None
    cached: bool = False
    record: RunRecord | None = None  # the ok record a cached job reuses
    estimate_s: float | None = None  # the median wall time of similar finished runs
    similar: int = 0  # how many finished runs the estimate comes from
    error: str | None = None  # the configuration does not compose (the job reports it when it runs)


@dataclass
class Plan:
    """The jobs of a sweep in job-number order: cached jobs first, then base runs, baselines, jobs."""

    jobs: list[PlannedJob] = field(default_factory=list)
    parallel: int = 1  # jobs the launcher runs at once

    @property
    def cached(self) -> list[PlannedJob]:
        return [j for j in self.jobs if j.cached]

    @property
    def to_run(self) -> list[PlannedJob]:
        return [j for j in self.jobs if not j.cached]

    def added(self, role: str) -> int:
        return sum(j.role == role for j in self.jobs)

    def batches(self, max_batch_size: int | None) -> list[list[list[str]]]:
        """The launcher's batches: the base runs alone first (every launcher finishes a batch before the
        next starts), then the other jobs to run, ``max_batch_size`` at a time."""
        bases = [j.overrides for j in self.to_run if j.role == "base"]
        rest = [j.overrides for j in self.to_run if j.role != "base"]
        size = max_batch_size or len(rest) or 1
        return ([bases] if bases else []) + [rest[i : i + size] for i in range(0, len(rest), size)]

    def wall_seconds(self) -> float | None:
        """Estimated wall time of the jobs to run (those with an estimate): each batch in turn, its jobs
        ``parallel`` at a time, every job on the first free slot. None when no job has an estimate."""
        if not any(j.estimate_s is not None for j in self.to_run):
            return None
        total = 0.0
        for role_batch in (
            [j for j in self.to_run if j.role == "base"],
            [j for j in self.to_run if j.role != "base"],
        ):
            slots = [0.0] * max(1, self.parallel)
            for job in role_batch:
                if job.estimate_s is not None:
                    slots[slots.index(min(slots))] += job.estimate_s
            total += max(slots)
        return total


def launcher_parallelism(launcher: Any) -> int:
    """Jobs a launcher config runs at once: joblib's ``n_jobs``, submitit's ``array_parallelism``, else 1."""
    if launcher is None:
        return 1
    n_jobs = launcher.get("n_jobs") if "n_jobs" in launcher else None
    if n_jobs is not None:
        n = int(n_jobs)
        return max(1, os.cpu_count() or 1) if n < 0 else max(1, n)
    if "array_parallelism" in launcher:
        return max(1, int(launcher.get("array_parallelism") or 1))
    return 1


def make_plan(
    jobs: list[list[str]],
    load: Loader,
    parallel: int = 1,
    results_dir: Path | None = None,
    add_baselines: bool = True,
) -> Plan:
    """The plan for the sweep's ``jobs`` (their override lists): auto-baselines the results root lacks
    (unless not ``add_baselines``: a single run), base runs the warm starts need, and which jobs are
    cached. ``load`` composes a job's config; ``results_dir`` overrides the jobs' results root for the
    estimates."""
    experiments = _Experiments(load)
    baselines = missing_baselines(jobs, load, experiments) if add_baselines else []
    if baselines:
        log.info("auto-baseline: adding %d baseline job(s) not yet in the results root", len(baselines))
    planned = [PlannedJob(o, "baseline") for o in baselines] + [PlannedJob(o, "job") for o in jobs]
    for job in planned:
        exp, job.error = experiments.get(job.overrides)
        if exp is None:
            continue
        job.key = exp.key
        if exp.action in ("train", "profile"):
            job.record = reusable_record(exp.results_dir, exp.key, exp.force, exp.sweep, current=current(exp))
            job.cached = job.record is not None
    bases = missing_bases([j.overrides for j in planned if not j.cached], load, experiments)
    if bases:
        log.info("warm start: training %d base run(s) first, then the job(s) that fine-tune them", len(bases))
    planned = [PlannedJob(o, "base") for o in bases] + planned
    for job in planned:
        if job.role == "base":
            exp, job.error = experiments.get(job.overrides)
            job.key = exp.base_candidates()[0].key if exp is not None else None
    plan = Plan([*[j for j in planned if j.cached], *[j for j in planned if not j.cached]], parallel)
    if plan.cached:
        log.info("cached: %d job(s) already have an ok record; they are not launched", len(plan.cached))
    estimate(plan, experiments, results_dir)
    return plan


def plan_sweep(config: DictConfig, arguments: list[str], load: Loader, config_loader: Any = None) -> Plan:
    """The plan of a multirun: its jobs are ``hydra.sweeper.params`` of its primary ``config`` × the command
    line's task overrides ``arguments`` (Hydra's basic sweeper's expansion, a command-line key replacing the
    params' one), then every ``+pos=scan`` job expanded to its layer indices. ``config_loader`` lets
    ``glob()`` list a group's options."""
    from .placement import expand_scans  # imports torch: only a multirun's plan needs it

    params = config.hydra.sweeper.get("params") or {}
    swept = [f"{k}={v}" for k, v in params.items()]
    jobs = expand_scans(overrides.expand([*swept, *arguments], config_loader), load)
    return make_plan(jobs, load, launcher_parallelism(config.hydra.get("launcher")))


@contextlib.contextmanager
def composed_command(command_line: list[str]) -> Iterator[tuple[DictConfig, Any]]:
    """The primary config of ``python -m ablate COMMAND_LINE`` (overrides only, no flags), composed as
    Hydra composes a multirun's (the ``hydra`` node included, sweeps kept as its task overrides), and the
    config loader that composes its jobs (``load_sweep_config``). Valid inside the ``with`` block."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        config = loader.load_configuration(
            "config", list(command_line), run_mode=RunMode.MULTIRUN, validate_sweep_overrides=False
        )
        yield config, loader


def plan_composed(config: DictConfig, config_loader: Any, multirun: bool) -> Plan:
    """The plan of a composed command line (:func:`composed_command`): the multirun's jobs, or the single
    run alone (no baselines added)."""
    task = [str(o) for o in config.hydra.overrides.task]

    def load(job: list[str]) -> DictConfig:
        return config_loader.load_sweep_config(config, list(job))

    if multirun:
        return plan_sweep(config, task, load, config_loader)
    return make_plan([task], load, add_baselines=False)


def plan_command(command_line: list[str], multirun: bool = True) -> Plan:
    """What ``python -m ablate COMMAND_LINE [-m] dry_run=true`` prints the plan of: composed here as Hydra
    composes it, nothing is launched and nothing is written."""
    with composed_command(command_line) as (config, loader):
        return plan_composed(config, loader, multirun)


class _Experiments:
    """Each job's Experiment, composed once (None and the error when its configuration is bad)."""

    def __init__(self, load: Loader) -> None:
        self.load = load
        self.cache: dict[tuple[str, ...], tuple[Experiment | None, str | None]] = {}

    def get(self, overrides: list[str]) -> tuple[Experiment | None, str | None]:
        from .experiment import experiment_from_config

        key = tuple(overrides)
        if key not in self.cache:
            try:
                self.cache[key] = (experiment_from_config(without_devices(self.load(list(overrides)))), None)
            except AblateError as e:  # the job itself reports its bad configuration when it runs
                self.cache[key] = (None, str(e))
        return self.cache[key]


def without_devices(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``train.device`` and ``measure.latency.device`` unset: where a job runs is not part of
    its run key, and the machine that plans a sweep (a cluster's login node) may lack the jobs' GPUs."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        if cfg.get("train") is not None:
            cfg.train.device = None
        latency = OmegaConf.select(cfg, "measure.latency")
        if latency is not None:
            latency.device = None
    return cfg


def missing_baselines(
    jobs: list[list[str]], load: Loader, experiments: _Experiments | None = None
) -> list[list[str]]:
    """Baseline jobs the sweep needs and neither it nor the results root already has (deduplicated).

    Raises:
        AblateError: a job's overrides without its attention and placement still compose a model with
            attention (an experiment preset that selects ``attn`` in its defaults list instead of
            ``+attn`` in ``hydra.sweeper.params``): its baseline cannot be added.
    """
    experiments = experiments or _Experiments(load)
    if not jobs or not bool(load(jobs[0]).get("baseline", True)):
        return []
    in_sweep: set[str] = set()
    for job in jobs:
        if overrides.is_baseline(job):
            exp, _ = experiments.get(job)
            if exp is not None:
                in_sweep.add(exp.key)
    added: dict[str, list[str]] = {}
    for job in jobs:
        if overrides.is_baseline(job):
            continue
        baseline = overrides.baseline_overrides(job)
        exp, _ = experiments.get(baseline)
        if exp is None:
            continue
        key = exp.baseline().key
        if key in in_sweep or key in added:
            continue
        if exp.key != key:
            raise AblateError(
                f"the baseline of job {' '.join(job)} would be {' '.join(baseline) or '(defaults)'}, which "
                f"still has attention ({exp.key}, not {key}): select attn and pos with +attn / +pos "
                "overrides (in an experiment preset: in hydra.sweeper.params), not in a defaults list"
            )
        if reusable_record(exp.results_dir, key) is not None:
            continue
        added[key] = baseline
    return list(added.values())


def missing_bases(
    jobs: list[list[str]], load: Loader, experiments: _Experiments | None = None
) -> list[list[str]]:
    """``action=base`` jobs for the warm-start base candidates the jobs need and the results root lacks
    (one job per candidate, so that a launcher trains them side by side). A candidate that a pinned choice
    left out (:func:`ablate.warm.needed_candidates`) is not trained again."""
    experiments = experiments or _Experiments(load)
    added: dict[str, list[str]] = {}
    for job in jobs:
        exp, _ = experiments.get(job)
        if exp is None or not exp.warm:
            continue
        keep = overrides.without(overrides.baseline_overrides(job), BASE_JOB_KEYS)
        for candidate in needed_candidates(exp):  # once the choice is pinned, only the chosen one
            if candidate.key in added:
                continue
            if reusable_record(candidate.results_dir, candidate.key) is not None:
                continue
            one = [f"train.base.seed={candidate.seed}", "train.base.candidates=1"]
            added[candidate.key] = [*keep, "action=base", *one]
    return list(added.values())


# ---------------------------------------------------------------------------------------------------------
# wall-time estimates from finished runs


def run_seconds(record: RunRecord) -> float | None:
    """A finished run's wall time: ``finished_at - started_at``, else its training time."""
    if record.started_at and record.finished_at:
        with contextlib.suppress(ValueError):
            start = datetime.fromisoformat(record.started_at)
            return max(0.0, (datetime.fromisoformat(record.finished_at) - start).total_seconds())
    return record.train_seconds


def finished_runs(results_dir: Path) -> list[RunRecord]:
    """The ok records under ``results_dir`` (:func:`ablate.records.read_records`; unreadable ones skipped)."""
    return [RunRecord.from_dict(d) for d in read_records(results_dir).records if d["status"] == "ok"]


def estimate(plan: Plan, experiments: _Experiments, results_dir: Path | None = None) -> None:
    """Set each job's ``estimate_s``: the median wall time of ok runs with the same configuration (other
    seeds), else with the same action, model, dataset and training settings; None when there are none."""
    cache: dict[Path, list[RunRecord]] = {}
    for job in plan.to_run:
        exp, _ = experiments.get(job.overrides)
        if exp is None:
            continue
        if exp.action == "base":
            exp = exp.base_candidates()[0]  # the candidate this job trains
        root = Path(results_dir) if results_dir is not None else Path(exp.results_dir)
        if root not in cache:
            cache[root] = finished_runs(root)
        action = "train" if exp.action == "inspect" else exp.action
        dataset = str(exp.dataset.get("name"))
        same = [r for r in cache[root] if r.config_key == exp.config_key]
        if not same:
            same = [
                r
                for r in cache[root]
                if (r.action, r.model, r.dataset, r.train_hash)
                == (action, exp.model, dataset, exp.train_hash)
            ]
        seconds = [s for s in (run_seconds(r) for r in same) if s is not None]
        if seconds:
            job.estimate_s, job.similar = float(statistics.median(seconds)), len(seconds)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "no estimate"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def format_plan(plan: Plan) -> str:
    """The dry run's report: every job with its role, whether it runs or is cached, and its estimate."""
    lines = [
        f"dry run: {len(plan.jobs)} job(s): {len(plan.to_run)} to run, {len(plan.cached)} cached; "
        f"{plan.added('baseline')} baseline(s) and {plan.added('base')} base run(s) added "
        "(nothing is trained or launched)"
    ]
    common = [
        o
        for o in overrides.without(plan.jobs[0].overrides if plan.jobs else [], _HIDDEN)
        if all(o in j.overrides for j in plan.jobs)
    ]
    if common and len(plan.jobs) > 1:
        lines.append(f"  every job: {' '.join(common)}")
    width = len(str(len(plan.jobs)))
    for number, job in enumerate(plan.jobs, 1):
        status = "cached" if job.cached else "run"
        role = job.role if job.role != "job" or not overrides.is_baseline(job.overrides) else "job (baseline)"
        own = overrides.without(job.overrides, _HIDDEN)
        what = " ".join(o for o in own if o not in common or len(plan.jobs) == 1) or "(defaults)"
        time = (
            "" if job.cached else f"  {'~' if job.estimate_s is not None else ''}{_duration(job.estimate_s)}"
        )
        if job.estimate_s is not None and not job.cached:
            time += f" (from {job.similar} run{'s' * (job.similar != 1)})"
        error = f"  [bad configuration: {job.error}]" if job.error else ""
        lines.append(f"  {number:>{width}}. {status:6} {role:14} {what}{time}{error}")
    without = sum(j.estimate_s is None for j in plan.to_run)
    wall = plan.wall_seconds()
    if plan.to_run:
        note = f"; no estimate for {without} of them" if without else ""
        lines.append(
            f"estimated wall time: {_duration(wall)} for {len(plan.to_run)} job(s), {plan.parallel} at a "
            f"time{note}"
            if wall is not None
            else f"estimated wall time: no estimate (no similar finished "
            f"runs for the {len(plan.to_run)} job(s) to run)"
        )
    else:
        lines.append("nothing to run: every job is cached")
    return "\n".join(lines)
