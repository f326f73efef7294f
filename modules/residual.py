"""Residual wrapper that makes any registered attention safe to insert into a trained-from-scratch net."""

from __future__ import annotations

import torch
from torch import nn

from ._common import LayerNorm2d, check_channels
from .registry import build

DEFAULT_GAMMA = 0.01


class AttentionResidual(nn.Module):
    """``y = x + γ ⊙ attn(norm(x))``: pre-norm residual block with a per-channel layer scale γ.

    The identity path keeps the host network's signal intact at initialisation whatever the
    attention computes; γ (CaiT-style layer scale, initialised to ``gamma``) lets the attention's
    contribution grow during training. This is the default form for modules **inserted** after a
    layer; replace-mode placements use the bare module. γ is listed by :meth:`no_weight_decay`. With
    ``gamma=0`` the block is exactly the identity, so a composed model loaded from a base checkpoint
    computes the base model's outputs bit for bit.

    Args:
        channels (int): input and output channels C.
        attn (str | nn.Module): registry name of the attention (e.g. ``"rala"``) or a built module.
        attn_kwargs (dict | None): keyword arguments for the attention when ``attn`` is a name.
        gamma (float | None): initial layer scale. ``None`` means no scale (plain ``x + attn(norm(x))``).
            Default: 0.01 (the value YOLO12 uses for its own residual A2C2f blocks).
        norm (bool): apply a channel LayerNorm before the attention. Default: True.

    Example:
        >>> m = AttentionResidual(64, "rala", {"num_heads": 2})
        >>> m(torch.randn(1, 64, 20, 20)).shape
        torch.Size([1, 64, 20, 20])
    """

    def __init__(
        self,
        channels: int,
        attn: str | nn.Module,
        attn_kwargs: dict | None = None,
        gamma: float | None = DEFAULT_GAMMA,
        norm: bool = True,
    ) -> None:
        super().__init__()
        check_channels(channels)
        self.norm = LayerNorm2d(channels) if norm else nn.Identity()
        self.attn = build(attn, channels, **(attn_kwargs or {})) if isinstance(attn, str) else attn
        if gamma is None:
            self.gamma = None
        else:
            if isinstance(gamma, bool) or not isinstance(gamma, int | float):
                raise ValueError(f"gamma must be a number or None, got {gamma!r}")
            self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), float(gamma)))

    def no_weight_decay(self) -> set[str]:
        """The layer scale is kept out of weight decay (CaiT, timm): decay would pull it back to 0."""
        return {"gamma"} if self.gamma is not None else set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn(self.norm(x))
        return x + (y if self.gamma is None else self.gamma * y)
