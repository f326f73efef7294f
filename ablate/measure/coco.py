"""COCO evaluation of a trained model: AP overall and by object size, from its predictions on a split.

pycocotools on the split a run reports (area buckets small < 32², medium 32²–96², large > 96² pixels;
COCO's 100 detections per image). Image and annotation ids start at 1; category ids are the YOLO class
indices. Predictions come from ultralytics' predictor with its validation settings.

Which checkpoint on which split (:func:`evaluation_plan`, the record's ``evaluated``): a checkpoint is
never scored on the split it was selected on. ultralytics writes ``best.pt`` whenever the epoch's val
fitness is the best so far and ``last.pt`` every epoch; with ``val=false`` it validates only after the
final epoch, so every epoch "ties" the missing fitness and ``best.pt`` is the final epoch too. Hence:

* per-epoch validation off (the quick protocol: ``extra.val: false``): the final epoch (``last.pt``) on
  val — ``last epoch on val``;
* per-epoch validation on and a labelled ``test:`` split in the data YAML: ``best.pt`` (selected on val)
  on test — ``best-on-val, reported on test``;
* per-epoch validation on, no labelled test split: ``last.pt`` on val — ``last epoch on val``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..families import head_args
from ..records import write_json_atomic

log = logging.getLogger(__name__)

PREDICTIONS_JSON = "predictions.json"
PREDICT_CHUNK = 32  # images handed to ultralytics' predictor at once (a list source is loaded whole)
AP_KEYS = ("map50_95_coco", "map50_coco", "ap_small", "ap_medium", "ap_large")
AREA_RANGES = {"ap_small": (0.0, 32.0**2), "ap_medium": (32.0**2, 96.0**2), "ap_large": (96.0**2, math.inf)}
_STATS_INDEX = {"map50_95_coco": 0, "map50_coco": 1, "ap_small": 3, "ap_medium": 4, "ap_large": 5}
# the record's ``evaluated``: which checkpoint on which split its metrics come from
LAST_ON_VAL = "last epoch on val"
BEST_ON_TEST = "best-on-val, reported on test"


@dataclass(frozen=True)
class EvaluationPlan:
    """The checkpoint a run reports (a file in ultralytics' ``weights/``), the split it is scored on, and
    the record's ``evaluated``."""

    checkpoint: str
    split: str
    evaluated: str


def validates_each_epoch(train: Mapping[str, Any]) -> bool:
    """Whether ultralytics validates after every epoch under these ``train`` settings: its ``val``
    argument as :func:`ablate.train.train_args` passes it (``extra`` over the preset; default true)."""
    extra = train.get("extra") or {}
    value = extra["val"] if "val" in extra else train.get("val")
    return True if value is None else bool(value)


def evaluation_plan(train: Mapping[str, Any], data_yaml: str | Path) -> EvaluationPlan:
    """Which checkpoint to report on which split (module docstring): never the split it was chosen on."""
    if validates_each_epoch(train) and has_labelled_split(data_yaml, "test"):
        return EvaluationPlan("best.pt", "test", BEST_ON_TEST)
    return EvaluationPlan("last.pt", "val", LAST_ON_VAL)


def has_labelled_split(data_yaml: str | Path, split: str) -> bool:
    """Whether the local data YAML names ``split`` and at least one of its images has a label file
    (COCO's test-dev has none). A data YAML ultralytics resolves by name counts as having none."""
    if not Path(data_yaml).is_file():
        return False
    try:
        _, images = split_images(data_yaml, split)
    except (OSError, ValueError, yaml.YAMLError):
        return False
    from ultralytics.data.utils import img2label_paths

    return any(Path(label).is_file() for label in img2label_paths([str(i) for i in images]))


def ap_by_size(
    data_yaml: str | Path, weights: Path, imgsz: int, out: Path | None = None, split: str = "val"
) -> dict[str, Any]:
    """Record fields: COCO AP overall and by object size of the checkpoint ``weights`` on ``split`` of
    ``data_yaml`` ({} with a warning when the data YAML is not a local file). Detections go to ``out``.
    """
    if not Path(data_yaml).is_file():
        log.warning("AP by size skipped: %s is not a local data YAML", data_yaml)
        return {}
    gt = yolo_to_coco_gt(data_yaml, split)
    dets = predictions_to_coco(weights, gt, imgsz, out=out)
    return coco_ap_by_size(gt, dets)


def _load_data(data_yaml: str | Path, split: str) -> dict[str, Any]:
    data = yaml.safe_load(Path(data_yaml).read_text())
    if not isinstance(data, dict) or not data.get(split):
        raise ValueError(f"{data_yaml} has no '{split}' split")
    return data


def split_images(data_yaml: str | Path, split: str = "val") -> tuple[Path, list[Path]]:
    """The dataset root and the sorted image files of ``split`` (directories, image lists or files),
    resolved as ultralytics resolves them."""
    from ultralytics.data.utils import IMG_FORMATS

    from ..datasets import dataset_base

    data = _load_data(data_yaml, split)
    base = dataset_base(Path(data_yaml), data)
    files: list[Path] = []
    for item in data[split] if isinstance(data[split], list) else [data[split]]:
        target = (base / item).resolve()
        if not target.exists() and str(item).startswith("../"):
            target = (base / str(item)[3:]).resolve()
        files += _image_files(target, IMG_FORMATS)
    return base.resolve(), sorted(files)


def _image_files(target: Path, formats: set[str]) -> list[Path]:
    if target.is_dir():
        return [f for f in target.rglob("*.*") if f.suffix[1:].lower() in formats]
    if target.suffix == ".txt":
        lines = (line.strip() for line in target.read_text().splitlines())
        return [(target.parent / line).resolve() for line in lines if line]
    if target.is_file():
        return [target]
    raise FileNotFoundError(f"dataset split path {target} does not exist")


def yolo_to_coco_gt(data_yaml: str | Path, split: str = "val") -> dict[str, Any]:
    """COCO ground truth of a YOLO-format split: pixel xywh boxes, ``area`` = w·h, ``iscrowd`` 0.

    Image sizes are read from the files (EXIF-corrected, as ultralytics reads them). ``file_name`` is
    relative to the dataset root, which ``info.root`` holds. Label rows must be boxes (not polygons).
    """
    from PIL import Image
    from ultralytics.data.utils import exif_size, img2label_paths

    from ..datasets import read_labels

    base, images = split_images(data_yaml, split)
    names = _load_data(data_yaml, split).get("names") or {}
    names = dict(enumerate(names)) if isinstance(names, list) else names
    gt: dict[str, Any] = {
        "info": {"description": f"{data_yaml} split={split}", "root": str(base)},
        "images": [],
        "annotations": [],
        "categories": [{"id": int(k), "name": str(v)} for k, v in names.items()],
    }
    for image_id, (image, label) in enumerate(zip(images, img2label_paths(images), strict=True), start=1):
        with Image.open(image) as im:
            width, height = exif_size(im)
        gt["images"].append(
            {"id": image_id, "file_name": _relative(image, base), "width": width, "height": height}
        )
        if Path(label).is_file():
            for cls, cx, cy, w, h in read_labels(Path(label)):
                bbox = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
                gt["annotations"].append(_annotation(len(gt["annotations"]) + 1, image_id, cls, bbox))
    return gt


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _annotation(ann_id: int, image_id: int, cls: int, bbox: list[float]) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(cls),
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": 0,
    }


