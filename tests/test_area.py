"""Area attention: identical to ultralytics' AAttn where AAttn works, a masked reference elsewhere."""

from __future__ import annotations

import pytest
import torch
from ultralytics.nn.modules.block import A2C2f, AAttn

from modules.area import AreaAttention, area_bounds


def randomise_bn(module: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine weights, so eval-mode BN is not the identity."""
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.normal_(0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.3)


def pair(channels: int, heads: int, area: int) -> tuple[AAttn, AreaAttention]:
    ref = AAttn(channels, heads, area)
    randomise_bn(ref)
    m = AreaAttention(channels, heads, area=area)
    m.attn.load_state_dict(ref.state_dict())
    return ref.eval(), m.eval()


def reference(m: AreaAttention, x: torch.Tensor) -> torch.Tensor:
    """Float64: per-chunk softmax attention over exactly that chunk's real tokens, + pe(v), proj.

    Chunks: a = min(area, N) consecutive raster ranges with boundaries floor(i·N/a).
    """
    m = m.double().eval()
    x = x.double()
    b, c, hh, ww = x.shape
    n, heads = hh * ww, m.num_heads
    d = c // heads
    a = min(m.area, n)
    qkv = m.attn.qkv(x).flatten(2).transpose(1, 2).reshape(b, n, heads, 3 * d)  # per head [q | k | v]
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    y = torch.zeros(b, n, heads, d, dtype=torch.float64)
    for i in range(a):
        s, e = i * n // a, (i + 1) * n // a
        for bi in range(b):
            for hd in range(heads):
                logits = q[bi, s:e, hd] @ k[bi, s:e, hd].T / d**0.5  # dense chunk×chunk
                y[bi, s:e, hd] = torch.softmax(logits, dim=-1) @ v[bi, s:e, hd]
    y_map = y.reshape(b, n, c).transpose(1, 2).reshape(b, c, hh, ww)
    v_map = v.reshape(b, n, c).transpose(1, 2).reshape(b, c, hh, ww)
    return m.attn.proj(y_map + m.attn.pe(v_map))


@pytest.mark.parametrize(
    ("hw", "area"),
    [((4, 4), 1), ((6, 8), 4), ((8, 6), 4), ((5, 4), 2), ((3, 10), 2), ((6, 6), 4), ((1, 1), 1), ((2, 6), 4)],
)
def test_matches_ultralytics_aattn_for_divisible_n(hw: tuple[int, int], area: int) -> None:
    ref, m = pair(32, 2, area)
    x = torch.randn(2, 32, *hw)
    expected = ref(x)
    torch.testing.assert_close(m(x), expected, rtol=0, atol=0)  # AAttn.forward itself runs
    # the general masked path agrees with ultralytics too where both apply
    torch.testing.assert_close(m._forward_masked(x), expected, rtol=1e-5, atol=1e-5)
    # ...and with the dense float64 reference (checks the reference's chunking against AAttn's)
    torch.testing.assert_close(reference(m, x).float(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("hw", "area"),
    [((7, 9), 4), ((1, 1), 4), ((5, 3), 2), ((3, 3), 4), ((2, 1), 4), ((11, 7), 4), ((3, 5), 1)],
)
def test_non_divisible_n_matches_masked_reference(hw: tuple[int, int], area: int) -> None:
    _, m = pair(32, 4, area)
    x = torch.randn(2, 32, *hw)
    if (hw[0] * hw[1]) % area:
        with pytest.raises(RuntimeError):  # ultralytics' AAttn cannot run here
            AAttn(32, 4, area)(x)
    y = m.double()(x.double())
    torch.testing.assert_close(y, reference(m, x), rtol=1e-10, atol=1e-10)


def test_non_divisible_attention_stays_inside_its_area() -> None:
    """Without pe (zeroed), changing one area's tokens leaves every other area's outputs unchanged."""
    _, m = pair(32, 2, 4)
    with torch.no_grad():
        m.attn.pe.conv.weight.zero_()
        m.attn.pe.bn.bias.zero_()
        m.attn.pe.bn.running_mean.zero_()
    x = torch.randn(1, 32, 7, 9)  # N = 63: areas [0,15) [15,31) [31,47) [47,63)
    x2 = x.clone().flatten(2)
    x2[..., 15:31] += torch.randn(1, 32, 16)
    y, y2 = m(x).flatten(2), m(x2.reshape_as(x)).flatten(2)
    torch.testing.assert_close(y2[..., :15], y[..., :15])
    torch.testing.assert_close(y2[..., 31:], y[..., 31:])
    assert not torch.allclose(y2[..., 15:31], y[..., 15:31])


@pytest.mark.parametrize(("n", "area"), [(63, 4), (15, 2), (1, 4), (2, 4), (9, 4), (64, 4), (10, 1)])
def test_area_bounds_partition(n: int, area: int) -> None:
    bounds = area_bounds(n, area)
    assert len(bounds) == min(n, area)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(e0 == s1 for (_, e0), (s1, _) in zip(bounds[:-1], bounds[1:], strict=True))
    sizes = [e - s for s, e in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    if n % area == 0:
        assert sizes == [n // area] * area


@pytest.mark.parametrize(("channels", "heads", "area"), [(64, 2, 4), (128, 4, 1), (32, 1, 2)])
def test_parameter_count_and_layout_equal_aattn(channels: int, heads: int, area: int) -> None:
    ref = AAttn(channels, heads, area)
    m = AreaAttention(channels, heads, area=area)
    count = sum(p.numel() for p in m.parameters())
    assert count == sum(p.numel() for p in ref.parameters())
    assert list(m.attn.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("area", [4, 1])
def test_defaults_reproduce_yolo12_attention_inside_a2c2f(area: int) -> None:
    """YOLO12 builds AAttn(c_, c_ // 32, area) inside A2C2f; the default head_dim gives the same module."""
    block = A2C2f(256, 256, n=1, a2=True, area=area)
    inner = block.m[0][0].attn
    m = AreaAttention(inner.all_head_dim, area=area)
    assert m.num_heads == inner.num_heads
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in inner.parameters())
    assert AreaAttention(64).area == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"area": 0}, "area"),
        ({"area": -2}, "area"),
        ({"area": 1.5}, "area"),
        ({"num_heads": 3}, "num_heads"),
        ({"head_dim": 0}, "head_dim"),
    ],
)
def test_bad_args_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AreaAttention(64, **kwargs)


def test_bad_channels_raise() -> None:
    with pytest.raises(ValueError, match="channels"):
        AreaAttention(0)
