"""Status of a results root: per sweep, what finished, failed and is missing, and how to complete it.

    python -m ablate.status [--results results]
    make status [RESULTS=results]

A sweep is a directory ``<results>/hydra/multirun-*`` with ``sweep.json`` (its job list) and one job
directory per job (``outcome.json`` once the job ended, ``progress.json`` from its start). A job without
an outcome is *running* while its progress file is fresh (or its process is alive on this host), else
*missing* (killed, cancelled, lost by its launcher). For a sweep with failed or missing jobs the status
prints the ``python -m ablate ... -m`` command(s) that run exactly those jobs again: the jobs' overrides,
folded into Hydra sweep syntax where they form a grid, with the sweep's launcher settings. Jobs that
finished ok are cached, so re-running the whole original sweep would complete it too.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import overrides
from .errors import AblateError
from .live import clock, job_labels
from .records import read_json
from .sweepdir import MULTIRUN_YAML, PROGRESS_JSON, read_outcome, sweep_dirs, sweep_info

STALE_S = 600  # a job on another host whose progress file is older than this counts as missing
# launcher settings of the original sweep that a completing run must not reuse
_NOT_REPEATED = ("hydra.mode", "hydra.sweep.dir", "hydra.run.dir", "hydra.sweep.subdir")


@dataclass
class Job:
    """One job of a sweep as its directory shows it."""

    num: int
    label: str
    overrides: list[str]
    status: str  # ok | cached | failed | running | missing
    error: str | None = None
    detail: str = ""


@dataclass
class SweepStatus:
    """A sweep's jobs and, when some failed or are missing, the commands that complete it."""

    sweep_dir: Path
    jobs: list[Job] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(j.status == status for j in self.jobs)

    @property
    def complete(self) -> bool:
        return all(j.status in ("ok", "cached") for j in self.jobs)


def sweep_status(sweep_dir: Path, results: Path | None = None, now: float | None = None) -> SweepStatus:
    """Read one sweep directory: each job's state, and the completing commands."""
    now = time.time() if now is None else now
    info = sweep_info(sweep_dir)
    listed = [list(j) for j in info.get("jobs", [])]
    total = max(int(info.get("total", 0) or 0), len(listed))
    labels = job_labels(listed) + [f"job {i + 1}" for i in range(len(listed), total)]
    status = SweepStatus(Path(sweep_dir))
    for num in range(total):
        job_dir = Path(sweep_dir) / str(num)
        overrides = listed[num] if num < len(listed) else []
        outcome = read_outcome(job_dir)
        if outcome is not None:
            state = str(outcome.status or "failed")
            job = Job(num, labels[num], list(outcome.overrides or overrides), state, outcome.error)
            if state not in ("ok", "cached"):
                job.status = "failed"
        else:
            job = Job(num, labels[num], overrides, "missing")
            progress = read_json(job_dir / PROGRESS_JSON)
            if isinstance(progress, dict):
                job.status, job.detail = running_or_missing(progress, now)
        status.jobs.append(job)
    status.commands = completing_commands(status, results)
    return status


def running_or_missing(progress: dict[str, Any], now: float) -> tuple[str, str]:
    """A job without an outcome: ``running`` when its process is alive on this host or its progress file
    is fresh, else ``missing``; with what its progress file says."""
    updated = float(progress.get("updated_at") or progress.get("started_at") or 0)
    step = ""
    if progress.get("epoch") and progress.get("epochs"):
        step = f"epoch {progress['epoch']}/{progress['epochs']}, "
    detail = f"{step}last update {clock(now - updated)} ago" if updated else step.rstrip(", ") or "no update"
    if progress.get("status") != "running":
        return "missing", f"ended without an outcome; {detail}"
    pid = progress.get("pid")
    if progress.get("host") == socket.gethostname() and isinstance(pid, int):
        return ("running", detail) if _alive(pid) else ("missing", f"its process is gone; {detail}")
    return ("running", detail) if now - updated < STALE_S else ("missing", detail)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def completing_commands(status: SweepStatus, results: Path | None = None) -> list[str]:
    """``python -m ablate ... -m`` command(s) that run the failed and missing jobs again."""
    todo = [j.overrides for j in status.jobs if j.status in ("failed", "missing") and j.overrides]
    if not todo:
        return []
    # a warm-start base job is added again by the sweep of the jobs that need it
    others = [o for o in todo if not overrides.sets(o, "action", "base")]
    todo = others or todo
    extra = launcher_overrides(status.sweep_dir)
    commands = []
    for group in fold(todo):
        if results is not None and not overrides.sets(group, "results.dir"):
            group.append(f"results.dir={overrides.quote(str(results))}")
        commands.append(shlex.join(["python", "-m", "ablate", *group, *extra, "-m"]))
    return commands


