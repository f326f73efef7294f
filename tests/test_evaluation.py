"""COCO evaluation: AP overall and by size (pycocotools), ground truth from YOLO labels, predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from ablate.datasets import make_dataset, read_labels
from ablate.measure import coco as evaluation
from ablate.measure.model import base_model_yaml, build_model
from ablate.records import RunRecord


@pytest.fixture(scope="module")
def base() -> nn.Module:
    return build_model(base_model_yaml("yolo12n", 5)).eval()


# ------------------------------------------------------------------------------------------ COCO AP


def _gt(sides: dict[str, int]) -> dict:
    """One 200×200 image per box, boxes of the given side lengths at (20, 20)."""
    images = [
        {"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in range(1, len(sides) + 1)
    ]
    anns = [
        {"id": i, "image_id": i, "category_id": 0, "bbox": [20, 20, s, s], "area": s * s, "iscrowd": 0}
        for i, s in enumerate(sides.values(), start=1)
    ]
    return {"images": images, "annotations": anns, "categories": [{"id": 0, "name": "thing"}]}


def _det(image_id: int, bbox: list[float], score: float = 0.9) -> dict:
    return {"image_id": image_id, "category_id": 0, "bbox": bbox, "score": score}


SIDES = {"small": 10, "medium": 50, "large": 120}


def test_ap_of_perfect_predictions_is_one() -> None:
    gt = _gt(SIDES)
    dets = [_det(a["image_id"], a["bbox"]) for a in gt["annotations"]]
    assert evaluation.coco_ap_by_size(gt, dets) == {k: pytest.approx(1.0) for k in evaluation.AP_KEYS}


def test_ap_by_size_when_only_small_objects_are_found() -> None:
    gt = _gt(SIDES)
    dets = [_det(1, [20, 20, 10, 10]), _det(3, [150, 150, 40, 40], score=0.8)]  # small right, large wrong
    ap = evaluation.coco_ap_by_size(gt, dets)
    assert ap["ap_small"] == pytest.approx(1.0)
    assert ap["ap_medium"] == 0.0 and ap["ap_large"] == 0.0
    assert 0.0 < ap["map50_95_coco"] < 1.0


def test_a_bucket_without_ground_truth_is_none() -> None:
    gt = _gt({"small": 10, "large": 120})
    dets = [_det(a["image_id"], a["bbox"]) for a in gt["annotations"]]
    ap = evaluation.coco_ap_by_size(gt, dets)
    assert ap["ap_medium"] is None
    assert ap["ap_small"] == pytest.approx(1.0) and ap["ap_large"] == pytest.approx(1.0)


def test_no_detections_give_zeros() -> None:
    ap = evaluation.coco_ap_by_size(_gt({"small": 10, "large": 120}), [])
    assert ap == {
        "map50_95_coco": 0.0,
        "map50_coco": 0.0,
        "ap_small": 0.0,
        "ap_medium": None,
        "ap_large": 0.0,
    }


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory):
    return make_dataset("shapes", tmp_path_factory.mktemp("data"), train_images=4, val_images=4, imgsz=96)


def test_yolo_labels_become_coco_pixel_boxes(tiny_data) -> None:
    gt = evaluation.yolo_to_coco_gt(tiny_data, "val")
    labels = sorted((tiny_data.parent / "labels" / "val").glob("*.txt"))
    rows = [(label.stem, r) for label in labels for r in read_labels(label)]
    assert len(gt["images"]) == 4 and len(gt["annotations"]) == len(rows) > 0
    assert {im["width"] for im in gt["images"]} == {96} and {im["height"] for im in gt["images"]} == {96}
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    for ann, (stem, (cls, cx, cy, w, h)) in zip(gt["annotations"], rows, strict=True):
        assert names[ann["image_id"]] == f"images/val/{stem}.png"
        assert ann["category_id"] == cls and ann["iscrowd"] == 0
        expected = [(cx - w / 2) * 96, (cy - h / 2) * 96, w * 96, h * 96]
        assert ann["bbox"] == pytest.approx(expected, abs=1e-9)
        assert ann["area"] == pytest.approx(w * h * 96 * 96)
    assert (
        len({a["id"] for a in gt["annotations"]}) == len(rows)
        and min(a["id"] for a in gt["annotations"]) == 1
    )


def test_predictions_are_coco_detections_on_the_gt_images(tiny_data, base: nn.Module, tmp_path) -> None:
    from ultralytics import YOLO

    weights = tmp_path / "untrained.pt"
    torch.save({"model": base}, weights)
    gt = evaluation.yolo_to_coco_gt(tiny_data, "val")
    out = tmp_path / evaluation.PREDICTIONS_JSON
    dets = evaluation.predictions_to_coco(YOLO(str(weights)), gt, 96, conf=1e-6, max_det=20, out=out)
    assert json.loads(out.read_text()) == dets
    per_image = {im["id"]: sum(d["image_id"] == im["id"] for d in dets) for im in gt["images"]}
    assert all(0 < n <= 20 for n in per_image.values())
    for d in dets:
        x, y, w, h = d["bbox"]
        assert min(x, y) >= -1e-3 and max(x + w, y + h) <= 96 + 1e-3
        assert 0 <= d["category_id"] < 5
    ap = evaluation.coco_ap_by_size(gt, dets)
    assert set(ap) == set(evaluation.AP_KEYS) and 0.0 <= ap["map50_95_coco"] <= 1.0


# ------------------------------------------------------------- which checkpoint on which split (item 6)


def _preset(name: str) -> dict:
    from ablate.paths import CONF_DIR

    return yaml.safe_load((CONF_DIR / "train" / f"{name}.yaml").read_text())


@pytest.fixture(scope="module")
def split_yamls(tiny_data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data YAMLs beside ``tiny_data``: without a test split, with a labelled one (the train images), with
    one whose images have no label files (as COCO's test-dev), and with one that does not exist."""
    root = tiny_data.parent
    unlabelled = root / "images" / "test_nolabels"
    unlabelled.mkdir(exist_ok=True)
    for image in sorted((root / "images" / "val").glob("*.png"))[:2]:
        shutil.copy(image, unlabelled / image.name)
    data = yaml.safe_load(tiny_data.read_text())
    out = {"none": tiny_data}
    for name, test in (
        ("labelled", "images/train"),
        ("unlabelled", "images/test_nolabels"),
        ("missing", "nope"),
    ):
        out[name] = root / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump({**data, "test": test}))
    return out


