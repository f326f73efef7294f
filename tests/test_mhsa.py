"""MHSA (the control): equals an explicit softmax attention written out per head, at float64."""

from __future__ import annotations

import math

import pytest
import torch

from modules.mhsa import MHSA


def reference(m: MHSA, x: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v per head with a dense N×N matrix, then the output projection."""
    b, c, h, w = x.shape
    heads, n = m.num_heads, h * w
    d = c // heads
    outs = []
    for bi in range(b):
        tokens = x[bi].reshape(c, n).T  # N×C
        qkv = tokens @ m.qkv.weight[:, :, 0, 0].T + m.qkv.bias
        q, k, v = qkv.split(c, dim=1)
        y = torch.empty(n, c, dtype=x.dtype)
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            logits = q[:, sl] @ k[:, sl].T / math.sqrt(d)
            weights = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
            y[:, sl] = weights @ v[:, sl]
        out = y @ m.proj.weight[:, :, 0, 0].T + m.proj.bias
        outs.append(out.T.reshape(c, h, w))
    return torch.stack(outs)


@pytest.mark.parametrize(("channels", "heads", "hw"), [(32, 2, (7, 9)), (64, 4, (5, 5)), (32, 1, (1, 1))])
def test_equals_explicit_softmax_attention_float64(channels: int, heads: int, hw: tuple[int, int]) -> None:
    m = MHSA(channels, num_heads=heads).double().eval()
    x = torch.randn(2, channels, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x), rtol=1e-10, atol=1e-12)
