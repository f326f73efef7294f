"""Pretrained weights into composed models: index-remapped transfer, identity at γ = 0, replace mode,
class-count skips, clear errors; replace-mode initialisation; no weight decay where modules ask."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ultralytics.engine.trainer import BaseTrainer

import modules
from ablate.compose import base_indices, compose
from ablate.detection_trainer import check_arrived, exclude_from_decay, no_decay_names
from ablate.errors import AblateError
from ablate.measure.model import base_model_yaml, build_model
from ablate.placement import Placement
from ablate.weights import apply_transfer, plan_transfer, read_checkpoint

from .test_compose import presets

NC = 5
REPO = Path(__file__).resolve().parents[1]
INSERT_PRESETS = {
    model: {k: v for k, v in presets(model).items() if v["mode"] == "after"}
    for model in ("yolo12n", "yolo11n")
}


def perturbed_base(model: str, nc: int = NC, seed: int = 1) -> torch.nn.Module:
    """A base model whose every float tensor (BN statistics included) differs from a fresh build."""
    torch.manual_seed(seed)
    m = build_model(base_model_yaml(model, nc))
    with torch.no_grad():
        for name, t in m.state_dict().items():
            if t.is_floating_point():
                t.mul_(1 + 0.2 * torch.rand_like(t)) if "running_var" in name else t.add_(
                    0.05 * torch.randn_like(t)
                )
    return m.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ultralytics-style checkpoints (fp16 model, as ultralytics saves them) and one plain state dict."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for model in ("yolo12n", "yolo11n", "yolo12s"):
        out[model] = root / f"{model}.pt"
        torch.save({"model": copy.deepcopy(perturbed_base(model)).half(), "epoch": -1}, out[model])
    out["yolo12n-nc80"] = root / "yolo12n-nc80.pt"
    torch.save({"model": perturbed_base("yolo12n", nc=80).half()}, out["yolo12n-nc80"])
    out["state-dict"] = root / "state_dict.pt"
    torch.save(perturbed_base("yolo12n").state_dict(), out["state-dict"])
    return out


def loaded_base(model: str, path: Path, nc: int = NC) -> torch.nn.Module:
    """The base model loaded from its checkpoint: the reference every composed model is compared with."""
    base = build_model(base_model_yaml(model, nc))
    base.load_state_dict(
        {k: v.to(base.state_dict()[k].dtype) for k, v in read_checkpoint(path).state.items()}
    )
    return base.eval()


def transferred(
    model: str, path: Path, placement: Placement | None, nc: int = NC, strict: bool = True
) -> tuple:
    d = base_model_yaml(model, nc)
    cd = compose(d, placement, model)
    composed = build_model(cd)
    transfer = plan_transfer(read_checkpoint(path), build_model(d), cd, composed, model, strict=strict)
    return apply_transfer(composed, transfer.state).eval(), transfer


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[0]


@pytest.mark.parametrize("attn", modules.available())
@pytest.mark.parametrize(
    ("model", "preset"), [(m, p) for m, ps in INSERT_PRESETS.items() for p in ps], ids=lambda v: str(v)
)
def test_gamma_zero_insert_loaded_from_base_checkpoint_is_the_base_bit_for_bit(
    checkpoints: dict[str, Path], model: str, preset: str, attn: str
) -> None:
    layers = tuple(INSERT_PRESETS[model][preset]["layers"])
    composed, transfer = transferred(model, checkpoints[model], Placement(attn, layers, "after", gamma=0.0))
    assert transfer.transferred == transfer.total == len(read_checkpoint(checkpoints[model]).state)
    assert transfer.skipped == []
    base = loaded_base(model, checkpoints[model])
    for h, w in ((96, 96), (64, 128)):
        x = torch.randn(2, 3, h, w)
        assert torch.equal(outputs(composed, x), outputs(base, x)), (h, w)


def test_transfer_follows_the_composition_not_the_names(checkpoints: dict[str, Path]) -> None:
    """After an insertion at [0] every later layer moved by one: base layer j's tensors sit at j + 1."""
    composed, transfer = transferred("yolo12n", checkpoints["yolo12n"], Placement("rala", (0,)))
    ckpt = read_checkpoint(checkpoints["yolo12n"]).state
    assert transfer.transferred == transfer.total == 691
    state = composed.state_dict()
    for name in ("model.1.conv.weight", "model.6.m.0.0.attn.qkv.conv.weight", "model.21.cv3.0.2.bias"):
        j, rest = name.split(".", 2)[1:]
        assert torch.equal(state[f"model.{int(j) + 1}.{rest}"], ckpt[name].float()), name
    assert "model.1.attn.qkvo.weight" in state  # the inserted layer, not from the checkpoint
    assert base_indices(compose(base_model_yaml("yolo12n", NC), Placement("rala", (0, 6)), "yolo12n"))[7] == 9


