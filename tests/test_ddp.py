"""Multi-GPU (DDP) readiness without GPUs: what ultralytics hands its DDP workers must work there."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import torch

from ablate.measure.device import is_ddp

from .helpers import TINY, config


def test_is_ddp() -> None:
    assert is_ddp("0,1") and is_ddp([0, 1]) and is_ddp("0, 1, 2")
    assert not is_ddp("0") and not is_ddp(0) and not is_ddp("cpu") and not is_ddp(None) and not is_ddp([0])


def test_pickled_model_rebuilds_in_a_fresh_worker(tmp_path: Path) -> None:
    """ultralytics' DDP file cloudpickles the model; a fresh interpreter that never imported ``modules``
    must unpickle and run it, and end up with our names registered for its YAML parser."""
    from ablate.experiment import experiment_from_config
    from ablate.run import composed_model

    cfg = config([*TINY, "+attn=rala", "+pos=neck"], tmp_path / "r", tmp_path / "d")
    _, model = composed_model(experiment_from_config(cfg), 5)
    path = tmp_path / "state.pt"
    torch.save({"model": model}, path, pickle_module=cloudpickle)
    script = textwrap.dedent(
        f"""
        import sys, torch
        assert "modules" not in sys.modules
        from ultralytics.utils.patches import torch_load
        model = torch_load({str(path)!r}, map_location="cpu")["model"]
        out = model.eval()(torch.zeros(1, 3, 64, 64))
        import ultralytics.nn.tasks as tasks
        names = hasattr(tasks, "RALA"), hasattr(tasks, "AttentionResidual")
        print(type(out).__name__, "modules" in sys.modules, *names)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-3:] == ["True", "True", "True"]
