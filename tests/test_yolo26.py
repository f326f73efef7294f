"""YOLO26 beside YOLO12: configs and presets from the YAML's layer roles, ultralytics' parameter counts,
every module at every layer (forward, ONNX), the end-to-end head through evaluation, latency and the table,
weights from a locally trained checkpoint, and the family of a checkpoint in the error of a wrong one."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from torch import nn

import modules
from ablate.compose import compose, insert_after
from ablate.datasets import make_dataset
from ablate.errors import AblateError
from ablate.experiment import experiment_from_config
from ablate.families import (
    END_TO_END,
    FAMILIES,
    end_to_end,
    export_args,
    family_of,
    family_of_yaml,
    head_args,
    latency_note,
    select_head,
)
from ablate.measure import coco as evaluation
from ablate.measure import phase
from ablate.measure.export import onnx_parity, unordered_diff
from ablate.measure.latency import inference_copy
from ablate.measure.model import base_model_yaml, build_model, count_params, head_index, layer_table, rows
from ablate.paths import CONF_DIR
from ablate.placement import Placement, attention_layers, scan_layers
from ablate.report.layout import Table
from ablate.report.render import to_markdown
from ablate.run import ULTRALYTICS_DIR, execute
from ablate.weights import apply_transfer, plan_transfer, read_checkpoint

from .helpers import TINY, config
from .test_compose import presets
from .test_export import TOL, relative, visible, without_attention
from .test_weights import perturbed_base

MODEL = "yolo26n"
NC = 5
# ultralytics' own summary of cfg/models/26/yolo26.yaml at nc = 80 (its comments): parameters per scale
ULTRALYTICS_PARAMS = {"n": 2_572_280, "s": 10_009_784, "m": 21_896_248, "l": 26_299_704, "x": 58_993_368}
SIZES = [(64, 64), (64, 96)]  # a square and a non-square input (multiples of the stride 32)


def anchors(h: int, w: int) -> int:
    return sum((h // s) * (w // s) for s in (8, 16, 32))


@pytest.fixture(scope="module")
def base() -> tuple[dict, nn.Module, list]:
    d = base_model_yaml(MODEL, NC)
    model = build_model(d)
    return d, model, layer_table(model)


# ------------------------------------------------------------------------------------ configuration


def test_every_model_config_names_its_family_and_yolo26_has_every_scale() -> None:
    names = sorted(p.stem for p in (CONF_DIR / "model").glob("yolo*.yaml"))
    assert {f"yolo26{s}" for s in "nsmlx"} <= set(names)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name in names:
            cfg = hydra_compose("config", overrides=[f"model={name}"])
            assert cfg.model.name == name
            assert cfg.model.family == family_of(name) in FAMILIES, name
    assert (
        family_of("yolo26x") == "yolo26"
        and family_of("yolov8s") == "yolov8"
        and family_of("yolo12") == "yolo12"
    )
    # the default model stays yolo12n
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert hydra_compose("config").model.name == "yolo12n"


@pytest.mark.parametrize("scale", list(ULTRALYTICS_PARAMS))
def test_parameter_count_at_nc80_equals_ultralytics_own_build(scale: str) -> None:
    from ultralytics.nn.tasks import DetectionModel

    ours = count_params(build_model(base_model_yaml(f"yolo26{scale}", 80)))
    theirs = count_params(DetectionModel(f"yolo26{scale}.yaml", nc=80, verbose=False))
    assert ours == theirs == ULTRALYTICS_PARAMS[scale]


@pytest.mark.parametrize("family", FAMILIES)
def test_presets_follow_the_yaml_layer_roles(family: str) -> None:
    """backbone: the last backbone layer at each stride 8 / 16 / 32; neck: Detect's inputs; p3/p4/p5 one
    each; the replace preset: every block replace mode can swap (none in YOLOv8)."""
    name = f"{family}n"
    d = base_model_yaml(name, NC)
    model = build_model(d)
    table = layer_table(model)
    spec = presets(name)
    backbone = [max(r.index for r in table[: len(d["backbone"])] if r.stride == s) for s in (8, 16, 32)]
    assert spec["backbone"] == {"layers": backbone, "mode": "after"}
    detect_inputs = rows(d)[-1][0]
    assert spec["neck"] == {"layers": detect_inputs, "mode": "after"}
    assert [spec[p]["layers"] for p in ("p3", "p4", "p5")] == [[i] for i in detect_inputs]
    assert [table[i].stride for i in detect_inputs] == [8, 16, 32]
    replace = {k: v["layers"] for k, v in spec.items() if v["mode"] == "replace"}
    assert sorted(i for layers in replace.values() for i in layers) == attention_layers(model)
    if family == "yolo26":
        assert replace == {"c2psa": [10]} and table[10].module == "C2PSA" and detect_inputs == [16, 19, 22]


def test_pos_scan_visits_every_layer_and_the_c2psa_block(tmp_path: Path) -> None:
    cfg = config([f"model={MODEL}", "+attn=rala", "+pos=scan"], tmp_path / "r", tmp_path / "d")
    assert scan_layers(cfg) == list(range(23))
    cfg = config(
        [f"model={MODEL}", "+attn=rala", "+pos=scan", "pos.mode=replace"], tmp_path / "r", tmp_path / "d"
    )
    assert scan_layers(cfg) == [10]


# ------------------------------------------------------------------ every module at every layer


def check_outputs(model: nn.Module) -> None:
    """Both heads at a square and a non-square size: the one-to-many maps, then the final detections."""
    model.eval()
    with torch.no_grad():
        for h, w in SIZES:
            model.end2end = False
            preds = model(torch.zeros(1, 3, h, w))[0]
            assert preds.shape == (1, 4 + NC, anchors(h, w))
            select_head(model)
            dets = model(torch.zeros(1, 3, h, w))[0]
            assert dets.shape == (1, min(300, anchors(h, w)), 6)
            assert torch.isfinite(preds).all() and torch.isfinite(dets).all()


@pytest.mark.parametrize("attn", modules.available())
def test_every_module_after_every_layer_builds_runs_and_exports(
    base: tuple, attn: str, tmp_path: Path
) -> None:
    """The module after each of the 23 layers before Detect at once: every layer's channels and stride."""
    d, base_model, table = base
    layers = tuple(range(head_index(d)))
    composed = insert_after(d, Placement(attn, layers), table)
    model = build_model(composed)
    added = sum(count_params(modules.AttentionResidual(table[i].channels, attn)) for i in layers)
    assert count_params(model) == count_params(base_model) + added
    check_outputs(model)
    if attn in modules.attentions():  # the identity control exports in test_identity.py
        imgsz = SIZES[1]  # maps 32×48 (after layers 0–1) down to 2×3 (6 tokens: not 4 equal areas)
        model = visible(select_head(model), imgsz)
        x = torch.rand(1, 3, *imgsz)
        with torch.no_grad():
            assert relative(model(x)[0], without_attention(model, x), unordered=True) > TOL
        err = onnx_parity(model, x, tmp_path / "model.onnx")
        assert err <= TOL, f"{attn} after every layer: max relative error {err:.3g}"