def test_the_quick_protocol_reports_its_last_epoch_on_val(split_yamls: dict[str, Path]) -> None:
    """quick validates only after the last epoch (extra.val: false), so best.pt is the final epoch and
    nothing was selected on val: last.pt on val, whatever the data YAML holds."""
    quick = _preset("quick")
    assert quick["extra"]["val"] is False and not evaluation.validates_each_epoch(quick)
    for data in split_yamls.values():
        assert evaluation.evaluation_plan(quick, data) == evaluation.EvaluationPlan(
            "last.pt", "val", "last epoch on val"
        )


def test_the_paper_protocol_never_scores_best_pt_on_val(split_yamls: dict[str, Path]) -> None:
    paper = _preset("paper")
    assert evaluation.validates_each_epoch(paper)  # ultralytics picks best.pt on val every epoch
    plan = {name: evaluation.evaluation_plan(paper, data) for name, data in split_yamls.items()}
    assert plan["labelled"] == evaluation.EvaluationPlan("best.pt", "test", "best-on-val, reported on test")
    for name in ("none", "unlabelled", "missing"):
        assert plan[name] == evaluation.EvaluationPlan("last.pt", "val", "last epoch on val"), name
    # a data YAML ultralytics resolves by name cannot be read here: counted as having no test split
    assert evaluation.evaluation_plan(paper, "VOC.yaml").split == "val"


@pytest.mark.parametrize(
    ("train", "validates"),
    [
        ({}, True),  # ultralytics' default
        ({"val": None}, True),
        ({"val": False}, False),
        ({"val": True, "extra": {"val": False}}, False),  # extra wins, as train_args merges it last
        ({"val": False, "extra": {"val": True}}, True),
    ],
)
def test_validates_each_epoch_reads_val_as_train_args_passes_it(train: dict, validates: bool) -> None:
    from ablate.train import train_args

    assert evaluation.validates_each_epoch(train) is validates
    assert bool(train_args({"imgsz": 64, **train}, 0, Path("x")).get("val", True)) is validates


