"""One experiment end to end: compose, fail fast, (inspect | train), record."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from . import datasets
from .compose import (
    base_model_yaml,
    build_model,
    compose,
    count_params,
    format_table,
    layer_table,
    marks,
    write_yaml,
)
from .errors import AblateError
from .experiment import Experiment
from .records import RunRecord, git_sha, now, read_record, run_dir, run_key, versions, write_record

log = logging.getLogger(__name__)

MODEL_YAML = "model.yaml"
CONFIG_YAML = "config.yaml"
ULTRALYTICS_DIR = "ultralytics"
PREDICTIONS = "predictions.json"


def dataset_names(dataset: dict[str, Any]) -> list[str]:
    """Class names of the dataset, read without generating or downloading anything."""
    return datasets.class_names(dataset.get("path") or str(dataset.get("name")))


def composed_model(exp: Experiment, nc: int) -> tuple[dict[str, Any], torch.nn.Module]:
    """Composed YAML dict and the model built from it, after a forward at the run's image size."""
    d = compose(base_model_yaml(exp.model, nc), exp.placement, exp.model)
    try:
        model = build_model(d)
    except (ValueError, AssertionError, RuntimeError) as e:
        raise AblateError(f"{exp.model} with attn={exp.attn} does not build: {e}") from None
    fail_fast(model, int(exp.train["imgsz"]), exp)
    return d, model


def fail_fast(model: torch.nn.Module, imgsz: int, exp: Experiment) -> None:
    """One forward (train and eval mode) at the run's image size, before any dataset work."""
    stride = int(max(model.stride))
    size = max(stride, (imgsz + stride - 1) // stride * stride)  # as ultralytics rounds imgsz up
    try:
        with torch.no_grad():
            model.train()(torch.zeros(1, 3, size, size))
            model.eval()(torch.zeros(1, 3, size, size))
    except Exception as e:
        raise AblateError(f"{exp.model} with attn={exp.attn} fails a forward at {size}px: {e}") from None


def inspect_table(d: dict[str, Any], model: torch.nn.Module) -> str:
    marked = marks(d)
    table = [r.__class__(**{**r.__dict__, "mark": marked.get(r.index, "")}) for r in layer_table(model)]
    return format_table(table)


def base_record(exp: Experiment, key: str, model: torch.nn.Module, d: dict[str, Any]) -> RunRecord:
    p = exp.placement
    return RunRecord(
        key=key,
        action=exp.action,
        model=exp.model,
        scale=next(iter(d["scales"])),
        attn=exp.attn,
        attn_params=dict(p.attn_kwargs) if p else {},
        pos=exp.pos,
        layers=list(p.layers) if p else [],
        mode=p.mode if p else "none",
        dataset=str(exp.dataset.get("name")),
        seed=exp.seed,
        epochs=int(exp.train["epochs"]),
        imgsz=int(exp.train["imgsz"]),
        batch=int(exp.train["batch"]),
        train=str(exp.train.get("name", "")),
        params=count_params(model),
        versions=versions(),
        git_sha=git_sha(),
        started_at=now(),
    )


def record_measures(record: RunRecord, model: torch.nn.Module, measure: dict[str, Any]) -> None:
    """Parameters added by the placement, attention-inclusive GFLOPs, ultralytics' GFLOPs, latency."""
    from . import measure as m

    imgsz = int(measure["imgsz"])
    record.params_attn = m.params_attn(model)
    flops = m.count_flops(model, imgsz)
    record.gflops, record.gflops_imgsz = round(flops.gflops, 4), list(flops.imgsz)
    record.gflops_counter = f"{flops.counter} ({flops.version})"
    try:
        theirs = m.ultralytics_flops(model, imgsz)
        record.gflops_ultralytics = round(theirs.gflops, 4)
        record.gflops_ultralytics_counter = f"{theirs.counter} ({theirs.version})"
    except m.ZeroFlopsError as e:  # ultralytics' own figure is informative only
        log.warning("ultralytics get_flops gave no figure: %s", e)
    device, half = str(measure.get("device") or "cpu"), bool(measure.get("half"))
    repeats, warmup = int(measure.get("latency_repeats", 100)), int(measure.get("latency_warmup", 20))
    lat = m.measure_latency(model, imgsz, repeats=repeats, warmup=warmup, device=device, half=half)
    record.latency_ms = round(lat.latency_ms, 3)
    record.latency_p10_ms, record.latency_p90_ms = round(lat.latency_p10_ms, 3), round(lat.latency_p90_ms, 3)
    record.latency_count, record.latency_batch, record.latency_device = lat.count, lat.batch, lat.device
    record.latency_dtype, record.latency_threads = lat.dtype, lat.threads
    record.peak_memory_infer_mb = lat.peak_memory_mb
    batch = int(measure.get("throughput_batch") or 0)
    if batch > 0:
        ips = m.measure_throughput(model, imgsz, batch=batch, device=device, half=half)
        record.throughput_ips = round(ips, 2)


def record_ap_by_size(record: RunRecord, data_yaml: str, weights: Path, imgsz: int, out: Path) -> None:
    """COCO AP overall and by object size from the trained model's predictions on the val split."""
    from . import measure as m

    if not Path(data_yaml).is_file():
        log.warning("AP by size skipped: %s is not a local data YAML", data_yaml)
        return
    gt = m.yolo_to_coco_gt(data_yaml, "val")
    dets = m.predictions_to_coco(weights, gt, imgsz, out=out)
    for key, value in m.coco_ap_by_size(gt, dets).items():
        setattr(record, key, value)


def materialize_dataset(exp: Experiment) -> str:
    """The data YAML for ultralytics: a user/ultralytics YAML, or the embedded dataset (generated once)."""
    spec = exp.dataset
    if spec.get("path"):
        return str(datasets.resolve_data_yaml(spec["path"]))
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "path", "generator_seed")}
    seed = spec.get("generator_seed", 0)
    return str(datasets.make_dataset(str(spec["name"]), exp.data_dir, seed=seed, **kwargs))


