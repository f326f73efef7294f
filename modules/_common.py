"""Small helpers shared by the attention modules: argument checks, head derivation, layout changes."""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_HEAD_DIM = 32


def check_channels(channels: int) -> int:
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    return channels


def check_positive(name: str, value: int | float, *, integer: bool = True) -> int | float:
    """Return ``value`` if it is a positive number (an int when ``integer``), else raise ValueError."""
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_non_negative(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Up-cast float16/bfloat16 to float32; float32 and float64 unchanged (so float64 checks stay exact)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_heads(channels: int, num_heads: int | None, head_dim: int = DEFAULT_HEAD_DIM) -> int:
    """Number of heads for ``channels``.

    Given explicitly, ``num_heads`` must divide ``channels``. Otherwise heads are derived from
    ``head_dim``: the largest divisor of ``channels`` that is at most ``channels // head_dim``, and at
    least 1 (so 48 channels with head_dim 32 give 1 head, 256 give 8).
    """
    check_channels(channels)
    if num_heads is None:
        check_positive("head_dim", head_dim)
        limit = max(1, channels // head_dim)
        return max(d for d in divisors(channels) if d <= limit)
    check_positive("num_heads", num_heads)
    if channels % num_heads:
        valid = ", ".join(str(d) for d in divisors(channels))
        raise ValueError(f"num_heads={num_heads} does not divide channels={channels}; valid: {valid}")
    return num_heads


def to_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """B×C×H×W -> B×heads×N×d (N = H·W in raster order, d = C / heads)."""
    b, c, h, w = x.shape
    return x.reshape(b, num_heads, c // num_heads, h * w).transpose(-1, -2)


def from_heads(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """B×heads×N×d -> B×C×H×W (inverse of :func:`to_heads`)."""
    b, heads, n, d = x.shape
    return x.transpose(-1, -2).reshape(b, heads * d, h, w)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of a B×C×H×W map (per pixel, so batch independent)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