@pytest.mark.parametrize("name", ["none", "labelled"])
@pytest.mark.parametrize("val", [False, True])
def test_reported_metrics_come_from_the_plans_checkpoint_and_split(
    split_yamls: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, val: bool
) -> None:
    """ultralytics' final metrics are best.pt's on val: kept when nothing was selected on val, else replaced
    by the plan's checkpoint on the plan's split."""
    from ablate import train as training

    calls = []

    def validate(weights: Path, data_yaml: str, split: str, train: dict, save_dir: Path) -> dict:
        calls.append((weights, split))
        return {"metrics/mAP50(B)": 0.25}

    monkeypatch.setattr(training, "validate", validate)
    final = {"metrics/mAP50(B)": 0.9}
    metrics, evaluated = training.reported_metrics(
        final, {"imgsz": 64, "batch": 2, "val": val}, str(split_yamls[name]), tmp_path
    )
    if not val:
        assert (metrics, evaluated, calls) == (final, "last epoch on val", [])
    elif name == "labelled":
        assert metrics == {"metrics/mAP50(B)": 0.25} and evaluated == "best-on-val, reported on test"
        assert calls == [(tmp_path / "weights" / "best.pt", "test")]
    else:
        assert metrics == {"metrics/mAP50(B)": 0.25} and evaluated == "last epoch on val"
        assert calls == [(tmp_path / "weights" / "last.pt", "val")]


@pytest.mark.parametrize(
    ("name", "checkpoint", "split"), [("none", "last.pt", "val"), ("labelled", "best.pt", "test")]
)
def test_run_evaluate_scores_the_plans_checkpoint_and_records_evaluated(
    split_yamls: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    name: str,
    checkpoint: str,
    split: str,
) -> None:
    from types import SimpleNamespace

    from ablate import run

    seen = {}

    def ap_by_size(data_yaml, weights, imgsz, out=None, split="val"):  # noqa: ANN001, ANN202
        seen.update(weights=weights, split=split, imgsz=imgsz)
        return {"map50_95_coco": 0.5}

    monkeypatch.setattr(evaluation, "ap_by_size", ap_by_size)
    exp = SimpleNamespace(train={**_preset("paper"), "imgsz": 64})
    fields = run.evaluate(exp, str(split_yamls[name]), tmp_path)
    assert seen == {"weights": tmp_path / "ultralytics" / "weights" / checkpoint, "split": split, "imgsz": 64}
    assert fields == {
        "map50_95_coco": 0.5,
        "evaluated": evaluation.evaluation_plan(exp.train, split_yamls[name]).evaluated,
    }
    assert fields["evaluated"] == (
        "best-on-val, reported on test" if split == "test" else "last epoch on val"
    )
    assert RunRecord(key="k").update(fields).evaluated == fields["evaluated"]


def test_ap_by_size_scores_the_split_it_is_given(
    split_yamls: dict[str, Path], base: nn.Module, tmp_path: Path
) -> None:
    weights = tmp_path / "untrained.pt"
    torch.save({"model": base}, weights)
    out = tmp_path / "predictions.json"
    ap = evaluation.ap_by_size(split_yamls["unlabelled"], weights, 96, out, split="test")
    ids = {d["image_id"] for d in json.loads(out.read_text())}
    assert ids <= {1, 2} and ap["map50_95_coco"] is None  # two test images, no ground truth to score


def test_a_paper_like_run_selects_on_val_and_reports_on_test(
    split_yamls: dict[str, Path], tmp_path: Path
) -> None:
    """One epoch at 64 px with per-epoch validation and a labelled test split: the reported metrics are
    ultralytics' validator on the test split with best.pt (its own final validation scored val)."""
    from ultralytics import YOLO

    from ablate.compose import write_yaml
    from ablate.train import METRICS, train_and_validate

    write_yaml(base_model_yaml("yolo12n", 5), tmp_path / "model.yaml")
    data = str(split_yamls["labelled"])
    train = {"imgsz": 64, "epochs": 1, "batch": 4, "workers": 0, "device": "cpu", "val": True, "extra": {}}
    out = train_and_validate(tmp_path / "model.yaml", data, train, 0, tmp_path / "ultralytics")
    assert out["evaluated"] == "best-on-val, reported on test"
    assert (tmp_path / "ultralytics" / "val-test").is_dir()
    again = YOLO(str(tmp_path / "ultralytics" / "weights" / "best.pt")).val(
        data=data,
        split="test",
        imgsz=64,
        batch=8,
        workers=0,
        device="cpu",
        plots=False,
        verbose=False,
        project=str(tmp_path),
        name="check",
    )
    assert {k: out[k] for k in METRICS} == {
        k: pytest.approx(float(again.results_dict[v])) for k, v in METRICS.items()
    }
