"""Exact costs: attention parameters, FLOPs (SDPA included), the record fields of one architecture."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules.block import AAttn

import modules
from ablate.compose import compose
from ablate.measure import cost as measure
from ablate.measure.model import base_model_yaml, build_model, layer_table, stride_size
from ablate.placement import Placement
from modules.hosts import A2C2fSwap, C2PSASwap, module_kwargs

IMGSZ = 160  # small maps keep the full-model counts fast; AAttn's 4 areas still divide P4 (10×10)
INSERTED = (14, 17, 20)


# ------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def base_yaml() -> dict:
    return base_model_yaml("yolo12n", 5)


@pytest.fixture(scope="module")
def base(base_yaml: dict) -> nn.Module:
    return build_model(base_yaml).eval()


@pytest.fixture(scope="module")
def composed(base_yaml: dict) -> nn.Module:
    return build_model(compose(base_yaml, Placement("rala", INSERTED), "yolo12n")).eval()


@pytest.fixture(scope="module")
def base_count(base: nn.Module) -> measure.FlopCount:
    return measure.count_flops(base, IMGSZ)


def _residual(channels: int) -> nn.Module:
    """The layer insert mode adds, built alone."""
    return modules.AttentionResidual(channels, "rala").eval()


# ------------------------------------------------------------------------------------------- params


def test_params_attn_is_zero_for_the_baseline(base: nn.Module) -> None:
    assert measure.params_attn(base) == 0


def test_params_attn_counts_the_inserted_layers(base: nn.Module, composed: nn.Module) -> None:
    table = layer_table(base)
    expected = sum(sum(p.numel() for p in _residual(table[i].channels).parameters()) for i in INSERTED)
    assert measure.params_attn(composed) == expected
    added = sum(p.numel() for p in composed.parameters()) - sum(p.numel() for p in base.parameters())
    assert measure.params_attn(composed) == added  # insert mode only adds


def test_params_attn_counts_the_swapped_in_attention_of_hosts() -> None:
    host = A2C2fSwap(128, 128, 1, True, 4, False, 2.0, "rala")  # one repeat = two ABlocks of dim 64
    one = modules.build("rala", 64, **module_kwargs("rala", None, 64, 2, 4))
    assert measure.params_attn(host) == 2 * sum(p.numel() for p in one.parameters())
    psa = C2PSASwap(128, 128, 2, 0.5, "mhsa")  # two PSABlocks of dim 64
    one = modules.build("mhsa", 64, **module_kwargs("mhsa", None, 64, psa.m[0].attn.num_heads))
    assert measure.params_attn(psa) == 2 * sum(p.numel() for p in one.parameters())


# -------------------------------------------------------------------------------------------- FLOPs


class ConvMatmul(nn.Module):
    """A 3×3 conv, then the Gram matrix of its output channels: both countable by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(2)  # 1×8×HW
        return y @ y.transpose(1, 2)  # 1×8×8


def test_flops_of_a_conv_and_a_matmul_are_exact() -> None:
    n = 16 * 16
    conv = 2 * n * 8 * 3 * 9
    gram = 2 * 8 * 8 * n
    count = measure.count_flops(ConvMatmul(), 16)
    assert count.flops == conv + gram
    assert count.gflops == pytest.approx((conv + gram) / 1e9, rel=1e-12)
    assert count.imgsz == (16, 16)
    assert count.by_module == {"conv": conv / 1e9}
    assert count.version == f"torch {torch.__version__}"


class Attention(nn.Module):
    def __init__(self, **kwargs: object) -> None:
        super().__init__()
        self.kwargs = kwargs

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, **self.kwargs)


B, H, N, D = 2, 4, 64, 32
MASKS = {
    "none": {},
    "bool mask": {"attn_mask": torch.ones(N, N, dtype=torch.bool).tril()},
    "float mask": {"attn_mask": torch.zeros(B, 1, N, N)},
}


@pytest.mark.parametrize("value_dim", [D, 16], ids=["fused cpu kernel", "math path"])
@pytest.mark.parametrize("mask", MASKS, ids=list(MASKS))
def test_sdpa_is_counted_on_cpu(mask: str, value_dim: int) -> None:
    q, k = torch.randn(B, H, N, D), torch.randn(B, H, N, D)
    v = torch.randn(B, H, N, value_dim)
    counted = measure.count_module_flops(Attention(**MASKS[mask]), q, k, v).get_total_flops()
    assert counted == 2 * B * H * N * N * D + 2 * B * H * N * N * value_dim  # q·kᵀ and p·v