def execute(exp: Experiment, cfg: DictConfig | None = None) -> RunRecord | None:
    """Run one experiment. Returns its record (None for ``action=inspect``).

    Bad input raises :class:`AblateError` before anything is written. Failures during training are
    caught and recorded as ``status=failed`` with the error and a ``traceback.txt``.
    """
    names = dataset_names(exp.dataset)
    d, model = composed_model(exp, len(names))
    if exp.action == "inspect":
        print(f"{exp.model} + attn={exp.attn} pos={exp.pos}: {count_params(model):,} parameters")
        print(inspect_table(d, model))
        return None

    key = run_key(exp.spec())
    directory = run_dir(exp.results_dir, key)
    previous = read_record(directory)
    if previous is not None and previous.status == "ok" and not exp.force:
        log.info("cached: %s already has an ok record (force=true re-runs)", directory)
        return previous

    record = base_record(exp, key, model, d)
    directory.mkdir(parents=True, exist_ok=True)
    write_yaml(
        d, directory / MODEL_YAML, header=f"ablate {exp.model} + attn={exp.attn} pos={exp.pos} key={key}"
    )
    if cfg is not None:
        (directory / CONFIG_YAML).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    else:
        (directory / CONFIG_YAML).write_text(yaml.safe_dump(exp.spec(), sort_keys=False))
    for stale in ("record.json", "traceback.txt"):
        (directory / stale).unlink(missing_ok=True)
    try:
        if exp.action == "train":
            data_yaml = materialize_dataset(exp)
            from .train import train_and_validate

            result = train_and_validate(
                directory / MODEL_YAML,
                data_yaml,
                exp.train,
                exp.seed,
                directory / ULTRALYTICS_DIR,
                exp.weights,
            )
            for k in ("map50", "map50_95", "precision", "recall", "train_seconds", "peak_memory_train_mb"):
                setattr(record, k, result[k])
            if exp.measure.get("coco_eval", True):
                best = Path(result["save_dir"]) / "weights" / "best.pt"
                record_ap_by_size(record, data_yaml, best, int(exp.train["imgsz"]), directory / PREDICTIONS)
        record_measures(record, model, exp.measure)
        record.status = "ok"
    except Exception as e:  # recorded, not raised: one failed run must not hide the others
        record.status, record.error = "failed", f"{type(e).__name__}: {e}"
        (directory / "traceback.txt").write_text(traceback.format_exc())
        log.error("run %s failed: %s", key, record.error)
    record.finished_at = now()
    write_record(directory, record)
    return record
