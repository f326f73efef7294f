"""COCO evaluation: AP overall and by size (pycocotools), ground truth from YOLO labels, predictions."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ablate import evaluation
from ablate.compose import base_model_yaml, build_model
from ablate.datasets import make_dataset, read_labels


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