@pytest.mark.parametrize("attn", modules.available())
def test_every_module_replaces_the_attention_inside_c2psa(base: tuple, attn: str) -> None:
    d, base_model, _ = base
    composed = compose(d, Placement(attn, (10,), "replace"), MODEL)
    assert rows(composed)[10][2] == "C2PSASwap"
    model = build_model(composed)
    psa = base_model.model[10]
    dim, heads = psa.c, psa.m[0].attn.num_heads
    added = sum(count_params(modules.build(attn, dim, num_heads=heads)) - count_params(b.attn) for b in psa.m)
    assert count_params(model) == count_params(base_model) + added
    check_outputs(model)


# --------------------------------------------------------------------------- the end-to-end head


def test_the_families_heads() -> None:
    # the families ablate treats as end-to-end are those whose ultralytics YAML says so
    assert {f for f in FAMILIES if end_to_end(base_model_yaml(f"{f}n", NC))} == END_TO_END == {"yolo26"}
    assert [f for f in FAMILIES if end_to_end(f)] == ["yolo26"] and end_to_end("yolo26x")
    yolo26, yolo12 = build_model(base_model_yaml(MODEL, NC)), build_model(base_model_yaml("yolo12n", NC))
    assert head_args(yolo26) == head_args(MODEL) == {"nms": False} and head_args(yolo12) == {}
    assert export_args(yolo26) == {"nms": None}  # ultralytics' default: the one-to-many head
    assert select_head(yolo26).end2end and export_args(yolo26) == {"nms": False}
    assert not select_head(yolo12).end2end and export_args(yolo12) == {"nms": None}
    for name, placement in (
        ("rala", Placement("rala", (16,))),
        ("mhsa", Placement("mhsa", (10,), "replace")),
    ):
        assert family_of_yaml(compose(base_model_yaml(MODEL, NC), placement, MODEL)) == "yolo26", name
    assert family_of_yaml(base_model_yaml("yolo11n", NC)) == "yolo11"  # the same layers, another head


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset("shapes", tmp_path_factory.mktemp("data"), train_images=4, val_images=4, imgsz=96)


