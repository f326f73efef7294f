"""A sweep you can watch: the live view of the whole sweep, read from its directory.

Every job of a multirun writes ``progress.json`` into its Hydra job directory (:mod:`ablate.progress`).
The submitting process wraps its launch loop in :func:`watch_sweep`: a thread polls the sweep directory
(``sweep.json`` for the job list, ``*/progress.json``, ``*/outcome.json``) and shows jobs ok / cached /
failed / running / pending, each running job's epoch, the elapsed time and an ETA from the finished
jobs; finished and failed jobs appear as they happen. The same files work for every launcher.

* stdout is a terminal: a live view (rich) at the bottom of the terminal; what the submitting process
  and its launcher print meanwhile goes to ``sweep.log`` in the sweep directory.
* otherwise (CI, SLURM logs, a pipe): one plain line per state change, no ANSI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig

from . import overrides
from .progress import Redirect, flush_std, set_terminal_view
from .records import read_json
from .sweepdir import OUTCOME_JSON, OUTCOMES, PROGRESS_JSON, SWEEP_LOG, job_number, summary_map, sweep_info

log = logging.getLogger(__name__)

MAX_ROWS = 12  # running jobs listed in the terminal view (the rest as "... and N more")

# ---------------------------------------------------------------------------------------------------------
# watcher side: the state of a sweep, read back from its directory


@dataclass
class JobState:
    """One job as the watcher last saw it."""

    num: int
    label: str
    status: str = "pending"  # pending | running | ok | cached | failed
    phase: str = ""
    epoch: int | None = None
    epochs: int | None = None
    started_at: float | None = None
    seconds: float | None = None
    error: str | None = None
    summary: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in OUTCOMES

    def metric(self) -> str:
        """`` mAP50-95=0.412`` from a finished job's summary line ("" when it has none)."""
        found = summary_map(self.summary)
        return f" mAP50-95={found}" if found is not None else ""

    def step(self) -> str:
        """``epoch 3/8`` while training, else the phase (starting, preparing data, evaluating, ...)."""
        if self.epoch is not None and self.epochs and self.phase in ("training", ""):
            return f"epoch {self.epoch}/{self.epochs}"
        return self.phase or self.status


@dataclass
class Event:
    """A state change: a job started, moved to another epoch, or finished."""

    kind: str  # started | epoch | finished
    job: JobState


@dataclass
class SweepState:
    """What a sweep directory says about its jobs; :meth:`poll` reads it again and returns what changed."""

    sweep_dir: Path
    started: float = field(default_factory=time.time)
    total: int = 0
    jobs: dict[int, JobState] = field(default_factory=dict)
    max_parallel: int = 0

    def poll(self) -> list[Event]:
        """Read ``sweep.json``, the jobs' progress and outcome files; the state changes since last time."""
        self._load_jobs()
        events: list[Event] = []
        seen_progress: dict[int, dict[str, Any]] = {}
        for path in self.sweep_dir.glob(f"*/{PROGRESS_JSON}"):
            data = read_json(path)
            num = _job_num(data.get("job"), path.parent.name) if isinstance(data, dict) else None
            if num is not None:
                seen_progress[num] = data
        outcomes = {}
        for path in self.sweep_dir.glob(f"*/{OUTCOME_JSON}"):
            num = job_number(path.parent.name)  # job directories are named by job number
            if num is None or (num in self.jobs and self.jobs[num].finished):
                continue
            data = read_json(path)
            if isinstance(data, dict):
                outcomes[num] = data
        for num, data in sorted(seen_progress.items()):
            job = self._job(num)
            if job.finished or num in outcomes:
                continue
            before = (job.status, job.epoch)
            job.status = "running"
            job.phase = str(data.get("phase") or "")
            job.epoch, job.epochs = data.get("epoch"), data.get("epochs")
            job.started_at = data.get("started_at")
            if before[0] != "running":
                events.append(Event("started", job))
            elif job.epoch is not None and job.epoch != before[1]:
                events.append(Event("epoch", job))
        for num, data in sorted(outcomes.items()):
            job = self._job(num)
            job.status = str(data.get("status") or "failed")
            job.seconds, job.error, job.summary = data.get("seconds"), data.get("error"), data.get("summary")
            if job.status not in OUTCOMES:
                job.status = "failed"
            events.append(Event("finished", job))
        self.max_parallel = max(self.max_parallel, self.count("running"))
        return events

    def _load_jobs(self) -> None:
        if self.total and len(self.jobs) >= self.total:
            return
        info = sweep_info(self.sweep_dir)
        overrides = [list(j) for j in info.get("jobs", [])]
        self.total = max(int(info.get("total", 0) or 0), len(overrides))
        labels = job_labels(overrides)
        for num, label in enumerate(labels):
            job = self.jobs.setdefault(num, JobState(num, label))
            job.label = label

    def _job(self, num: int) -> JobState:
        if num not in self.jobs:
            self.jobs[num] = JobState(num, f"job {num + 1}")
            self.total = max(self.total, len(self.jobs))
        return self.jobs[num]

    def count(self, status: str) -> int:
        return sum(j.status == status for j in self.jobs.values()) + (
            max(0, self.total - len(self.jobs)) if status == "pending" else 0
        )

    def running(self) -> list[JobState]:
        return [j for _, j in sorted(self.jobs.items()) if j.status == "running"]

    def finished(self) -> int:
        return sum(j.finished for j in self.jobs.values())

    def mean_seconds(self) -> float | None:
        """Mean duration of the jobs that ran to ``ok`` (cached jobs take no time; failures end early)."""
        done = [j.seconds for j in self.jobs.values() if j.status == "ok" and j.seconds is not None]
        return sum(done) / len(done) if done else None

    def eta(self, now: float) -> float | None:
        """Seconds until the sweep ends, or None before anything says how long a job takes.

        A job's duration is the mean of the jobs that finished ok, or, before any did, what the running
        jobs' pace per epoch projects. The pending jobs take that each, the running ones the rest of it (at
        their own pace per epoch once they have one), spread over as many jobs at once as ran so far."""
        paces = {}
        for job in self.running():
            elapsed = now - job.started_at if job.started_at else 0.0
            if job.epoch and job.epochs and elapsed > 0:  # elapsed over the epochs begun, all epochs long
                paces[job.num] = (elapsed, elapsed * job.epochs / job.epoch)
        mean = self.mean_seconds()
        if mean is None and paces:
            mean = sum(total for _, total in paces.values()) / len(paces)
        if mean is None:
            return None
        work = self.count("pending") * mean
        for job in self.running():
            if job.num in paces:
                elapsed, total = paces[job.num]
                work += max(total - elapsed, 0.0)
            else:
                work += max(mean - (now - job.started_at if job.started_at else 0.0), 0.0)
        return work / max(1, self.max_parallel)

    def counts_line(self, now: float) -> str:
        eta = self.eta(now)
        return (
            f"{self.finished()}/{self.total} done: {self.count('ok')} ok, {self.count('cached')} cached, "
            f"{self.count('failed')} failed, {self.count('running')} running, "
            f"{self.count('pending')} pending; "
            f"elapsed {clock(now - self.started)}, ETA {clock(eta) if eta is not None else '?'}"
        )


