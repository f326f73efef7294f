"""Command-line entry point: Hydra composes the config, ablate runs the experiment.

User errors (unknown names, bad indices, missing files) print one line ``error: ...`` to stderr and
exit with status 2, without a traceback and without writing results. In a multirun (``-m``) every job
runs to an outcome (ok, cached or failed) and the sweep exits with status 1 when any job failed: the CLI
fixes the sweep directory before Hydra starts and reads the jobs' outcomes back from it at the end.
``dry_run=true`` prints the plan (:mod:`ablate.plan`) without starting Hydra at all.

This module is the top of the import graph: nothing in ablate imports it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from . import launcher as _launcher  # noqa: F401 (registers ablate's SLURM launcher with Hydra)
from . import overrides, plan, sweepdir
from . import sweep as _sweep  # noqa: F401 (registers ablate's sweeper with Hydra)
from .errors import AblateError
from .measure.device import is_auto
from .paths import CONF_DIR
from .records import run_dir
from .sweepdir import summary_line

if TYPE_CHECKING:
    from .experiment import Experiment

GROUPS = ("model", "attn", "pos", "dataset", "train", "logger", "experiment")
MULTIRUN_FLAGS = ("-m", "--multirun")

log = logging.getLogger("ablate")


def group_options(group: str) -> list[str]:
    """Selectable options of a config group: its YAML files, except ``_``-prefixed shared parts."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.name.startswith("_"))


def check_group_overrides(argv: list[str]) -> None:
    """Reject ``group=unknown`` (also inside a sweep, ``+attn=rala,nope``) with one line naming the valid
    options (Hydra's own message is long). What Hydra cannot parse, or a ``glob()``, is left to Hydra."""
    for arg in argv:
        if arg.startswith("-"):  # Hydra's flags (-m, --cfg job, ...)
            continue
        try:
            o = overrides.parse(arg)
        except AblateError:  # Hydra reports its own syntax errors
            continue
        if o.key_or_group not in GROUPS or o.package is not None:
            continue
        valid = group_options(o.key_or_group)
        for value in overrides.values(o) or []:
            if value not in ("", None) and value not in valid:
                raise AblateError(f"{o.key_or_group}={str(value)!r} is not valid; valid: {', '.join(valid)}")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@dataclass
class Command:
    """What ``python -m ablate ARGS`` asks for, read before Hydra starts (:func:`read_command`)."""

    overrides: list[str]
    multirun: bool
    plan: plan.Plan | None = None  # dry_run=true: the plan to print instead of running anything
    sweep_dir: Path | None = None  # a multirun's sweep directory, fixed for Hydra (see pinned_argv)


def read_command(argv: list[str]) -> Command | None:
    """Compose ``argv``'s config as Hydra will: a dry run's plan, or a multirun's sweep directory.

    None when Hydra must take the command line alone: Hydra flags besides ``-m`` (``--help``, ``--cfg``,
    ``-cd``, ...), or overrides Hydra cannot compose (Hydra then says why, in its own words).

    Raises:
        AblateError: the plan cannot be made (e.g. a position scan over a model without such layers).
    """
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    given = [a for a in argv if a not in MULTIRUN_FLAGS]
    if any(a.startswith("-") for a in given):
        return None
    try:
        with plan.composed_command(given) as (config, loader):
            multirun = multirun or config.hydra.mode == RunMode.MULTIRUN
            command = Command(given, multirun)
            if bool(config.get("dry_run", False)):
                task = [str(o) for o in config.hydra.overrides.task]
                if not multirun and any(overrides.parse(o).is_sweep_override() for o in task):
                    return None  # Hydra: a sweep needs -m
                command.plan = plan.plan_composed(config, loader, multirun)
            elif multirun:
                command.sweep_dir = Path(str(config.hydra.sweep.dir))
            return command
    except (HydraException, OmegaConfBaseException) as e:
        log.debug("Hydra takes the command line alone: %s: %s", type(e).__name__, e)
        return None


def pinned_argv(argv: list[str], sweep_dir: Path) -> list[str]:
    """``argv`` with ``hydra.sweep.dir`` set to ``sweep_dir`` (resolved once, so that the time and uid in
    its name are those the CLI reads the outcomes from), replacing any ``hydra.sweep.dir`` it had."""
    kept = [a for a in argv if a.startswith("-") or overrides.key(a) != "hydra.sweep.dir"]
    # beside the other overrides: argparse takes no override after a flag that follows overrides
    at = max((i + 1 for i, a in enumerate(kept) if not a.startswith("-")), default=len(kept))
    return [*kept[:at], f"hydra.sweep.dir={overrides.quote(str(sweep_dir))}", *kept[at:]]


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_label(cfg: DictConfig) -> str:
    """``[3/12]`` for the third of twelve jobs of a sweep."""
    hc = HydraConfig.get()
    total = sweepdir.sweep_info(Path(hc.sweep.dir)).get("total", "?")
    return f"[{int(hc.job.num) + 1}/{total}]"