def test_sdpa_backward_is_counted_on_cpu() -> None:
    q = torch.randn(B, H, N, D, requires_grad=True)
    k, v = torch.randn(B, H, N, D), torch.randn(B, H, N, D)
    with measure.flop_counter() as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    forward = 2 * 2 * B * H * N * N * D
    backward = 5 * 2 * B * H * N * N * D  # recomputed scores, dV, dP, dQ, dK
    assert counter.get_total_flops() == forward + backward


def _hand_count(model: nn.Module, imgsz: int) -> tuple[int, int]:
    """(convolutions, area attention products) of one forward, from hooks: 2·MACs each."""
    conv, attn = [0], [0]

    def on_conv(m: nn.Conv2d, inputs: tuple, out: torch.Tensor) -> None:
        conv[0] += 2 * out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def on_attn(m: AAttn, inputs: tuple, out: torch.Tensor) -> None:
        b, c, h, w = inputs[0].shape
        attn[0] += 2 * 2 * b * (h * w) ** 2 * c // m.area  # q·kᵀ and p·v inside each of `area` chunks

    hooks = [m.register_forward_hook(on_conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(on_attn) for m in model.modules() if isinstance(m, AAttn)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, imgsz, imgsz))
    finally:
        for h in hooks:
            h.remove()
    return conv[0], attn[0]


def test_yolo12_count_is_convolutions_plus_attention_products(
    base: nn.Module, base_count: measure.FlopCount
) -> None:
    conv, attn = _hand_count(base, IMGSZ)
    count = base_count
    assert attn > 0
    assert count.flops == conv + attn  # every product, the attention matmuls included
    assert count.flops > conv  # what a conv-hook-only counter reports
    layers = sum(v for k, v in count.by_module.items() if k.startswith("model."))
    assert layers == pytest.approx(count.gflops, rel=1e-9)


def test_inserting_a_module_adds_its_own_flops(
    base: nn.Module, composed: nn.Module, base_count: measure.FlopCount
) -> None:
    table = layer_table(base)
    alone = 0
    for i in INSERTED:
        side = IMGSZ // table[i].stride
        x = torch.zeros(1, table[i].channels, side, side)
        alone += measure.count_module_flops(_residual(table[i].channels), x).get_total_flops()
    added = measure.count_flops(composed, IMGSZ).flops - base_count.flops
    assert added == alone


def test_sizes_round_up_to_the_stride(base: nn.Module, base_count: measure.FlopCount) -> None:
    assert stride_size(base, 150) == (IMGSZ, IMGSZ) == base_count.imgsz
    assert stride_size(base, (100, 161)) == (128, 192)
    assert stride_size(ConvMatmul(), 15) == (15, 15)  # no strides: as given
    with pytest.raises(ValueError, match="imgsz"):
        stride_size(base, 0)


def test_ultralytics_count_is_recorded_with_its_counter(base: nn.Module) -> None:
    theirs = measure.ultralytics_flops(base, IMGSZ)
    assert theirs.gflops > 0
    assert theirs.version.startswith("ultralytics-thop ")
    assert theirs.imgsz == (IMGSZ, IMGSZ)


def test_a_zero_count_raises() -> None:
    with pytest.raises(measure.ZeroFlopsError):
        measure.count_flops(nn.Sequential(nn.ReLU()), 8)
    with pytest.raises(measure.ZeroFlopsError):
        measure.ultralytics_flops(nn.Sequential(nn.ReLU()), 8)  # get_flops swallows the error: 0.0


def test_cost_fields_are_record_fields(composed: nn.Module) -> None:
    from ablate.records import RunRecord

    fields = measure.cost_fields(composed, IMGSZ)
    RunRecord(key="k").update(fields)  # every name is a record field
    assert fields["params_attn"] == measure.params_attn(composed) > 0
    assert fields["gflops"] == round(measure.count_flops(composed, IMGSZ).gflops, 4)
    assert fields["gflops_imgsz"] == [IMGSZ, IMGSZ] and "FlopCounterMode" in fields["gflops_counter"]
    with pytest.raises(KeyError, match="latency_ms"):
        RunRecord(key="k").update({"latency_ms": 1.0})  # latency is the measurement phase's, not a run's