def _job_num(value: Any, name: str) -> int | None:
    """A progress file's job number (its ``job`` field, else its directory's name)."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return job_number(name)


def clock(seconds: float) -> str:
    """``1:02:03`` (hours only when needed: ``2:03``)."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def job_labels(jobs: list[list[str]]) -> list[str]:
    """A short name per job: the overrides that tell it from the sweep's other jobs (``+attn=rala
    seed=1``), ``baseline`` for a job without attention, ``base run`` for a warm-start base job."""
    by_key = [{overrides.key(o): o for o in job} for job in jobs]  # key -> the override that sets it
    keys: list[str] = []
    for job in by_key:
        keys += [k for k in job if k not in keys]
    varying = [k for k in keys if len({job.get(k) for job in by_key}) > 1]
    labels = []
    for raw, job in zip(jobs, by_key, strict=True):
        parts = [job[k] for k in varying if k in job]
        if overrides.sets(raw, "action", "base"):
            parts = ["base run"] + [job[k] for k in varying if k in job and k != "action"]
        elif overrides.is_baseline(raw):
            parts.insert(0, "baseline")
        labels.append(" ".join(parts) or "job")
    return labels


# ---------------------------------------------------------------------------------------------------------
# views


def event_line(event: Event, state: SweepState, now: float) -> str:
    """One plain line per state change (no ANSI): what happened, and for finished jobs the sweep's counts."""
    job = event.job
    head = f"[{clock(now - state.started)}] job {job.num + 1}/{state.total}"
    if event.kind == "started":
        return f"{head} running: {job.label}"
    if event.kind == "epoch":
        return f"{head} {job.step()}: {job.label}"
    took = f" in {job.seconds:.1f}s" if job.seconds is not None else ""
    if job.status == "failed":
        return f"{head} FAILED{took}: {job.label}: {job.error} | {state.counts_line(now)}"
    return f"{head} {job.status}{took}: {job.label}{job.metric()} | {state.counts_line(now)}"


