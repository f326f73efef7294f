"""Where ablate's own files live: the Hydra config directory, and the resolver its directories use.

One place for each, imported by the CLI, the planner, the measurement phase and the tests alike (nothing
imports the CLI for a path). The file names of a sweep directory are :mod:`ablate.sweepdir`'s; those of a
results root (``runs/<key>/record.json``) :mod:`ablate.records`'.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # conf/ beside ablate/ (the Hydra config root)
MODEL_YAML = "model.yaml"  # a run's composed model (runs/<key>/model.yaml), read by the measurement phase


def _uid() -> str:
    return os.urandom(3).hex()


# ${ablate_uid:} in hydra.{run,sweep}.dir (conf/config.yaml): cached per config, so every job of a sweep
# sees the same value; registered wherever the config can be composed (everything that does imports this)
OmegaConf.register_new_resolver("ablate_uid", _uid, use_cache=True, replace=True)
