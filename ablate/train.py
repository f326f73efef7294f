"""Training and validation through ultralytics' own trainer and validator, made offline-safe."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# our names for ultralytics' final validation metrics
METRICS = {
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
    "map50": "metrics/mAP50(B)",
    "map50_95": "metrics/mAP50-95(B)",
}


def offline_safe() -> None:
    """Keep ultralytics from reaching the network: no hub sync, no own wandb callback, no AMP download.

    ``YOLO_OFFLINE`` stops ultralytics' online checks; its AMP self-check (CUDA only) would download a
    model, so a failure there must mean "skip the check", never "fail the run".
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.engine import trainer as trainer_module
    from ultralytics.utils import SETTINGS

    for key, value in (("sync", False), ("hub", False), ("wandb", False)):
        if key in SETTINGS and SETTINGS[key] != value:
            SETTINGS[key] = value  # in-memory only: the user's settings file is left alone

    original = getattr(trainer_module.check_amp, "__wrapped_by_ablate__", trainer_module.check_amp)

    def check_amp(model: Any) -> bool:
        try:
            return original(model)
        except Exception as e:  # an offline machine cannot fetch the AMP check model
            log.warning("AMP self-check skipped (%s); keeping amp=True", e)
            return True

    check_amp.__wrapped_by_ablate__ = original
    trainer_module.check_amp = check_amp


def train_args(train: dict[str, Any], seed: int, project: Path) -> dict[str, Any]:
    """ultralytics ``model.train`` keyword arguments from our ``train`` config group."""
    args = {k: v for k, v in train.items() if k not in ("name", "extra") and v is not None}
    args.update(train.get("extra") or {})
    args.update(
        seed=seed,
        deterministic=True,
        project=str(project.parent),
        name=project.name,
        exist_ok=True,
        plots=False,
        verbose=False,
    )
    return args


def train_and_validate(
    model_yaml: Path,
    data_yaml: str,
    train: dict[str, Any],
    seed: int,
    project: Path,
    weights: str | None = None,
) -> dict[str, Any]:
    """Train ``model_yaml`` on ``data_yaml`` with ultralytics; return final validation metrics and time."""
    from ultralytics import YOLO

    import modules  # noqa: F401  (module classes must resolve when ultralytics parses the YAML)

    offline_safe()
    model = YOLO(str(model_yaml), task="detect")
    if weights:
        model.load(weights)  # transfers every tensor whose name and shape match
    cuda = torch.cuda.is_available() and str(train.get("device")) not in ("cpu", "mps")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model.train(data=data_yaml, **train_args(train, seed, project))
    seconds = time.perf_counter() - start
    metrics = dict(model.trainer.metrics or {})
    out: dict[str, Any] = {k: _float(metrics.get(v)) for k, v in METRICS.items()}
    out["train_seconds"] = round(seconds, 2)
    out["save_dir"] = str(model.trainer.save_dir)
    out["peak_memory_train_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
    return out


def _float(v: Any) -> float | None:
    return None if v is None else float(v)