@pytest.mark.parametrize(
    "placement",
    [
        Placement("rala", (4, 6, 8)),
        Placement("rala", (14, 17, 20)),
        Placement("rala", (14,)),
        Placement("rala", (0,)),
    ],
    ids=["backbone", "neck", "p3", "custom-0"],
)
def test_every_base_tensor_arrives_in_insert_mode(checkpoints: dict[str, Path], placement: Placement) -> None:
    _, transfer = transferred("yolo12n", checkpoints["yolo12n"], placement)
    assert (transfer.transferred, transfer.total, transfer.skipped) == (691, 691, [])
    assert transfer.line().startswith("weights: transferred 691/691 tensors of the base checkpoint ")


def test_area_replacing_area_takes_every_tensor_and_is_the_base(checkpoints: dict[str, Path]) -> None:
    composed, transfer = transferred("yolo12n", checkpoints["yolo12n"], Placement("area", (6, 8), "replace"))
    assert (transfer.transferred, transfer.total, transfer.skipped) == (691, 691, [])
    assert "model.6.m.0.0.attn.attn.qkv.conv.weight" in transfer.state  # AAttn inside AreaAttention
    x = torch.randn(1, 3, 128, 128)
    assert torch.equal(outputs(composed, x), outputs(loaded_base("yolo12n", checkpoints["yolo12n"]), x))


def test_replacing_with_another_structure_keeps_the_host_and_reports_the_attention(
    checkpoints: dict[str, Path],
) -> None:
    _, transfer = transferred("yolo12n", checkpoints["yolo12n"], Placement("rala", (6, 8), "replace"))
    ckpt = read_checkpoint(checkpoints["yolo12n"]).state
    attention = {n for n in ckpt if n.startswith(("model.6.m.", "model.8.m.")) and ".attn." in n}
    assert {n for n, _ in transfer.skipped} == attention and len(attention) > 0
    assert {r for _, r in transfer.skipped} == {"attention replaced by rala"}
    assert transfer.transferred == 691 - len(attention)
    assert "model.6.cv1.conv.weight" in transfer.state and "model.6.m.0.0.mlp.0.conv.weight" in transfer.state
    assert f"skipped {len(attention)} (attention replaced by rala)" in transfer.line()


@pytest.mark.parametrize("nc", [3, 80])
def test_detect_class_tensors_are_skipped_when_nc_differs(checkpoints: dict[str, Path], nc: int) -> None:
    src = "yolo12n" if nc == 3 else "yolo12n-nc80"
    model_nc = 3 if nc == 3 else NC
    _, transfer = transferred("yolo12n", checkpoints[src], Placement("rala", (14,)), nc=model_nc)
    src_nc = NC if nc == 3 else 80
    # the Detect tensors whose shape depends on nc, from two fresh builds (independent of the transfer)
    ours, theirs = (build_model(base_model_yaml("yolo12n", k)).state_dict() for k in (model_nc, src_nc))
    differing = {n for n, t in theirs.items() if t.shape != ours[n].shape}
    assert {n for n, _ in transfer.skipped} == differing
    assert all(n.startswith("model.21.cv3.") for n in differing)
    assert {r for _, r in transfer.skipped} == {f"Detect class-dependent, nc {src_nc} -> {model_nc}"}
    assert transfer.transferred + len(transfer.skipped) == transfer.total == 691
    if nc == 3:  # yolo12n's class branch is max(64, nc) wide: only its last conv depends on nc <= 64
        assert len(transfer.skipped) == 6


def test_a_plain_state_dict_works_like_a_checkpoint(checkpoints: dict[str, Path]) -> None:
    _, transfer = transferred("yolo12n", checkpoints["state-dict"], Placement("fla", (17,)))
    assert (transfer.transferred, transfer.total) == (691, 691)
    saved = torch.load(checkpoints["state-dict"], weights_only=True)
    assert torch.equal(transfer.state["model.0.conv.weight"], saved["model.0.conv.weight"])


def _state(seed: int) -> dict[str, torch.Tensor]:
    return perturbed_base("yolo12n", seed=seed).state_dict()


