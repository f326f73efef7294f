"""Where ablate's own files live: the Hydra config directory and the file names every part shares.

One place for each name, imported by the CLI, the planner, the measurement phase and the tests alike
(nothing imports the CLI for a path)."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # conf/ beside ablate/ (the Hydra config root)
MODEL_YAML = "model.yaml"  # a run's composed model (runs/<key>/model.yaml), read by the measurement phase
