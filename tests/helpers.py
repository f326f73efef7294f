"""Shared helpers for tests: compose a Hydra config the way the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ablate.paths import CONF_DIR

# a seconds-long run: 16 + 8 images, one epoch; from scratch (tests of the warm start add their own init)
SMALL = [
    "dataset.train_images=16",
    "dataset.val_images=8",
    "dataset.imgsz=96",
    "train.imgsz=96",
    "train.epochs=1",
    "train.batch=8",
    "train.workers=0",
    "logger=none",
    "measure.latency.rounds=2",
    "measure.latency.passes=2",
    "measure.latency.warmup=1",
    "measure.latency.min_time_s=0",
    "measure.latency.force_load=true",  # the test machine is busy with the tests themselves
]
TINY = [*SMALL, "train.init=scratch"]


def config(overrides: list[str], results: Path, data: Path) -> DictConfig:
    """The composed config for ``overrides`` with results/data under the given directories."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[*overrides, f"results.dir={results}", f"data.dir={data}"],
            return_hydra_config=False,
        )


def depthwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Zero-padded 'same' depthwise convolution written as a sum of shifted maps (C×H×W)."""
    c, h, w = x.shape
    k = weight.shape[-1]
    r = k // 2
    padded = torch.zeros(c, h + 2 * r, w + 2 * r, dtype=x.dtype)
    padded[:, r : r + h, r : r + w] = x
    out = bias[:, None, None].expand(c, h, w).clone()
    for dy in range(k):
        for dx in range(k):
            out += weight[:, 0, dy, dx][:, None, None] * padded[:, dy : dy + h, dx : dx + w]
    return out


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip a test whose tool (a SLURM cluster, pdflatex) is missing here; under ``CI=true`` fail instead.

    The tools are in the distribution and ``.ci/run`` installs them, so in CI a missing tool is a failed
    install, and a green run must mean the test ran.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}: .ci/run installs it; a skip here would hide the test")
    pytest.skip(reason)