def place_job(cfg: DictConfig) -> None:
    """Local parallel jobs (joblib): spread them over the visible GPUs, or split the CPU threads.

    (ultralytics' trainer sets its own CPU thread count, cores − 1 up to 8, unless ``train.threads`` says.)
    """
    hc = HydraConfig.get()
    launcher = str(hc.launcher.get("_target_", ""))
    if "joblib" not in launcher.lower():
        return
    import torch

    gpus = torch.cuda.device_count()
    if gpus > 0 and is_auto(cfg.train.get("device")):
        with open_dict(cfg):
            cfg.train.device = int(hc.job.num) % gpus
        log.info("job %s on GPU %s of %d", hc.job.num, cfg.train.device, gpus)
    elif gpus == 0:
        n_jobs = int(hc.launcher.get("n_jobs") or -1)
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // (cores if n_jobs < 1 else min(n_jobs, cores))))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def run_job(cfg: DictConfig) -> float | None:
    if in_multirun():
        return sweep_job(cfg)
    from .experiment import experiment_from_config
    from .warm import execute

    if cfg.get("dry_run", False):  # one run's plan: cached or not, and its estimate; nothing runs
        overrides = list(HydraConfig.get().overrides.task)
        try:
            print(plan.format_plan(plan.make_plan([overrides], compose_overrides, add_baselines=False)))
        except AblateError as e:
            fail(str(e))
        return None
    try:
        exp = experiment_from_config(cfg)
        if exp.action == "inspect":
            print(inspect(exp))
            return None
        record = execute(exp, cfg)
    except AblateError as e:
        fail(str(e))
        return None
    print(summary_line(record, run_dir(cfg.results.dir, record.key)))
    if record.status != "ok":
        fail(f"run {record.key} failed: {record.error}")
    if record.action == "profile":  # a measurement of one architecture: its latency beside its baseline
        from .measure.phase import format_phase, profile

        try:
            results = profile(
                record, exp.measure["latency"], exp.train.get("device"), exp.results_dir, exp.force
            )
        except AblateError as e:  # a busy machine (MachineBusyError): one line, the record stays as it is
            fail(str(e))
            return None
        for result in results:
            print(format_phase(result))
    return record.map50_95


def compose_overrides(overrides: list[str]) -> DictConfig:
    """The config of ``overrides`` (inside the running Hydra app)."""
    return hydra.compose(config_name="config", overrides=list(overrides))


def inspect(exp: Experiment) -> str:
    """What ``action=inspect`` prints: the composed model's parameter count, its layer table with the layers
    the placement inserted or replaced marked, and where ``model.weights``' tensors would go. Nothing is
    trained, generated or written."""
    from .compose import marks
    from .measure.model import count_params, layer_table
    from .run import composed_model, weights_transfer

    d, model = composed_model(exp)
    transfer = weights_transfer(exp, d, model)  # model.weights only: inspect trains no base run
    marked = marks(d)
    lines = [
        f"{exp.model} + attn={exp.attn} pos={exp.pos}: {count_params(model):,} parameters",
        f"{'idx':>4} {'from':>14}  {'module':<26} {'out ch':>7} {'stride':>6}  note",
    ]
    for r in layer_table(model):
        ch, st = str(r.channels) if r.channels else "-", str(r.stride) if r.stride else "-"
        lines.append(
            f"{r.index:>4} {r.source!s:>14}  {r.module:<26} {ch:>7} {st:>6}  {marked.get(r.index, '')}"
        )
    if transfer is not None:
        lines.append(transfer.line())
    return "\n".join(lines)


def sweep_job(cfg: DictConfig) -> float | None:
    """One job of a multirun: never raises; its outcome goes to ``outcome.json`` in the job directory."""
    from .experiment import experiment_from_config
    from .warm import execute

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    label = job_label(cfg)
    print(f"{label} {' '.join(overrides)}", flush=True)
    start = time.perf_counter()
    outcome = sweepdir.JobOutcome(status="failed", overrides=overrides)
    record = None
    try:
        place_job(cfg)
        exp = dataclasses.replace(experiment_from_config(cfg), sweep=Path(hc.sweep.dir).name)
        outcome.key = exp.key
        if exp.action == "inspect":
            print(inspect(exp), flush=True)
            outcome.status = "ok"
        else:
            record = execute(exp, cfg, record_errors=True)
            outcome.key = record.key  # action=base: the base run it trained or found
            outcome.status = "cached" if record.cached else record.status
            outcome.error = record.error
            outcome.summary = summary_line(record, run_dir(cfg.results.dir, record.key))
    except AblateError as e:
        outcome.error = str(e)
    except Exception as e:  # anything else: recorded for the summary, the other jobs go on
        outcome.error = f"{type(e).__name__}: {e}"
        log.exception("job %s failed", label)
    outcome.seconds = round(time.perf_counter() - start, 2)
    sweepdir.write_outcome(Path(hc.runtime.output_dir), outcome)
    detail = outcome.summary or f"{outcome.status}: {outcome.error}"
    print(f"{label} {outcome.status} in {outcome.seconds:.1f}s: {detail}", flush=True)
    return record.map50_95 if record is not None else None


def main() -> None:
    argv = sys.argv[1:]
    command = None
    try:
        check_group_overrides(argv)
        command = read_command(argv)
    except AblateError as e:
        fail(str(e))
    if command is not None and command.plan is not None:  # dry_run=true: the plan; nothing else happens
        print(plan.format_plan(command.plan))
        return
    sweep_dir = command.sweep_dir if command is not None else None
    if sweep_dir is not None:
        sys.argv = [sys.argv[0], *pinned_argv(argv, sweep_dir)]
    run_job()
    if sweep_dir is not None and sweepdir.read_outcomes(sweep_dir).failed:
        sys.exit(1)
