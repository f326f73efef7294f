"""Global multi-head softmax self-attention: the quadratic control row of every ablation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import DEFAULT_HEAD_DIM, check_channels, from_heads, resolve_heads, to_heads
from .registry import register


@register("mhsa")
class MHSA(nn.Module):
    """Multi-head softmax attention over all N = H·W tokens (Vaswani et al., NeurIPS 2017).

    ``y = proj(softmax(q kᵀ / √d) v)`` with q, k, v from one 1×1 convolution, computed by
    ``torch.nn.functional.scaled_dot_product_attention``. No positional term: it is the plain
    control that the linear and local attentions are compared against.

    Cost: O(N²·C) time (4·N·C² for the projections plus 2·N²·C for the attention), O(N²) memory
    per head unless a fused SDPA kernel is used.

    Args:
        channels (int): input and output channels C.
        num_heads (int | None): heads; must divide C. Default: derived from ``head_dim``.
        head_dim (int): channels per head used to derive ``num_heads``. Default: 32.
        qkv_bias (bool): bias in the q/k/v projection. Default: True.

    Example:
        >>> m = MHSA(64)
        >>> m(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 64, 20, 20])
    """

    def __init__(
        self,
        channels: int,
        num_heads: int | None = None,
        head_dim: int = DEFAULT_HEAD_DIM,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels)
        self.num_heads = resolve_heads(channels, num_heads, head_dim)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=qkv_bias)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = (to_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=1))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(from_heads(y, h, w))
