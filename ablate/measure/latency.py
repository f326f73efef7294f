"""Latency primitives: the one timer every latency figure of ablate goes through, and the backends that run
an architecture's forward.

* :func:`time_interleaved` times several callables side by side: warm-up passes, then rounds in which every
  member runs ``passes`` timed passes back to back, the members' order rotated by one each round (so no
  member always follows the same other, and slow drifts of the machine hit all members alike).
* A backend turns a model into a zero-argument callable that runs one forward on a fixed input:
  ``torch`` (eager, fused as ultralytics runs inference, ``torch.inference_mode``; synchronised on CUDA;
  fp16 on CUDA only), ``onnxruntime`` (the exported model on ONNX Runtime's CPU provider) and ``tensorrt``
  (an engine built by ultralytics' exporter, CUDA only). A backend the machine lacks raises
  :class:`BackendUnavailableError` with the reason.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import logging
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "tensorrt")
Call = Callable[[], object]


class BackendUnavailableError(RuntimeError):
    """A backend this machine cannot run (the message says why)."""


# ---------------------------------------------------------------------------------------------- timer


@dataclass(frozen=True)
class Timing:
    """Median and 10th/90th percentiles of a list of pass times (ms)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    count: int


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0 < q < 1, in hundredths) by linear interpolation between order statistics."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def timing(values: list[float]) -> Timing:
    """:class:`Timing` of ``values`` (at least one)."""
    if not values:
        raise ValueError("no timed passes")
    return Timing(statistics.median(values), quantile(values, 0.1), quantile(values, 0.9), len(values))


def time_interleaved(
    calls: Mapping[str, Call],
    *,
    rounds: int,
    passes: int = 1,
    warmup: int = 0,
    min_time_s: float = 0.0,
    max_rounds: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[list[float]]]:
    """Milliseconds of every pass of every member, per round: ``{name: [[round 0 passes], ...]}``.

    Args:
        calls: name -> zero-argument callable running one pass (it synchronises its device itself).
        rounds: rounds to run at least.
        passes: timed passes of a member, back to back, in one round.
        warmup: untimed passes per member before the first round (interleaved too).
        min_time_s: run more rounds until every member's timed passes sum to this many seconds ...
        max_rounds: ... but no more rounds than this (default: ``rounds``).
        clock: seconds, monotonic (a test's fake clock gives known pass times).

    Example:
        >>> t = time_interleaved({"a": lambda: None, "b": lambda: None}, rounds=3, passes=2)
        >>> [len(r) for r in t["a"]]
        [2, 2, 2]
    """
    if rounds < 1 or passes < 1 or warmup < 0 or not calls:
        raise ValueError(
            f"need rounds >= 1, passes >= 1, warmup >= 0 and calls; got {rounds}, {passes}, {warmup}"
        )
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[list[float]]] = {name: [] for name in names}
    limit = max(rounds, max_rounds or rounds)
    for r in range(limit):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            call, ms = calls[name], []
            for _ in range(passes):
                start = clock()
                call()
                ms.append((clock() - start) * 1e3)
            times[name].append(ms)
        if r + 1 >= rounds and all(sum(map(sum, t)) >= min_time_s * 1e3 for t in times.values()):
            break
    return times


def flat(rounds: list[list[float]]) -> list[float]:
    """Every pass of every round, in order."""
    return [v for r in rounds for v in r]


# ------------------------------------------------------------------------------------------- backends


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU model string from ``/proc/cpuinfo`` (``platform`` elsewhere)."""
    return _device_name(str(device))


@functools.cache
def _device_name(name: str) -> str:
    """:func:`device_name`, read once per device (settings keys ask for it on every lookup)."""
    device = torch.device(name)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def inference_copy(
    model: nn.Module, device: torch.device | str = "cpu", half: bool = False, fuse: bool = True
) -> nn.Module:
    """A deep copy of ``model`` as ultralytics runs inference: fused (where it can), eval, on ``device``."""
    device = torch.device(device)
    if half and device.type != "cuda":
        raise ValueError(f"half=True needs a CUDA device, got {device}")
    m = copy.deepcopy(model).eval()
    if fuse and hasattr(m, "fuse"):
        m = m.fuse(verbose=False)
    m = m.to(device)
    return m.half() if half else m


def example_input(
    batch: int,
    size: tuple[int, int],
    device: torch.device | str = "cpu",
    half: bool = False,
    channels: int = 3,
) -> torch.Tensor:
    """A fixed pseudo-random image batch in [0, 1) (seeded: every backend and architecture sees the same)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, channels, *size, generator=g)
    return x.to(device, torch.float16 if half else torch.float32)


def torch_call(
    model: nn.Module, size: tuple[int, int], batch: int = 1, device: str = "cpu", half: bool = False
) -> Call:
    """One eager forward of a fused inference copy of ``model`` (``torch.inference_mode``, synchronised)."""
    dev = torch.device(device)
    m = inference_copy(model, dev, half)
    x = example_input(batch, size, dev, half)
    cuda = dev.type == "cuda"

    def call() -> None:
        with torch.inference_mode():
            m(x)
        if cuda:
            torch.cuda.synchronize(dev)

    return call


def onnxruntime_call(
    onnx_path: Path, size: tuple[int, int], batch: int = 1, threads: int | None = None
) -> Call:
    """One run of the exported model on ONNX Runtime's CPU provider (``threads`` intra-op threads)."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise BackendUnavailableError("onnxruntime is not installed")
    from .export import onnx_session

    session = onnx_session(onnx_path, threads)
    name = session.get_inputs()[0].name
    x = example_input(batch, size).numpy()

    def call() -> None:
        session.run(None, {name: x})

    return call


def tensorrt_call(
    model: nn.Module,
    size: tuple[int, int],
    engine_path: Path,
    batch: int = 1,
    device: str = "cuda:0",
    half: bool = True,
) -> Call:
    """One run of a TensorRT engine built by ultralytics' exporter (needs CUDA and ``tensorrt``)."""
    if not torch.cuda.is_available():
        raise BackendUnavailableError("tensorrt needs a CUDA device; this machine has none")
    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailableError("the tensorrt package is not installed")
    from ultralytics.nn.autobackend import AutoBackend

    from .export import export_engine

    dev = torch.device(device)
    engine = export_engine(model, size, engine_path, batch=batch, half=half, device=device)
    backend = AutoBackend(str(engine), device=dev, fp16=half, verbose=False)
    x = example_input(batch, size, dev, half)

    def call() -> None:
        backend(x)
        torch.cuda.synchronize(dev)

    return call


def backend_version(backend: str) -> str:
    """The version string of the library a backend runs on."""
    from importlib.metadata import PackageNotFoundError, version

    package = {"torch": "torch", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}[backend]
    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return f"{package} not installed"
