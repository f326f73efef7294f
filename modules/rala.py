"""Rank-augmented linear attention (RALA), the token mixer of RAVLT."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    DEFAULT_HEAD_DIM,
    at_least_fp32,
    check_channels,
    check_positive,
    from_heads,
    resolve_heads,
    to_heads,
)
from .registry import register

EPS = 1e-6


def rope_2d(h: int, w: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """sin and cos tables (N×d, raster order) of a 2-D rotary embedding for an h×w map.

    Channels come in pairs (2i, 2i+1). The first d/2 channels (d/4 pairs) are rotated by the row index,
    the last d/2 by the column index, with frequencies ``10000 ** -linspace(0, 1, d/4)``.
    """
    m = head_dim // 4
    freq = 10000.0 ** -torch.linspace(0, 1, m, device=device, dtype=torch.float64)
    freq = freq.repeat_interleave(2)  # one frequency per channel pair: (d/2,)
    rows = torch.arange(h, device=device, dtype=torch.float64)[:, None] * freq  # h × d/2
    cols = torch.arange(w, device=device, dtype=torch.float64)[:, None] * freq  # w × d/2
    angle = torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)
    angle = angle.reshape(h * w, head_dim)
    return angle.sin().to(dtype), angle.cos().to(dtype)


def rotate(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate every channel pair (x[2i], x[2i+1]) of ``x`` (…×N×d) by the angles in sin/cos (N×d)."""
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * cos + turned * sin


@register("rala")
class RALA(nn.Module):
    """Rank-augmented linear attention (Fan et al., "Breaking the Low-Rank Dilemma of Linear Attention",
    CVPR 2025; the token mixer of RAVLT).

    One 1×1 convolution makes Q, K, V, O. Per head, q = ELU(Q)+1, k = ELU(K)+1, and the keys are
    re-weighted by a softmax over tokens driven by the mean query: ``α = softmax_j(d^-½ q̄·k_j)``. Then
    ``y_i = (R_i q_i)·(Σ_j α_j (R_j k_j) v_jᵀ) / (q_i·Σ_j α_j k_j + ε)`` with a 2-D rotary embedding R
    (RoPE) in the numerator only, as in the official module (which has no switch for it). Output:
    ``proj((y + LePE(V)) ⊙ O)`` with a k×k depthwise LePE on V; the Hadamard gate with the plain linear
    map O lifts the rank of the output, which is what the paper calls output-feature rank augmentation.
    The core runs in at least float32 under autocast.

    RoPE: ``(R_i q_i)·(R_j k_j) = q_iᵀ R(p_j − p_i) k_j``, so the numerator depends only on the offset
    between query and key positions, not on where the map starts or how large it is; the tables are
    rebuilt for every H×W (any size, cached per size and dtype). Without RoPE (``rope=False``, labelled
    "no RoPE" in tables) the output is the convex combination ``Σ_j α_j (q_i·k_j) v_j / Σ_j α_j (q_i·k_j)``;
    with it the rotated numerator and the unrotated denominator differ, so the weights need not be
    positive nor sum to one (the official normaliser, kept as is).

    Cost: O(N·C²) for the 1×1 convolutions (≈ 5·N·C²), O(N·C·d) for the attention core, O(k²·N·C) for
    LePE, O(N·C) for the rotations: linear in N = H·W; extra memory O(N·C) plus d×d per head.

    Args:
        channels (int): input and output channels C.
        num_heads (int | None): heads; must divide C. Default: derived from ``head_dim``.
        head_dim (int): channels per head used to derive ``num_heads``. Default: 32.
        rope (bool): rotate q and k in the numerator with a 2-D RoPE (needs d % 4 == 0), as the official
            module. Default: True.
        lepe_kernel (int): odd kernel size of the depthwise LePE convolution on V. Default: 5.

    Example:
        >>> m = RALA(64)
        >>> m(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 64, 20, 20])
    """

    ROPE_CACHE = 8  # sizes whose sin/cos tables are kept (stride probe, train size, rectangular val...)

    def __init__(
        self,
        channels: int,
        num_heads: int | None = None,
        head_dim: int = DEFAULT_HEAD_DIM,
        rope: bool = True,
        lepe_kernel: int = 5,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels)
        self.num_heads = resolve_heads(channels, num_heads, head_dim)
        self.head_dim = channels // self.num_heads
        if not isinstance(rope, bool):
            raise ValueError(f"rope must be True or False, got {rope!r}")
        if rope and self.head_dim % 4:
            raise ValueError(
                f"rope=True needs a head dim divisible by 4, got {self.head_dim} "
                f"(channels={channels}, num_heads={self.num_heads}); use rope=False or other heads"
            )
        check_positive("lepe_kernel", lepe_kernel)
        if lepe_kernel % 2 == 0:
            raise ValueError(f"lepe_kernel must be an odd positive integer, got {lepe_kernel!r}")
        self.rope = rope
        self.scale = self.head_dim**-0.5
        self.qkvo = nn.Conv2d(channels, 4 * channels, 1)
        self.lepe = nn.Conv2d(channels, channels, lepe_kernel, padding=lepe_kernel // 2, groups=channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tables"] = {}  # a cache: not pickled into checkpoints, not shared by deep copies
        return state

    @staticmethod
    def variant_label(kwargs: dict) -> str:
        """Table label of a variant that is not the official module."""
        return "no RoPE" if kwargs.get("rope") is False else ""

    def rope_tables(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple:
        """sin/cos tables of an h×w map (N×d), built once per size, device and dtype."""
        key = (h, w, device, dtype)
        tables = self._tables.get(key)
        if tables is None:
            if len(self._tables) >= self.ROPE_CACHE:
                self._tables.pop(next(iter(self._tables)))
            tables = self._tables[key] = rope_2d(h, w, self.head_dim, device, dtype)
        return tables

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The linear-attention core: B×C×H×W maps Q, K, V -> y (B×C×H×W), before LePE and the gate."""
        _, _, h, w = v.shape
        dtype = v.dtype
        with torch.autocast(device_type=v.device.type, enabled=False):
            q, k, v = (at_least_fp32(to_heads(t, self.num_heads)) for t in (q, k, v))
            q = F.elu(q) + 1.0
            k = F.elu(k) + 1.0  # B×heads×N×d, all entries > 0
            logits = self.scale * (q.mean(dim=-2, keepdim=True) @ k.transpose(-1, -2))  # B×heads×1×N
            k = k * logits.softmax(dim=-1).transpose(-1, -2)  # α_j k_j
            z = 1.0 / (q @ k.sum(dim=-2, keepdim=True).transpose(-1, -2) + EPS)  # B×heads×N×1
            if self.rope:
                sin, cos = self.rope_tables(h, w, q.device, q.dtype)
                q, k = rotate(q, sin, cos), rotate(k, sin, cos)
            y = (q @ (k.transpose(-1, -2) @ v)) * z
        return from_heads(y, h, w).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v, o = self.qkvo(x).chunk(4, dim=1)
        y = self.attend(q, k, v)
        return self.proj((y + self.lepe(v)) * o)