@pytest.mark.parametrize("ema_value", ["state", "module", "none", "empty"])
def test_ema_is_preferred_to_model_as_ultralytics_load_checkpoint_does(
    tmp_path: Path, ema_value: str
) -> None:
    """``ckpt.get("ema") or ckpt.get("model")``: a state dict or a model under ``ema`` wins over ``model``;
    an empty or None ``ema`` (ultralytics' final checkpoints) falls back to ``model``."""
    model_state, ema_state = _state(1), _state(2)
    ema = {
        "state": ema_state,
        "module": perturbed_base("yolo12n", seed=2),
        "none": None,
        "empty": {},
    }[ema_value]
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model_state, "ema": ema, "epoch": 3}, path)
    expected = ema_state if ema_value in ("state", "module") else model_state
    got = read_checkpoint(path).state
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


class Opaque:
    """Anything torch's weights-only unpickler does not allow."""


def _spy_torch_load(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    seen: list[object] = []
    real = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return seen


def test_safe_load_reads_a_composed_checkpoint_weights_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ULTRALYTICS_SAFE_LOAD=1 an ultralytics-style checkpoint of a composed model (our module classes
    inside ultralytics' and torch's) is read with weights_only=True, tensors intact."""
    cd = compose(base_model_yaml("yolo12n", NC), Placement("rala", (14,)), "yolo12n")
    model = build_model(cd)
    path = tmp_path / "composed.pt"
    torch.save(
        {"model": None, "ema": copy.deepcopy(model).half(), "epoch": 2, "train_args": {"lr0": 0.01}}, path
    )
    monkeypatch.setenv("ULTRALYTICS_SAFE_LOAD", "1")
    seen = _spy_torch_load(monkeypatch)
    ckpt = read_checkpoint(path)
    assert seen == [True]
    assert ckpt.state.keys() == model.state_dict().keys() and ckpt.nc == NC
    w = "model.15.attn.qkvo.weight"
    assert torch.equal(ckpt.state[w], model.state_dict()[w].half())
    monkeypatch.setenv("ULTRALYTICS_SAFE_LOAD", "0")  # off: ultralytics' default, weights_only=False
    read_checkpoint(path)
    assert seen == [True, False]


def test_safe_load_refuses_a_file_that_needs_unsafe_loading_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "opaque.pt"
    torch.save({"model": _state(1), "meta": Opaque()}, path)
    assert len(read_checkpoint(path).state) == 691  # default loading reads it
    monkeypatch.setenv("ULTRALYTICS_SAFE_LOAD", "true")
    with pytest.raises(AblateError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"model.weights={str(path)!r} needs unsafe loading")
    assert "tests.test_weights.Opaque" in message and "unset ULTRALYTICS_SAFE_LOAD" in message


def test_safe_load_error_is_one_error_line_on_the_cli(tmp_path: Path) -> None:
    """python -m ablate with model.weights of a file that needs unsafe loading, under the flag: one line."""
    import subprocess
    import sys

    path = tmp_path / "opaque.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "meta": Opaque()}, path)
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "ablate", "action=inspect", f"model.weights={path}", "logger=none",
         f"results.dir={tmp_path / 'r'}", f"data.dir={tmp_path / 'd'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
    assert "needs unsafe loading" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("yolo12s", r"e\.g\. model\.0\.conv\.weight: shape \(32, 3, 3, 3\) .*scale .s.: another scale"),
        ("yolo11n", r"layer 6 is C3k2, the base model.s is A2C2f: another model family"),
    ],
)
def test_checkpoint_of_another_scale_or_family_is_an_error_naming_a_tensor(
    checkpoints: dict[str, Path], source: str, message: str
) -> None:
    with pytest.raises(AblateError, match=message) as err:
        transferred("yolo12n", checkpoints[source], Placement("rala", (14,)))
    assert "\n" not in str(err.value) and "model.weights_strict=false" in str(err.value)
    _, transfer = transferred("yolo12n", checkpoints[source], Placement("rala", (14,)), strict=False)
    # not strict: exactly the tensors of the base model's name and shape arrive (an insertion at 14
    # changes where they go, not which fit), every other one is skipped with its reason
    ckpt, base = read_checkpoint(checkpoints[source]).state, build_model(base_model_yaml("yolo12n", NC))
    fits = {n for n, t in ckpt.items() if n in base.state_dict() and base.state_dict()[n].shape == t.shape}
    assert transfer.transferred == len(fits) < transfer.total
    assert {n for n, _ in transfer.skipped} == set(ckpt) - fits


def test_files_that_are_no_checkpoint_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(AblateError, match="no such file"):
        read_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(AblateError, match="is not a checkpoint torch can read"):
        read_checkpoint(garbage)
    torch.save({"epoch": 3}, tmp_path / "empty.pt")
    with pytest.raises(AblateError, match="holds no model tensors"):
        read_checkpoint(tmp_path / "empty.pt")


def attention_tensors(model: torch.nn.Module, layers: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Weights of the attention modules inside the A2C2f blocks (names without the wrapper's extra .attn)."""
    out = {}
    for name, p in model.named_parameters():
        i = int(name.split(".")[1])
        if i in layers and ".attn." in name and p.dim() > 1:
            out[name.replace(".attn.attn.", ".attn.")] = p.detach()
    return out


def test_replace_mode_init_follows_yolo12s_own_attention_init() -> None:
    d = base_model_yaml("yolo12n", NC)
    torch.manual_seed(0)
    stock = attention_tensors(build_model(d), (6, 8))
    torch.manual_seed(1)
    swapped = attention_tensors(
        build_model(compose(d, Placement("area", (6, 8), "replace"), "yolo12n")), (6, 8)
    )
    assert stock.keys() == swapped.keys() and len(stock) >= 8
    for name, t in stock.items():
        ratio = swapped[name].std().item() / t.std().item()
        assert 0.9 <= ratio <= 1.1, (name, ratio)
    # every conv of a swapped-in module gets the same trunc_normal(0.02), zero-bias init
    rala = build_model(compose(d, Placement("rala", (6, 8), "replace"), "yolo12n"))
    for name, p in rala.named_parameters():
        if ".attn." in name and int(name.split(".")[1]) in (6, 8):
            if name.endswith("bias"):
                assert not p.any(), name
            elif p.numel() > 1000:
                assert abs(p.std().item() - 0.02) < 0.002, name


def build_optimizer(model: torch.nn.Module, name: str) -> torch.optim.Optimizer:
    """ultralytics' own optimizer construction (BaseTrainer.build_optimizer needs no trainer state here)."""
    stub = SimpleNamespace(args=SimpleNamespace(lr0=0.01, warmup_bias_lr=0.1), data={"nc": NC})
    return BaseTrainer.build_optimizer(stub, model, name=name, lr=0.01, momentum=0.9, decay=5e-4)


@pytest.mark.parametrize("optimizer", ["AdamW", "SGD", "MuSGD"])
def test_no_weight_decay_for_layer_scales_and_what_modules_list(optimizer: str) -> None:
    d = base_model_yaml("yolo12n", NC)
    model = build_model(compose(d, Placement("tssa", (14, 17, 20)), "yolo12n"))
    names = no_decay_names(model)
    assert names == {f"model.{i}.{p}" for i in (15, 19, 23) for p in ("gamma", "attn.temp")}
    params = dict(model.named_parameters())
    opt = build_optimizer(model, optimizer)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {id(params[n]) for n in names} <= decayed  # ultralytics alone decays them
    moved = exclude_from_decay(opt, model)
    assert set(moved) == names
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(decay_of[id(params[n])] == 0 for n in names)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)  # nothing lost or doubled
    assert decay_of[id(params["model.15.attn.qkv.weight"])] > 0  # ordinary weights still decay


