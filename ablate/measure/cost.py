"""Exact cost of an architecture: parameters (all, and those a placement added) and FLOPs.

Conventions (every figure is recorded with the counter and version that produced it):

* **FLOPs** are 2·MACs of every product (convolutions, mm/addmm/bmm, matmul and einsum through their aten
  products, scaled dot-product attention), counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
  model in eval mode, batch 1, input ``3×S×S`` where ``S`` is the image size rounded up to a multiple of
  the model's largest stride (as ultralytics rounds ``imgsz``). This is ultralytics' ``get_flops``
  convention (a full ``S×S`` image, batch 1, 2·MACs); thop extrapolates that figure from stride-sized
  proxies, here the full image runs once. FlopCounterMode counts only products: no bias adds, norms,
  activations or elementwise ops (thop counts some of those, so ``gflops_ultralytics`` is a little
  higher on a model without attention). It counts 0 for the CPU fused SDPA kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``), which ``F.scaled_dot_product_attention`` runs
  on CPU whenever q, k, v share the head dim, with or without ``attn_mask``, with or without grad;
  :data:`SDPA_RULES` adds that kernel and the other fused SDPA kernels torch leaves unregistered. The
  math fallback (unequal head dims) decomposes into ``bmm`` and is counted by torch itself.

Latency is not a cost of one run: it is measured for all architectures together, apart from training
(:mod:`ablate.measure.phase`).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from .model import stride_size

log = logging.getLogger(__name__)


def cost_fields(model: nn.Module, imgsz: int) -> dict[str, Any]:
    """Record fields: parameters added by the placement, attention-inclusive GFLOPs (with the counter),
    and ultralytics' own GFLOPs figure (informative; left out with a warning when it gives none)."""
    flops = count_flops(model, imgsz)
    fields: dict[str, Any] = {
        "params_attn": params_attn(model),
        "gflops": round(flops.gflops, 4),
        "gflops_imgsz": list(flops.imgsz),
        "gflops_counter": f"{flops.counter} ({flops.version})",
    }
    try:
        theirs = ultralytics_flops(model, imgsz)
        fields["gflops_ultralytics"] = round(theirs.gflops, 4)
        fields["gflops_ultralytics_counter"] = f"{theirs.counter} ({theirs.version})"
    except ZeroFlopsError as e:
        log.warning("ultralytics get_flops gave no figure: %s", e)
    return fields


class ZeroFlopsError(RuntimeError):
    """A FLOPs counter returned 0: the count failed (e.g. ultralytics' ``get_flops`` swallowed an error)."""


# --------------------------------------------------------------------------------------------- params


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The modules a placement added or swapped in: every ``AttentionResidual`` layer, and the attention
    of every ``ABlock`` inside an ``A2C2fSwap`` and every ``PSABlock`` inside a ``C2PSASwap``."""
    from ultralytics.nn.modules.block import ABlock, PSABlock

    from modules.hosts import A2C2fSwap, C2PSASwap
    from modules.residual import AttentionResidual

    found: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, AttentionResidual):
            found.append(m)
        elif isinstance(m, A2C2fSwap):
            found += [b.attn for b in m.modules() if isinstance(b, ABlock)]
        elif isinstance(m, C2PSASwap):
            found += [b.attn for b in m.m if isinstance(b, PSABlock)]
    return found


def params_attn(model: nn.Module) -> int:
    """Parameters of the modules the placement added or swapped in (0 for a baseline).

    Insert mode: the whole ``AttentionResidual`` layers (norm, attention, γ). Replace mode: the swapped-in
    attention modules only (so replacing area attention by ``area`` gives the AAttn parameter count, not 0).
    """
    seen: dict[int, int] = {}
    for m in attention_modules(model):
        seen.update((id(p), p.numel()) for p in m.parameters())
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class FlopCount:
    """One FLOPs figure (2·MACs) with the counter that produced it."""

    flops: int
    gflops: float
    imgsz: tuple[int, int]
    counter: str
    version: str
    by_module: dict[str, float] | None = None  # GFLOPs per submodule, names relative to the model


def sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    """2·MACs of ``softmax(q kᵀ) v``: q ``…×L×E``, k ``…×S×E``, v ``…×S×Ev`` (k, v heads may be fewer)."""
    *batch, length, e = query_shape
    source, ev = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * length * source * (e + ev)


def sdpa_backward_flops(
    grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any
) -> int:
    """2·MACs of the SDPA backward: recomputed scores, then grads of v, of the probabilities, of q and k."""
    *batch, length, e = query_shape
    source, ev = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * length * source * (3 * e + 2 * ev)


def _sdpa_rules() -> dict[Any, Any]:
    """Rules for the fused SDPA kernels that this torch's flop registry lacks (it has the CUDA ones)."""
    aten = torch.ops.aten
    forward = (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
        "_scaled_dot_product_attention_math_for_mps",
    )
    backward = (
        "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_fused_attention_overrideable_backward",
    )
    rules = {}
    for names, rule in ((forward, sdpa_flops), (backward, sdpa_backward_flops)):
        for name in names:
            op = getattr(aten, name, None)
            if op is not None and op not in flop_registry:
                rules[op] = rule
    return rules


