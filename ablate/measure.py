"""Measurements beside training: attention parameters, FLOPs, latency and size-stratified COCO AP.

Conventions (every figure is recorded with the counter and version that produced it):

* **FLOPs** are 2·MACs of every product (convolutions, mm/addmm/bmm, matmul and einsum through their aten
  products, scaled dot-product attention), counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
  model in eval mode, batch 1, input ``3×S×S`` where ``S`` is the image size rounded up to a multiple of
  the model's largest stride (as ultralytics rounds ``imgsz``). This is ultralytics' ``get_flops``
  convention (a full ``S×S`` image, batch 1, 2·MACs); thop extrapolates that figure from stride-sized
  proxies, here the full image runs once. FlopCounterMode counts only products: no bias adds, norms,
  activations or elementwise ops (thop counts some of those, so ``gflops_ultralytics`` is a little
  higher on a model without attention). It counts 0 for the CPU fused SDPA kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``), which ``F.scaled_dot_product_attention`` runs
  on CPU whenever q, k, v share the head dim, with or without ``attn_mask``, with or without grad;
  :data:`SDPA_RULES` adds that kernel and the other fused SDPA kernels torch leaves unregistered. The
  math fallback (unequal head dims) decomposes into ``bmm`` and is counted by torch itself.
* **Latency** is the median of ``repeats`` timed forward passes after ``warmup`` untimed ones, on a fused
  deep copy (ultralytics' ``fuse()``: Conv+BN folding), eval mode, ``torch.inference_mode``, batch 1,
  synchronised on CUDA.
* **COCO AP** comes from pycocotools on the val split (area buckets small < 32², medium 32²–96²,
  large > 96² pixels; COCO's 100 detections per image). Image and annotation ids start at 1; category
  ids are the YOLO class indices.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from .datasets import dataset_base, read_labels
from .records import write_json_atomic

log = logging.getLogger(__name__)

PREDICTIONS_JSON = "predictions.json"
PREDICT_CHUNK = 32  # images handed to ultralytics' predictor at once (a list source is loaded whole)
AP_KEYS = ("map50_95_coco", "map50_coco", "ap_small", "ap_medium", "ap_large")
AREA_RANGES = {"ap_small": (0.0, 32.0**2), "ap_medium": (32.0**2, 96.0**2), "ap_large": (96.0**2, math.inf)}
_STATS_INDEX = {"map50_95_coco": 0, "map50_coco": 1, "ap_small": 3, "ap_medium": 4, "ap_large": 5}


class ZeroFlopsError(RuntimeError):
    """A FLOPs counter returned 0: the count failed (e.g. ultralytics' ``get_flops`` swallowed an error)."""


# --------------------------------------------------------------------------------------------- params


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The modules a placement added or swapped in: every ``AttentionResidual`` layer, and the attention
    of every ``ABlock`` inside an ``A2C2fSwap`` and every ``PSABlock`` inside a ``C2PSASwap``."""
    from ultralytics.nn.modules.block import ABlock, PSABlock

    from modules.hosts import A2C2fSwap, C2PSASwap
    from modules.residual import AttentionResidual

    found: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, AttentionResidual):
            found.append(m)
        elif isinstance(m, A2C2fSwap):
            found += [b.attn for b in m.modules() if isinstance(b, ABlock)]
        elif isinstance(m, C2PSASwap):
            found += [b.attn for b in m.m if isinstance(b, PSABlock)]
    return found


def params_attn(model: nn.Module) -> int:
    """Parameters of the modules the placement added or swapped in (0 for a baseline).

    Insert mode: the whole ``AttentionResidual`` layers (norm, attention, γ). Replace mode: the swapped-in
    attention modules only (so replacing area attention by ``area`` gives the AAttn parameter count, not 0).
    """
    seen: dict[int, int] = {}
    for m in attention_modules(model):
        seen.update((id(p), p.numel()) for p in m.parameters())
    return sum(seen.values())


# ---------------------------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class FlopCount:
    """One FLOPs figure (2·MACs) with the counter that produced it."""

    flops: int
    gflops: float
    imgsz: tuple[int, int]
    counter: str
    version: str
    by_module: dict[str, float] | None = None  # GFLOPs per submodule, names relative to the model


def sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    """2·MACs of ``softmax(q kᵀ) v``: q ``…×L×E``, k ``…×S×E``, v ``…×S×Ev`` (k, v heads may be fewer)."""
    *batch, length, e = query_shape
    source, ev = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * length * source * (e + ev)


def sdpa_backward_flops(
    grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any
) -> int:
    """2·MACs of the SDPA backward: recomputed scores, then grads of v, of the probabilities, of q and k."""
    *batch, length, e = query_shape
    source, ev = key_shape[-2], value_shape[-1]
    return 2 * math.prod(batch) * length * source * (3 * e + 2 * ev)


def _sdpa_rules() -> dict[Any, Any]:
    """Rules for the fused SDPA kernels that this torch's flop registry lacks (it has the CUDA ones)."""
    aten = torch.ops.aten
    forward = (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
        "_scaled_dot_product_attention_math_for_mps",
    )
    backward = (
        "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_fused_attention_overrideable_backward",
    )
    rules = {}
    for names, rule in ((forward, sdpa_flops), (backward, sdpa_backward_flops)):
        for name in names:
            op = getattr(aten, name, None)
            if op is not None and op not in flop_registry:
                rules[op] = rule
    return rules


SDPA_RULES = _sdpa_rules()
COUNTER = "torch.utils.flop_counter.FlopCounterMode+sdpa"


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts the fused SDPA kernels (see :data:`SDPA_RULES`)."""
    return FlopCounterMode(display=False, custom_mapping=SDPA_RULES)


def stride_size(model: nn.Module, imgsz: int | tuple[int, int]) -> tuple[int, int]:
    """``imgsz`` as (h, w) rounded up to a multiple of the model's largest stride (1 without strides)."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    if min(h, w) <= 0:
        raise ValueError(f"imgsz must be positive, got {imgsz!r}")
    stride = int(max(model.stride)) if hasattr(model, "stride") else 1
    return tuple(max(stride, math.ceil(s / stride) * stride) for s in (h, w))


@contextlib.contextmanager
def _eval(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; its previous mode restored after."""
    was_training = model.training
    try:
        yield model.eval()
    finally:
        model.train(was_training)


def count_module_flops(module: nn.Module, *inputs: torch.Tensor) -> FlopCounterMode:
    """Run ``module(*inputs)`` once (eval mode, no grad) under :func:`flop_counter`; the counter after.

    Raises :class:`ZeroFlopsError` when nothing was counted.
    """
    with _eval(module), torch.no_grad(), flop_counter() as counter:
        module(*inputs)
    if counter.get_total_flops() <= 0:
        raise ZeroFlopsError(f"FlopCounterMode counted 0 FLOPs for {type(module).__name__}")
    return counter


def count_flops(model: nn.Module, imgsz: int | tuple[int, int], depth: int = 2) -> FlopCount:
    """FLOPs (2·MACs, every product, SDPA included) of one forward at ``imgsz``, batch 1, eval mode.

    ``by_module`` holds GFLOPs of every submodule up to ``depth`` levels below the model
    (``model.6`` for layer 6 of an ultralytics model at the default ``depth=2``).
    """
    size = stride_size(model, imgsz)
    p = next(model.parameters(), None)
    x = torch.zeros(1, _input_channels(model), *size)
    counter = count_module_flops(model, x if p is None else x.to(p))
    total = counter.get_total_flops()
    return FlopCount(
        flops=total,
        gflops=total / 1e9,
        imgsz=size,
        counter=COUNTER,
        version=f"torch {torch.__version__}",
        by_module=_by_module(counter, type(model).__name__, depth),
    )


def _input_channels(model: nn.Module) -> int:
    """Input channels: the first convolution's (3 for an RGB detector)."""
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return first.in_channels if first is not None else 3


def _by_module(counter: FlopCounterMode, root: str, depth: int) -> dict[str, float]:
    out = {}
    for name, ops in counter.get_flop_counts().items():
        head, _, rest = name.partition(".")
        if head == root and rest and rest.count(".") < depth:
            out[rest] = sum(ops.values()) / 1e9
    return out


def ultralytics_flops(model: nn.Module, imgsz: int | tuple[int, int]) -> FlopCount:
    """ultralytics' own figure, ``get_flops(model, imgsz)`` (thop: hooks plus functional matmul/SDPA).

    ``get_flops`` returns 0.0 on any error; that raises :class:`ZeroFlopsError` here.
    """
    from ultralytics.utils.torch_utils import get_flops

    size = stride_size(model, imgsz)
    gflops = float(get_flops(model, list(size)))
    if gflops <= 0:
        raise ZeroFlopsError(f"ultralytics get_flops returned {gflops} for {type(model).__name__} at {size}")
    return FlopCount(
        flops=round(gflops * 1e9),
        gflops=gflops,
        imgsz=size,
        counter="ultralytics.utils.torch_utils.get_flops (thop)",
        version=f"ultralytics-thop {_version('ultralytics-thop')}",
    )


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


# -------------------------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class Latency:
    """Forward latency statistics of one model at one input size."""

    latency_ms: float  # median
    latency_p10_ms: float
    latency_p90_ms: float
    count: int  # timed passes
    warmup: int
    batch: int
    imgsz: tuple[int, int]
    device: str
    dtype: str
    threads: int
    fused: bool
    peak_memory_mb: float | None  # CUDA only: torch.cuda.max_memory_allocated during the passes


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU model string from ``/proc/cpuinfo`` (``platform`` elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def inference_copy(
    model: nn.Module, device: torch.device | str = "cpu", half: bool = False, fuse: bool = True
) -> nn.Module:
    """A deep copy of ``model`` as ultralytics runs inference: fused (where it can), eval, on ``device``."""
    device = torch.device(device)
    if half and device.type != "cuda":
        raise ValueError(f"half=True needs a CUDA device, got {device}")
    m = copy.deepcopy(model).eval()
    if fuse and hasattr(m, "fuse"):
        m = m.fuse(verbose=False)
    m = m.to(device)
    return m.half() if half else m


def _input(
    batch: int, channels: int, size: tuple[int, int], device: torch.device, half: bool
) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, channels, *size, generator=g)
    return x.to(device, torch.float16 if half else torch.float32)


def time_forward(module: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> list[float]:
    """Wall-clock milliseconds of ``repeats`` forward passes after ``warmup`` untimed ones."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            module(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return times


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def measure_latency(
    model: nn.Module,
    imgsz: int | tuple[int, int],
    *,
    repeats: int = 100,
    warmup: int = 20,
    device: torch.device | str = "cpu",
    half: bool = False,
    batch: int = 1,
    fuse: bool = True,
) -> Latency:
    """Median, p10 and p90 forward latency over ``repeats`` timed passes after ``warmup`` untimed ones.

    Runs on a fused deep copy (``model`` is left as it was), eval mode, ``torch.inference_mode``; on CUDA
    every pass is synchronised and the peak allocated memory is recorded.
    """
    if repeats < 2 or warmup < 0 or batch < 1:
        raise ValueError(f"need repeats >= 2, warmup >= 0, batch >= 1; got {repeats}, {warmup}, {batch}")
    device = torch.device(device)
    size = stride_size(model, imgsz)
    m = inference_copy(model, device, half, fuse)
    x = _input(batch, _input_channels(m), size, device, half)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = time_forward(m, x, repeats, warmup)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    result = Latency(
        latency_ms=statistics.median(times),
        latency_p10_ms=quantile(times, 0.1),
        latency_p90_ms=quantile(times, 0.9),
        count=len(times),
        warmup=warmup,
        batch=batch,
        imgsz=size,
        device=device_name(device),
        dtype=str(x.dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        fused=fuse and hasattr(model, "fuse"),
        peak_memory_mb=peak,
    )
    log.info(
        "latency %.2f ms (p10 %.2f, p90 %.2f) over %d passes on %s",
        result.latency_ms,
        result.latency_p10_ms,
        result.latency_p90_ms,
        result.count,
        result.device,
    )
    return result


def measure_throughput(
    model: nn.Module,
    imgsz: int | tuple[int, int],
    *,
    batch: int = 16,
    repeats: int = 10,
    warmup: int = 3,
    device: torch.device | str = "cpu",
    half: bool = False,
) -> float:
    """Images per second at ``batch``: ``batch`` / median batch latency (same protocol as latency)."""
    lat = measure_latency(model, imgsz, repeats=repeats, warmup=warmup, device=device, half=half, batch=batch)
    return batch / (lat.latency_ms / 1e3)


# ------------------------------------------------------------------------------------------ COCO AP


def _load_data(data_yaml: str | Path, split: str) -> dict[str, Any]:
    data = yaml.safe_load(Path(data_yaml).read_text())
    if not isinstance(data, dict) or not data.get(split):
        raise ValueError(f"{data_yaml} has no '{split}' split")
    return data


def split_images(data_yaml: str | Path, split: str = "val") -> tuple[Path, list[Path]]:
    """The dataset root and the sorted image files of ``split`` (directories, image lists or files),
    resolved as ultralytics resolves them."""
    from ultralytics.data.utils import IMG_FORMATS

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
