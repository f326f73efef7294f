"""What a sweep job writes and where its output goes: ``progress.json`` and the job's log file.

Every job of a multirun writes ``progress.json`` into its Hydra job directory (:class:`JobProgress`, a
Hydra callback, at its start; ultralytics callbacks at every epoch, :func:`progress_callbacks`; the
phases of a run, :func:`update`). :mod:`ablate.live` reads these files back in the submitting process.

When jobs run side by side (joblib, submitit or any launcher but Hydra's basic one), or the live view
owns the terminal, each job's stdout and stderr (ultralytics' progress bars and tables) go to the job's
log file in its job directory (``<job dir>/<job name>.log``, the file Hydra logs to), not the terminal.
A single run (no ``-m``) keeps ultralytics' output as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from .records import write_json_atomic
from .sweepdir import PROGRESS_JSON

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# progress.json of the job this process runs (one at a time per process, whatever the launcher)

_progress: dict[str, Any] = {}
_progress_path: Path | None = None
# set while the live view owns this process's terminal (Hydra's basic launcher runs jobs in this process)
_terminal_view = False


def set_terminal_view(on: bool) -> None:
    """Whether the live view owns this process's terminal (set by :func:`ablate.live.watch_sweep`; Hydra's
    basic launcher runs the jobs in this process, and their output must then go to their log files)."""
    global _terminal_view
    _terminal_view = on


def start_job(job_dir: Path, job: int | str) -> None:
    """Begin this process's job: ``progress.json`` says running, since now."""
    global _progress, _progress_path
    _progress_path = Path(job_dir) / PROGRESS_JSON
    now = time.time()
    _progress = {
        "job": job,
        "status": "running",
        "phase": "starting",
        "epoch": None,
        "epochs": None,
        "started_at": now,
        "updated_at": now,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    _write_progress()


def update(**fields: Any) -> None:
    """Update this process's ``progress.json`` (no-op outside a sweep job, e.g. a single run)."""
    if _progress_path is None:
        return
    _progress.update(fields, updated_at=time.time())
    _write_progress()


def end_job(status: str = "done") -> None:
    """The job's task returned: its last progress update (its outcome says how it went)."""
    global _progress_path
    update(status=status, phase=status)
    _progress_path = None


def _write_progress() -> None:
    assert _progress_path is not None
    try:
        write_json_atomic(_progress_path, _progress)
    except OSError as e:  # progress is for watching; it never fails a job
        log.warning("could not write %s: %s", _progress_path, e)


def progress_callbacks() -> dict[str, list[Callable[[Any], None]]]:
    """ultralytics callbacks that report the epoch being trained (``epoch 3/8``) to ``progress.json``."""

    def epoch_start(trainer: Any) -> None:
        update(phase="training", epoch=int(trainer.epoch) + 1, epochs=int(trainer.epochs))

    return {
        "on_pretrain_routine_start": [lambda trainer: update(phase="setting up training")],
        "on_train_start": [lambda trainer: update(phase="training", epochs=int(trainer.epochs))],
        "on_train_epoch_start": [epoch_start],
        "on_train_end": [lambda trainer: update(phase="evaluating")],
    }


class Redirect:
    """This process's stdout and stderr (file descriptors 1 and 2, so C code, ultralytics' progress bars and
    every stream handler go along) into ``path``, appended, until :meth:`restore`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flush_std()
        self.saved = (os.dup(1), os.dup(2))
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def restore(self) -> None:
        flush_std()
        for target, saved in zip((1, 2), self.saved, strict=True):
            os.dup2(saved, target)
            os.close(saved)


def flush_std() -> None:
    """Flush Python's stdout and stderr (before file descriptors 1 and 2 move)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def job_log_path(config: DictConfig) -> Path:
    """The job's log file: the one Hydra's job logging writes (``<job dir>/<job name>.log``)."""
    job_dir = Path(str(config.hydra.runtime.output_dir)).resolve()
    handlers = _job_file_handlers(job_dir)
    return Path(handlers[0].baseFilename) if handlers else job_dir / f"{config.hydra.job.name}.log"


def _job_file_handlers(job_dir: Path) -> list[logging.FileHandler]:
    """The root logger's file handlers that write into ``job_dir`` (Hydra's job log)."""
    return [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve().parent == job_dir
    ]


def jobs_share_terminal(config: DictConfig) -> bool:
    """Whether this sweep's jobs would print over each other or over the live view: any launcher but
    Hydra's basic one (joblib, submitit, ablate's), or the basic one under the terminal view."""
    target = str(config.hydra.launcher.get("_target_", ""))
    return "BasicLauncher" not in target or _terminal_view


class JobProgress(Callback):
    """Hydra callback run in each job's process: ``progress.json`` from its start, and its output into its
    log file when jobs would otherwise share a terminal (:func:`jobs_share_terminal`).

    Args:
        redirect: send the jobs' stdout/stderr to their log files when they share a terminal.
    """

    def __init__(self, redirect: bool = True) -> None:
        self.redirect = redirect
        self._redirected: Redirect | None = None
        self._handlers: list[tuple[logging.Logger, logging.Handler]] = []

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            job_dir = Path(str(config.hydra.runtime.output_dir))
            num = config.hydra.job.get("num")
            start_job(job_dir, int(num) if num is not None else job_dir.name)
            if self.redirect and jobs_share_terminal(config):
                path = job_log_path(config)
                self._redirected = Redirect(path)
                if _job_file_handlers(path.parent):
                    self._quiet_console()
        except Exception as e:  # watching must never stop a job
            log.warning("job progress not reported: %s", e)

    def _quiet_console(self) -> None:
        """While redirected, the console handlers would write every log line into the log file a second time
        (after the file handler): detach them until the job ends."""
        root = logging.getLogger()
        for handler in list(root.handlers):
            if type(handler) is logging.StreamHandler:
                root.removeHandler(handler)
                self._handlers.append((root, handler))

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        with contextlib.suppress(Exception):
            end_job()
        if self._redirected is not None:
            self._redirected.restore()
            self._redirected = None
        for logger, handler in self._handlers:
            logger.addHandler(handler)
        self._handlers = []
