"""YOLO12's area attention (ultralytics ``AAttn``) as an insertable module that accepts any map size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules.block import AAttn

from ._common import DEFAULT_HEAD_DIM, check_channels, check_positive, resolve_heads
from .registry import register

DEFAULT_AREA = 4


def area_bounds(n: int, area: int) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of the areas that split ``n`` raster-ordered tokens.

    ``a = min(area, n)`` consecutive chunks with boundaries ``floor(i·n / a)``: sizes differ by at
    most one, and when ``area`` divides ``n`` they are exactly ultralytics' ``n / area`` chunks.
    """
    a = min(area, n)
    edges = [i * n // a for i in range(a + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


@register("area")
class AreaAttention(nn.Module):
    """Area attention from YOLO12 (Tian et al., "YOLOv12: Attention-Centric Real-Time Object
    Detectors", arXiv:2502.12524, 2025), wrapping ultralytics' own ``AAttn``.

    The N = H·W raster-ordered tokens are cut into ``area`` consecutive chunks (horizontal strips
    when W divides N / area) and multi-head softmax attention runs inside each chunk; a 7×7
    depthwise Conv+BN on V is added as positional term, then a 1×1 Conv+BN projection. q/k/v come
    from one 1×1 Conv+BN with channels interleaved per head (ultralytics' layout).

    The weights live in ``self.attn``, a genuine ``ultralytics.nn.modules.block.AAttn``, so the
    parameter count and state-dict layout (under ``attn.``) are ultralytics'. When ``area`` divides
    N, ``AAttn.forward`` is called unchanged (bit-identical to YOLO12). ``AAttn`` itself fails for
    other N; then this module splits the tokens into ``min(area, N)`` chunks whose sizes differ by
    at most one (boundaries ``floor(i·N/a)``, see :func:`area_bounds`), pads every chunk to the
    longest, masks the padded keys and computes with the same ``qkv``/``pe``/``proj`` submodules
    (so ultralytics' Conv+BN fusion still applies). ``area >= N`` (e.g. a 1×1 map) makes every
    token its own area.

    Default ``area=4``: YOLO12's setting at P4 (layer 6), the high-resolution place where it uses
    area attention; ``area=1`` is global attention (YOLO12 at P5).

    Cost: O(N²·C / area) for the attention plus 4·N·C² for the projections and 49·N·C for ``pe``.

    Args:
        channels (int): input and output channels C.
        num_heads (int | None): heads; must divide C. Default: derived from ``head_dim``.
        head_dim (int): channels per head used to derive ``num_heads``. Default: 32 (YOLO12's).
        area (int): number of areas the token sequence is split into. Default: 4.

    Example:
        >>> m = AreaAttention(64)
        >>> m(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 64, 20, 20])
    """

    def __init__(
        self,
        channels: int,
        num_heads: int | None = None,
        head_dim: int = DEFAULT_HEAD_DIM,
        area: int = DEFAULT_AREA,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels)
        self.num_heads = resolve_heads(channels, num_heads, head_dim)
        self.area = check_positive("area", area)
        self.attn = AAttn(channels, self.num_heads, area)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[-2] * x.shape[-1]) % self.area == 0:
            return self.attn(x)
        return self._forward_masked(x)

    def _forward_masked(self, x: torch.Tensor) -> torch.Tensor:
        """Area attention for any N: unequal chunks padded to the longest, padded keys masked."""
        attn = self.attn
        b, c, h, w = x.shape
        n, heads, d = h * w, attn.num_heads, attn.head_dim
        bounds = area_bounds(n, self.area)
        a, length = len(bounds), max(e - s for s, e in bounds)

        # token index of every padded slot (padding points at the chunk's first token; it is masked)
        offset = torch.arange(length, device=x.device)
        start = torch.tensor([s for s, _ in bounds], device=x.device)
        size = torch.tensor([e - s for s, e in bounds], device=x.device)
        valid = offset < size[:, None]  # a×L
        index = torch.where(valid, start[:, None] + offset, start[:, None])

        qkv = attn.qkv(x).flatten(2).transpose(1, 2)  # B×N×3C, per head [q | k | v]
        t = qkv[:, index.flatten()].view(b * a, length, heads, 3 * d).transpose(1, 2)
        q, k, v = t.split(d, dim=-1)  # (B·a)×heads×L×d
        mask = valid.view(1, a, 1, 1, length).expand(b, -1, -1, -1, -1).reshape(b * a, 1, 1, length)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # padded keys masked out
        y = y.transpose(1, 2).reshape(b, a * length, c)[:, valid.flatten()]  # B×N×C, padding dropped

        v_map = qkv.view(b, n, heads, 3 * d)[..., 2 * d :].reshape(b, n, c)
        y = y.transpose(1, 2).reshape(b, c, h, w)
        v_map = v_map.transpose(1, 2).reshape(b, c, h, w)
        return attn.proj(y + attn.pe(v_map))