def test_the_trainer_refuses_initial_weights_that_did_not_arrive() -> None:
    d = base_model_yaml("yolo12n", NC)
    source, fresh = build_model(d), build_model(d)
    check_arrived(copy.deepcopy(source), source)  # identical: passes
    with pytest.raises(RuntimeError, match="did not arrive"):
        check_arrived(fresh, source)


def test_the_training_path_loads_through_apply_transfer_and_refuses_a_misfit() -> None:
    """The run's starting tensors enter ultralytics' model through apply_transfer: a tensor the model does
    not have, or of another shape, is an error, not a silent no-op of ``load_state_dict(strict=False)``."""
    model = build_model(base_model_yaml("yolo12n", NC))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AblateError, match="model.99.weight is not one of its tensors"):
        apply_transfer(model, {**state, "model.99.weight": torch.zeros(1)})
    key = "model.0.conv.weight"
    with pytest.raises(AblateError, match=rf"{key} has shape \(1,\), the model's \(16, 3, 3, 3\)"):
        apply_transfer(model, {**state, key: torch.zeros(1)})


def test_train_and_validate_refuses_a_starting_state_that_does_not_fit(tmp_path: Path) -> None:
    from ablate.compose import write_yaml
    from ablate.train import train_and_validate

    d = base_model_yaml("yolo12n", NC)
    path = write_yaml(d, tmp_path / "model.yaml")
    bad = {"model.99.weight": torch.zeros(1)}
    with pytest.raises(AblateError, match="model.99.weight is not one of its tensors"):
        train_and_validate(path, "unused.yaml", {"epochs": 1, "imgsz": 64, "batch": 2}, 0, tmp_path / "u",
                           initial_state=bad)  # fmt: skip
