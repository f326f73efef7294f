"""Placement: every module at every preset composes, builds and runs; indices are remapped correctly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

import modules
from ablate.compose import base_indices, compose, insert_after, marks
from ablate.errors import AblateError
from ablate.measure.model import (
    base_model_yaml,
    build_model,
    count_params,
    layer_table,
    model_fields,
    placement_strides,
    rows,
)
from ablate.paths import CONF_DIR
from ablate.placement import Placement, resolve_placement

from .helpers import config

NC = 5


def presets(model: str = "yolo12n") -> dict[str, dict]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"model={model}"])
    return {k: dict(v) for k, v in cfg.model.presets.items()}


@pytest.fixture(scope="module", params=["yolo12n", "yolo12s"])
def base(request: pytest.FixtureRequest) -> tuple[str, dict, torch.nn.Module, list]:
    d = base_model_yaml(request.param, NC)
    model = build_model(d)
    return request.param, d, model, layer_table(model)


def own_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("attn", modules.available())
@pytest.mark.parametrize("preset", list(presets()))
def test_every_module_at_every_preset(base: tuple, attn: str, preset: str) -> None:
    name, d, base_model, table = base
    spec = presets()[preset]
    placement = Placement(attn, tuple(spec["layers"]), spec["mode"])
    composed = compose(d, placement, name)
    model = build_model(composed).eval()

    # parameter count = base + the modules' own parameters, computed independently
    if placement.mode == "after":
        added = sum(own_params(modules.AttentionResidual(table[i].channels, attn)) for i in placement.layers)
        assert sum(1 for m in marks(composed).values() if m == "inserted") == len(placement.layers)
    else:
        added = 0
        for i in placement.layers:
            for block in base_model.model[i].modules():
                if type(block).__name__ == "ABlock":
                    dim, heads, area = (
                        block.attn.num_heads * block.attn.head_dim,
                        block.attn.num_heads,
                        block.attn.area,
                    )
                    kwargs = {"num_heads": heads, **({"area": area} if attn == "area" else {})}
                    added += own_params(modules.build(attn, dim, **kwargs)) - own_params(block.attn)
    assert count_params(model) == count_params(base_model) + added

    with torch.no_grad():
        for h, w in ((640, 640), (320, 256)):
            out = model(torch.zeros(1, 3, h, w))
            preds = out[0] if isinstance(out, tuple | list) else out
            assert preds.shape[0] == 1 and preds.shape[1] == 4 + NC
            assert preds.shape[2] == sum((h // s) * (w // s) for s in (8, 16, 32))


def test_replacing_area_attention_by_area_gives_the_baseline_exactly() -> None:
    for name in ("yolo12n", "yolo12s", "yolo12l"):
        d = base_model_yaml(name, NC)
        base_model = build_model(d)
        composed = compose(d, Placement("area", (6, 8), "replace"), name)
        assert count_params(build_model(composed)) == count_params(base_model), name


def test_channels_follow_the_scale() -> None:
    """Inserted rows carry the real channel count of their layer at each scale."""
    for name, expected in (
        ("yolo12n", [64, 128, 256]),
        ("yolo12s", [128, 256, 512]),
        ("yolo12m", [256, 512, 512]),
    ):
        composed = compose(base_model_yaml(name, NC), Placement("mhsa", (14, 17, 20)), name)
        assert [r[3][0] for r in rows(composed) if r[2] == "AttentionResidual"] == expected


def test_index_remapping_on_a_hand_made_case() -> None:
    d = {
        "nc": 2,
        "scales": {"n": [1.0, 1.0, 1024]},
        "backbone": [
            [-1, 1, "Conv", [8, 3, 2]],  # 0
            [-1, 1, "Conv", [16, 3, 2]],  # 1
            [-1, 1, "Conv", [32, 3, 2]],  # 2
        ],
        "head": [
            [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],  # 3
            [[-1, 1], 1, "Concat", [1]],  # 4
            [-1, 1, "Conv", [16, 3, 1]],  # 5
            [[5, 2], 1, "Detect", ["nc"]],  # 6
        ],
    }
    table = layer_table(build_model(d))
    out = insert_after(d, Placement("mhsa", (1, 5)), table)
    got = [[r[0], r[2]] for r in rows(out)]
    assert got == [
        [-1, "Conv"],  # 0
        [-1, "Conv"],  # 1
        [-1, "AttentionResidual"],  # 2 = inserted after base 1
        [-1, "Conv"],  # 3 = base 2
        [-1, "nn.Upsample"],  # 4 = base 3
        [[-1, 2], "Concat"],  # 5 = base 4: its reference to base 1 now reads the refined map
        [-1, "Conv"],  # 6 = base 5
        [-1, "AttentionResidual"],  # 7 = inserted after base 5
        [[7, 3], "Detect"],  # 8 = base 6
    ]
    assert len(out["backbone"]) == 4  # the insertion after a backbone layer stays in the backbone
    assert rows(out)[2][3][0] == 16  # channels of base layer 1
    assert d["head"][1][0] == [-1, 1], "the base dict must not be modified"
    model = build_model(out).eval()
    seen: dict[str, torch.Tensor] = {}
    model.model[2].register_forward_hook(lambda m, i, o: seen.__setitem__("inserted", o))
    model.model[5].register_forward_hook(lambda m, i, o: seen.__setitem__("concat_in", i[0][1]))
    preds = model(torch.randn(1, 3, 64, 64))[0]
    # the Concat reads the attention-refined map of base layer 1 (composed layer 2), not the raw one
    assert torch.equal(seen["concat_in"], seen["inserted"])
    # Detect on composed layers 7 (16x16, stride 4) and 3 (8x8, stride 8): 256 + 64 anchors, 4 box + 2 classes
    assert model.stride.tolist() == [4.0, 8.0] and preds.shape == (1, 4 + 2, 16 * 16 + 8 * 8)


def test_same_module_several_times_after_one_layer_and_many_layers() -> None:
    d = base_model_yaml("yolo12n", NC)
    composed = compose(d, Placement("tssa", (2, 4, 6, 8, 14)), "yolo12n")
    assert sum(1 for r in rows(composed) if r[2] == "AttentionResidual") == 5
    assert [r[0] for r in rows(composed) if r[2] == "AttentionResidual"] == [-1] * 5
    assert _anchor_output(build_model(composed), 128, 96).shape == (1, 4 + NC, _anchors(128, 96))


def test_compose_does_not_modify_its_input() -> None:
    d = base_model_yaml("yolo12n", NC)
    before = copy.deepcopy(d)
    compose(d, Placement("rala", (6, 8), "replace"), "yolo12n")
    compose(d, Placement("rala", (14,)), "yolo12n")
    assert d == before


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        (Placement("rala", (21,)), r"layer index 21 is the Detect head of yolo12n; valid: 0\.\.20"),
        (Placement("rala", (30,)), r"layer index 30 is out of range for yolo12n; valid: 0\.\.20"),
        (Placement("rala", (-1,)), r"layer index -1 is out of range"),
        (
            Placement("rala", (11,), "replace"),
            r"layer 11 of yolo12n \(A2C2f\) holds no attention; layers with attention: 6, 8",
        ),
        (Placement("rala", (14,), "sideways"), r"pos.mode='sideways' is not valid; valid: after, replace"),
        (Placement("rala", ()), r"pos.layers is empty"),
        (
            Placement("nope", (14,)),
            r"unknown attention module 'nope'; available: area, fla, halo, identity, mhsa, rala, tssa",
        ),
        (Placement("rala", (14,), attn_kwargs={"num_heads": 3}), r"num_heads=3 does not divide channels=64"),
        (Placement("halo", (14,), attn_kwargs={"block_size": 0}), r"block_size"),
    ],
)
def test_impossible_placements_raise_one_line_errors(placement: Placement, message: str) -> None:
    d = base_model_yaml("yolo12n", NC)
    with pytest.raises(AblateError, match=message) as err:
        compose(d, placement, "yolo12n")
    assert "\n" not in str(err.value)


def test_yolo11_replace_c2psa_and_yolov8_insert() -> None:
    d11 = base_model_yaml("yolo11n", NC)
    composed = compose(d11, Placement("rala", (10,), "replace"), "yolo11n")
    assert rows(composed)[10][2] == "C2PSASwap"
    swapped = build_model(composed)
    assert type(swapped.model[10].m[0].attn).__name__ == "RALA"  # the PSA block's attention is RALA now
    assert _anchor_output(swapped, 96, 128).shape == (1, 4 + NC, _anchors(96, 128))
    d8 = base_model_yaml("yolov8n", NC)
    with pytest.raises(AblateError, match="layers with attention: none"):
        compose(d8, Placement("rala", (9,), "replace"), "yolov8n")
    composed = compose(d8, Placement("fla", (15, 18, 21)), "yolov8n")
    inserted = [i for i, m in marks(composed).items() if m == "inserted"]
    assert inserted == [16, 20, 24]  # after base 15, 18, 21: each earlier insertion shifts the next by one
    assert _anchor_output(build_model(composed), 96, 128).shape == (1, 4 + NC, _anchors(96, 128))


def _anchors(h: int, w: int) -> int:
    """Detect's outputs for an h×w input at strides 8, 16, 32."""
    return sum((h // s) * (w // s) for s in (8, 16, 32))


def _anchor_output(model: torch.nn.Module, h: int, w: int) -> torch.Tensor:
    """The eval-mode predictions (batch, 4 + nc, anchors) for one h×w input."""
    with torch.no_grad():
        return model.eval()(torch.zeros(1, 3, h, w))[0]


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(AblateError, match="unknown model 'yolo99n'"):
        base_model_yaml("yolo99n", NC)


@pytest.mark.parametrize("preset", ["neck", "p3", "backbone", "a2c2f"])
def test_the_strides_of_a_placement_are_its_base_layers_strides(preset: str) -> None:
    """Read off the built composed model (inserted layers skipped) they are the base model's strides at
    those indices, and those the composed YAML's base-to-composed map points at."""
    d = base_model_yaml("yolo12n", NC)
    base_strides = [r.stride for r in layer_table(build_model(d))]
    spec = presets()[preset]
    placement = Placement("rala", tuple(spec["layers"]), spec["mode"])
    composed = compose(d, placement, "yolo12n")
    model = build_model(composed)
    strides = placement_strides(model, placement.layers)
    assert strides == [base_strides[i] for i in placement.layers] and set(strides) <= {8, 16, 32}
    table, where = layer_table(model), base_indices(composed)
    assert strides == [table[where[i]].stride for i in placement.layers]
    assert model_fields(model, composed, placement.layers, 100)["strides"] == strides


def test_placement_is_decided_from_the_presets_in_one_place(tmp_path: Path) -> None:
    def decided(*overrides: str) -> tuple[Placement | None, str]:
        return resolve_placement(config(list(overrides), tmp_path / "r", tmp_path / "d"))

    named = presets()
    assert decided() == (None, "none")
    neck, name = decided("+attn=rala", "+pos=neck")
    assert name == "neck" and neck.layers == tuple(named["neck"]["layers"]) and neck.mode == "after"
    a2c2f, _ = decided("+attn=area", "+pos=a2c2f")
    assert a2c2f.layers == tuple(named["a2c2f"]["layers"]) and a2c2f.mode == "replace"
    default, name = decided("+attn=mhsa")  # an attention alone: its default position
    assert name == "p5" and default.layers == tuple(named["p5"]["layers"])
    custom, name = decided("+attn=rala", "+pos=custom", "pos.layers=7")
    assert name == "custom" and custom.layers == (7,) and custom.mode == "after"
    with pytest.raises(AblateError, match=r"pos.mode='sideways' is not valid; valid: after, replace"):
        decided("+attn=rala", "+pos=custom", "pos.layers=[7]", "pos.mode=sideways")
    with pytest.raises(AblateError, match=r"pos is set but attn is not"):
        decided("+pos=neck")


# README "Model families": ablate's build of every family and scale at nc = 80 has ultralytics' own parameter
# count (yolo26: tests/test_yolo26.py, against the numbers ultralytics prints)
@pytest.mark.parametrize(
    "model", [f"{family}{scale}" for family in ("yolov8", "yolo11", "yolo12") for scale in "nsmlx"]
)
def test_parameter_count_at_nc80_equals_ultralytics_own_build(model: str) -> None:
    from ultralytics.nn.tasks import DetectionModel

    theirs = count_params(DetectionModel(f"{model}.yaml", nc=80, verbose=False))
    assert count_params(build_model(base_model_yaml(model, 80))) == theirs
