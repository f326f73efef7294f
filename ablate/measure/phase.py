"""The measurement phase: the latency of every architecture of a results root, side by side, in one process.

Latency is a property of an **architecture** (the composed model YAML, nc included, and the input size),
not of a run: every seed and dataset of one architecture shares it, and a training job timing its own
forwards measures whatever else the machine is doing. So training jobs record no latency; this phase
measures it once per architecture and backend, alone, after the training jobs:

1. the architectures of the ok runs (each record names its ``arch_key``; ``<run>/model.yaml`` holds the
   YAML), and for each its baseline architecture (same model and nc, no attention);
2. those without a stored measurement under the same settings (or all, with ``force``) are measured
   **together with their baselines**: built (seed 0), fused, exported where the backend needs it, warmed
   up, then timed in interleaved rounds (:func:`ablate.measure.latency.time_interleaved`);
3. per architecture the median, p10 and p90 over all its passes, and its **ratio to the baseline measured
   in the same rounds**: per round the ratio of the two medians, stored as the median and p10/p90 over
   the rounds.

Results live under ``<results>/measures/<backend>-<settings key>/<arch key>.json`` (settings: backend,
device, dtype, batch, threads, rounds, passes, warm-up, library versions), reused until those change;
exported files under ``<results>/measures/export/``; every stored measurement in
``<results>/measures/latency.csv``. The table reads them (:func:`ablate.measure.store.read_measures`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from ..records import RUNS, run_key, write_json_atomic
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
from .store import EXPORT_DIR, MEASURES, MODEL_YAML, SETTINGS_JSON, write_latency_csv

log = logging.getLogger(__name__)


def architecture_key(model_yaml: Mapping[str, Any], imgsz: Sequence[int]) -> str:
    """The key of an architecture: hash of its composed model YAML (nc included) and input size (h, w)."""
    return run_key({"model_yaml": dict(model_yaml), "imgsz": [int(v) for v in imgsz]})


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
        from ..compose import base_model_yaml

        d = base_model_yaml(self.model, self.nc)
        return Architecture(
            architecture_key(d, self.imgsz), self.model, "none", "none", self.nc, self.imgsz, d
        )


@dataclass(frozen=True)
class Settings:
    """How latency is measured: backend, device, dtype, batch, threads and the timing schedule."""

    backend: str = "torch"
    device: str = "cpu"
    half: bool = False
    batch: int = 1
    threads: int | None = 1  # CPU threads (torch intra-op / ONNX Runtime intra-op); None: every core
    rounds: int = 30
    passes: int = 10
    warmup: int = 10
    min_time_s: float = 4.0  # more rounds (up to 10x) until each architecture's timed passes sum to this

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
        return {
            **dataclasses.asdict(self),
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


def torch_device(value: Any) -> str:
    """A device as torch names it from ultralytics' spelling: null/'' -> cpu, 0 or '0,1' -> cuda:0."""
    text = (
        ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value or "cpu").strip().lower()
    )
    first = text.split(",")[0].strip() or "cpu"
    return f"cuda:{first}" if first.isdigit() else first


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
    reused: int = 0
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


# ------------------------------------------------------------------------------------------ measuring


def build(arch: Architecture) -> torch.nn.Module:
    """The architecture's model, initialised under seed 0 (weights do not change its latency)."""
    from ..compose import build_model

    torch.manual_seed(0)
    return build_model(arch.yaml)


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
    archs: Sequence[Architecture], settings: Settings, results_dir: Path, force: bool = False
) -> PhaseResult:
    """Measure the architectures (with their baselines) that lack a stored measurement under ``settings``.

    Nothing else may run on the machine meanwhile: the caller runs this after the training jobs.
    """
    settings.check()
    start = time.perf_counter()
    result = PhaseResult(settings)
    reason = backend_unavailable(settings)
    if reason is not None:
        result.skipped = reason
        log.warning("latency on %s skipped: %s", settings.backend, reason)
        return result
    store = Path(results_dir) / MEASURES / settings.key
    todo = [a for a in archs if force or not (store / f"{a.key}.json").is_file()]
    result.reused = len(archs) - len(todo)
    if not todo:
        return result
    group = with_baselines(todo)
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
    phase = datetime.now(UTC).isoformat(timespec="seconds")
    store.mkdir(parents=True, exist_ok=True)
    write_json_atomic(store / SETTINGS_JSON, settings.describe())
    for a in group:
        entry = _entry(a, times, settings, phase)
        write_json_atomic(store / f"{a.key}.json", entry)
        result.measured.append(entry)
    result.timed_s = sum(sum(flat(t)) for t in times.values()) / 1e3
    result.wall_s = time.perf_counter() - start
    return result


def _entry(a: Architecture, times: Mapping[str, list[list[float]]], settings: Settings, phase: str) -> dict:
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
        "phase": phase,
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
    lines = [
        head,
        f"{'architecture':<34} {'imgsz':>7} {'median ms':>10} {'p10-p90 ms':>15} "
        f"{'x baseline (p10-p90)':>22}",
    ]
    for m in sorted(result.measured, key=lambda m: (m["model"], m["attn"] != "none", m["latency_ms"])):
        size = "x".join(map(str, m["imgsz"]))
        spread = f"{m['latency_p10_ms']:.2f}-{m['latency_p90_ms']:.2f}"
        ratio = f"{m['latency_ratio']:.3f} ({m['latency_ratio_p10']:.3f}-{m['latency_ratio_p90']:.3f})"
        lines.append(f"{m['label']:<34} {size:>7} {m['latency_ms']:>10.2f} {spread:>15} {ratio:>22}")
    return "\n".join(lines)


def run_phase(
    results_dir: Path,
    settings: Sequence[Settings],
    records: Iterable[Mapping[str, Any]] | None = None,
    force: bool = False,
) -> list[PhaseResult]:
    """The measurement phase over ``records`` (default: every record under ``results_dir``), one backend
    after the other; then ``latency.csv`` is rewritten."""
    if records is None:
        records = selected_records(Path(results_dir), [])
    archs = architectures(records, results_dir)
    results = []
    for s in settings:
        try:
            results.append(measure(archs, s, results_dir, force))
        except BackendUnavailableError as e:
            results.append(PhaseResult(s, skipped=str(e)))
    write_latency_csv(results_dir)
    return results