def test_evaluation_reads_the_one_to_one_outputs_without_nms(tiny_data: Path, tmp_path: Path) -> None:
    """AP by size predicts as ultralytics validates YOLO26 with nms=False: the one-to-one head's ranked
    detections, filtered by confidence only. Each image's detections are the head's own outputs."""
    import cv2
    from ultralytics import YOLO

    model = perturbed_base(MODEL)  # class scores spread apart: a clear ranking
    weights = tmp_path / "yolo26n.pt"
    torch.save({"model": model}, weights)
    gt = evaluation.yolo_to_coco_gt(tiny_data, "val")
    yolo = YOLO(str(weights))
    dets = evaluation.predictions_to_coco(yolo, gt, 96, conf=1e-6)
    assert yolo.predictor.model.end2end and yolo.predictor.args.nms is False
    reference = select_head(copy.deepcopy(model)).eval()
    root = Path(gt["info"]["root"])
    for im in gt["images"]:
        bgr = cv2.imread(str(root / im["file_name"]))
        x = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            out = reference(x)[0][0]
        out = out[out[:, 4] > 1e-6]
        out[:, :4] = out[:, :4].clamp(0, 96)  # ultralytics clips boxes to the image
        got = [d for d in dets if d["image_id"] == im["id"]]
        assert len(got) == len(out) == min(300, anchors(96, 96))  # one detection per anchor: no NMS
        ours = [
            [
                *d["bbox"][:2],
                d["bbox"][0] + d["bbox"][2],
                d["bbox"][1] + d["bbox"][3],
                d["score"],
                d["category_id"],
            ]
            for d in got
        ]
        # the predictor runs a fused copy: equal up to float rounding, ranked alike up to near-ties
        assert unordered_diff(np.array([ours]), out[None].double().numpy(), tie=1e-3) < 2e-3


def test_latency_phase_times_the_deployed_head(tmp_path: Path) -> None:
    """yolo26: the fused one-to-one head with its top-k (the one-to-many branch dropped), and so its ONNX
    export; yolo12: the raw head outputs. Neither holds NMS."""
    from ablate.measure.export import export_onnx, onnx_session

    for name, shape in ((MODEL, (1, anchors(96, 96), 6)), ("yolo12n", (1, 4 + NC, anchors(96, 96)))):
        d = base_model_yaml(name, NC)
        model = phase.build(phase.Architecture("k", name, "none", "none", NC, (96, 96), d))
        timed = inference_copy(model)
        with torch.no_grad():
            out = timed(torch.zeros(1, 3, 96, 96))
        assert tuple(out[0].shape) == shape, name
        assert (timed.model[-1].cv2 is None) == (name == MODEL)  # fused: only the head deployment runs
        session = onnx_session(export_onnx(model, (96, 96), tmp_path / f"{name}.onnx"))
        assert tuple(session.get_outputs()[0].shape) == shape, name


def test_the_latency_footnote_says_per_family_whether_nms_is_timed() -> None:
    note = latency_note(["yolo26", "yolo12", "yolo12"])
    assert note.startswith("Latency excludes NMS (yolo12: raw head outputs, the NMS they need is not timed;")
    assert "yolo26: its end-to-end one-to-one head, top-k selection included, needs no NMS" in note
    assert latency_note([]) == ""
    table = Table([], ["shapes"], {}, 3, 0, "0 1 2", False, latency=["torch on cpu"], families=["yolo26"])
    assert "yolo26: its end-to-end one-to-one head" in to_markdown(table)


# ------------------------------------------------------------------ a trained yolo26 checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A yolo26n baseline trained here (1 epoch, 96 px, embedded data): its record and run directory."""
    results, data = tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("data")
    cfg = config([*TINY, f"model={MODEL}"], results, data)
    record = execute(experiment_from_config(cfg), cfg)
    return record, results / "runs" / record.key


def test_a_yolo26_run_records_its_family_and_is_validated_on_its_end_to_end_head(trained: tuple) -> None:
    record, run_dir = trained
    assert record.status == "ok", record.error
    data = json.loads((run_dir / "record.json").read_text())
    assert data["family"] == "yolo26" and data["model"] == MODEL and data["params"] > 2_000_000
    for k in ("map50_95", "map50_95_coco"):
        assert isinstance(data[k], float) and 0.0 <= data[k] <= 1.0
    args = yaml.safe_load((run_dir / ULTRALYTICS_DIR / "args.yaml").read_text())
    assert args["nms"] is False  # ultralytics' validation used the one-to-one head, without NMS
    dets = json.loads((run_dir / "predictions.json").read_text())
    per_image = {}
    for d in dets:
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
    assert per_image and max(per_image.values()) <= min(300, anchors(96, 96))


