"""Shared helpers for tests: compose a Hydra config the way the CLI does."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ablate.cli import CONF_DIR

TINY = [
    "dataset.train_images=16",
    "dataset.val_images=8",
    "dataset.imgsz=96",
    "train.imgsz=96",
    "train.epochs=1",
    "train.batch=8",
    "train.workers=0",
    "logger=none",
]


def config(overrides: list[str], results: Path, data: Path) -> DictConfig:
    """The composed config for ``overrides`` with results/data under the given directories."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[*overrides, f"results.dir={results}", f"data.dir={data}"],
            return_hydra_config=False,
        )
