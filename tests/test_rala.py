"""RALA: the official forward (RoPE, N·α, mean form) at float64; the linear form equals its explicit O(N²)
weighted form; RoPE depends on relative offsets only; the rank claim."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modules.rala import EPS, RALA, rope_2d

from .helpers import depthwise


def rotation(h: int, w: int, d: int) -> torch.Tensor:
    """N×d×d block-diagonal 2-D RoPE rotations: channel pair i < d/4 turns by row·f_i, else by col·f_i."""
    m = d // 4
    freqs = [10000.0 ** (-i / (m - 1)) if m > 1 else 1.0 for i in range(m)]
    mats = torch.zeros(h * w, d, d, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            for i in range(d // 2):
                a = r * freqs[i] if i < m else c * freqs[i - m]
                rot = torch.tensor(
                    [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64
                )
                mats[r * w + c, 2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = rot
    return mats


def reference(m: RALA, x: torch.Tensor) -> torch.Tensor:
    """y_i = Σ_j α_j (q_i·k_j) v_j / Σ_j α_j (q_i·k_j) with dense N×N weights, then LePE, gate, proj."""
    b, c, h, w = x.shape
    heads, d, n = m.num_heads, m.head_dim, h * w
    rot = rotation(h, w, d) if m.rope else None
    outs = []
    for bi in range(b):
        tokens = x[bi].reshape(c, n).T  # N×C
        qkvo = tokens @ m.qkvo.weight[:, :, 0, 0].T + m.qkvo.bias
        q, k, v, o = qkvo.split(c, dim=1)
        y = torch.empty(n, c, dtype=x.dtype)
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            qh, kh, vh = F.elu(q[:, sl]) + 1, F.elu(k[:, sl]) + 1, v[:, sl]
            alpha = torch.softmax((kh @ qh.mean(0)) / math.sqrt(d), dim=0)  # N
            weights = (qh @ kh.T) * alpha[None, :]  # N×N: α_j (q_i·k_j)
            if rot is None:
                numer = weights
            else:  # rotated q and k in the numerator only
                qr = torch.einsum("nij,nj->ni", rot, qh)
                kr = torch.einsum("nij,nj->ni", rot, kh)
                numer = (qr @ kr.T) * alpha[None, :]
            y[:, sl] = (numer @ vh) / (weights.sum(1, keepdim=True) + EPS)
        lepe = depthwise(v.T.reshape(c, h, w), m.lepe.weight, m.lepe.bias).reshape(c, n).T
        out = ((y + lepe) * o) @ m.proj.weight[:, :, 0, 0].T + m.proj.bias
        outs.append(out.T.reshape(c, h, w))
    return torch.stack(outs)


@pytest.mark.parametrize(
    ("channels", "heads", "hw"),
    [(32, 2, (7, 9)), (32, 2, (1, 1)), (24, 3, (5, 5)), (32, 1, (12, 10)), (16, 4, (2, 11))],
)
def test_linear_form_equals_explicit_quadratic_form(channels: int, heads: int, hw: tuple[int, int]) -> None:
    m = RALA(channels, num_heads=heads, rope=False).double().eval()
    x = torch.randn(2, channels, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("hw", [(6, 9), (9, 4), (1, 1)])
def test_rope_variant_equals_explicit_form_with_rotated_numerator(hw: tuple[int, int]) -> None:
    m = RALA(32, num_heads=2).double().eval()  # RoPE is the default; d = 16: 4 frequencies per axis
    assert m.rope
    x = torch.randn(2, 32, *hw, dtype=torch.float64)
    y = m(x)
    torch.testing.assert_close(y, reference(m, x), rtol=1e-9, atol=1e-10)
    plain = RALA(32, num_heads=2, rope=False).double().eval()
    plain.load_state_dict(m.state_dict())
    if hw != (1, 1):  # token (0, 0) is never rotated; elsewhere RoPE must change the output
        assert not torch.allclose(y, plain(x))


def official_forward(m: RALA, x: torch.Tensor) -> torch.Tensor:
    """qhfan/RALA ``GateLinearAttentionNoSilu.forward`` (classfication/RALA.py) transcribed step by step with
    the module's weights: qkvo split as [q k v | o], heads as '(m n d)', keys re-weighted by ``eff·N``,
    ``z = 1 / (q · mean_j k + 1e-6)``, ``kv = (R k)ᵀ N^-½ @ v N^-½``, ``(R q) @ kv · z``, + LePE, ⊙ o,
    proj; RoPE angles ``1 / 10000**linspace(0, 1, d/4)`` each used twice, rows then columns."""
    b, c, h, w = x.shape
    heads, d, n = m.num_heads, m.head_dim, h * w
    qkvo = F.conv2d(x, m.qkvo.weight, m.qkvo.bias)
    qkv, o = qkvo[:, : 3 * c], qkvo[:, 3 * c :]
    lepe = F.conv2d(qkv[:, 2 * c :], m.lepe.weight, m.lepe.bias, padding=m.lepe.padding, groups=c)
    q, k, v = qkv.reshape(b, 3, heads, d, n).permute(1, 0, 2, 4, 3)  # 'b (m n d) h w -> m b n (h w) d'
    q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
    eff = torch.softmax(m.scale * q.mean(dim=-2, keepdim=True) @ k.transpose(-1, -2), dim=-1).transpose(
        -1, -2
    )
    k = k * eff * n
    angle = (
        (1.0 / (10000 ** torch.linspace(0, 1, d // 4, dtype=x.dtype))).unsqueeze(-1).repeat(1, 2).flatten()
    )
    rows = torch.arange(h, dtype=x.dtype)[:, None] * angle  # h × d/2
    cols = torch.arange(w, dtype=x.dtype)[:, None] * angle  # w × d/2
    table = torch.cat([rows[:, None, :].repeat(1, w, 1), cols[None, :, :].repeat(h, 1, 1)], -1).flatten(0, 1)
    sin, cos = table.sin(), table.cos()

    def theta_shift(t: torch.Tensor) -> torch.Tensor:
        turned = torch.stack([-t[..., 1::2], t[..., ::2]], dim=-1).flatten(-2)
        return t * cos + turned * sin

    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (theta_shift(k).transpose(-2, -1) * n**-0.5) @ (v * n**-0.5)
    res = (theta_shift(q) @ kv * z).transpose(-1, -2).reshape(b, c, h, w)
    return F.conv2d((res + lepe) * o, m.proj.weight, m.proj.bias)


@pytest.mark.parametrize(("channels", "heads", "hw"), [(64, 2, (7, 9)), (128, 4, (20, 20)), (32, 1, (1, 1))])
def test_default_equals_the_official_forward_float64(channels: int, heads: int, hw: tuple[int, int]) -> None:
    m = RALA(channels, num_heads=heads).double().eval()
    x = torch.randn(2, channels, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), official_forward(m, x), rtol=1e-9, atol=1e-10)
    if channels == 128:  # the official parameter count at C = 128, 4 heads
        assert sum(p.numel() for p in m.parameters()) == 85_888


def test_rope_numerator_depends_only_on_relative_offsets() -> None:
    """Rotating by the angles of the same 6×7 grid placed at rows 3.., cols 5.. of a larger map (absolute
    positions all different, offsets between tokens the same) leaves the attention output unchanged."""
    m = RALA(32, num_heads=2).double().eval()
    q, k, v, _ = m.qkvo(torch.randn(1, 32, 6, 7, dtype=torch.float64)).chunk(4, dim=1)
    at_origin = m.attend(q, k, v)
    sin, cos = (t.reshape(9, 12, -1)[3:, 5:].reshape(42, -1) for t in rope_2d(9, 12, 16, q.device, q.dtype))
    m._tables = {(6, 7, q.device, q.dtype): (sin, cos)}
    torch.testing.assert_close(m.attend(q, k, v), at_origin, rtol=1e-9, atol=1e-10)
    m._tables = {(6, 7, q.device, q.dtype): (sin.flip(0), cos)}  # a different function of position: differs
    assert not torch.allclose(m.attend(q, k, v), at_origin)


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="rope"):
        RALA(12, num_heads=2, rope=True)  # head dim 6
    RALA(12, num_heads=2, rope=False)(torch.randn(1, 12, 3, 5))
    with pytest.raises(ValueError, match="lepe_kernel"):
        RALA(16, lepe_kernel=4)
    with pytest.raises(ValueError, match="lepe_kernel"):
        RALA(16, lepe_kernel=0)
    with pytest.raises(ValueError, match="num_heads"):
        RALA(16, num_heads=3)


def test_fp32_core_under_bf16_autocast_tracks_float32() -> None:
    m = RALA(64).eval()
    x = 10.0 * torch.randn(1, 64, 16, 12)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y).all()
    assert (y.float() - ref).norm() / ref.norm() < 0.05


def effective_rank(mat: torch.Tensor) -> float:
    """exp of the Shannon entropy of the normalised singular values (Roy & Vetterli, 2007)."""
    s = torch.linalg.svdvals(mat)
    p = s / s.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


@pytest.mark.parametrize("seed", range(5))
def test_gated_output_has_much_higher_rank_than_plain_linear_attention(seed: int) -> None:
    """Per head, the N×d block of the gated output (y + LePE) ⊙ O (before proj) against plain ELU+1
    linear attention on the same q, k, v (no re-weighting, no LePE, no gate); N = 400, d = 32.

    Measured: plain ≈ 2, RALA gated ≈ 31 (of 32). Asserted: gated ≥ 0.75·d and ≥ 5× plain; plain ≤ d/4.
    """
    torch.manual_seed(seed)
    channels, heads, d = 64, 2, 32
    m = RALA(channels, num_heads=heads).double().eval()
    x = torch.randn(1, channels, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        q, k, v, o = m.qkvo(x).chunk(4, dim=1)
        gated = ((m.attend(q, k, v) + m.lepe(v)) * o)[0].reshape(channels, -1).T  # N×C
        tok = [t[0].reshape(channels, -1).T for t in (q, k, v)]
    for hd in range(heads):
        sl = slice(hd * d, (hd + 1) * d)
        qh, kh, vh = F.elu(tok[0][:, sl]) + 1, F.elu(tok[1][:, sl]) + 1, tok[2][:, sl]
        plain = (qh @ (kh.T @ vh)) / (qh @ kh.sum(0))[:, None]
        r_plain, r_rala = effective_rank(plain), effective_rank(gated[:, sl])
        assert r_plain <= d / 4, (hd, r_plain)
        assert r_rala >= 0.75 * d, (hd, r_rala)
        assert r_rala >= 5 * r_plain, (hd, r_rala, r_plain)
