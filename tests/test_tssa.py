"""TSSA (ToST, ICLR 2025): the module equals a direct float64 reference of the paper's formulas."""

from __future__ import annotations

import pytest
import torch

from modules.tssa import TSSA


def reference(m: TSSA, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head loops over the formulas, float64, with the module's weights: (output, Π B×h×N)."""
    x = x.double()
    b, c, hh, ww = x.shape
    n, heads = hh * ww, m.num_heads
    d = c // heads
    w_in = m.qkv.weight[:, :, 0, 0].double()
    b_in = m.qkv.bias.double() if m.qkv.bias is not None else torch.zeros(c, dtype=torch.float64)
    w_out, b_out = m.proj.weight[:, :, 0, 0].double(), m.proj.bias.double()
    temp = m.temp.double() if m.temp is not None else torch.ones(1, dtype=torch.float64)
    scale = n / d if m.token_scaled else 1.0

    tokens = x.flatten(2).transpose(1, 2)  # B×N×C
    w_all = tokens @ w_in.T + b_in
    out = torch.zeros_like(w_all)
    pis = torch.zeros(b, heads, n, dtype=torch.float64)
    for bi in range(b):
        logits = torch.zeros(heads, n, dtype=torch.float64)
        for k in range(heads):
            wk = w_all[bi, :, k * d : (k + 1) * d]  # N×d
            w_hat = wk / wk.norm(dim=0, keepdim=True).clamp_min(1e-12)  # L2 over the token axis
            logits[k] = temp[k] * scale * (w_hat**2).sum(dim=1)
        pi = torch.softmax(logits, dim=0)  # over heads
        pis[bi] = pi
        for k in range(heads):
            wk = w_all[bi, :, k * d : (k + 1) * d]
            pi_tilde = pi[k] / (pi[k].sum() + m.eps)
            second_moment = (pi_tilde[:, None] * wk**2).sum(dim=0)  # d
            out[bi, :, k * d : (k + 1) * d] = -pi[k][:, None] * wk / (1 + second_moment)
    y = out @ w_out.T + b_out
    return y.transpose(1, 2).reshape(b, c, hh, ww), pis


def make(channels: int = 32, **kwargs) -> TSSA:
    m = TSSA(channels, **kwargs).eval()
    if m.temp is not None:
        with torch.no_grad():
            m.temp.copy_(torch.rand(m.num_heads) * 3 + 0.2)  # exercise the per-head temperature
    return m


@pytest.mark.parametrize("token_scaled", [True, False])
@pytest.mark.parametrize(
    ("hw", "heads", "bias"), [((7, 9), 4, False), ((12, 12), 2, True), ((1, 1), 4, False)]
)
def test_matches_reference_float64(token_scaled: bool, hw: tuple[int, int], heads: int, bias: bool) -> None:
    m = make(32, num_heads=heads, token_scaled=token_scaled, qkv_bias=bias).double()
    x = torch.randn(2, 32, *hw, dtype=torch.float64) * 2
    y_ref, pi_ref = reference(m, x)
    torch.testing.assert_close(m(x), y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.membership(x), pi_ref, rtol=1e-10, atol=1e-12)


def test_matches_reference_float32_and_paper_form_differs() -> None:
    m = make(32, num_heads=4)
    x = torch.randn(2, 32, 10, 6)
    torch.testing.assert_close(m(x).double(), reference(m, x)[0], rtol=1e-4, atol=1e-5)
    paper = make(32, num_heads=4, token_scaled=False)
    paper.load_state_dict(m.state_dict())
    assert not torch.allclose(paper(x), m(x), atol=1e-4)  # the option changes the computation


@pytest.mark.parametrize("token_scaled", [True, False])
def test_membership_sums_to_one_over_heads(token_scaled: bool) -> None:
    m = make(64, num_heads=4, token_scaled=token_scaled)
    x = torch.randn(3, 64, 9, 11)
    pi = m.membership(x)
    assert pi.shape == (3, 4, 99)
    assert (pi > 0).all()
    torch.testing.assert_close(pi.sum(dim=1), torch.ones(3, 99))


def test_single_head_has_unit_membership_and_no_temperature() -> None:
    m = TSSA(32, num_heads=1)
    assert m.temp is None and m.no_weight_decay() == set()
    assert torch.equal(m.membership(torch.randn(1, 32, 5, 5)), torch.ones(1, 1, 25))
    assert TSSA(64).no_weight_decay() == {"temp"}


@pytest.mark.parametrize("token_scaled", [True, False])
def test_permutation_equivariance(token_scaled: bool) -> None:
    m = make(32, num_heads=4, token_scaled=token_scaled)
    x = torch.randn(2, 32, 6, 7)
    perm = torch.randperm(42)
    assert not torch.equal(perm, torch.arange(42))
    x_perm = x.flatten(2)[:, :, perm].reshape_as(x)
    y, y_perm = m(x), m(x_perm)
    torch.testing.assert_close(y_perm.flatten(2), y.flatten(2)[:, :, perm], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y_perm, y, atol=1e-3)


def test_membership_is_not_uniform_at_detection_token_counts() -> None:
    """N = 6400 (80×80), d = 8: quadrant r carries 2× amplitude in head r's channels.

    The default (token-scaled) logits let Π pick the head whose statistics the token stands out in;
    the paper-exact form leaves Π within ~1e-3 of 1/h (the caveat that motivates the default).
    """
    heads, c = 4, 32
    x = torch.randn(1, c, 80, 80)
    d = c // heads
    for r, (rows, cols) in enumerate(
        [
            (slice(0, 40), slice(0, 40)),
            (slice(0, 40), slice(40, 80)),
            (slice(40, 80), slice(0, 40)),
            (slice(40, 80), slice(40, 80)),
        ]
    ):
        x[0, r * d : (r + 1) * d, rows, cols] *= 2
    owner = torch.zeros(80, 80, dtype=torch.long)
    owner[:40, 40:], owner[40:, :40], owner[40:, 40:] = 1, 2, 3
    for token_scaled in (True, False):
        m = TSSA(c, num_heads=heads, token_scaled=token_scaled).eval()
        with torch.no_grad():
            m.qkv.weight.copy_(torch.eye(c)[:, :, None, None])  # w = x: the structure reaches Π unchanged
        pi = m.membership(x)[0]  # h×N
        deviation = (pi - 1 / heads).abs().mean().item()
        if token_scaled:
            assert deviation > 0.1
            # the head owning the quadrant wins for most tokens
            assert (pi.argmax(dim=0) == owner.flatten()).float().mean() > 0.9
        else:
            assert deviation < 5e-3


def test_fp32_core_under_autocast() -> None:
    m = make(64, num_heads=2)
    x = 100 * torch.randn(2, 64, 16, 12)
    y = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_bf16 = m(x)
    assert torch.isfinite(y_bf16).all()
    assert ((y_bf16.float() - y).norm() / y.norm()).item() < 0.05


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((64,), {"num_heads": 3}, "num_heads"),
        ((64,), {"num_heads": 0}, "num_heads"),
        ((64,), {"head_dim": 0}, "head_dim"),
        ((0,), {}, "channels"),
        ((64,), {"eps": 0.0}, "eps"),
        ((64,), {"token_scaled": "yes"}, "token_scaled"),
        ((64,), {"qkv_bias": 1}, "qkv_bias"),
    ],
)
def test_bad_args_raise(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TSSA(*args, **kwargs)
