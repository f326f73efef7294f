"""Token Statistics Self-Attention (ToST): linear-time attention from a rate-reduction gradient step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import DEFAULT_HEAD_DIM, at_least_fp32, check_channels, check_positive, resolve_heads
from .registry import register


@register("tssa")
class TSSA(nn.Module):
    """Token Statistics Self-Attention (Wu et al., "Token Statistics Transformer: Linear-Time
    Attention via Variational Rate Reduction", ICLR 2025).

    One 1×1 projection ``w = W·x`` split into h heads (tokens j, channels c of head k). With ``ŵ``
    the L2 normalisation of ``w`` over the token axis:

    - membership ``Π[k, j] = softmax_k(temp_k · s · Σ_c ŵ[k, j, c]²)`` (softmax over heads);
    - ``π̃[k, j] = Π[k, j] / (Σ_j Π[k, j] + eps)``; second moment ``m[k, c] = Σ_j π̃[k, j]·w[k, j, c]²``;
    - ``out[k, j, c] = −Π[k, j]·w[k, j, c] / (1 + m[k, c])``; heads merged; 1×1 output projection.

    No pairwise token similarity and no positional term: the module is permutation equivariant
    over pixels. The core runs in fp32 with autocast disabled (``w²`` overflows fp16).

    Logit scale ``s`` (deviation from the paper, on by default): ``Σ_c ŵ[k, j, c]²`` averages d/N over
    tokens, so at detection token counts the paper's logits are ~1e-3 and Π is uniform to within
    ~1e-3 (N = 6400, d = 32); the membership then does nothing unless ``temp`` grows by ~N/d. With
    ``token_scaled=True`` the logit is multiplied by ``s = N/d``, i.e. it becomes the mean over the
    head's channels of ``w[k,j,c]² / mean_j' w[k,j',c]²``: mean 1 over tokens whatever N and d, so Π
    responds to the token statistics at any map size (the paper's ImageNet setting, N = 197, d = 64,
    has mean logit 0.3: same order). ``token_scaled=False`` is the paper-exact form (``s = 1``).

    ``temp`` (one per head, initialised 1) is excluded from weight decay in the official code; it is
    named ``temp`` and listed by :meth:`no_weight_decay` so an optimizer can do the same. With one
    head Π ≡ 1 and there is no ``temp`` parameter.

    Cost: 2·N·C² for the two projections plus O(N·C) for the core; O(N·C) memory, linear in N.

    Args:
        channels (int): input and output channels C.
        num_heads (int | None): heads; must divide C. Default: derived from ``head_dim``.
        head_dim (int): channels per head used to derive ``num_heads``. Default: 32.
        token_scaled (bool): scale the membership logits by N/d (see above). Default: True.
        qkv_bias (bool): bias in the input projection (official: False). Default: False.
        eps (float): stabiliser in the π̃ normalisation. Default: 1e-8.

    Example:
        >>> m = TSSA(64)
        >>> m(torch.randn(2, 64, 20, 20)).shape
        torch.Size([2, 64, 20, 20])
    """

    def __init__(
        self,
        channels: int,
        num_heads: int | None = None,
        head_dim: int = DEFAULT_HEAD_DIM,
        token_scaled: bool = True,
        qkv_bias: bool = False,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels)
        self.num_heads = resolve_heads(channels, num_heads, head_dim)
        if not isinstance(token_scaled, bool):
            raise ValueError(f"token_scaled must be True or False, got {token_scaled!r}")
        if not isinstance(qkv_bias, bool):
            raise ValueError(f"qkv_bias must be True or False, got {qkv_bias!r}")
        self.token_scaled = token_scaled
        self.eps = float(check_positive("eps", eps, integer=False))
        self.qkv = nn.Conv2d(channels, channels, 1, bias=qkv_bias)
        self.temp = nn.Parameter(torch.ones(self.num_heads)) if self.num_heads > 1 else None
        self.proj = nn.Conv2d(channels, channels, 1)

    def no_weight_decay(self) -> set[str]:
        """Parameter names the official code keeps out of weight decay (timm convention)."""
        return {"temp"} if self.temp is not None else set()

    def _core(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """TSSA core on B×h×d×N (the conv's own layout, contiguous over tokens).

        Returns the output (B×h×d×N) and the membership Π (B×h×N).
        """
        d, n = w.shape[-2:]
        if self.temp is None:
            pi = w.new_ones(w.shape[0], 1, n)
        else:
            energy = F.normalize(w, dim=-1).square().sum(-2)  # ŵ: L2 over tokens; Σ_c ŵ² -> B×h×N
            scale = self.temp.to(w.dtype).view(1, -1, 1) * (n / d if self.token_scaled else 1.0)
            pi = (energy * scale).softmax(dim=1)
        pi_tilde = pi / (pi.sum(-1, keepdim=True) + self.eps)
        second_moment = w.square() @ pi_tilde.unsqueeze(-1)  # B×h×d×1
        out = w * (-pi.unsqueeze(-2) / (1.0 + second_moment))
        return out, pi

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return self.qkv(x).reshape(b, self.num_heads, c // self.num_heads, h * w)

    def membership(self, x: torch.Tensor) -> torch.Tensor:
        """Group membership Π (B×heads×N, at least fp32, sums to 1 over heads) for input ``x``."""
        w = self._heads(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._core(at_least_fp32(w))[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._heads(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out, _ = self._core(at_least_fp32(w))
        return self.proj(out.to(w.dtype).reshape(x.shape))