def predictions_to_coco(
    model: Any,
    gt: dict[str, Any],
    imgsz: int,
    *,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    device: str | None = None,
    out: Path | None = None,
) -> list[dict[str, Any]]:
    """COCO-format detections of ``model`` (a ``YOLO`` or a checkpoint path) on the images of ``gt``.

    Runs ultralytics' predictor (validation settings: ``conf=0.001``, ``iou=0.7``, ``max_det=300``);
    image ids are those of ``gt``. Written as JSON to ``out`` (e.g. ``<run>/predictions.json``) if given.
    """
    from ultralytics import YOLO

    import modules  # noqa: F401  (checkpoints pickle our module classes)

    yolo = model if isinstance(model, YOLO) else YOLO(str(model), task="detect")
    root = Path(gt["info"]["root"])
    kwargs = dict(imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, stream=True, verbose=False)
    kwargs.update(head_args(yolo.model))  # an end-to-end head (YOLO26): its own output, no NMS
    if device is not None:
        kwargs["device"] = device
    dets: list[dict[str, Any]] = []
    images = gt["images"]
    for start in range(0, len(images), PREDICT_CHUNK):
        chunk = images[start : start + PREDICT_CHUNK]
        results = yolo.predict(source=[str(root / im["file_name"]) for im in chunk], **kwargs)
        for im, result in zip(chunk, results, strict=True):
            dets += _result_dets(im["id"], result)
    if out is not None:
        write_json_atomic(Path(out), dets)
    log.info("%d detections on %d images", len(dets), len(images))
    return dets


def _result_dets(image_id: int, result: Any) -> list[dict[str, Any]]:
    boxes = result.boxes
    out = []
    for (x0, y0, x1, y1), score, cls in zip(
        boxes.xyxy.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True
    ):
        out.append(
            {
                "image_id": image_id,
                "category_id": int(cls),
                "bbox": [round(v, 3) for v in (x0, y0, x1 - x0, y1 - y0)],
                "score": round(score, 5),
            }
        )
    return out


def coco_ap_by_size(gt: dict[str, Any], dets: list[dict[str, Any]]) -> dict[str, float | None]:
    """``map50_95_coco``, ``map50_coco``, ``ap_small``, ``ap_medium``, ``ap_large`` by pycocotools.

    None where there is nothing to score (a size bucket without ground truth); no detections give 0.
    """
    present = _buckets_with_gt(gt)
    if not dets:
        return {k: (0.0 if present[k] else None) for k in AP_KEYS}
    stats = _coco_stats(gt, dets)
    return {k: (float(stats[i]) if stats[i] >= 0 else None) for k, i in _STATS_INDEX.items()}


def _buckets_with_gt(gt: dict[str, Any]) -> dict[str, bool]:
    """Which AP keys have ground truth to score (pycocotools' ranges, bounds included)."""
    areas = [a["area"] for a in gt["annotations"] if not a.get("iscrowd")]
    present = {k: any(lo <= a <= hi for a in areas) for k, (lo, hi) in AREA_RANGES.items()}
    return {"map50_95_coco": bool(areas), "map50_coco": bool(areas), **present}


def _coco_stats(gt: dict[str, Any], dets: list[dict[str, Any]]) -> list[float]:
    """pycocotools' 12 bbox summary numbers; its console output goes to the debug log."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    log.debug("pycocotools:\n%s", text.getvalue())
    return list(evaluator.stats)
