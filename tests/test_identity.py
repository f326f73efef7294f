"""The null control ``identity``: a branch that outputs zero, so an inserted block is exactly the identity
(at any γ) and a replace-mode A2C2f keeps only its skip paths (YOLO12's area attention removed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from ultralytics.nn.modules.block import A2C2f, ABlock

import modules
from ablate.compose import compose
from ablate.measure.export import onnx_parity
from ablate.measure.model import base_model_yaml, build_model
from ablate.paths import CONF_DIR
from ablate.placement import Placement
from ablate.weights import Checkpoint, plan_transfer

from .test_compose import presets

NC = 5


def test_identity_is_a_control_not_an_attention() -> None:
    assert "identity" in modules.available() and modules.controls() == ["identity"]
    conf = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF_DIR / "attn").glob("*.yaml")}
    assert sorted(k for k, v in conf.items() if v.get("kind") == "control") == modules.controls()
    assert "identity" not in modules.attentions()
    assert set(modules.attentions()) >= {"rala", "halo", "tssa", "fla", "area", "mhsa"}


@pytest.mark.parametrize("shape", [(1, 64, 1, 1), (3, 64, 7, 9), (2, 64, 40, 24)])
def test_the_branch_outputs_zero_and_has_no_parameters(shape: tuple[int, ...]) -> None:
    m = modules.build("identity", 64, num_heads=2, area=4)
    x = torch.randn(shape)
    y = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype and not y.any()
    assert sum(p.numel() for p in m.parameters()) == 0


def base_and_composed(placement: Placement) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A perturbed base model and the composed model holding every base tensor at its new index."""
    d = base_model_yaml("yolo12n", NC)
    torch.manual_seed(1)
    base = build_model(d)
    with torch.no_grad():
        for t in base.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t) * 0.05)
    composed_yaml = compose(d, placement, "yolo12n")
    composed = build_model(composed_yaml)
    ckpt = Checkpoint(path=Path("base.pt"), sha256="0" * 64, state=base.state_dict(), nc=NC)
    transfer = plan_transfer(ckpt, base, composed_yaml, composed, "yolo12n", strict=True)
    composed.load_state_dict(transfer.state, strict=False)
    return base, composed


@pytest.mark.parametrize("preset", ["backbone", "neck", "p3"])
def test_inserted_identity_is_the_base_model_bit_for_bit_at_the_default_gamma(preset: str) -> None:
    """Not only at γ = 0 (every module passes that): at γ = 0.01, in eval and in train mode."""
    spec = presets()[preset]
    base, composed = base_and_composed(Placement("identity", tuple(spec["layers"]), "after", gamma=0.01))
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        assert torch.equal(composed.eval()(x)[0], base.eval()(x)[0])
        train_out, base_out = composed.train()(x), base.train()(x)
    assert all(torch.equal(a, b) for a, b in zip(tensors(train_out), tensors(base_out), strict=True))


def tensors(out: object) -> list[torch.Tensor]:
    """Every tensor of a model output (train mode returns nested lists / dicts), in a fixed order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in tensors(out[k])]
    return [t for o in out for t in tensors(o)]


def test_replace_mode_removes_the_area_attention_and_keeps_the_rest() -> None:
    """identity@a2c2f computes what stock A2C2f computes with its area attention's output set to zero."""
    spec = presets()["a2c2f"]
    base, composed = base_and_composed(Placement("identity", tuple(spec["layers"]), "replace"))
    for i in spec["layers"]:
        assert type(base.model[i]) is A2C2f
        assert all(
            type(b.attn).__name__ == "ZeroAttention"
            for b in composed.model[i].modules()
            if isinstance(b, ABlock)
        )
    stock_params = sum(p.numel() for p in base.parameters())
    removed = sum(
        p.numel()
        for i in spec["layers"]
        for b in base.model[i].modules()
        if isinstance(b, ABlock)
        for p in b.attn.parameters()
    )
    assert sum(p.numel() for p in composed.parameters()) == stock_params - removed > 0

    def zero_attention(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(output)

    hooks = [
        b.attn.register_forward_hook(zero_attention)
        for i in spec["layers"]
        for b in base.model[i].modules()
        if isinstance(b, ABlock)
    ]
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        without_attention = base.eval()(x)[0]
        for h in hooks:
            h.remove()
        stock = base.eval()(x)[0]
        ours = composed.eval()(x)[0]
    assert torch.allclose(ours, without_attention, atol=1e-5)
    assert not torch.allclose(ours, stock, atol=1e-3)  # the removal changed the output: a real change


@pytest.mark.parametrize("preset", ["neck", "a2c2f"])
def test_composed_with_identity_exports_to_onnx_with_parity(preset: str, tmp_path: Path) -> None:
    spec = presets()[preset]
    _, composed = base_and_composed(Placement("identity", tuple(spec["layers"]), spec["mode"]))
    err = onnx_parity(composed.eval(), torch.rand(1, 3, 64, 96), tmp_path / "identity.onnx")
    assert err <= 1e-4, f"identity@{preset}: max relative error {err:.3g}"
