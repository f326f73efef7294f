"""Is the machine quiet enough to time on? The load the measurement phase checks before it times anything.

"Timed alone" is checked, not assumed. Before its first timed pass the phase reads:

* the load now: how many cores other processes kept busy over the last :data:`WINDOW_S` seconds
  (``/proc/stat``'s busy time of the machine less this process's own CPU time), against the cores this
  process may run on (``os.sched_getaffinity``): busy above ``max_load`` per core. Not the 1-minute load
  average: it lags by minutes (right after a sweep's jobs end it still reads about 2 on 2 idle cores),
  so the phase would wait for work that has stopped. Where ``/proc/stat`` cannot be read, the 1-minute
  load average is the fallback;
* the running jobs of the same results root: every ``progress.json`` a sweep job writes
  (:mod:`ablate.progress`) under ``<results>/hydra/multirun-*/`` (and ``<results>/multirun-*/``) that says
  ``running`` on **this host**, with its process alive and started no later than the job (a dead job's
  file keeps saying running; a recycled pid belongs to a younger process). Jobs on other hosts do not load
  this one and are not counted. Only JSON is read: nothing of the sweep or the CLI is imported.

A busy machine is waited for (``load_wait_s``, polled every few seconds, logged), then refused with
:class:`MachineBusyError` (one line) unless ``force_load``: then it is timed anyway and the measurement
records the reading (``latency_loaded`` true), which the table's footnote reports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AblateError
from ..progress import PROGRESS_JSON

log = logging.getLogger(__name__)

SWEEP_GLOBS = (f"hydra/multirun-*/*/{PROGRESS_JSON}", f"multirun-*/*/{PROGRESS_JSON}")
POLL_S = 10.0  # how often a busy machine is read again while waiting
WINDOW_S = 1.0  # the load is the CPU other processes used over this window


class MachineBusyError(AblateError):
    """The machine was not quiet enough to time on (the message says why and how to measure anyway)."""


@dataclass(frozen=True)
class Load:
    """One reading: the load, the cores it is compared with, the running jobs of the results root."""

    load: float  # cores kept busy by other processes (see :func:`machine_load`)
    cores: int  # cores this process may run on
    max_load: float  # load per core above which the machine is busy
    jobs: list[str] = field(default_factory=list)  # running jobs of this results root on this host
    waited_s: float = 0.0
    forced: bool = False

    @property
    def limit(self) -> float:
        return self.max_load * self.cores

    @property
    def busy(self) -> bool:
        return self.load > self.limit or bool(self.jobs)

    def describe(self) -> str:
        """``load 1.80 on 2 cores (limit 0.50), 1 running job (…/0, pid 4711)``."""
        text = f"load {self.load:.2f} on {self.cores} core{'s' * (self.cores != 1)}"
        text += f" (limit {self.limit:.2f})"
        n = len(self.jobs)
        if n:
            shown = ", ".join(self.jobs[:3]) + (", …" if n > 3 else "")
            text += f", {n} running job{'s' * (n != 1)} of this results root ({shown})"
        return text

    def fields(self) -> dict[str, Any]:
        """What a stored measurement records of this reading."""
        return {
            "latency_loaded": self.busy,
            "latency_load": round(self.load, 2),
            "latency_cores": self.cores,
            "latency_jobs": len(self.jobs),
            "load_limit": round(self.limit, 2),
            "load_waited_s": round(self.waited_s, 1),
            "load_forced": self.forced,
        }


def machine_load(window_s: float = WINDOW_S) -> tuple[float, int]:
    """(cores kept busy by other processes over the last ``window_s`` seconds, cores this process may run on).

    The machine's busy time (``/proc/stat``: every state but idle and iowait, over all CPUs) less this
    process's own CPU time, in cores. Without ``/proc/stat``: the 1-minute load average.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    first = _cpu_times()
    if first is None:
        return os.getloadavg()[0], cores
    own_first = _own_cpu()
    time.sleep(window_s)
    second = _cpu_times()
    own = _own_cpu() - own_first
    if second is None or second[0] <= first[0]:
        return os.getloadavg()[0], cores
    total, idle = second[0] - first[0], second[1] - first[1]
    busy_cores = (total - idle) / total * (os.cpu_count() or cores)
    return max(0.0, busy_cores - own / window_s), cores


def _cpu_times() -> tuple[int, int] | None:
    """(all jiffies, idle + iowait jiffies) of the machine from ``/proc/stat`` (None where unreadable)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    return sum(values), values[3] + values[4]


def _own_cpu() -> float:
    """CPU seconds this process has used (user + system, its threads included)."""
    t = os.times()
    return t.user + t.system


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), from ``/proc`` (None where that cannot be read)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counted after the command name
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _running(progress: dict[str, Any], host: str) -> bool:
    """Whether the job of one ``progress.json`` is running on this host now."""
    if progress.get("status") != "running" or progress.get("host") != host:
        return False
    pid = progress.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() or not _alive(pid):
        return False
    started = progress.get("started_at")
    begun = _process_start(pid)
    # a recycled pid: the process is younger than the job (2 s of slack for the clock's resolution)
    return not (isinstance(started, int | float) and begun is not None and begun > started + 2)


def running_jobs(results_dir: Path) -> list[str]:
    """The sweep jobs of ``results_dir`` running on this host: ``<sweep>/<job>, pid N`` each."""
    root, host = Path(results_dir), socket.gethostname()
    out = []
    for pattern in SWEEP_GLOBS:
        for path in sorted(root.glob(pattern)):
            with contextlib.suppress(OSError, ValueError):
                progress = json.loads(path.read_text())
                if isinstance(progress, dict) and _running(progress, host):
                    out.append(f"{path.parent.parent.name}/{path.parent.name}, pid {progress['pid']}")
    return out


def read(results_dir: Path, max_load: float) -> Load:
    """The load now (:func:`machine_load`, :func:`running_jobs`)."""
    load, cores = machine_load()
    return Load(load, cores, max_load, running_jobs(results_dir))


def wait_until_quiet(results_dir: Path, max_load: float, wait_s: float, force: bool = False) -> Load:
    """The reading the phase times under: at once when quiet or ``force``; else read again every
    :data:`POLL_S` seconds for up to ``wait_s`` seconds.

    Raises :class:`MachineBusyError` (nothing measured, nothing written) when still busy then.
    """
    start = time.monotonic()
    load = read(results_dir, max_load)
    if load.busy and force:
        log.warning("timing on a busy machine (forced): %s; the table will say so", load.describe())
        return Load(load.load, load.cores, max_load, load.jobs, 0.0, True)
    if load.busy and wait_s > 0:
        log.warning("the machine is busy (%s): waiting up to %.0f s before timing", load.describe(), wait_s)
    while load.busy and (waited := time.monotonic() - start) < wait_s:
        time.sleep(min(POLL_S, wait_s - waited))
        load = read(results_dir, max_load)
        log.info("load now: %s", load.describe())
    waited = time.monotonic() - start
    if load.busy:
        after = f" after waiting {waited:.0f} s" if wait_s > 0 else ""
        raise MachineBusyError(
            f"the machine is busy{after}: {load.describe()}; latency must be timed alone: measure later, "
            "or measure anyway with --force-load (measure.latency.force_load=true; the table says so)"
        )
    return Load(load.load, load.cores, max_load, load.jobs, waited)
