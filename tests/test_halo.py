"""HaloAttention: equals brute-force masked local attention, is local, masks padding, matches timm."""

from __future__ import annotations

import copy

import pytest
import torch

import modules.halo as halo_module
from modules.halo import HaloAttention


def project(linear: torch.nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    out = tokens @ linear.weight.T
    return out if linear.bias is None else out + linear.bias


def reference(m: HaloAttention, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel loop: softmax over the keys of the pixel's block window that lie inside the map.

    Pixel (i, j) is in block (i // b, j // b); its keys are the pixels (r, s) of the map with
    r in [by·b - h, by·b + b + h) and s likewise. logit = scale·q·k + q·rel_h[Δr] + q·rel_w[Δs] with
    Δ = key - query offset, table row Δ + b + h - 1.
    """
    bsz, c, hh, ww = x.shape
    b, halo, heads, d = m.block_size, m.halo_size, m.num_heads, m.head_dim
    tokens = x.permute(0, 2, 3, 1)  # B×H×W×C
    q = project(m.q, tokens).view(bsz, hh, ww, heads, d)
    k, v = project(m.kv, tokens).view(bsz, hh, ww, 2, heads, d).unbind(3)
    shift = b + halo - 1
    y = torch.empty(bsz, hh, ww, heads, d, dtype=x.dtype)
    for i in range(hh):
        for j in range(ww):
            r0, s0 = (i // b) * b - halo, (j // b) * b - halo
            rows = range(max(r0, 0), min(r0 + b + 2 * halo, hh))
            cols = range(max(s0, 0), min(s0 + b + 2 * halo, ww))
            keys = [(r, s) for r in rows for s in cols]
            kr = torch.tensor([r for r, _ in keys])
            ks = torch.tensor([s for _, s in keys])
            qi = q[:, i, j]  # B×heads×d
            logits = m.scale * torch.einsum("bhd,bmhd->bhm", qi, k[:, kr, ks])
            logits = logits + torch.einsum("bhd,md->bhm", qi, m.rel_h[kr - i + shift])
            logits = logits + torch.einsum("bhd,md->bhm", qi, m.rel_w[ks - j + shift])
            y[:, i, j] = torch.einsum("bhm,bmhd->bhd", logits.softmax(-1), v[:, kr, ks])
    return project(m.proj, y.reshape(bsz, hh, ww, c)).permute(0, 3, 1, 2)


def make(channels: int = 16, heads: int = 2, block: int = 4, halo: int = 2, **kw) -> HaloAttention:
    m = HaloAttention(channels, heads, 32, block, halo, **kw).double().eval()
    with torch.no_grad():  # non-trivial position tables so that a wrong offset shows
        m.rel_h.normal_(0, 0.5)
        m.rel_w.normal_(0, 0.5)
    return m


@pytest.mark.parametrize(
    ("size", "block", "halo"),
    [
        ((7, 9), 4, 2),
        ((10, 13), 4, 2),
        ((3, 5), 4, 2),
        ((1, 1), 4, 2),
        ((8, 12), 4, 2),
        ((10, 13), 8, 3),
        ((9, 6), 3, 4),
        ((6, 7), 2, 0),
    ],
)
def test_equals_bruteforce_masked_local_attention(size, block, halo):
    m = make(block=block, halo=halo)
    x = torch.randn(2, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference(m, x), atol=1e-10, rtol=1e-8)


def test_locality_perturbation_and_gradient_support():
    m = make(block=4, halo=2)
    x = torch.randn(1, 16, 10, 13, dtype=torch.float64)
    i, j = 5, 6  # block (1, 1): window rows 2..9, cols 2..9
    inside = torch.zeros(10, 13, dtype=torch.bool)
    inside[2:10, 2:10] = True
    with torch.no_grad():
        base = m(x)[0, :, i, j]
        for r, s in [(1, 6), (5, 10), (0, 0), (9, 12)]:  # outside the window
            xp = x.clone()
            xp[0, :, r, s] += 10.0
            torch.testing.assert_close(m(xp)[0, :, i, j], base, atol=1e-12, rtol=0)
        for r, s in [(2, 2), (9, 9), (5, 6), (3, 9)]:  # inside (halo corners, itself, halo edge)
            xp = x.clone()
            xp[0, :, r, s] += 10.0
            assert (m(xp)[0, :, i, j] - base).abs().max() > 1e-3
    # The exact dependency set: the gradient of this output is non-zero exactly on the window.
    xg = x.clone().requires_grad_()
    (m(xg)[0, :, i, j] * torch.randn(16, dtype=torch.float64)).sum().backward()
    support = xg.grad[0].abs().sum(0) > 0
    assert torch.equal(support, inside)


def test_padded_keys_are_masked(monkeypatch):
    """A 5×5 map in one 8×8 block (halo 3): every pixel attends to exactly the 25 pixels (dense form)."""
    m = make(channels=16, heads=2, block=8, halo=3)
    x = torch.randn(1, 16, 5, 5, dtype=torch.float64)
    n, heads, d, shift = 25, 2, 8, 8 + 3 - 1
    tokens = x[0].reshape(16, n).T
    q = project(m.q, tokens).view(n, heads, d)
    k, v = project(m.kv, tokens).view(n, 2, heads, d).unbind(1)
    rows, cols = torch.arange(n) // 5, torch.arange(n) % 5
    dr = rows[None, :] - rows[:, None] + shift  # N×N key-minus-query row offsets
    dc = cols[None, :] - cols[:, None] + shift
    logits = m.scale * torch.einsum("ihd,jhd->hij", q, k)
    logits = (
        logits + torch.einsum("ihd,ijd->hij", q, m.rel_h[dr]) + torch.einsum("ihd,ijd->hij", q, m.rel_w[dc])
    )
    y = torch.einsum("hij,jhd->ihd", logits.softmax(-1), v).reshape(n, 16)
    expected = project(m.proj, y).T.reshape(1, 16, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(m(x), expected, atol=1e-10, rtol=1e-8)

        # Sensitivity: with the masks switched off (padded keys attended), the output is far off.
        geometry = halo_module.halo_geometry

        def unmasked(*args, **kwargs):
            q_index, kv_index, row_valid, col_valid = geometry(*args, **kwargs)
            return q_index, kv_index, torch.ones_like(row_valid), torch.ones_like(col_valid)

        monkeypatch.setattr(halo_module, "halo_geometry", unmasked)
        assert (m(x) - expected).abs().max() > 1e-2


def test_gradients_finite_with_masked_keys():
    """-inf masks must not leak NaN into the backward pass (3×5 map: most of the window is masked)."""
    m = make(block=4, halo=2).train()
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64, requires_grad=True)
    (m(x) * torch.randn(2, 16, 3, 5, dtype=torch.float64)).sum().backward()
    for t in [x.grad, *(p.grad for p in m.parameters())]:
        assert torch.isfinite(t).all() and t.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"block_size": 0}, "block_size"),
        ({"block_size": -2}, "block_size"),
        ({"block_size": 2.5}, "block_size"),
        ({"halo_size": -1}, "halo_size"),
        ({"num_heads": 3}, "num_heads"),
        ({"num_heads": 0}, "num_heads"),
        ({"head_dim": 0}, "head_dim"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        HaloAttention(16, **kwargs)


def test_positional_arguments_and_heads():
    m = HaloAttention(64, None, 16, 4, 1, False)
    assert (m.num_heads, m.head_dim, m.block_size, m.halo_size, m.win_size) == (4, 16, 4, 1, 6)
    assert m.q.bias is None and m.kv.bias is None
    assert m.rel_h.shape == (2 * (4 + 1) - 1, 16)


def test_float16_logits_do_not_overflow():
    """q·k/√d ≈ 2.6e6, far above the fp16 maximum 65504: fp16 stays finite (the core runs in fp32)."""
    m32 = make(channels=16, heads=1, block=4, halo=1).float()
    with torch.no_grad():
        m32.q.weight.copy_(torch.eye(16))
        m32.kv.weight.copy_(torch.cat([torch.eye(16), torch.eye(16)]))
        for p in (m32.q.bias, m32.kv.bias):
            p.zero_()
    m32.half().float()  # fp16-representable weights, so that both runs see the same numbers
    x = (800.0 + torch.rand(1, 16, 6, 6)).half()
    y16 = copy.deepcopy(m32).half()(x)
    assert torch.isfinite(y16).all()
    torch.testing.assert_close(y16.float(), m32(x.float()), rtol=1e-2, atol=1.0)


def test_bfloat16_autocast_core_runs_in_float32(monkeypatch):
    m = make(channels=16, heads=2, block=4, halo=1).float()
    seen = []
    attend = HaloAttention._attend

    def spy(self, q, *args):
        seen.append(q.dtype)
        return attend(self, q, *args)

    monkeypatch.setattr(HaloAttention, "_attend", spy)
    x = torch.randn(2, 16, 7, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert seen == [torch.float32]
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), m(x), rtol=0.05, atol=0.05)


def test_matches_timm_in_interior_blocks():
    """Same weights as timm's HaloAttn (no projection, qkv_bias False): equal wherever timm's unmasked
    zero padding is out of reach, i.e. in blocks whose window lies inside the map."""
    halo_attn = pytest.importorskip("timm.layers.halo_attn")
    c, heads, b, h = 32, 2, 4, 2
    d = c // heads
    t = halo_attn.HaloAttn(dim=c, dim_out=c, num_heads=heads, block_size=b, halo_size=h).double().eval()
    m = HaloAttention(c, heads, 32, b, h, qkv_bias=False).double().eval()
    with torch.no_grad():
        m.q.weight.copy_(t.q.weight[:, :, 0, 0])
        kv = t.kv.weight[:, :, 0, 0].view(heads, 2, d, c)  # timm: per head [k, v]
        m.kv.weight.copy_(kv.transpose(0, 1).reshape(2 * c, c))
        m.rel_h.copy_(t.pos_embed.height_rel[2 * h :])  # timm's first 2h rows are never used
        m.rel_w.copy_(t.pos_embed.width_rel[2 * h :])
        m.proj.weight.copy_(torch.eye(c))
        m.proj.bias.zero_()
        x = torch.randn(2, c, 16, 20, dtype=torch.float64)
        ours, theirs = m(x), t(x)
    torch.testing.assert_close(ours[..., b:-b, b:-b], theirs[..., b:-b, b:-b], atol=1e-10, rtol=1e-8)
    assert (ours - theirs).abs().max() > 1e-3  # border blocks differ: timm attends to zero padding
