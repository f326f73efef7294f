"""Each module's forward in reduced precision against float32 with the same weights.

Three ways (:data:`~ablate.gpu.plan.DTYPES`): under autocast to ``float16`` (AMP training) and to
``bfloat16``, and ``half``: a float16 copy of the module on float16 input (``model.half()``, as
ultralytics' ``half=True`` inference and the fp16 latency run it: no autocast keeps anything in float32
there but the module's own up-casts). The error of one forward is ``max |y − y_fp32| / max |y_fp32|`` (as
the export parity tests measure it); a module passes when, for every way, its largest error over
:data:`SHAPES` is finite and within its bound in :data:`BOUNDS`. The comparison runs on any device that
supports the dtype: on a CPU too (bfloat16 and float16 autocast, float16 modules), so the code path is
tested without a GPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence

import torch

from .plan import BATCH, BOUNDS, DTYPES, SHAPES, Line  # noqa: F401  (BOUNDS, SHAPES: re-exported)


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |y − ref| / max |ref|`` in float32; ``inf`` when ``y`` is not finite everywhere."""
    y, ref = y.float(), ref.float()
    if not bool(torch.isfinite(y).all()):
        return math.inf
    scale = float(ref.abs().max())
    return float((y - ref).abs().max()) / scale if scale > 0 else float((y - ref).abs().max())


def autocast_errors(
    module: torch.nn.Module, x: torch.Tensor, dtypes: Sequence[str] = DTYPES
) -> dict[str, float]:
    """The relative error of ``module(x)`` in each way of :data:`~ablate.gpu.plan.DTYPES` (autocast to a
    dtype, or ``half``: a float16 copy of the module on float16 input) against the float32 forward."""
    device_type = x.device.type
    with torch.no_grad():
        ref = module(x)
        out = {}
        for name in dtypes:
            if name == "half":
                y = copy.deepcopy(module).half()(x.half())
            else:
                with torch.autocast(device_type, dtype=getattr(torch, name)):
                    y = module(x)
            out[name] = relative_error(y, ref)
    return out


def module_errors(
    name: str,
    device: str | torch.device,
    dtypes: Sequence[str] = DTYPES,
    shapes: Sequence[tuple[int, int, int]] = SHAPES,
    seed: int = 0,
) -> dict[str, float]:
    """The largest relative error of module ``name`` (built by the registry, seeded, eval mode) per dtype
    over ``shapes``."""
    import modules

    worst = dict.fromkeys(dtypes, 0.0)
    for channels, h, w in shapes:
        torch.manual_seed(seed)
        m = modules.build(name, channels).to(device).eval()
        x = torch.randn(BATCH, channels, h, w, generator=torch.Generator().manual_seed(seed)).to(device)
        for dtype, err in autocast_errors(m, x, dtypes).items():
            worst[dtype] = max(worst[dtype], err) if not math.isnan(err) else math.inf
    return worst


def within_bound(
    name: str, dtype: str, error: float, bounds: Mapping[str, Mapping[str, float]] = BOUNDS
) -> bool:
    """Whether ``error`` is finite and within the bound of module ``name`` for ``dtype`` (a module or dtype
    without a bound fails: every module must have one)."""
    bound = bounds.get(name, {}).get(dtype)
    return bound is not None and math.isfinite(error) and error <= bound


def precision_line(
    name: str, errors: Mapping[str, float], bounds: Mapping[str, Mapping[str, float]] = BOUNDS
) -> Line:
    """The check line of one module: every dtype's error against its bound."""
    short = {"float16": "fp16", "bfloat16": "bf16", "half": "half"}
    parts, ok = [], True
    for dtype, err in errors.items():
        bound = bounds.get(name, {}).get(dtype)
        good = within_bound(name, dtype, err, bounds)
        ok = ok and good
        limit = "no bound" if bound is None else f"{'<=' if good else '>'} {bound:.1e}"
        parts.append(f"{short.get(dtype, dtype)} {err:.2e} {limit}")
    data = {"module": name, **{f"err_{d}": e for d, e in errors.items()}}
    data.update({f"bound_{d}": bounds.get(name, {}).get(d) for d in errors})
    return Line(f"precision {name}", "ok" if ok else "fail", "max rel err " + ", ".join(parts), data)
