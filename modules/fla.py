"""Focused linear attention, the token mixer of the FLatten Transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    DEFAULT_HEAD_DIM,
    LayerNorm2d,
    at_least_fp32,
    check_channels,
    check_positive,
    from_heads,
    resolve_heads,
    to_heads,
)
from .registry import register

EPS = 1e-6


def focus(t: torch.Tensor, scale: torch.Tensor, p: float, dim: int = 1) -> torch.Tensor:
    """The focusing function φ_p over axis ``dim`` (all C channels).

    ``t = (ReLU(t) + 1e-6) / softplus(scale)``; ``φ(t) = t**p / ‖t**p‖ · ‖t‖``. The result does not change
    when t is multiplied by a positive number, so t is divided by its (detached) maximum before the power:
    the same function, but t**p can no longer overflow (float16 tops out at 65504).
    """
    shape = [1] * t.dim()
    shape[dim] = -1
    t = (F.relu(t) + 1e-6) / F.softplus(scale.to(t.dtype)).reshape(shape)
    norm = t.norm(dim=dim, keepdim=True)
    t = (t / t.amax(dim=dim, keepdim=True).detach()) ** p  # in (0, 1], the maximum entry is exactly 1
    return t * (norm / t.norm(dim=dim, keepdim=True))


@register("fla")
class FocusedLinearAttention(nn.Module):
    """Focused linear attention (Han et al., "FLatten Transformer: Vision Transformer using Focused Linear
    Attention", ICCV 2023).

    q, k, v come from 1×1 convolutions (k and v from a strided-conv + LayerNorm reduced map when
    ``sr_ratio > 1``). The focusing function φ (see :func:`focus`, with a learnable per-channel
    ``scale`` initialised to 0, norms over all C channels) sharpens q and k; then per head
    ``y_i = φ(q_i)·(mean_j φ(k_j) v_jᵀ) / (φ(q_i)·mean_j φ(k_j) + ε)``, computed in at least float32.
    Rank restoration: ``y += DWC(v)``, a k×k depthwise convolution over the V map whose d filters are
    shared by all heads as in the official code; then a 1×1 output projection. With ``sr_ratio > 1``
    the reduced V, as the official code does it, is resized back to N tokens by 1-D linear interpolation
    over the raster-ordered token sequence (per head and channel, ``align_corners=False``), not by a 2-D
    resize of the map; the reduction's LayerNorm has the official eps 1e-5.

    Deviations from the official code: its learned positional encoding of fixed length ``num_patches``
    is dropped, so nothing depends on the input size (the DWC carries position). H ≠ W is fine. Maps
    whose sides are not multiples of ``sr_ratio`` are replicate-padded to the next multiple before the
    strided reduction (the official strided conv drops the remainder rows and columns; on multiples
    both are the same function).

    Cost: O(N·C²) for the 1×1 convolutions (4·N·C² at sr_ratio 1), O(N·C·d) for the attention core,
    O(k²·N·C) for the DWC: linear in N = H·W; extra memory O(N·C) plus d×d per head.

    Args:
        channels (int): input and output channels C.
        num_heads (int | None): heads; must divide C. Default: derived from ``head_dim``.
        head_dim (int): channels per head used to derive ``num_heads``. Default: 32.
        focusing_factor (float): the power p of the focusing function, > 0. Default: 3.
        kernel_size (int): odd kernel size of the depthwise rank-restoring convolution. Default: 5.
        sr_ratio (int): spatial reduction of the key/value map (1 = none). Default: 1.

    Example:
        >>> m = FocusedLinearAttention(64)
        >>> m(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 64, 20, 20])
    """

    def __init__(
        self,
        channels: int,
        num_heads: int | None = None,
        head_dim: int = DEFAULT_HEAD_DIM,
        focusing_factor: float = 3,
        kernel_size: int = 5,
        sr_ratio: int = 1,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels)
        self.num_heads = resolve_heads(channels, num_heads, head_dim)
        self.head_dim = channels // self.num_heads
        self.focusing_factor = check_positive("focusing_factor", focusing_factor, integer=False)
        check_positive("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive integer, got {kernel_size!r}")
        self.sr_ratio = check_positive("sr_ratio", sr_ratio)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Conv2d(channels, 2 * channels, 1)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(channels, channels, sr_ratio, stride=sr_ratio)
            self.norm = LayerNorm2d(channels, eps=1e-5)  # nn.LayerNorm's default, as the official code
        self.scale = nn.Parameter(torch.zeros(channels))
        d = self.head_dim
        self.dwc = nn.Conv2d(d, d, kernel_size, padding=kernel_size // 2, groups=d)
        self.proj = nn.Conv2d(channels, channels, 1)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The map keys and values are computed from: x itself, or its sr_ratio-strided reduction."""
        if self.sr_ratio == 1:
            return x
        r = self.sr_ratio
        pad_h, pad_w = -x.shape[-2] % r, -x.shape[-1] % r
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.norm(self.sr(x))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Focused linear attention of B×C×H×W queries over B×C×h×w keys/values -> B×C×H×W."""
        _, _, h, w = q.shape
        dtype = v.dtype
        with torch.autocast(device_type=v.device.type, enabled=False):
            q = focus(at_least_fp32(q), self.scale, self.focusing_factor)
            k = focus(at_least_fp32(k), self.scale, self.focusing_factor)
            q, k, v = (to_heads(t, self.num_heads) for t in (q, k, at_least_fp32(v)))
            z = 1.0 / (q @ k.mean(dim=-2, keepdim=True).transpose(-1, -2) + EPS)  # B×heads×N×1
            kv = (k.transpose(-1, -2) @ v) / k.shape[-2]  # mean_j φ(k_j) v_jᵀ: B×heads×d×d
            y = (q @ kv) * z
        return from_heads(y, h, w).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k, v = self.kv(self.reduce(x)).chunk(2, dim=1)
        y = self.attend(self.q(x), k, v)
        v = v.reshape(b * self.num_heads, self.head_dim, -1)  # per head: d channels over the raster tokens
        if v.shape[-1] != h * w:  # sr_ratio > 1: the official 1-D resize of the reduced token sequence
            v = F.interpolate(v, size=h * w, mode="linear", align_corners=False)
        y = y + self.dwc(v.reshape(b * self.num_heads, self.head_dim, h, w)).reshape(b, c, h, w)
        return self.proj(y)
