"""Drawing the figures in worker processes: forked early so that their matplotlib import overlaps the
caller's own work, used only when two CPUs are free of other work (else the caller draws them)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from .figures import figure_jobs

log = logging.getLogger(__name__)


def _cpu_sample() -> tuple[float, float, float] | None:
    """(CPU-seconds busy on all CPUs from /proc/stat, this process's CPU-seconds, monotonic time)."""
    try:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]
        busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return busy, time.process_time(), time.monotonic()


_SINCE_IMPORT = _cpu_sample()


def free_cpus(since: tuple[float, float, float] | None = _SINCE_IMPORT) -> float | None:
    """CPUs that other processes left free on average since ``since`` (default: this module's import),
    this process's own use counted as free; None where /proc/stat is not available."""
    now = _cpu_sample()
    if since is None or now is None or now[2] - since[2] < 0.05:
        return None
    others = (now[0] - since[0]) - (now[1] - since[1])
    return (os.cpu_count() or 1) - max(0.0, others) / (now[2] - since[2])


def default_workers() -> int:
    """Figure worker processes: 2 when two CPUs are free of other work, else 1 (draw in this process).

    Drawing in workers costs about a second of extra CPU (each worker imports matplotlib and loads its
    fonts); it pays only with a second free CPU. Other processes' load is measured since this module
    was imported (:func:`free_cpus`; the caller loads the records meanwhile).
    """
    workers = min(2, os.cpu_count() or 1)
    free = free_cpus()
    if workers > 1 and free is not None and free < 1.5:
        workers = 1
    log.debug(
        "figure workers: %d (CPUs free of other work: %s)", workers, "?" if free is None else f"{free:.2f}"
    )
    return workers


def _warm() -> None:
    """Worker initializer: import matplotlib and load its default font while the caller is busy."""
    from matplotlib.figure import Figure

    Figure(figsize=(1, 1)).text(0, 0, "0").get_window_extent()


class FigurePool:
    """Worker processes for the figures, forked at construction so that their matplotlib import and
    font loading overlap the caller's own work (loading records, statistics).

    ``workers`` defaults to :func:`default_workers`. With one worker, or where ``fork`` is not
    available, nothing is started and :meth:`wait` draws the figures in this process.
    """

    def __init__(self, workers: int | None = None) -> None:
        workers = default_workers() if workers is None else workers
        self._jobs: list[tuple[Callable[..., list[Path]], tuple[Any, ...]]] = []
        self._futures: list[Any] = []
        self._pool: ProcessPoolExecutor | None = None
        if workers > 1 and "fork" in mp.get_all_start_methods():
            ctx = mp.get_context("fork")
            self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_warm)
            self._pool.submit(int)  # with fork, the first submit starts every worker now

    def submit(self, summary: pd.DataFrame, out_dir: Path, bench_csv: Path | None = None) -> None:
        """Queue every figure that has data (drawn at once in the workers, or at :meth:`wait`)."""
        self._jobs = figure_jobs(summary, out_dir, bench_csv)
        if self._pool is not None:
            self._futures = [self._pool.submit(fn, *args) for fn, args in self._jobs]

    def wait(self) -> list[Path]:
        """The files written (PNG and PDF of each figure), once every figure is done."""
        try:
            if self._pool is None:
                return [p for fn, args in self._jobs for p in fn(*args)]
            return [p for f in self._futures for p in f.result()]
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def write_figures(
    summary: pd.DataFrame, out_dir: Path, bench_csv: Path | None = None, workers: int | None = None
) -> list[Path]:
    """Every figure that has data; returns the files written (PNG and PDF of each)."""
    pool = FigurePool(workers)
    pool.submit(summary, out_dir, bench_csv)
    return pool.wait()