def trained_transfer(path: Path, placement: Placement | None) -> tuple:
    d = base_model_yaml(MODEL, int(read_checkpoint(path).nc or 0))  # the trained model's classes
    cd = compose(d, placement, MODEL)
    composed = build_model(cd)
    transfer = plan_transfer(read_checkpoint(path), build_model(d), cd, composed, MODEL)
    return apply_transfer(composed, transfer.state).eval(), transfer


@pytest.mark.parametrize("preset", list(presets(MODEL)))
def test_the_trained_checkpoint_transfers_every_base_tensor_into_every_preset(
    trained: tuple, preset: str
) -> None:
    record, run_dir = trained
    best = run_dir / ULTRALYTICS_DIR / "weights" / "best.pt"
    total = len(read_checkpoint(best).state)
    spec = presets(MODEL)[preset]
    _, transfer = trained_transfer(best, Placement("rala", tuple(spec["layers"]), spec["mode"]))
    assert transfer.total == total > 0
    if spec["mode"] == "after":
        assert (transfer.transferred, transfer.skipped) == (total, [])
        assert transfer.line().startswith(
            f"weights: transferred {total}/{total} tensors of the base checkpoint "
        )
    else:  # the C2PSA host keeps every tensor of its own; ultralytics' Attention inside is replaced
        skipped = {n for n, _ in transfer.skipped}
        assert skipped and all(n.startswith("model.10.m.") and ".attn." in n for n in skipped)
        assert {r for _, r in transfer.skipped} == {"attention replaced by rala"}
        assert transfer.transferred + len(skipped) == total


INSERT_PRESETS = [p for p, v in presets(MODEL).items() if v["mode"] == "after"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A yolo26n checkpoint as ultralytics saves one (fp16) whose every tensor differs from a fresh build,
    and the base model loaded from it."""
    path = tmp_path_factory.mktemp("ckpt") / "yolo26n.pt"
    torch.save({"model": copy.deepcopy(perturbed_base(MODEL)).half()}, path)
    loaded = build_model(base_model_yaml(MODEL, NC))
    state = read_checkpoint(path).state
    loaded.load_state_dict({k: v.to(loaded.state_dict()[k].dtype) for k, v in state.items()})
    return path, loaded.eval()


@pytest.mark.parametrize("attn", modules.available())
@pytest.mark.parametrize("preset", INSERT_PRESETS)
def test_gamma_zero_is_the_base_model_bit_for_bit_on_both_heads(
    checkpoint: tuple[Path, nn.Module], base: tuple, preset: str, attn: str
) -> None:
    path, loaded = checkpoint
    d, base_model, table = base
    layers = tuple(presets(MODEL)[preset]["layers"])
    cd = insert_after(d, Placement(attn, layers, "after", gamma=0.0), table)
    composed = build_model(cd)
    transfer = plan_transfer(read_checkpoint(path), base_model, cd, composed, MODEL)
    assert transfer.transferred == transfer.total and transfer.skipped == []
    composed = apply_transfer(composed, transfer.state).eval()
    reference = copy.deepcopy(loaded)
    for end2end in (False, True):
        composed.end2end = reference.end2end = end2end
        for h, w in ((96, 96), (64, 128)):
            x = torch.randn(2, 3, h, w)
            with torch.no_grad():
                assert torch.equal(composed(x)[0], reference(x)[0]), (end2end, h, w)


def test_checkpoints_of_other_families_name_both_families(tmp_path: Path) -> None:
    """yolo11 has yolo26's layer sequence (only the head differs): named by family, not "another scale"."""
    d = base_model_yaml(MODEL, NC)
    cd = compose(d, Placement("rala", (16,)), MODEL)
    for other in ("yolo12n", "yolo11n"):
        path = tmp_path / f"{other}.pt"
        torch.save({"model": build_model(base_model_yaml(other, NC)).half()}, path)
        with pytest.raises(AblateError) as err:
            plan_transfer(read_checkpoint(path), build_model(d), cd, build_model(cd), MODEL)
        text = str(err.value)
        assert f"(a {family_of(other)} checkpoint, the base model is yolo26" in text
        assert "another model family" in text and "\n" not in text and "another scale" not in text
    assert "(a yolo11 checkpoint, the base model is yolo26: another model family)" in text


def test_a_yolo12_checkpoint_into_yolo26_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "yolo12n.pt"
    torch.save({"model": perturbed_base("yolo12n").half()}, path)
    cmd = [
        sys.executable,
        "-m",
        "ablate",
        f"model={MODEL}",
        "+attn=rala",
        "+pos=neck",
        f"model.weights={path}",
    ]
    cmd += [*TINY, f"results.dir={tmp_path / 'results'}", f"data.dir={tmp_path / 'data'}"]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "0"}
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert re.search(
        r"cannot be placed in yolo26n, .*a yolo12 checkpoint, the base model is yolo26", lines[0]
    )
