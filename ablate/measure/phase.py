"""The measurement phase: the latency of every architecture of a results root, side by side, in one process.

Latency is a property of an **architecture** (the composed model YAML, nc included, and the input size),
not of a run: every seed and dataset of one architecture shares it, and a training job timing its own
forwards measures whatever else the machine is doing. So training jobs record no latency; this phase
measures it once per architecture and backend, alone, after the training jobs:

1. the architectures of the ok runs (each record names its ``arch_key``; ``<run>/model.yaml`` holds the
   YAML), and for each its baseline architecture (same model and nc, no attention);
2. those without a stored measurement under the same settings (or all, with ``force``) are measured
   **together with their baselines**, and with every variant of those baselines already stored under the
   same settings (a re-timed baseline takes its stored variants along: a baseline and its variants always
   come from one phase, so a table's ms, ratios and bold agree; see :func:`ablate.measure.store.for_table`);
3. the machine's load is read (:mod:`ablate.measure.quiet`): a busy machine is waited for, then refused
   unless ``force_load``; the reading is stored with every measurement;
4. built (seed 0), fused, exported where the backend needs it, warmed up, then timed in interleaved rounds
   (:func:`ablate.measure.latency.time_interleaved`);
5. per architecture the median, p10 and p90 over all its passes, and its **ratio to the baseline measured
   in the same rounds**: per round the ratio of the two medians, stored as the median and p10/p90 over
   the rounds.

Results live under ``<results>/measures/<backend>-<settings key>/<arch key>.json`` (settings: backend,
device, dtype, batch, threads, rounds, passes, warm-up, library versions), reused until those change;
the architectures' YAML under ``<results>/measures/models/``, exported files under
``<results>/measures/export/``; every stored measurement in ``<results>/measures/latency.csv``. The table
reads them (:func:`ablate.measure.store.read_measures`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from ..paths import MODEL_YAML
from ..records import RUNS, RunRecord, read_json, run_key, write_json_atomic, write_text_atomic
from .device import torch_device
from .latency import (
    BACKENDS,
    BackendUnavailableError,
    Call,
    backend_version,
    device_name,
    flat,
    onnxruntime_call,
    tensorrt_call,
    time_interleaved,
    timing,
    torch_call,
)
from .model import architecture_key, base_model_yaml, build_model
from .quiet import Load, wait_until_quiet
from .store import EXPORT_DIR, MEASURES, MODELS_DIR, SETTINGS_JSON, phase_of, write_latency_csv

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Architecture:
    """One model to time: its YAML, input size and what the table calls it."""

    key: str
    model: str
    attn: str
    pos: str
    nc: int
    imgsz: tuple[int, int]
    yaml: dict[str, Any] = field(compare=False, repr=False)
    layers: tuple[int, ...] = ()
    mode: str = "none"
    attn_variant: str = ""

    @property
    def label(self) -> str:
        what = "baseline" if self.attn == "none" else f"{self.attn}@{self.pos}"
        return f"{self.model} {what}" + (f" ({self.attn_variant})" if self.attn_variant else "")

    @property
    def is_baseline(self) -> bool:
        return self.attn == "none"

    def baseline(self) -> Architecture:
        """The same model and nc at the same size, without attention."""
        if self.is_baseline:
            return self
        d = base_model_yaml(self.model, self.nc)
        return Architecture(
            architecture_key(d, self.imgsz), self.model, "none", "none", self.nc, self.imgsz, d
        )


UNKEYED = {"keyed": False}  # how the phase checks the machine, not how it times: not part of the key


@dataclass(frozen=True)
class Settings:
    """How latency is measured: backend, device, dtype, batch, threads and the timing schedule; and how
    quiet the machine must be (``max_load`` per core, waited for up to ``load_wait_s``; ``force_load``:
    time anyway, recorded), which is not part of the settings key."""

    backend: str = "torch"
    device: str = "cpu"
    half: bool = False
    batch: int = 1
    threads: int | None = 1  # CPU threads (torch intra-op / ONNX Runtime intra-op); None: every core
    rounds: int = 30
    passes: int = 10
    warmup: int = 10
    min_time_s: float = 4.0  # more rounds (up to 10x) until each architecture's timed passes sum to this
    force_load: bool = field(default=False, metadata=UNKEYED)
    max_load: float = field(default=0.25, metadata=UNKEYED)
    load_wait_s: float = field(default=300.0, metadata=UNKEYED)

    @classmethod
    def from_config(cls, latency: Mapping[str, Any], backend: str) -> Settings:
        """Settings of one backend from the ``measure.latency`` config (its ``backends`` list aside)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"backend"}
        return cls(backend=backend, **{k: v for k, v in latency.items() if k in names and v is not None})

    def check(self) -> None:
        """Raise ValueError naming a bad value and the valid choices."""
        if self.backend not in BACKENDS:
            raise ValueError(f"measure backend {self.backend!r} is not valid; valid: {', '.join(BACKENDS)}")
        for name in ("batch", "rounds", "passes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"measure.latency.{name}={getattr(self, name)!r} must be a positive integer")
        if self.warmup < 0 or (self.threads is not None and self.threads < 1):
            raise ValueError(
                f"measure.latency warmup={self.warmup}, threads={self.threads} must be >= 0 / >= 1"
            )
        if self.half and not str(self.device).startswith("cuda") and self.backend != "tensorrt":
            raise ValueError(f"measure.latency.half=true needs a CUDA device; device={self.device!r}")
        if self.backend == "onnxruntime" and self.device != "cpu":
            raise ValueError(f"backend onnxruntime runs on cpu here; device={self.device!r}; valid: cpu")
        if not self.max_load > 0 or self.load_wait_s < 0:
            raise ValueError(
                f"measure.latency max_load={self.max_load}, load_wait_s={self.load_wait_s} must be > 0 / >= 0"
            )

    @property
    def resolved_threads(self) -> int:
        """``threads``, or every core this process may run on (a SLURM job's allocation, not the node's)."""
        if self.threads:
            return int(self.threads)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    @property
    def dtype(self) -> str:
        return "float16" if self.half else "float32"

    def describe(self) -> dict[str, Any]:
        """What the key is made of: the settings with the device's name and the backend's version."""
        keyed = (f.name for f in dataclasses.fields(self) if f.metadata.get("keyed", True))
        return {
            **{name: getattr(self, name) for name in keyed},
            "threads": self.resolved_threads,
            "device_name": device_name(self.device if self.backend == "torch" else "cpu")
            if self.backend != "tensorrt"
            else self.device,
            "dtype": self.dtype,
            "version": backend_version(self.backend),
            "torch": torch.__version__,
        }

    @property
    def key(self) -> str:
        return f"{self.backend}-{run_key(self.describe())[:10]}"


def settings_from_config(latency: Mapping[str, Any], train_device: Any = None) -> list[Settings]:
    """One :class:`Settings` per backend of ``measure.latency`` (device null: ``train.device``), checked.

    Raises ValueError naming a bad value and the valid choices.
    """
    backends = latency.get("backends") or ["torch"]
    if isinstance(backends, str):
        backends = [b.strip() for b in backends.split(",")]
    device = torch_device(latency.get("device") or train_device)
    out = [Settings.from_config({**latency, "device": device}, str(b)) for b in backends]
    for s in out:
        s.check()
    return out


@dataclass
class PhaseResult:
    """What one phase did for one backend."""

    settings: Settings
    measured: list[dict[str, Any]] = field(default_factory=list)  # this phase's measurements
    reused: int = 0  # architectures whose stored measurement was kept
    retimed: int = 0  # stored variants timed again because their baseline was
    load: Load | None = None  # the machine's load the phase timed under
    skipped: str | None = None  # why the backend did not run
    wall_s: float = 0.0
    timed_s: float = 0.0  # sum of the timed passes

    @property
    def overhead(self) -> float:
        """The phase's own share of its wall time: everything but the timed passes."""
        return 1 - self.timed_s / self.wall_s if self.wall_s > 0 else 0.0


# ------------------------------------------------------------------------------------ architectures


def architectures(records: Iterable[Mapping[str, Any]], results_dir: Path) -> list[Architecture]:
    """The architectures of the ok records that name one (``arch_key``), in first-seen order."""
    out: dict[str, Architecture] = {}
    for r in records:
        key = r.get("arch_key")
        if r.get("status") != "ok" or not key or key in out:
            continue
        path = Path(results_dir) / RUNS / str(r["key"]) / MODEL_YAML
        try:
            d = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            log.warning("run %s: no readable %s (%s); its architecture is not measured", r["key"], path, e)
            continue
        imgsz = tuple(int(v) for v in (r.get("gflops_imgsz") or [r["imgsz"], r["imgsz"]]))
        out[str(key)] = Architecture(
            key=str(key),
            model=str(r["model"]),
            attn=str(r.get("attn") or "none"),
            pos=str(r.get("pos") or "none"),
            nc=int(d["nc"]),
            imgsz=(imgsz[0], imgsz[1]),
            yaml=d,
            layers=tuple(_as_list(r.get("layers"))),
            mode=str(r.get("mode") or "none"),
            attn_variant=str(r.get("attn_variant") or ""),
        )
    return list(out.values())


def _as_list(value: Any) -> list[int]:
    if isinstance(value, str):
        value = yaml.safe_load(value) if value.strip() else []
    return [int(v) for v in value or []]


def with_baselines(archs: Sequence[Architecture]) -> list[Architecture]:
    """``archs`` and the baseline of each, baselines first (each once)."""
    bases = {b.key: b for b in (a.baseline() for a in archs)}
    rest = [a for a in archs if a.key not in bases]
    return [*bases.values(), *rest]


def stored_measures(store: Path) -> dict[str, dict[str, Any]]:
    """arch key -> its measurement stored in one settings directory."""
    out = {}
    for path in sorted(store.glob("*.json")):
        data = read_json(path) if path.name != SETTINGS_JSON else None
        if isinstance(data, dict) and data.get("arch_key"):
            out[str(data["arch_key"])] = data
    return out


def apart(m: Mapping[str, Any], stored: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether a stored variant was timed in another phase than its baseline stored beside it (a store
    written before baselines took their variants along): it is timed again, with its baseline."""
    base = stored.get(str(m.get("baseline_arch_key")))
    return base is not None and base is not m and phase_of(base) != phase_of(m)


def stored_architecture(m: Mapping[str, Any], results_dir: Path) -> Architecture | None:
    """The architecture of a stored measurement, from its YAML under ``measures/models`` (None if gone)."""
    path = Path(results_dir) / MEASURES / MODELS_DIR / f"{m['arch_key']}.yaml"
    try:
        d = yaml.safe_load(path.read_text())
        return Architecture(
            key=str(m["arch_key"]),
            model=str(m["model"]),
            attn=str(m["attn"]),
            pos=str(m["pos"]),
            nc=int(m["nc"]),
            imgsz=(int(m["imgsz"][0]), int(m["imgsz"][1])),
            yaml=d,
            layers=tuple(int(v) for v in m.get("layers") or []),
            mode=str(m.get("mode") or "none"),
            attn_variant=str(m.get("attn_variant") or ""),
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, IndexError):
        return None


def together(
    todo: Sequence[Architecture],
    archs: Sequence[Architecture],
    stored: Mapping[str, Mapping[str, Any]],
    results_dir: Path,
) -> tuple[list[Architecture], int]:
    """What one phase times: ``todo``, their baselines, and every variant of those baselines stored under
    the same settings (a baseline timed again takes its stored variants along: a table's ms, ratio and bold
    of one baseline and its variants then come from one phase). Returns (the group, how many of it are
    stored variants timed again)."""
    group = with_baselines(todo)
    keys = {a.key for a in group}
    bases = {a.key for a in group if a.is_baseline}
    known = {a.key: a for a in archs}
    again: list[Architecture] = []
    for key, m in stored.items():
        if key in keys or m.get("baseline_arch_key") not in bases:
            continue
        a = known.get(key) or stored_architecture(m, results_dir)
        if a is None:
            log.warning(
                "%s (%s): its stored latency cannot be timed again with its baseline (no model YAML under "
                "%s); tables show it without a ratio until it is measured again",
                m.get("label", key),
                key,
                Path(results_dir) / MEASURES / MODELS_DIR,
            )
            continue
        again.append(a)
    if again:
        log.info(
            "timing %d stored variant(s) again with their baseline: %s",
            len(again),
            ", ".join(a.label for a in again),
        )
    return [*group, *again], len(again)


# ------------------------------------------------------------------------------------------ measuring


def build(arch: Architecture) -> torch.nn.Module:
    """The architecture's model, initialised under seed 0 (weights do not change its latency), with the head
    it is deployed with selected (:func:`ablate.families.select_head`)."""
    from ..families import select_head

    torch.manual_seed(0)
    return select_head(build_model(arch.yaml))  # an end-to-end model as deployed: its one-to-one head


def make_call(arch: Architecture, settings: Settings, export_dir: Path) -> Call:
    """A zero-argument callable that runs one forward of ``arch`` on ``settings``' backend."""
    if settings.backend == "onnxruntime":
        from .export import export_onnx

        path = export_dir / f"{arch.key}-b{settings.batch}.onnx"
        if not path.is_file():  # exported once per architecture and batch, then reused
            export_onnx(build(arch), arch.imgsz, path, batch=settings.batch)
        return onnxruntime_call(path, arch.imgsz, settings.batch, settings.resolved_threads)
    model = build(arch)
    if settings.backend == "torch":
        return torch_call(model, arch.imgsz, settings.batch, settings.device, settings.half)
    engine = (
        export_dir
        / f"{arch.key}-b{settings.batch}-{settings.dtype}-{settings.device.replace(':', '')}.engine"
    )
    return tensorrt_call(model, arch.imgsz, engine, settings.batch, settings.device, settings.half)


def backend_unavailable(settings: Settings) -> str | None:
    """Why this machine cannot run ``settings.backend`` (None when it can)."""
    import importlib.util

    if settings.backend == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed"
    if settings.backend == "tensorrt":
        if not torch.cuda.is_available():
            return "tensorrt needs a CUDA device; this machine has none"
        if importlib.util.find_spec("tensorrt") is None:
            return "the tensorrt package is not installed"
    if (
        settings.backend == "torch"
        and str(settings.device).startswith("cuda")
        and not torch.cuda.is_available()
    ):
        return f"device {settings.device} is not available (no CUDA)"
    return None


def measure(
    archs: Sequence[Architecture],
    settings: Settings,
    results_dir: Path,
    force: bool = False,
    load: Load | None = None,
) -> PhaseResult:
    """Measure the architectures (with their baselines and the baselines' stored variants, see
    :func:`together`) that lack a stored measurement under ``settings``, or whose stored one is from
    another phase than their baseline's (:func:`apart`).

    Nothing else may run on the machine meanwhile: before timing, the load is read and waited for
    (:func:`ablate.measure.quiet.wait_until_quiet`; ``load``: a reading taken already). Raises
    :class:`ablate.measure.quiet.MachineBusyError` (nothing written) when it stays busy without
    ``settings.force_load``.
    """
    settings.check()
    start = time.perf_counter()
    result = PhaseResult(settings)
    reason = backend_unavailable(settings)
    if reason is not None:
        result.skipped = reason
        log.warning("latency on %s skipped: %s", settings.backend, reason)
        return result
    results_dir = Path(results_dir)
    store = results_dir / MEASURES / settings.key
    stored = stored_measures(store)
    todo = [a for a in archs if force or a.key not in stored or apart(stored[a.key], stored)]
    if not todo:
        result.reused = len(archs)
        return result
    group, result.retimed = together(todo, archs, stored, results_dir)
    timed = {a.key for a in group}
    result.reused = sum(a.key not in timed for a in archs)
    result.load = load or wait_until_quiet(
        results_dir, settings.max_load, settings.load_wait_s, settings.force_load
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.resolved_threads)
    try:
        calls = {a.key: make_call(a, settings, Path(results_dir) / MEASURES / EXPORT_DIR) for a in group}
        log.info("timing %d architectures on %s: %s", len(group), settings.backend, settings.describe())
        times = time_interleaved(
            calls,
            rounds=settings.rounds,
            passes=settings.passes,
            warmup=settings.warmup,
            min_time_s=settings.min_time_s,
            max_rounds=10 * settings.rounds,
        )
    finally:
        torch.set_num_threads(previous)
    phase = {
        "phase": datetime.now(UTC).isoformat(timespec="microseconds"),
        "phase_id": uuid.uuid4().hex[:12],  # what a table matches a variant and its baseline by
        **result.load.fields(),
    }
    store.mkdir(parents=True, exist_ok=True)
    write_json_atomic(store / SETTINGS_JSON, settings.describe())
    models = results_dir / MEASURES / MODELS_DIR
    for a in group:
        if not (models / f"{a.key}.yaml").is_file():  # to time it again later without its runs
            write_text_atomic(models / f"{a.key}.yaml", yaml.safe_dump(a.yaml, sort_keys=False))
        entry = _entry(a, times, settings, phase)
        write_json_atomic(store / f"{a.key}.json", entry)
        result.measured.append(entry)
    result.timed_s = sum(sum(flat(t)) for t in times.values()) / 1e3
    result.wall_s = time.perf_counter() - start
    return result


def _entry(
    a: Architecture, times: Mapping[str, list[list[float]]], settings: Settings, phase: Mapping[str, Any]
) -> dict:
    """The stored measurement of ``a``: its timing and its ratio to the baseline timed in the same rounds."""
    t = timing(flat(times[a.key]))
    base = a.baseline().key
    ratios = [
        statistics.median(mine) / statistics.median(theirs)
        for mine, theirs in zip(times[a.key], times[base], strict=True)
    ]
    r = timing(ratios)
    d = settings.describe()
    return {
        "arch_key": a.key,
        "label": a.label,
        "model": a.model,
        "attn": a.attn,
        "pos": a.pos,
        "layers": list(a.layers),
        "mode": a.mode,
        "attn_variant": a.attn_variant,
        "nc": a.nc,
        "imgsz": list(a.imgsz),
        "baseline_arch_key": base,
        "latency_ms": round(t.median_ms, 4),
        "latency_p10_ms": round(t.p10_ms, 4),
        "latency_p90_ms": round(t.p90_ms, 4),
        "latency_count": t.count,
        "latency_ratio": round(r.median_ms, 4),
        "latency_ratio_p10": round(r.p10_ms, 4),
        "latency_ratio_p90": round(r.p90_ms, 4),
        "latency_backend": settings.backend,
        "latency_device": d["device_name"],
        "latency_dtype": settings.dtype,
        "latency_batch": settings.batch,
        "latency_threads": d["threads"],
        "latency_version": d["version"],
        "rounds": len(times[a.key]),
        "passes": settings.passes,
        "warmup": settings.warmup,
        "settings_key": settings.key,
        **phase,
    }


# ------------------------------------------------------------------------------------------- reading


def config_defaults() -> dict[str, Any]:
    """``measure.latency`` of the project's ``conf/config.yaml``."""
    from omegaconf import OmegaConf

    from ..paths import CONF_DIR

    cfg = OmegaConf.load(CONF_DIR / "config.yaml")
    return OmegaConf.to_container(cfg.measure.latency, resolve=True)  # type: ignore[return-value]


def selected_records(results: Path, where: list[str]) -> list[dict[str, Any]]:
    """The records under ``results`` matching the ``--where`` filters (as ``make table`` selects them)."""
    from ..report.load import filter_runs, load_records, parse_where, runs_frame

    records = load_records(results).records
    if not where or not records:
        return records
    keys = set(filter_runs(runs_frame(records), parse_where(where))["key"])
    return [r for r in records if r.get("key") in keys]


def format_phase(result: PhaseResult) -> str:
    """The terminal table of one phase: architecture, median (p10–p90) ms and the ratio to its baseline."""
    s = result.settings
    if result.skipped:
        return f"latency on {s.backend}: skipped ({result.skipped})"
    if not result.measured:
        return (
            f"latency on {s.backend}: {result.reused} architecture(s) already measured under these settings"
        )
    d = s.describe()
    head = (
        f"latency on {s.backend} ({d['version']}), {d['device_name']}, "
        f"{d['threads']} thread{'s' if d['threads'] != 1 else ''}, {s.dtype}, "
        f"batch {s.batch}: {result.measured[0]['rounds']} interleaved rounds x {s.passes} passes after "
        f"{s.warmup} warm-up passes; {result.wall_s:.0f} s, "
        f"{100 * result.overhead:.1f} % outside the timed passes"
    )
    if result.retimed:
        head += (
            f"; {result.retimed} stored variant{'s' * (result.retimed != 1)} timed again with their baseline"
        )
    lines = [head]
    if result.load is not None:
        lines.append(
            f"timed under load (forced; the table says so): {result.load.describe()}"
            if result.load.busy
            else f"machine quiet: {result.load.describe()}"
        )
    lines += [
        f"{'architecture':<34} {'imgsz':>7} {'median ms':>10} {'p10-p90 ms':>15} "
        f"{'x baseline (p10-p90)':>22}",
    ]
    for m in sorted(result.measured, key=lambda m: (m["model"], m["attn"] != "none", m["latency_ms"])):
        size = "x".join(map(str, m["imgsz"]))
        spread = f"{m['latency_p10_ms']:.2f}-{m['latency_p90_ms']:.2f}"
        ratio = f"{m['latency_ratio']:.3f} ({m['latency_ratio_p10']:.3f}-{m['latency_ratio_p90']:.3f})"
        lines.append(f"{m['label']:<34} {size:>7} {m['latency_ms']:>10.2f} {spread:>15} {ratio:>22}")
    return "\n".join(lines)


def profile(
    record: RunRecord, latency: Mapping[str, Any], device: Any, results_dir: Path, force: bool = False
) -> list[PhaseResult]:
    """The latency of ``action=profile``: the measurement phase for the profiled run's architecture and its
    baseline, under the run's ``measure.latency`` settings (``device``: ``train.device``, when those name
    none). Raises :class:`ablate.measure.quiet.MachineBusyError` as :func:`run_phase`."""
    return run_phase(results_dir, settings_from_config(latency, device), [record.to_dict()], force=force)


def run_phase(
    results_dir: Path,
    settings: Sequence[Settings],
    records: Iterable[Mapping[str, Any]] | None = None,
    force: bool = False,
) -> list[PhaseResult]:
    """The measurement phase over ``records`` (default: every record under ``results_dir``), one backend
    after the other; then ``latency.csv`` is rewritten.

    The load is read once, before the first backend times anything (a later backend's reading would count
    this phase's own timing); raises :class:`ablate.measure.quiet.MachineBusyError` as :func:`measure`.
    """
    if records is None:
        records = selected_records(Path(results_dir), [])
    archs = architectures(records, results_dir)
    results = []
    load = None
    for s in settings:
        try:
            results.append(measure(archs, s, results_dir, force, load))
        except BackendUnavailableError as e:
            results.append(PhaseResult(s, skipped=str(e)))
        load = load or results[-1].load
    write_latency_csv(results_dir)
    return results