SDPA_RULES = _sdpa_rules()
COUNTER = "torch.utils.flop_counter.FlopCounterMode+sdpa"


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the fused SDPA kernels (see :data:`SDPA_RULES`)."""
    return FlopCounterMode(display=False, custom_mapping=SDPA_RULES)


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; its previous mode restored after."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


def count_module_flops(module: nn.Module, *inputs: torch.Tensor) -> FlopCounterMode:
    """Run ``module(*inputs)`` once (eval mode, no grad) under :func:`flop_counter`; the counter after.

    Raises :class:`ZeroFlopsError` when nothing was counted.
    """
    with _eval(module), torch.no_grad(), flop_counter() as counter:
        module(*inputs)
    if counter.get_total_flops() <= 0:
        raise ZeroFlopsError(f"FlopCounterMode counted 0 FLOPs for {type(module).__name__}")
    return counter


def count_flops(model: nn.Module, imgsz: int | tuple[int, int], depth: int = 2) -> FlopCount:
    """FLOPs (2·MACs, every product, SDPA included) of one forward at ``imgsz``, batch 1, eval mode.

    ``by_module`` holds GFLOPs of every submodule up to ``depth`` levels below the model
    (``model.6`` for layer 6 of an ultralytics model at the default ``depth=2``).
    """
    size = stride_size(model, imgsz)
    p = next(model.parameters(), None)
    x = torch.zeros(1, _input_channels(model), *size)
    counter = count_module_flops(model, x if p is None else x.to(p))
    total = counter.get_total_flops()
    return FlopCount(
        flops=total,
        gflops=total / 1e9,
        imgsz=size,
        counter=COUNTER,
        version=f"torch {torch.__version__}",
        by_module=_by_module(counter, type(model).__name__, depth),
    )


def _input_channels(model: nn.Module) -> int:
    """Input channels: the first convolution's (3 for an RGB detector)."""
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return first.in_channels if first is not None else 3


def _by_module(counter: FlopCounterMode, root: str, depth: int) -> dict[str, float]:
    out = {}
    for name, ops in counter.get_flop_counts().items():
        head, _, rest = name.partition(".")
        if head == root and rest and rest.count(".") < depth:
            out[rest] = sum(ops.values()) / 1e9
    return out


def ultralytics_flops(model: nn.Module, imgsz: int | tuple[int, int]) -> FlopCount:
    """ultralytics' own figure, ``get_flops(model, imgsz)`` (thop: hooks plus functional matmul/SDPA).

    ``get_flops`` returns 0.0 on any error; that raises :class:`ZeroFlopsError` here.
    """
    from ultralytics.utils.torch_utils import get_flops

    size = stride_size(model, imgsz)
    gflops = float(get_flops(model, list(size)))
    if gflops <= 0:
        raise ZeroFlopsError(f"ultralytics get_flops returned {gflops} for {type(model).__name__} at {size}")
    return FlopCount(
        flops=round(gflops * 1e9),
        gflops=gflops,
        imgsz=size,
        counter="ultralytics.utils.torch_utils.get_flops (thop)",
        version=f"ultralytics-thop {_version('ultralytics-thop')}",
    )


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"