class PlainView:
    """One line per state change, for logs."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def start(self, state: SweepState) -> None:
        pass

    def update(self, state: SweepState, events: list[Event], now: float) -> None:
        for event in events:
            print(event_line(event, state, now), file=self.stream, flush=True)

    def stop(self, state: SweepState, now: float) -> None:
        pass


class TerminalView:
    """The live view: counts, a bar, the running jobs with their epochs; finished jobs scroll above it."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream, highlight=False, soft_wrap=False)
        self.live = Live(
            console=self.console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False
        )

    def start(self, state: SweepState) -> None:
        self.live.start()

    def update(self, state: SweepState, events: list[Event], now: float) -> None:
        from rich.text import Text

        for event in events:
            if event.kind != "finished":
                continue
            job = event.job
            style = {"ok": "green", "cached": "cyan", "failed": "bold red"}.get(job.status, "")
            took = f" in {clock(job.seconds)}" if job.seconds is not None else ""
            line = Text(f"{job.status:>6} ", style=style)
            line.append(f"{job.num + 1}/{state.total} {job.label}{took}{job.metric()}")
            if job.status == "failed":
                line.append(f": {job.error}", style="red")
            self.live.console.print(line, overflow="ellipsis", no_wrap=job.status != "failed")
        self.live.update(self.render(state, now), refresh=True)

    def render(self, state: SweepState, now: float) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        eta = state.eta(now)
        name = Text(f"sweep {state.sweep_dir.name}", style="bold")
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(state.total, 1), completed=state.finished(), width=30),
            f"{state.finished()}/{state.total} jobs  elapsed {clock(now - state.started)}  "
            f"ETA {clock(eta) if eta is not None else '?'}",
        )
        counts = Text()
        for status, style in (("ok", "green"), ("cached", "cyan"), ("failed", "red"), ("running", "yellow")):
            counts.append(f"{state.count(status)} {status}  ", style=style)
        counts.append(f"{state.count('pending')} pending")
        rows = Table.grid(padding=(0, 2))
        running = state.running()
        for job in running[:MAX_ROWS]:
            elapsed = clock(now - job.started_at) if job.started_at else "-"
            label = Text(job.label, overflow="ellipsis", no_wrap=True)
            rows.add_row(f"{job.num + 1}/{state.total}", job.step(), elapsed, label)
        if len(running) > MAX_ROWS:
            rows.add_row("", f"... and {len(running) - MAX_ROWS} more", "", "")
        return Group(name, bar, counts, rows) if running else Group(name, bar, counts)

    def stop(self, state: SweepState, now: float) -> None:
        self.live.update(self.render(state, now), refresh=True)
        self.live.stop()


class Watcher:
    """Polls a sweep directory every ``interval`` seconds (in a thread) and updates a view."""

    def __init__(self, sweep_dir: Path, view: PlainView | TerminalView, interval: float = 1.0) -> None:
        self.state = SweepState(Path(sweep_dir))
        self.view = view
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ablate-live", daemon=True)
        self._warned = False

    def start(self) -> None:
        self.view.start(self.state)
        self._thread.start()

    def tick(self) -> list[Event]:
        """One poll and view update (what the thread does every ``interval``)."""
        events = self.state.poll()
        self.view.update(self.state, events, time.time())
        return events

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception as e:  # the view is a convenience: the sweep goes on without it
                if not self._warned:
                    log.warning("live view: %s: %s", type(e).__name__, e)
                    self._warned = True
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.tick()
        finally:
            self.view.stop(self.state, time.time())


def live_enabled(config: DictConfig | None) -> bool:
    """``live`` of the config (default true)."""
    if config is None:
        return True
    return bool(config.get("live", True))


def _terminal_fd(stream: IO[str]) -> int | None:
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd if os.isatty(fd) else None


@contextlib.contextmanager
def watch_sweep(
    sweep_dir: Path, config: DictConfig | None = None, stream: IO[str] | None = None, interval: float = 1.0
) -> Iterator[Watcher | None]:
    """Watch the sweep in ``sweep_dir`` while the block runs (the sweeper's launch loop).

    On a terminal the live view draws on a duplicate of it, and this process's own stdout/stderr go to
    ``sweep.log`` in the sweep directory meanwhile (launcher chatter would tear the view apart); otherwise
    plain lines go to ``stream`` (stdout). Yields None when ``live: false``.
    """
    if not live_enabled(config):
        yield None
        return
    stream = stream if stream is not None else sys.stdout
    fd = _terminal_fd(stream)
    terminal: IO[str] | None = None
    redirect: Redirect | None = None
    if fd is not None:
        flush_std()
        terminal = os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None))
        view: PlainView | TerminalView = TerminalView(terminal)
    else:
        view = PlainView(stream)
    watcher = Watcher(Path(sweep_dir), view, interval)
    try:
        if terminal is not None:
            redirect = Redirect(Path(sweep_dir) / SWEEP_LOG)
            set_terminal_view(True)
        watcher.start()
        yield watcher
    finally:
        try:
            watcher.stop()
        except Exception as e:
            log.warning("live view: %s: %s", type(e).__name__, e)
        set_terminal_view(False)
        if redirect is not None:
            redirect.restore()
            log.info("launcher output of this sweep: %s", redirect.path)
        if terminal is not None:
            terminal.close()
