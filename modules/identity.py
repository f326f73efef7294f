"""The null control: an attention branch that outputs zero, so the block it sits in is the identity."""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_channels
from .registry import register


@register("identity", control=True)
class ZeroAttention(nn.Module):
    """An attention branch that computes nothing: ``attn(x) = 0`` (no parameters).

    It is the **null control** of an ablation (an A/A test): inserted after a layer it goes through the
    same machinery as every module — the composed YAML, the index remapping, the residual wrapper
    ``y = x + γ·attn(norm(x))``, the weight transfer, the warm start, the pairing by seed — while the block
    computes exactly ``y = x``, so its Δ against the baseline must read 0. In replace mode
    (``+attn=identity +pos=a2c2f``) the host block's residual ``x + attn(x)`` keeps only its skip path:
    YOLO12's area attention is removed, a change of known sign (a positive control).

    Args:
        channels (int): input and output channels C.
        num_heads (int | None): accepted (a replace-mode host passes its heads) and ignored.
        head_dim (int | None): accepted and ignored.
        area (int | None): accepted (YOLO12's A2C2f passes its area) and ignored.

    Example:
        >>> m = ZeroAttention(64)
        >>> m(torch.randn(2, 64, 20, 20)).abs().max().item()
        0.0
    """

    def __init__(
        self,
        channels: int,
        num_heads: int | None = None,
        head_dim: int | None = None,
        area: int | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)
