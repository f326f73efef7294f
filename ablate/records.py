"""Result storage: the run key, the per-run directory, ``record.json`` written atomically, the one test of
"is there an ok record for this key?" (:func:`reusable_record`) and the one reader of all records
(:func:`read_records`)."""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

RECORD = "record.json"
RUNS = "runs"
LOCK = ".lock"


@dataclass
class RunRecord:
    """One run's tidy result row. ``status`` is ``ok`` or ``failed`` (then ``error`` says why)."""

    key: str
    status: str = "failed"
    error: str | None = None
    action: str = "train"
    model: str = ""
    family: str = ""  # the model's family (ablate.families): yolov8, yolo11, yolo12, yolo26
    scale: str = ""
    attn: str = "none"
    attn_params: dict[str, Any] = field(default_factory=dict)
    attn_variant: str = ""  # what sets this module apart from its paper's defaults, e.g. "no RoPE"
    pos: str = "none"
    layers: list[int] = field(default_factory=list)
    strides: list[int] = field(default_factory=list)  # output stride of each placement layer (P3 = 8, ...)
    mode: str = "none"
    dataset: str = ""
    seed: int = 0
    epochs: int = 0
    imgsz: int = 0
    batch: int = 0
    train: str = ""
    # grouping keys (ablate.experiment): the configuration without its seed, the configuration of the
    # matching baseline, and the training settings (runs with different settings are never averaged)
    config_key: str = ""
    baseline_key: str = ""
    train_hash: str = ""
    train_settings: dict[str, Any] = field(default_factory=dict)
    sweep: str | None = None
    # how training started: "scratch", "warm" (fine-tuned the protocol's base run init_run) or "weights"
    # (model.weights); role "base" marks a run trained as some configuration's warm-start base
    init: str = "scratch"
    init_run: str | None = None
    role: str = "run"
    # the checkpoint the run started from and where its tensors went (ablate.weights)
    weights_path: str | None = None
    weights_sha256: str | None = None
    weights_transferred: int | None = None
    weights_total: int | None = None
    weights_skipped: list[dict[str, str]] = field(default_factory=list)
    params: int | None = None
    map50: float | None = None
    map50_95: float | None = None
    precision: float | None = None
    recall: float | None = None
    train_seconds: float | None = None
    train_threads: int | None = None  # torch CPU threads while training (results can depend on them)
    train_loss: float | None = None  # mean training loss (box + cls + dfl) of the last epoch
    # exact costs (ablate.measure.cost): parameters added/swapped in, attention-inclusive FLOPs. Latency is
    # not a run's: the measurement phase (ablate.measure.phase) times each architecture, keyed arch_key
    arch_key: str = ""
    params_attn: int | None = None
    gflops: float | None = None
    gflops_imgsz: list[int] = field(default_factory=list)
    gflops_counter: str | None = None
    gflops_ultralytics: float | None = None
    gflops_ultralytics_counter: str | None = None
    peak_memory_train_mb: float | None = None
    # COCO AP overall and by object size (ablate.measure.coco)
    map50_95_coco: float | None = None
    map50_coco: float | None = None
    ap_small: float | None = None
    ap_medium: float | None = None
    ap_large: float | None = None
    # which checkpoint on which split the metrics above come from (ablate.measure.coco.evaluation_plan):
    # "last epoch on val" or "best-on-val, reported on test"; None in records written before it existed
    evaluated: str | None = None
    # training resumed from ultralytics' last.pt of an interrupted attempt (its epoch), else None
    resumed_from_epoch: int | None = None
    # unix times of the job's steps: job_start, model_built, train_start, first_step, train_end
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    git_sha: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    # the data the run used (ablate.data_identity): data_hash is the content hash of its splits (names and
    # bytes of images and labels); data the YAML, split dirs, counts and generator settings behind it
    data_hash: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    # not stored: set when a job reused an existing ok record instead of running
    cached: bool = field(default=False, repr=False, metadata={"stored": False})

    def to_dict(self) -> dict[str, Any]:
        stored = {f.name for f in dataclasses.fields(self) if f.metadata.get("stored", True)}
        return {k: v for k, v in dataclasses.asdict(self).items() if k in stored}

    def update(self, fields: dict[str, Any]) -> RunRecord:
        """Set the record fields named in ``fields`` (a step's result; its ``timings`` join the record's);
        an unknown name is an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(fields) - known
        if unknown:
            raise KeyError(f"not RunRecord fields: {', '.join(sorted(unknown))}")
        for k, v in fields.items():
            setattr(self, k, {**self.timings, **v} if k == "timings" else v)
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls) if f.metadata.get("stored", True)}
        return cls(**{k: v for k, v in d.items() if k in known})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_key(spec: dict[str, Any]) -> str:
    """Stable short hash of the settings that define an experiment (JSON with sorted keys)."""
    text = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_dir(results_dir: Path, key: str) -> Path:
    return Path(results_dir) / RUNS / key


def write_json_atomic(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON atomically (see :func:`write_text_atomic`)."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str))


def write_record(directory: Path, record: RunRecord) -> Path:
    return write_json_atomic(Path(directory) / RECORD, record.to_dict())


def read_json(path: Path) -> Any:
    """Parsed JSON of ``path``, or None when absent, truncated or invalid."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_record(directory: Path) -> RunRecord | None:
    """The record in ``directory``, or None when absent or unreadable."""
    return parse_record(read_bytes(Path(directory) / RECORD))


