"""The contract every registered attention module keeps, checked for all of them at once.

B×C×H×W in and out for any H, W >= 1; gradients to every parameter; finite under autocast with large
inputs; batch independence; determinism; argument validation; heads derived from channels.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import modules
from modules import AttentionResidual

NAMES = modules.attentions()  # the controls (identity) have a contract of their own: test_identity.py
C = 64
SIZES = [(1, 1), (7, 9), (15, 15), (20, 20), (40, 24)]


def make(name: str, channels: int = C, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return modules.build(name, channels, **kwargs)


def test_the_six_seed_modules_are_registered() -> None:
    assert set(NAMES) >= {"rala", "halo", "tssa", "fla", "area", "mhsa"}


@pytest.mark.parametrize("name", NAMES)
def test_constructor_takes_channels_first_and_heads(name: str) -> None:
    params = list(inspect.signature(modules.get(name).__init__).parameters)
    assert params[1] == "channels"
    assert "num_heads" in params and "head_dim" in params
    assert modules.get(name).__doc__ and "Args:" in modules.get(name).__doc__


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_shape_and_dtype_preserved(name: str, hw: tuple[int, int], train: bool) -> None:
    m = make(name).train(train)
    x = torch.randn(2, C, *hw)
    y = m(x)
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [1, 3])
def test_any_batch_size_and_float64(name: str, batch: int) -> None:
    m = make(name, 32).double().eval()
    x = torch.randn(batch, 32, 9, 11, dtype=torch.float64)
    y = m(x)
    assert y.shape == x.shape and y.dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name: str) -> None:
    m = make(name).train()
    x = torch.randn(2, C, 20, 20, requires_grad=True)
    (m(x) * torch.randn(2, C, 20, 20)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("hw", [(20, 20), (40, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_finite_under_bf16_autocast_with_large_inputs(name: str, hw: tuple[int, int]) -> None:
    m = make(name).eval()
    x = 100.0 * torch.randn(2, C, *hw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 autocast is checked on a GPU only")
@pytest.mark.parametrize("name", NAMES)
def test_finite_under_fp16_autocast_on_cuda(name: str) -> None:
    m = make(name).cuda().eval()
    x = 100.0 * torch.randn(2, C, 40, 24, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        y = m(x)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_batch_independence(name: str) -> None:
    m = make(name).eval()
    x = torch.randn(3, C, 12, 10)
    y = m(x)
    x2 = x.clone()
    x2[1] = torch.randn(C, 12, 10) * 5
    y2 = m(x2)
    torch.testing.assert_close(y2[0], y[0])
    torch.testing.assert_close(y2[2], y[2])
    assert not torch.allclose(y2[1], y[1])


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_in_eval(name: str) -> None:
    m = make(name).eval()
    x = torch.randn(2, C, 15, 13)
    assert torch.equal(m(x), m(x))


@pytest.mark.parametrize("name", NAMES)
def test_output_depends_on_input(name: str) -> None:
    """Guards the tests above against a module that ignores its input (e.g. returns zeros)."""
    m = make(name).eval()
    x = torch.randn(1, C, 10, 10)
    y = m(x)
    assert y.abs().sum() > 0
    assert not torch.allclose(m(x + torch.randn_like(x)), y)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("channels", "heads"), [(64, 2), (256, 8), (48, 1), (96, 3), (16, 1)])
def test_heads_derived_from_channels(name: str, channels: int, heads: int) -> None:
    m = make(name, channels)
    assert m.num_heads == heads


@pytest.mark.parametrize("name", NAMES)
def test_heads_that_do_not_divide_channels_raise(name: str) -> None:
    with pytest.raises(ValueError, match=r"num_heads.*valid: 1, 2, 4, 8"):
        make(name, 64, num_heads=3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [0, -8])
def test_bad_channels_raise(name: str, channels: int) -> None:
    with pytest.raises(ValueError, match="channels"):
        make(name, channels)


@pytest.mark.parametrize("name", NAMES)
def test_residual_wrapper_keeps_signal_at_init(name: str) -> None:
    m = AttentionResidual(C, name).eval()
    x = torch.randn(2, C, 20, 20)
    y = m(x)
    # gamma = 0.01: the block starts close to the identity but is not the identity
    rel = ((y - x).norm() / x.norm()).item()
    assert 0 < rel < 0.1
    assert AttentionResidual(C, name, gamma=None).gamma is None


def test_residual_wrapper_with_gamma_zero_is_identity() -> None:
    m = AttentionResidual(C, "mhsa", gamma=0.0).eval()
    x = torch.randn(1, C, 8, 8)
    torch.testing.assert_close(m(x), x)


def test_residual_wrapper_rejects_bad_gamma() -> None:
    with pytest.raises(ValueError, match="gamma"):
        AttentionResidual(C, "mhsa", gamma="big")
