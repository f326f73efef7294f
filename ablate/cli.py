"""Command-line entry point: Hydra composes the config, ablate runs the experiment.

User errors (unknown names, bad indices, missing files) print one line ``error: ...`` to stderr and
exit with status 2, without a traceback and without writing results. In a multirun (``-m``) every job
runs to an outcome (ok, cached or failed) and the sweep exits with status 1 when any job failed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from . import launcher as _launcher  # noqa: F401 (registers ablate's SLURM launcher with Hydra)
from . import plan, sweep
from .errors import AblateError
from .paths import CONF_DIR
from .records import RunRecord

if TYPE_CHECKING:
    from .experiment import Experiment

GROUPS = ("model", "attn", "pos", "dataset", "train", "logger")
_GROUP_OVERRIDE = re.compile(r"^[+~]{0,2}(?P<group>" + "|".join(GROUPS) + r")=(?P<value>[^()\[\]]*)$")

log = logging.getLogger("ablate")


def group_options(group: str) -> list[str]:
    """Selectable options of a config group: its YAML files, except ``_``-prefixed shared parts."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.name.startswith("_"))


def check_group_overrides(argv: list[str]) -> None:
    """Reject ``group=unknown`` with one line naming the valid options (Hydra's own message is long)."""
    for arg in argv:
        m = _GROUP_OVERRIDE.match(arg)
        if not m or m.group("value") in ("", "null"):
            continue
        valid = group_options(m.group("group"))
        for value in m.group("value").split(","):
            if value.strip() not in valid:
                raise AblateError(
                    f"{m.group('group')}={value.strip()!r} is not valid; valid: {', '.join(valid)}"
                )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_line(record: RunRecord, directory: Path) -> str:
    """One line per finished run: what ran, its metrics and measures, where its files are."""
    return (
        f"{record.status}: {record.model} attn={record.attn} pos={record.pos} dataset={record.dataset} "
        f"seed={record.seed} mAP50={_fmt(record.map50, '.3f')} mAP50-95={_fmt(record.map50_95, '.3f')} "
        f"params={_fmt(record.params, ',')} GFLOPs={_fmt(record.gflops, '.2f')} -> {directory}"
    )


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _uid() -> str:
    return os.urandom(3).hex()


# ${ablate_uid:} in hydra.{run,sweep}.dir: cached per config, so every job of a sweep sees the same value
OmegaConf.register_new_resolver("ablate_uid", _uid, use_cache=True, replace=True)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_label(cfg: DictConfig) -> str:
    """``[3/12]`` for the third of twelve jobs of a sweep."""
    hc = HydraConfig.get()
    total = sweep.sweep_info(Path(hc.sweep.dir)).get("total", "?")
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
    if gpus > 0 and cfg.train.get("device") in (None, "", "auto"):
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
            plan.LAST_PLAN = plan.make_plan([overrides], compose_overrides, add_baselines=False)
        except AblateError as e:
            fail(str(e))
        return None
    try:
        exp = experiment_from_config(cfg)
        record = execute(exp, cfg)
    except AblateError as e:
        fail(str(e))
        return None
    if record is None:
        return None
    print(summary_line(record, Path(cfg.results.dir) / "runs" / record.key))
    if record.status != "ok":
        fail(f"run {record.key} failed: {record.error}")
    if record.action == "profile":  # a measurement of one architecture: its latency beside its baseline
        profile_latency(exp, record)
    return record.map50_95


def compose_overrides(overrides: list[str]) -> DictConfig:
    """The config of ``overrides`` (inside the running Hydra app)."""
    return hydra.compose(config_name="config", overrides=list(overrides))


def profile_latency(exp: Experiment, record: RunRecord) -> None:
    """The measurement phase for one profiled architecture (and its baseline), printed."""
    from .measure.phase import format_phase, run_phase, settings_from_config

    settings = settings_from_config(exp.measure["latency"], exp.train.get("device"))
    for result in run_phase(exp.results_dir, settings, [record.to_dict()], force=exp.force):
        print(format_phase(result))


def sweep_job(cfg: DictConfig) -> float | None:
    """One job of a multirun: never raises; its outcome goes to ``outcome.json`` in the job directory."""
    from .experiment import experiment_from_config
    from .warm import execute

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    label = job_label(cfg)
    print(f"{label} {' '.join(overrides)}", flush=True)
    start = time.perf_counter()
    outcome = sweep.JobOutcome(status="failed", overrides=overrides)
    record = None
    try:
        place_job(cfg)
        exp = dataclasses.replace(experiment_from_config(cfg), sweep=Path(hc.sweep.dir).name)
        outcome.key = exp.key
        record = execute(exp, cfg, record_errors=True)
        if record is None:  # action=inspect
            outcome.status = "ok"
        else:
            outcome.key = record.key  # action=base: the base run it trained or found
            outcome.status = "cached" if record.cached else record.status
            outcome.error = record.error
            outcome.summary = summary_line(record, Path(cfg.results.dir) / "runs" / record.key)
    except AblateError as e:
        outcome.error = str(e)
    except Exception as e:  # anything else: recorded for the summary, the other jobs go on
        outcome.error = f"{type(e).__name__}: {e}"
        log.exception("job %s failed", label)
    outcome.seconds = round(time.perf_counter() - start, 2)
    sweep.write_outcome(Path(hc.runtime.output_dir), outcome)
    detail = outcome.summary or f"{outcome.status}: {outcome.error}"
    print(f"{label} {outcome.status} in {outcome.seconds:.1f}s: {detail}", flush=True)
    return record.map50_95 if record is not None else None


def main() -> None:
    try:
        check_group_overrides(sys.argv[1:])
    except AblateError as e:
        fail(str(e))
    sweep.LAST_SWEEP = None
    plan.LAST_PLAN = None
    run_job()
    if plan.LAST_PLAN is not None:  # dry_run=true: the plan, and nothing else happened
        print(plan.format_plan(plan.LAST_PLAN))
    if sweep.LAST_SWEEP is not None and sweep.LAST_SWEEP.failed:
        sys.exit(1)