def read_bytes(path: Path) -> bytes | None:
    """The bytes of ``path``, or None when it is absent or unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def parse_record(raw: bytes | None) -> RunRecord | None:
    """The record in ``raw`` (a ``record.json``'s bytes), or None when absent or unreadable."""
    try:
        data = json.loads(raw) if raw is not None else None
        return RunRecord.from_dict(data) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        return None


def reusable_record(
    results_dir: Path,
    key: str,
    force: bool = False,
    sweep: str | None = None,
    seen: Seen | None = None,
    current: Callable[[RunRecord], bool] | None = None,
) -> RunRecord | None:
    """The ``ok`` record of run ``key`` that a job reuses instead of running it (marked ``cached``), or None.

    The one test of "is there an ok record for this key?": the planner, the run (before its lock and once
    it holds it) and the warm start make it. Without ``force`` any ok record is reused. ``force=true`` re-runs
    once per invocation, not once per job that reaches the run: a forced job reuses an ok record made during
    this invocation, by a job of the same ``sweep`` or, given ``seen`` (the record as this job first read
    it), by any job since (:func:`made_this_invocation`); a planner (no sweep yet, nothing seen) runs it.
    ``current`` tests that the record is a result on the data used now (:func:`ablate.run.current`): a
    record of data edited since is not reused.
    """
    raw = read_bytes(run_dir(results_dir, key) / RECORD)
    record = parse_record(raw)
    if record is None or record.status != "ok":
        return None
    if current is not None and not current(record):
        return None
    if force and not made_this_invocation(raw, record.sweep, sweep, seen):
        return None
    record.cached = True
    return record


@dataclass
class Loaded:
    """Every readable record under a results root, as a dict with its path under ``record_path``, and the
    paths of the unreadable ones."""

    records: list[dict[str, Any]]
    skipped: list[Path] = field(default_factory=list)


def read_records(results_dir: Path, threads: int = 4) -> Loaded:
    """Every record under ``results_dir``, in run-key order: the one reader of all records (the planner's
    estimates, the tables, the measurement phase). A run without a record (in progress) is left out; an
    unreadable one (truncated, no JSON, no ``key``/``status``) is skipped with a warning.

    ``threads`` threads read the files, one slice each (overlapping the I/O of a cold cache); the JSON is
    parsed in this thread (parsing in the threads only adds GIL contention).
    """
    paths = _record_files(results_dir)
    if len(paths) >= 512 and threads > 1:
        step = -(-len(paths) // threads)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = pool.map(_read_all, [paths[i : i + step] for i in range(0, len(paths), step)])
            data = [b for part in parts for b in part]
    else:
        data = _read_all(paths)
    loaded = Loaded([])
    for path, raw in zip(paths, data, strict=True):
        if raw is None:
            continue
        d = _parse(path, raw)
        if d is None:
            loaded.skipped.append(Path(path))
        else:
            loaded.records.append(d)
    return loaded


def _record_files(results_dir: Path) -> list[str]:
    """``runs/<key>/record.json`` of every run directory under ``results_dir``, sorted by key."""
    root = os.path.join(results_dir, RUNS)
    if not os.path.isdir(root):
        return []
    with os.scandir(root) as it:
        names = sorted(e.name for e in it if e.is_dir())
    return [os.path.join(root, n, RECORD) for n in names]


def _read_all(paths: Sequence[str]) -> list[bytes | None]:
    """The bytes of each file; None when it does not exist (a run in progress), b"" when unreadable."""
    out: list[bytes | None] = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                out.append(fh.read())
        except FileNotFoundError:
            out.append(None)
        except OSError as e:
            log.warning("skipping %s: unreadable record (%s)", path, e)
            out.append(b"")
    return out


def _parse(path: str, data: bytes) -> dict[str, Any] | None:
    """A record's dict with its ``record_path``; None (with a warning) when it is no readable record.

    orjson (about 3x faster on 10,000 records), Python's json where orjson refuses the text (records may
    hold NaN, which json writes and orjson does not read)."""
    try:
        try:
            d = orjson.loads(data)
        except orjson.JSONDecodeError:
            d = json.loads(data)
    except ValueError as e:
        log.warning("skipping %s: unreadable record (%s)", path, " ".join(str(e).split())[:120])
        return None
    if not isinstance(d, dict) or not isinstance(d.get("key"), str) or not isinstance(d.get("status"), str):
        log.warning("skipping %s: not a run record (no key/status)", path)
        return None
    d["record_path"] = path
    return d


@dataclass(frozen=True)
class Seen:
    """A file's bytes (None: absent) as a job first read them, to tell later whether another job has
    written the file since: a record or a base pin rewritten by any job differs in its bytes (its
    timestamps), so no clocks are compared (jobs of one sweep may run on machines whose clocks differ)."""

    raw: bytes | None

    @classmethod
    def read(cls, path: Path) -> Seen:
        return cls(read_bytes(path))


def made_this_invocation(
    raw: bytes | None, written_by: str | None, sweep: str | None, seen: Seen | None
) -> bool:
    """Whether a file whose bytes are now ``raw`` was written during this job's invocation, so that
    ``force=true`` (one re-run per invocation) keeps it instead of redoing it.

    An invocation is one multirun (every job of a sweep carries its name, ``sweep``; the file names the
    sweep that wrote it, ``written_by``) or one single run. A file counts when a job of the same sweep wrote
    it (the jobs of a sweep may run one after another), or when it differs from what this job first saw,
    ``seen`` (another job wrote it while this one started or waited for the lock)."""
    return (sweep is not None and written_by == sweep) or (seen is not None and raw != seen.raw)


@contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); yields whether we had to wait for it.

    ``flock`` is released by the kernel when its holder dies (even by SIGKILL), so a killed job never
    leaves a stale lock; on NFS, Linux maps it to POSIX record locks, which the lock manager shares
    across machines.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        waited = False
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = True
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield waited
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def run_lock(directory: Path) -> AbstractContextManager[bool]:
    """The run directory's lock, held while its run executes (two jobs never train one key twice)."""
    return file_lock(Path(directory) / LOCK)


def results_lock(results_dir: Path) -> AbstractContextManager[bool]:
    """The results root's lock, held while the shared files (runs.csv, summary, tables, figures) change."""
    return file_lock(Path(results_dir) / LOCK)


def current_umask() -> int:
    """This process's umask (read from /proc where it can be, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: set and restore (not thread-safe, hence the last resort)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to a temp file in the same directory, fsync, then rename it over ``path``.

    The file gets the mode an ordinary ``open(path, "w")`` would give it (0666 less the umask), not
    ``mkstemp``'s 0600: records in a results root shared by a group stay readable by the group."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere): from-scratch runs that
    take off on one CPU may not on another, so a result names the CPU it was trained on. Read
    once per process."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def versions() -> dict[str, str]:
    """Versions of everything a result depends on, and the CPU it was computed on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "ultralytics", "ablate", "hydra-core"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    out["cpu"] = cpu_model()
    return out


def git_sha(repo: Path | None = None) -> str | None:
    """The commit of the ablate checkout (``+dirty`` when it has uncommitted changes), if any."""
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("+dirty" if dirty else "")
