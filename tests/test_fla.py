"""Focused linear attention: explicit O(N²) form, the focusing function, and the rank claim of DWC."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modules.fla import EPS, FocusedLinearAttention, focus

from .helpers import depthwise


def phi(t: torch.Tensor, scale: torch.Tensor, p: float) -> torch.Tensor:
    """The focusing function exactly as the paper writes it (no overflow guard), over the last axis."""
    t = (F.relu(t) + 1e-6) / F.softplus(scale)
    n0 = t.norm(dim=-1, keepdim=True)
    t = t**p
    return t / t.norm(dim=-1, keepdim=True) * n0


def reference(m: FocusedLinearAttention, x: torch.Tensor) -> torch.Tensor:
    """y = A v per head with A_ij = φ(q_i)·φ(k_j) / Σ_j φ(q_i)·φ(k_j) (dense N×n), + DWC(v), proj."""
    b, c, h, w = x.shape
    heads, d, p = m.num_heads, m.head_dim, m.focusing_factor
    xr = m.reduce(x)  # the key/value map: x itself at sr_ratio 1
    hr, wr = xr.shape[-2:]
    n = hr * wr
    outs = []
    for bi in range(b):
        q = x[bi].reshape(c, h * w).T @ m.q.weight[:, :, 0, 0].T + m.q.bias
        kv = xr[bi].reshape(c, n).T @ m.kv.weight[:, :, 0, 0].T + m.kv.bias
        k, v = kv.split(c, dim=1)
        fq, fk = phi(q, m.scale, p), phi(k, m.scale, p)
        y = torch.empty(h * w, c, dtype=x.dtype)
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            a = fq[:, sl] @ fk[:, sl].T  # N×n
            y[:, sl] = (a @ v[:, sl]) / (a.sum(1, keepdim=True) + n * EPS)
        vrow = v.T[None]  # 1×C×n, raster order
        if n != h * w:  # the official 1-D resize of the reduced token sequence
            vrow = F.interpolate(vrow, size=h * w, mode="linear", align_corners=False)
        vmap = vrow.reshape(1, c, h, w)
        shared = m.dwc.weight.repeat(heads, 1, 1, 1), m.dwc.bias.repeat(heads)  # d filters for all heads
        y = y + depthwise(vmap[0], *shared).reshape(c, h * w).T
        out = y @ m.proj.weight[:, :, 0, 0].T + m.proj.bias
        outs.append(out.T.reshape(c, h, w))
    return torch.stack(outs)


@pytest.mark.parametrize(
    ("channels", "heads", "hw", "sr"),
    [
        (32, 2, (7, 9), 1),
        (32, 2, (1, 1), 1),
        (24, 3, (5, 5), 1),
        (16, 1, (12, 10), 1),
        (32, 4, (2, 11), 1),
        (32, 2, (8, 6), 2),
        (32, 2, (7, 9), 2),  # odd map, replicate-padded before the reduction
        (32, 2, (1, 1), 4),  # map smaller than sr_ratio
        (32, 2, (3, 5), 4),
    ],
)
def test_linear_form_equals_explicit_quadratic_form(
    channels: int, heads: int, hw: tuple[int, int], sr: int
) -> None:
    m = FocusedLinearAttention(channels, num_heads=heads, sr_ratio=sr).double().eval()
    with torch.no_grad():
        m.scale.normal_()  # exercise the per-channel scale (initialised 0)
    x = torch.randn(2, channels, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x), rtol=1e-9, atol=1e-10)


def official_forward(m: FocusedLinearAttention, x: torch.Tensor) -> torch.Tensor:
    """LeapLabTHU/FLatten-Transformer ``FocusedLinearAttention.forward`` (models/flatten_pvt.py, abdb115)
    transcribed step by step with the module's weights, its fixed-length positional encoding set to 0
    (ablate drops it): tokens B×N×C, q/kv linear maps, for sr_ratio > 1 a strided conv of the map then
    LayerNorm (eps 1e-5) over C, focusing with norms over all C, ``z = 1/(q·mean_j k + 1e-6)``,
    ``kv = kᵀ n^-½ @ v n^-½``, V resized to N tokens by 1-D linear interpolation, DWC shared by heads,
    proj."""
    b, c, h, w = x.shape
    heads, d, p = m.num_heads, m.head_dim, m.focusing_factor
    tokens = x.flatten(2).transpose(1, 2)
    q = F.linear(tokens, m.q.weight[:, :, 0, 0], m.q.bias)
    if m.sr_ratio > 1:
        x_ = F.conv2d(x, m.sr.weight, m.sr.bias, stride=m.sr_ratio).reshape(b, c, -1).permute(0, 2, 1)
        x_ = F.layer_norm(x_, (c,), m.norm.weight, m.norm.bias, eps=1e-5)
    else:
        x_ = tokens
    kv = F.linear(x_, m.kv.weight[:, :, 0, 0], m.kv.bias).reshape(b, -1, 2, c).permute(2, 0, 1, 3)
    k, v = kv[0], kv[1]
    n = k.shape[1]
    scale = F.softplus(m.scale)
    q, k = (F.relu(q) + 1e-6) / scale, (F.relu(k) + 1e-6) / scale
    q_norm, k_norm = q.norm(dim=-1, keepdim=True), k.norm(dim=-1, keepdim=True)
    q, k = q**p, k**p
    q, k = q / q.norm(dim=-1, keepdim=True) * q_norm, k / k.norm(dim=-1, keepdim=True) * k_norm
    q = q.reshape(b, h * w, heads, -1).permute(0, 2, 1, 3)
    k = k.reshape(b, n, heads, -1).permute(0, 2, 1, 3)
    v = v.reshape(b, n, heads, -1).permute(0, 2, 1, 3)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    y = q @ ((k.transpose(-2, -1) * n**-0.5) @ (v * n**-0.5)) * z
    if m.sr_ratio > 1:
        v = F.interpolate(v.transpose(-2, -1).reshape(b * heads, -1, n), size=h * w, mode="linear")
        v = v.reshape(b, heads, -1, h * w).transpose(-2, -1)
    y = y.transpose(1, 2).reshape(b, h * w, c)
    v = v.reshape(b * heads, h, w, -1).permute(0, 3, 1, 2)
    dwc = F.conv2d(v, m.dwc.weight, m.dwc.bias, padding=m.dwc.padding, groups=d)
    y = y + dwc.reshape(b, c, h * w).permute(0, 2, 1)
    y = F.linear(y, m.proj.weight[:, :, 0, 0], m.proj.bias)
    return y.transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize(
    ("sr", "hw", "heads"), [(1, (7, 9), 2), (2, (8, 6), 2), (2, (10, 10), 4), (4, (8, 12), 1)]
)
def test_equals_the_official_forward_float64(sr: int, hw: tuple[int, int], heads: int) -> None:
    m = FocusedLinearAttention(32, num_heads=heads, sr_ratio=sr).double().eval()
    with torch.no_grad():
        m.scale.uniform_(-1, 1)
        if sr > 1:
            m.norm.weight.uniform_(0.5, 1.5)
            m.norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 32, *hw, dtype=torch.float64)
    torch.testing.assert_close(m(x), official_forward(m, x), rtol=1e-9, atol=1e-10)
    if sr > 1:
        assert m.norm.eps == 1e-5


def test_bad_arguments_raise_value_error() -> None:
    for kwargs, name in [
        ({"focusing_factor": 0}, "focusing_factor"),
        ({"focusing_factor": -1.5}, "focusing_factor"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"sr_ratio": 0}, "sr_ratio"),
        ({"num_heads": 3}, "num_heads"),
    ]:
        with pytest.raises(ValueError, match=name):
            FocusedLinearAttention(16, **kwargs)


def test_focusing_preserves_the_norm_and_matches_the_plain_formula() -> None:
    s = torch.randn(32, dtype=torch.float64)
    x = 1e3 * torch.randn(500, 32, dtype=torch.float64)  # large: t**3 alone would overflow float16
    f = focus(x, s, 3, dim=-1)
    unfocused = (F.relu(x) + 1e-6) / F.softplus(s)
    torch.testing.assert_close(f.norm(dim=-1), unfocused.norm(dim=-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(f, phi(x, s, 3), rtol=1e-12, atol=0)  # max-rescaling changes nothing
    # float32 focusing of the same inputs stays accurate (the module upcasts half/bf16 to float32)
    torch.testing.assert_close(focus(x.float(), s.float(), 3, dim=-1), f.float(), rtol=1e-4, atol=1e-4)


def test_focusing_sharpens() -> None:
    """Each focused vector leans further toward its dominant axis; random pairs become less similar on
    average. Not for every pair: vectors sharing their dominant axis are pulled together (paper, Prop. 1),
    so 'cos(φ(a), φ(b)) ≤ cos(a, b)' is true on average, not pointwise."""
    s = torch.zeros(32, dtype=torch.float64)
    a, b = torch.randn(2, 4000, 32, dtype=torch.float64)
    ua, ub = ((F.relu(t) + 1e-6) / F.softplus(s) for t in (a, b))
    fa, fb = focus(a, s, 3, dim=-1), focus(b, s, 3, dim=-1)
    # concentration: the share of the dominant axis never drops, and rises for non-one-hot vectors
    top = ua.argmax(dim=-1, keepdim=True)
    share_u = ua.gather(-1, top).squeeze(-1) / ua.norm(dim=-1)
    share_f = fa.gather(-1, top).squeeze(-1) / fa.norm(dim=-1)
    assert (share_f >= share_u - 1e-12).all() and share_f.mean() > share_u.mean() + 0.2
    # dissimilar pairs get more dissimilar: mean cosine of random non-negative pairs falls (0.33 -> 0.14)
    cos_u, cos_f = F.cosine_similarity(ua, ub, dim=-1), F.cosine_similarity(fa, fb, dim=-1)
    assert cos_f.mean() < 0.6 * cos_u.mean()
    assert (cos_f <= cos_u).float().mean() > 0.9
    # ... but a pair sharing its dominant axis gets closer: the pointwise claim is false
    x = torch.tensor([[1.0, 0.9, 0.0], [1.0, 0.0, 0.9]], dtype=torch.float64)
    s3 = torch.zeros(3, dtype=torch.float64)
    fx = focus(x, s3, 3, dim=-1)
    assert F.cosine_similarity(fx[0], fx[1], dim=0) > F.cosine_similarity(x[0], x[1], dim=0) + 0.05


def test_fp32_core_under_bf16_autocast_tracks_float32() -> None:
    m = FocusedLinearAttention(64).eval()
    x = 10.0 * torch.randn(1, 64, 16, 12)
    ref = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert torch.isfinite(y).all()
    assert (y.float() - ref).norm() / ref.norm() < 0.05


@pytest.mark.parametrize(("d", "seed"), [(8, 0), (8, 1), (16, 2), (16, 3)])
def test_dwc_restores_full_rank_of_the_token_mixing_matrix(d: int, seed: int) -> None:
    """Single head, C = d, 8×8 map (N = 64). Channel c of the output before proj is (A + D_c) v_c + b_c,
    A = row-normalised Φ_q Φ_kᵀ (rank ≤ d), D_c the N×N matrix of the 5×5 DWC filter of channel c.
    Checked: that identity against the module itself, rank(A) ≤ d, rank(A + D_c) = N for every c."""
    torch.manual_seed(seed)
    h = w = 8
    n = h * w
    m = FocusedLinearAttention(d, num_heads=1).double().eval()
    x = torch.randn(1, d, h, w, dtype=torch.float64)
    captured = {}
    m.proj.register_forward_pre_hook(lambda _mod, args: captured.update(pre=args[0]))
    with torch.no_grad():
        m(x)
        fq = focus(m.q(x), m.scale, m.focusing_factor)[0].reshape(d, n).T  # N×d
        k, v = m.kv(x).chunk(2, dim=1)
        fk = focus(k, m.scale, m.focusing_factor)[0].reshape(d, n).T
        v = v[0].reshape(d, n).T
        a = fq @ fk.T
        a = a / (a.sum(1, keepdim=True) + n * EPS)
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, h, w)  # one-hot images, one per token
        pre = captured["pre"][0].reshape(d, n).T
        rank_a = torch.linalg.matrix_rank(a).item()
        assert rank_a <= d
        for c in range(d):
            # column j of D_c = the filter's response to a unit impulse at token j (zero padding)
            dc = F.conv2d(basis, m.dwc.weight[c : c + 1], padding=m.dwc.padding).reshape(n, n).T
            mix = a + dc
            torch.testing.assert_close(pre[:, c], mix @ v[:, c] + m.dwc.bias[c], rtol=1e-9, atol=1e-10)
            assert torch.linalg.matrix_rank(mix).item() == n, c