def launcher_overrides(sweep_dir: Path) -> list[str]:
    """The original sweep's Hydra overrides (launcher and its settings), from its ``multirun.yaml``."""
    from omegaconf import OmegaConf

    path = Path(sweep_dir) / MULTIRUN_YAML
    if not path.is_file():
        return []
    try:
        cfg = OmegaConf.load(path)
        hydra = list(OmegaConf.select(cfg, "hydra.overrides.hydra", default=[]) or [])
    except Exception:  # an unreadable multirun.yaml: the jobs' own overrides still complete the sweep
        return []
    return [str(o) for o in hydra if overrides.key(str(o)) not in _NOT_REPEATED]


def fold(jobs: list[list[str]]) -> list[list[str]]:
    """Jobs' override lists folded into as few Hydra sweeps as cover exactly those jobs: two groups that
    differ in one key's values only become one (``seed=0`` and ``seed=1`` → ``seed=0,1``). Only values
    that Hydra reads back as the same sweep fold (a list such as ``pos.layers=[6,8]`` never does)."""
    # per job: the key each override sets -> its overrides' texts (several when a group folded)
    groups: list[dict[str, list[str]]] = [{overrides.key(o): [o] for o in job} for job in jobs]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                key = _only_difference(groups[i], groups[j])
                if key is not None:
                    groups[i][key] += [o for o in groups[j][key] if o not in groups[i][key]]
                    del groups[j]
                    merged = True
                    break
            if merged:
                break
    return [[_sweep(texts) or texts[0] for texts in g.values()] for g in groups]


def _only_difference(a: dict[str, list[str]], b: dict[str, list[str]]) -> str | None:
    """The one key whose overrides differ between two groups (same keys otherwise), when it can fold."""
    if a.keys() != b.keys():
        return None
    differ = [k for k in a if a[k] != b[k]]
    if len(differ) != 1:
        return None
    texts = a[differ[0]] + [o for o in b[differ[0]] if o not in a[differ[0]]]
    return differ[0] if _sweep(texts) is not None else None


def _sweep(texts: list[str]) -> str | None:
    """One override sweeping over the single values of ``texts`` (``seed=0``, ``seed=1`` → ``seed=0,1``;
    one text: that text), or None when Hydra would not read it back as exactly those values (lists,
    dicts, sweeps, deletions, different prefixes)."""
    if len(texts) == 1:
        return texts[0]
    parsed = [overrides.parse(t) for t in texts]
    elements = {o.get_key_element() for o in parsed}
    if len(elements) != 1 or any(o.is_sweep_override() or o.is_delete() for o in parsed):
        return None
    if any(isinstance(o.value(), list | dict) for o in parsed):
        return None
    values = [o.get_value_element_as_str() for o in parsed]
    text = f"{elements.pop()}={','.join(values)}"
    try:
        read_back = overrides.choices(text)
    except AblateError:  # not an override Hydra reads
        return None
    return text if read_back == values else None


def format_status(status: SweepStatus, results: Path | None = None) -> str:
    """A sweep's status: one line when complete; else its unfinished jobs and the commands to finish it."""
    total = len(status.jobs)
    name = status.sweep_dir.name
    counts = ", ".join(
        f"{status.count(s)} {s}"
        for s in ("ok", "cached", "failed", "running", "missing")
        if status.count(s) or s in ("ok", "failed")
    )
    head = f"{name}: {total} job(s): {counts}"
    if status.complete:
        return f"{head}: complete"
    lines = [head]
    for job in status.jobs:
        if job.status in ("ok", "cached"):
            continue
        why = f": {job.error}" if job.error else f" ({job.detail})" if job.detail else ""
        lines.append(f"  {job.status:<8}{job.num + 1}/{total} {job.label}{why}")
    if status.commands:
        lines.append("  to complete it (ok jobs are cached; running ones are left alone):")
        lines += [f"    {c}" for c in status.commands]
    elif status.count("running"):
        lines.append("  still running")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ablate.status",
        description="Per sweep under a results root: what finished, failed and is missing, and the command "
        "that would complete it.",
    )
    p.add_argument("--results", default="results", help="results root (default: results)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    results = Path(args.results)
    if not results.is_dir():
        print(
            f"error: --results {str(results)!r} is not a directory (no results root there)", file=sys.stderr
        )
        sys.exit(2)
    sweeps = sweep_dirs(results)
    if not sweeps:
        print(f"no sweeps under {results / 'hydra'} (python -m ablate ... -m starts one)")
    for sweep_dir in sweeps:
        print(format_status(sweep_status(sweep_dir, results), results))
    from .data_identity import mixed_data  # a dataset name whose runs used different data

    for line in mixed_data(results):
        print(line)


if __name__ == "__main__":
    main()
