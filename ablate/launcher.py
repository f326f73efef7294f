"""ablate's SLURM launcher: hydra-submitit-launcher's, except that a lost task does not end the sweep.

hydra-submitit-launcher submits a batch as one job array and collects every task's result; a task that
ends without one (cancelled, killed, node failure, out of memory, requeue limit reached) raises
``UncompletedJobError`` in the submitting process, so the sweep stops with a traceback and no summary
while other tasks may still run. :class:`AblateSlurmLauncher` waits for every task instead: a lost task
gets a ``failed`` ``outcome.json`` (the SLURM state and where its log is) in its job directory, the others
are collected as usual, and the sweep ends with its summary (exit status 1, as for any failed job).

On the compute node it runs the job as hydra-submitit-launcher does, with submitit's log lines written
once (its logger has a handler of its own and, once Hydra configured logging, also reached the root's).

``conf/hydra/launcher/slurm.yaml`` selects it; like :class:`ablate.sweep.AblateSweeper` it ships inside
ablate and is registered with Hydra under the ``hydra_plugins`` namespace that Hydra requires.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins

Plugins.instance()  # scan plugins first (the scan re-executes plugin modules)
from hydra.core.singleton import Singleton  # noqa: E402
from hydra.core.utils import JobReturn, JobStatus, filter_overrides  # noqa: E402
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf  # noqa: E402
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from .sweepdir import OUTCOME_JSON, JobOutcome, job_dir, write_outcome  # noqa: E402

log = logging.getLogger(__name__)

# a task that ended without a result file may still get one this late (network filesystems); the lost
# tasks of an array share this wait instead of each waiting in turn
RESULT_GRACE_S = 15.0
# hydra-submitit-launcher's settings that configure the executor itself rather than its jobs
_INIT_KEYS = ("submitit_folder", "max_num_timeout")


def executor_for(params: dict[str, Any], cluster: str, folder: str | None = None) -> Any:
    """A submitit executor configured from a hydra-submitit-launcher config (``params``, plain values):
    shared keys (``timeout_min``, ``cpus_per_task``, ...) as they are, cluster-specific ones prefixed."""
    import submitit

    params = dict(params)
    params.pop("_target_", None)
    init: dict[str, Any] = {"folder": folder if folder is not None else params.get("submitit_folder")}
    if "max_num_timeout" in params:
        init[f"{cluster}_max_num_timeout"] = params["max_num_timeout"]
    executor = submitit.AutoExecutor(cluster=cluster, **init)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{k if k in shared else f"{cluster}_{k}": v for k, v in params.items() if k not in _INIT_KEYS}
    )
    return executor


def lost_reason(job: Any, error: BaseException | None) -> str:
    """One line on why a submitit job left no result: its scheduler state, or the job's own last error."""
    state = "UNKNOWN"
    try:
        state = str(job.state)
    except Exception as e:  # the state is a courtesy: the scheduler may be unreachable
        log.debug("no state for job %s: %s", getattr(job, "job_id", "?"), e)
    where = getattr(getattr(job, "paths", None), "stderr", None)
    if type(error).__name__ == "FailedJobError":  # the submitted function raised (on the node)
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not set(ln.strip()) <= {"-"}]
        last = next(
            (ln for ln in reversed(lines) if not ln.startswith(("You can check", "or at paths", "- /"))), ""
        )
        return f"task {job.job_id} failed on the node ({state}): {last} (log: {where})"
    if error is not None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"task {job.job_id} ended {state}; its result is unreadable ({type(error).__name__}: {first})"
    return (
        f"task {job.job_id} ended {state} without a result (killed, cancelled or out of time; log: {where})"
    )


class AblateSlurmLauncher(SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher; a task lost by the cluster becomes a failed outcome."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        # on the node: submitit's logger prints through its own handlers; once Hydra has configured the
        # root logger for the job, propagating there too wrote every submitit line twice
        logging.getLogger("submitit").propagate = False
        return super().__call__(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # pickled for the node by ablate's importable name (the hydra_plugins alias exists only in
        # processes that imported ablate.launcher)
        return (_restore, (dict(self.__dict__),))

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        assert len(job_overrides) > 0
        executor = executor_for(self.params, self._EXECUTOR)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("submitit %s: %d job(s), sweep directory %s", self._EXECUTOR, len(job_overrides), sweep_dir)
        numbers = [initial_job_idx + i for i in range(len(job_overrides))]
        for number, overrides in zip(numbers, job_overrides, strict=True):
            log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        state = Singleton.get_state()
        jobs = executor.map_array(
            self,
            [list(o) for o in job_overrides],
            ["hydra.sweep.dir"] * len(numbers),
            numbers,
            [f"job_id_for_{n}" for n in numbers],
            [state] * len(numbers),
        )
        # collect each task as it ends: a lost one gets its failed outcome then, not after the tasks before it
        returns: dict[int, JobReturn] = {}
        ended: dict[int, float] = {}  # when each task was first seen ended
        while len(returns) < len(jobs):
            for i, job in enumerate(jobs):
                if i in returns or not job.done():
                    continue
                since = ended.setdefault(i, time.monotonic())
                if Path(job.paths.result_pickle).exists() or time.monotonic() - since >= RESULT_GRACE_S:
                    returns[i] = self.collect(job, list(job_overrides[i]), numbers[i])
            if len(returns) < len(jobs):
                time.sleep(1.0)
        return [returns[i] for i in range(len(jobs))]

    def collect(self, job: Any, overrides: list[str], number: int) -> JobReturn:
        """The task's result once it ended; for a task without one, a failed outcome in its job directory."""
        try:
            if Path(job.paths.result_pickle).exists():
                return job.results()[0]
            reason = lost_reason(job, None)
        except (
            Exception
        ) as e:  # submitit's FailedJobError (the function raised on the node), unreadable result
            reason = lost_reason(job, e)
        log.error("job #%d lost: %s", number, reason)
        assert self.hydra_context is not None and self.config is not None
        directory = job_dir(
            self.hydra_context.config_loader.load_sweep_config(self.config, overrides), number
        )
        if not (directory / OUTCOME_JSON).exists():  # a task killed after its outcome keeps that outcome
            write_outcome(directory, JobOutcome(status="failed", overrides=overrides, error=reason))
        ret = JobReturn(overrides=overrides, status=JobStatus.FAILED, working_dir=str(directory))
        ret._return_value = RuntimeError(reason)
        return ret


def _restore(state: dict[str, Any]) -> AblateSlurmLauncher:
    launcher = AblateSlurmLauncher.__new__(AblateSlurmLauncher)
    launcher.__dict__.update(state)
    return launcher


PLUGIN_MODULE = "hydra_plugins.ablate_submitit_launcher"
AblateSlurmLauncher.__module__ = PLUGIN_MODULE
sys.modules.setdefault(PLUGIN_MODULE, sys.modules[__name__])
Plugins.instance().register(AblateSlurmLauncher)
