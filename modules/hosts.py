"""Attention-bearing ultralytics blocks whose attention can be swapped for any registered module.

``pos.mode=replace`` writes one of these classes into the composed model YAML in place of the original
block. Each is a subclass of the ultralytics block that builds the block as usual, then replaces the
attention of every inner attention block with ``modules.build(attn, dim, num_heads=<same heads>)``,
initialised the way the host initialises its own attention. Everything else (convolutions, MLPs,
residual scales) is the ultralytics block's own.

Because parse_model passes YAML arguments of unknown classes as written, the YAML row holds the block's
resolved arguments for the chosen scale; :meth:`yaml_args` reads them off a built base block.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn
from ultralytics.nn.modules.block import C2PSA, A2C2f, ABlock, PSABlock

from .registry import build, get

__all__ = ["HOSTS", "A2C2fSwap", "C2PSASwap", "init_like_ablock"]


def init_like_ablock(module: nn.Module) -> nn.Module:
    """YOLO12's attention initialisation (``ABlock._init_weights``) applied to a swapped-in module.

    ``ABlock`` initialises every convolution of its attention with trunc_normal(std 0.02) and zero bias
    while it is built; a module swapped in afterwards would otherwise keep PyTorch's default init (for a
    1×1 conv at 64 channels, std ≈ 0.072). Linear layers (``halo``'s projections) are the same map
    written differently and get the same init; other parameters (position tables, temperatures,
    focusing scales) keep the module's own.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def module_kwargs(attn: str, attn_kwargs: dict | None, dim: int, heads: int, area: int | None = None) -> dict:
    """Keyword arguments for the swapped-in module: the host's heads (and area) unless the user set them."""
    kwargs = dict(attn_kwargs or {})
    if "num_heads" not in kwargs and "head_dim" not in kwargs:
        kwargs["num_heads"] = heads
    params = inspect.signature(get(attn).__init__).parameters
    if area is not None and "area" in params and "area" not in kwargs:
        kwargs["area"] = area
    return kwargs


class A2C2fSwap(A2C2f):
    """YOLO12's R-ELAN block (``A2C2f`` with area attention) with another attention in every ``ABlock``.

    The swapped-in attention is initialised as ``ABlock`` initialises its own (:func:`init_like_ablock`),
    so ``attn=area`` gives stock YOLO12 at initialisation.

    Args:
        c1, c2, n, a2, area, residual, mlp_ratio: as ``ultralytics...A2C2f`` (resolved for the scale).
        attn (str): registry name of the attention that replaces ``AAttn``.
        attn_kwargs (dict | None): its hyperparameters; heads default to the block's own (dim / 32).

    Example:
        >>> m = A2C2fSwap(128, 128, 1, True, 4, False, 2.0, "rala")
        >>> m(torch.randn(1, 128, 20, 20)).shape
        torch.Size([1, 128, 20, 20])
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        a2: bool = True,
        area: int = 1,
        residual: bool = False,
        mlp_ratio: float = 2.0,
        attn: str = "area",
        attn_kwargs: dict | None = None,
    ) -> None:
        super().__init__(c1, c2, n, a2, area, residual, mlp_ratio)
        for block in self.modules():
            if isinstance(block, ABlock):
                dim = block.attn.num_heads * block.attn.head_dim
                kwargs = module_kwargs(attn, attn_kwargs, dim, block.attn.num_heads, block.attn.area)
                block.attn = init_like_ablock(build(attn, dim, **kwargs))

    @staticmethod
    def holds_attention(layer: nn.Module) -> bool:
        return type(layer) is A2C2f and any(isinstance(b, ABlock) for b in layer.modules())

    @staticmethod
    def attention_paths(layer: nn.Module) -> list[str]:
        """Paths (inside the block) of the attention modules that replace mode swaps."""
        return [f"{name}.attn" for name, b in layer.named_modules() if isinstance(b, ABlock)]

    @staticmethod
    def attention_dims(layer: nn.Module) -> list[tuple[int, int, int]]:
        """(dim, heads, area) of each attention inside a built block."""
        return [
            (b.attn.num_heads * b.attn.head_dim, b.attn.num_heads, b.attn.area)
            for b in layer.modules()
            if isinstance(b, ABlock)
        ]

    @staticmethod
    def yaml_args(layer: nn.Module, attn: str, attn_kwargs: dict | None) -> list[Any]:
        """Constructor arguments that rebuild ``layer`` (a built base A2C2f) with ``attn`` inside."""
        c1, c_, c2 = layer.cv1.conv.in_channels, layer.cv1.conv.out_channels, layer.cv2.conv.out_channels
        first = next(b for b in layer.modules() if isinstance(b, ABlock))
        hidden = first.mlp[0].conv.out_channels
        mlp_ratio = next((r for r in (1.2, 2.0) if int(c_ * r) == hidden), (hidden + 0.5) / c_)
        residual = layer.gamma is not None
        return [
            c1,
            c2,
            len(layer.m),
            True,
            first.attn.area,
            residual,
            mlp_ratio,
            attn,
            dict(attn_kwargs or {}),
        ]


class C2PSASwap(C2PSA):
    """YOLO11's and YOLO26's ``C2PSA`` block (layer 10 of both; the same ultralytics class) with another
    attention in every ``PSABlock``. YOLO26's layer-22 ``C3k2(attn=True)`` also holds a ``PSABlock``, but
    is a ``C3k2``, not a host.

    ``PSABlock`` has no initialisation of its own (its ``Attention`` keeps PyTorch's defaults), so the
    swapped-in module keeps its own defaults too.

    Args:
        c1, c2, n, e: as ``ultralytics...C2PSA`` (resolved for the scale).
        attn (str): registry name of the attention that replaces ultralytics' ``Attention``.
        attn_kwargs (dict | None): its hyperparameters; heads default to the block's own.

    Example:
        >>> m = C2PSASwap(256, 256, 1, 0.5, "rala")
        >>> m(torch.randn(1, 256, 20, 20)).shape
        torch.Size([1, 256, 20, 20])
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        e: float = 0.5,
        attn: str = "mhsa",
        attn_kwargs: dict | None = None,
    ) -> None:
        super().__init__(c1, c2, n, e)
        for block in self.m:
            kwargs = module_kwargs(attn, attn_kwargs, self.c, block.attn.num_heads)
            block.attn = build(attn, self.c, **kwargs)

    @staticmethod
    def holds_attention(layer: nn.Module) -> bool:
        return type(layer) is C2PSA

    @staticmethod
    def attention_paths(layer: nn.Module) -> list[str]:
        return [f"m.{i}.attn" for i, b in enumerate(layer.m) if isinstance(b, PSABlock)]

    @staticmethod
    def attention_dims(layer: nn.Module) -> list[tuple[int, int, int | None]]:
        return [(layer.c, b.attn.num_heads, None) for b in layer.m if isinstance(b, PSABlock)]

    @staticmethod
    def yaml_args(layer: nn.Module, attn: str, attn_kwargs: dict | None) -> list[Any]:
        c1, c2 = layer.cv1.conv.in_channels, layer.cv2.conv.out_channels
        e = layer.c / c2
        return [c1, c2, len(layer.m), e, attn, dict(attn_kwargs or {})]


HOSTS: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in (A2C2fSwap, C2PSASwap)}
