"""ONNX export: every registered attention module, alone and inside composed yolo12n and yolo26n models
(insert and replace mode; yolo26n on its end-to-end head, as deployed), exports at static shapes and
matches torch in ONNX Runtime (max relative error ≤ 1e-4), also at map sizes that are not multiples of
halo's block (8) nor split evenly into area's 4 areas; plus the export helpers' contract (output path,
caller's model untouched, session threads)."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

import modules
from ablate.compose import compose
from ablate.families import select_head
from ablate.measure.export import export_onnx, onnx_parity, onnx_session, unordered_diff
from ablate.measure.model import base_model_yaml, build_model
from ablate.placement import Placement

from .test_compose import presets

TOL = 1e-4
NC = 3
# map sizes of a module alone: 20×20 and 20×28 are no multiples of halo's block 8; 15×9 has N = 135
# tokens, which area's 4 areas do not divide (its masked path)
ALONE_SIZES = [(20, 20), (24, 24), (20, 28), (15, 9)]
# image sizes of composed models: 64×64 gives maps 8×8 / 4×4 / 2×2 (P3 / P4 / P5), 160×96 gives
# 20×12 / 10×6 / 5×3 (no multiples of 8; P5 has 15 tokens, not divisible into 4 areas)
IMAGE_SIZES = [(64, 64), (160, 96)]
# insert after the neck outputs; replace the family's own attention (YOLO12's A2C2f, YOLO26's C2PSA)
PRESETS = [("yolo12n", "neck"), ("yolo12n", "a2c2f"), ("yolo26n", "neck"), ("yolo26n", "c2psa")]


@cache
def model_presets(model: str) -> dict[str, dict]:
    return presets(model)


def composed(attn: str, preset: str, model: str = "yolo12n") -> nn.Module:
    """``model`` (eval mode, on the head it is deployed with) with ``attn`` placed as the preset says."""
    spec = model_presets(model)[preset]
    placement = Placement(attn, tuple(spec["layers"]), spec["mode"])
    return select_head(build_model(compose(base_model_yaml(model, NC), placement, model))).eval()


def visible(model: nn.Module, imgsz: tuple[int, int], images: int = 16) -> nn.Module:
    """``model`` changed so that its detections depend on its attention, and still well conditioned.

    A fresh model's detections hardly depend on an attention (in replace mode, in float32, not at all):
    layer scales of 0.01, YOLO12's std-0.02 init of attention weights and BatchNorm statistics of
    mean 0 / var 1 let the signal fade, so a parity check would not see a wrong attention. Here the
    layer scales (``gamma``) are 1, the attention's convolutions and linear maps have PyTorch's
    default init, and every BatchNorm has the statistics of ``images`` random images at ``imgsz``,
    with eps 0.1: near-constant channels would otherwise be blown up and float32 rounding with them.
    Returns the model in eval mode.
    """
    attention = tuple(modules.registered_classes().values())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(getattr(m, "gamma", None), nn.Parameter):
                m.gamma.fill_(1.0)
            if isinstance(m, attention):
                for layer in m.modules():
                    if isinstance(layer, nn.Conv2d | nn.Linear):
                        layer.reset_parameters()
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.eps, m.momentum = 0.1, None  # cumulative average: after one batch, its statistics
        model.train()(torch.rand(images, 3, *imgsz))
    return model.eval()


def relative(a: torch.Tensor, b: torch.Tensor, unordered: bool = False) -> float:
    """Max relative difference; ``unordered``: of ranked detections as sets (an end-to-end head)."""
    diff = unordered_diff(a.double().numpy(), b.double().numpy()) if unordered else (a - b).abs().max()
    return float(diff / a.abs().max())


def without_attention(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Detections of ``model`` with the output of every registered attention module zeroed."""
    classes = tuple(modules.registered_classes().values())
    zero = [
        m.register_forward_hook(lambda mod, inp, out: torch.zeros_like(out))
        for m in model.modules()
        if isinstance(m, classes)
    ]
    try:
        with torch.no_grad():
            return model(x)[0]
    finally:
        for hook in zero:
            hook.remove()


@pytest.mark.parametrize("size", ALONE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("attn", modules.attentions())  # the identity control: test_identity.py
def test_module_alone_matches_onnx_runtime(attn: str, size: tuple[int, int], tmp_path: Path) -> None:
    model = modules.build(attn, 64).eval()
    err = onnx_parity(model, torch.randn(2, 64, *size), tmp_path / f"{attn}.onnx")
    assert err <= TOL, f"{attn} alone at {size}: max relative error {err:.3g}"


@pytest.mark.parametrize("imgsz", IMAGE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize(("model_name", "preset"), PRESETS, ids=lambda v: str(v))
@pytest.mark.parametrize("attn", modules.attentions())  # the identity control: test_identity.py
def test_composed_model_matches_onnx_runtime(
    attn: str, model_name: str, preset: str, imgsz: tuple[int, int], tmp_path: Path
) -> None:
    model = visible(composed(attn, preset, model_name), imgsz)
    x = torch.rand(1, 3, *imgsz)
    end2end = bool(getattr(model, "end2end", False))
    assert end2end == (model_name == "yolo26n")  # yolo26n exports (and is compared) on its one-to-one head
    with torch.no_grad():
        effect = relative(model(x)[0], without_attention(model, x), unordered=end2end)
    assert effect > TOL, f"the attention hardly changes the detections ({effect:.3g}): nothing to compare"
    err = onnx_parity(model, x, tmp_path / "model.onnx")
    assert err <= TOL, f"{attn} {model_name} {preset} at {imgsz}: max relative error {err:.3g}"


def test_export_writes_path_and_leaves_the_model_alone(tmp_path: Path) -> None:
    model = composed("halo", "neck").train()
    before = copy.deepcopy(model.state_dict())
    path = export_onnx(model, (96, 64), tmp_path / "deep" / "yolo.bin", batch=2)
    assert path == tmp_path / "deep" / "yolo.bin" and path.stat().st_size > 0
    assert [p.name for p in path.parent.iterdir()] == ["yolo.bin"]  # no stray exporter files
    assert not hasattr(model, "pt_path") and not hasattr(model, "task") and not model.model[-1].export
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())
    session = onnx_session(path, threads=1)
    assert session.get_inputs()[0].shape == [2, 3, 96, 64]
    assert session.get_session_options().intra_op_num_threads == 1


def test_image_size_off_the_stride_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stride"):
        export_onnx(composed("mhsa", "a2c2f"), (64, 80), tmp_path / "model.onnx")


class TracesDifferently(nn.Module):
    """A module whose traced graph computes something else than its eager forward."""

    channels = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0 if torch.jit.is_tracing() else x


def test_parity_sees_a_graph_that_differs_from_torch(tmp_path: Path) -> None:
    x = torch.full((1, 4, 5, 5), 2.0)
    assert onnx_parity(TracesDifferently(), x, tmp_path / "m.onnx") == pytest.approx(0.5)
