"""Token Statistics Self-Attention (ToST): linear-time attention from a rate-reduction gradient step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import DEFAULT_HEAD_DIM, at_least_fp32, check_channels, check_positive, resolve_heads
from .registry import register

REFERENCE_TOKENS = 196  # the paper's token count (ImageNet at 224 px, patch 16)
LOGIT_SCALES = {"paper": "N/196", "official": "1", "tokens": "N/d"}  # name -> s


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

    Logit scale ``s`` (``logit_scale``). ``Σ_c ŵ[k, j, c]²`` has mean d/N over tokens and spread
    ≈ √(2d)/N, so with the official code's ``s = 1`` the membership depends on the map size: in the
    paper's regime (ImageNet, patch 16: N = 196 tokens, d = 48 or 64) Π deviates from uniform by ~4 %
    at initialisation, but at N = 6400 (P3 at 640 px) by 0.07–0.09 % (nothing for ``temp`` to work
    with) and at N = 9 (P5 at 96 px) by 41–52 %. ``"paper"`` (default) uses ``s = N / 196``, which gives
    the logits the statistics they have in the paper at N = 196, at every map size: measured at
    initialisation (d = 32, 2–8 heads, LayerNorm-ed inputs) Π deviates from uniform by 2.0–3.0 % at
    every N from 9 to 6400, against 3.7 % / 4.2 % for the paper's d = 48 / 64 at N = 196 (``python -m
    ablate.benchmarks.tssa_membership`` prints the table). ``"official"`` is ``s = 1`` (the code as
    released; the same as ``"paper"`` at N = 196); ``"tokens"`` is ``s = N / d`` (mean logit 1;
    12–19 %, four to six times the paper's regime).

    ``temp`` (one per head, initialised 1) is listed by :meth:`no_weight_decay` as in the official module,
    and ablate's trainer honours the list (the official training does not: timm's optimizer factory
    reads only the model's top-level list, so ``temp`` is decayed there). With one head Π ≡ 1 and there
    is no ``temp`` parameter.

    Cost: 2·N·C² for the two projections plus O(N·C) for the core; O(N·C) memory, linear in N.

    Args:
        channels (int): input and output channels C.
        num_heads (int | None): heads; must divide C. Default: derived from ``head_dim``.
        head_dim (int): channels per head used to derive ``num_heads``. Default: 32.
        logit_scale (str): ``"paper"`` (s = N/196), ``"official"`` (s = 1) or ``"tokens"`` (s = N/d);
            see above. Default: ``"paper"``.
        qkv_bias (bool): bias in the input projection (class default of the official code: False;
            every released ToST model passes True). Default: True.
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
        logit_scale: str = "paper",
        qkv_bias: bool = True,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.channels = check_channels(channels)
        self.num_heads = resolve_heads(channels, num_heads, head_dim)
        if logit_scale not in LOGIT_SCALES:
            raise ValueError(f"logit_scale must be one of {', '.join(LOGIT_SCALES)}, got {logit_scale!r}")
        if not isinstance(qkv_bias, bool):
            raise ValueError(f"qkv_bias must be True or False, got {qkv_bias!r}")
        self.logit_scale = logit_scale
        self.eps = float(check_positive("eps", eps, integer=False))
        self.qkv = nn.Conv2d(channels, channels, 1, bias=qkv_bias)
        self.temp = nn.Parameter(torch.ones(self.num_heads)) if self.num_heads > 1 else None
        self.proj = nn.Conv2d(channels, channels, 1)

    @staticmethod
    def variant_label(kwargs: dict) -> str:
        """Table label of a non-default logit scale."""
        scale = kwargs.get("logit_scale", "paper")
        return "" if scale == "paper" else f"s={LOGIT_SCALES[scale]}" if scale in LOGIT_SCALES else ""

    def scale(self, n: int, d: int) -> float:
        """The membership logit scale s for N = ``n`` tokens and head dim ``d``."""
        return {"paper": n / REFERENCE_TOKENS, "official": 1.0, "tokens": n / d}[self.logit_scale]

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
            scale = self.temp.to(w.dtype).view(1, -1, 1) * self.scale(n, d)
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
