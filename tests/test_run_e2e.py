"""One run end to end on the embedded data (1 epoch, 96 px): records, artefacts, reload, reproducibility."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ablate.experiment import experiment_from_config
from ablate.records import RunRecord
from ablate.run import CONFIG_YAML, MODEL_YAML, ULTRALYTICS_DIR, execute

from .helpers import TINY, config

REQUIRED = [
    "key",
    "status",
    "error",
    "model",
    "scale",
    "attn",
    "attn_params",
    "pos",
    "layers",
    "mode",
    "dataset",
    "seed",
    "epochs",
    "imgsz",
    "batch",
    "params",
    "map50",
    "map50_95",
    "precision",
    "recall",
    "train_seconds",
    "versions",
    "git_sha",
    "started_at",
    "finished_at",
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("results"), tmp_path_factory.mktemp("data")


def run(overrides: list[str], dirs: tuple[Path, Path]) -> tuple[RunRecord, Path]:
    results, data = dirs
    cfg = config([*TINY, *overrides], results, data)
    record = execute(experiment_from_config(cfg), cfg)
    return record, results / "runs" / record.key


def first_epoch(run_dir: Path) -> dict[str, float]:
    with open(run_dir / ULTRALYTICS_DIR / "results.csv") as f:
        row = next(csv.DictReader(f))
    return {k.strip(): float(v) for k, v in row.items() if k.strip().startswith(("train/", "metrics/"))}


@pytest.fixture(scope="module")
def runs(dirs: tuple[Path, Path]) -> dict[str, tuple[RunRecord, Path]]:
    return {
        "baseline": run([], dirs),
        "inserted": run(["+attn=rala", "+pos=p5"], dirs),
        "replaced": run(["+attn=tssa", "+pos=a2c2f"], dirs),
    }


@pytest.mark.parametrize("kind", ["baseline", "inserted", "replaced"])
def test_run_leaves_a_complete_record(runs: dict, kind: str) -> None:
    record, run_dir = runs[kind]
    data = json.loads((run_dir / "record.json").read_text())
    assert [k for k in REQUIRED if k not in data] == []
    assert data["status"] == "ok", data["error"]
    assert data["key"] == run_dir.name
    assert data["params"] > 2_000_000
    for k in ("map50", "map50_95", "precision", "recall"):
        assert isinstance(data[k], float) and 0.0 <= data[k] <= 1.0
    assert data["train_seconds"] > 0
    assert {"python", "torch", "ultralytics", "ablate"} <= set(data["versions"])
    assert (run_dir / MODEL_YAML).is_file() and (run_dir / CONFIG_YAML).is_file()
    assert (run_dir / ULTRALYTICS_DIR / "weights" / "best.pt").is_file()
    assert (run_dir / ULTRALYTICS_DIR / "results.csv").is_file()
    assert data["gflops"] > data["gflops_ultralytics"] * 0.9 > 0
    assert len(data["arch_key"]) == 16 and "latency_ms" not in data  # training jobs time no latency
    assert (data["params_attn"] > 0) == (kind != "baseline")
    assert (run_dir / "predictions.json").is_file()
    assert data["map50_95_coco"] is not None and 0.0 <= data["map50_95_coco"] <= 1.0
    expected = {
        "baseline": ("none", "none", []),
        "inserted": ("rala", "after", [20]),
        "replaced": ("tssa", "replace", [6, 8]),
    }
    assert (data["attn"], data["mode"], data["layers"]) == expected[kind]


def test_runs_have_distinct_keys(runs: dict) -> None:
    assert len({r.key for r, _ in runs.values()}) == 3


def test_finished_run_is_cached(runs: dict, dirs: tuple[Path, Path]) -> None:
    record, run_dir = runs["inserted"]
    mtime = (run_dir / "record.json").stat().st_mtime_ns
    again, _ = run(["+attn=rala", "+pos=p5"], dirs)
    assert again.key == record.key and again.finished_at == record.finished_at
    assert (run_dir / "record.json").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("safe", [False, True], ids=["default-load", "safe-load"])
@pytest.mark.parametrize("kind", ["inserted", "replaced"])
def test_fresh_process_rebuilds_yaml_and_loads_checkpoint(runs: dict, kind: str, safe: bool) -> None:
    """A new interpreter that never ran ablate's composition: `import modules` is all it needs, also under
    ultralytics' restricted loading (ULTRALYTICS_SAFE_LOAD=1: weights-only unpickling of allow-listed
    classes)."""
    record, run_dir = runs[kind]
    probe = record.layers[0] + (1 if kind == "inserted" else 0)  # the inserted layer follows its base index
    script = textwrap.dedent(
        f"""
        import numpy as np
        import modules  # noqa: F401
        from ultralytics import YOLO
        m = YOLO({str(run_dir / MODEL_YAML)!r})
        print("params", sum(p.numel() for p in m.model.parameters()))
        best = YOLO({str(run_dir / ULTRALYTICS_DIR / "weights" / "best.pt")!r})
        res = best.predict(np.zeros((96, 96, 3), dtype=np.uint8), imgsz=96, verbose=False)
        print("predicted", len(res), type(best.model.model[{probe}]).__name__)
        """
    )
    env = {**os.environ, "ULTRALYTICS_SAFE_LOAD": "1" if safe else "0"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(
        line.split(" ", 1) for line in out.stdout.splitlines() if line.startswith(("params", "predicted"))
    )
    assert int(lines["params"]) == record.params
    assert lines["predicted"] == ("1 AttentionResidual" if kind == "inserted" else "1 A2C2fSwap")


def test_same_seed_reproduces_and_other_seed_differs(
    runs: dict, tmp_path: Path, dirs: tuple[Path, Path]
) -> None:
    _, base_dir = runs["baseline"]
    data = dirs[1]
    cfg = config([*TINY], tmp_path / "again", data)
    again = execute(experiment_from_config(cfg), cfg)
    again_dir = tmp_path / "again" / "runs" / again.key
    assert first_epoch(again_dir) == first_epoch(base_dir)
    assert again.map50_95 == runs["baseline"][0].map50_95

    cfg = config([*TINY, "seed=1"], tmp_path / "other", data)
    other = execute(experiment_from_config(cfg), cfg)
    other_losses = first_epoch(tmp_path / "other" / "runs" / other.key)
    base_losses = first_epoch(base_dir)
    assert other.key != again.key
    assert other_losses["train/box_loss"] != base_losses["train/box_loss"]


def test_weights_transfer_from_a_local_checkpoint(runs: dict, dirs: tuple[Path, Path]) -> None:
    """model.weights=PATH starts an attention run from the baseline's trained weights (no download), every
    base tensor placed where its layer now lives, and the record says so."""
    _, base_dir = runs["baseline"]
    best = base_dir / ULTRALYTICS_DIR / "weights" / "best.pt"
    record, run_dir = run(["+attn=fla", "+pos=p4", f"model.weights={best}"], dirs)
    assert record.status == "ok", record.error
    assert record.key not in {r.key for r, _ in runs.values()}
    data = json.loads((run_dir / "record.json").read_text())
    assert data["weights_transferred"] == data["weights_total"] == 691 and data["weights_skipped"] == []
    assert data["weights_path"] == str(best.resolve())
    assert data["weights_sha256"] == hashlib.sha256(best.read_bytes()).hexdigest()


def test_failed_training_is_recorded_not_raised(dirs: tuple[Path, Path]) -> None:
    record, run_dir = run(["+attn=rala", "+pos=p3", "+train.extra.optimizer=NoSuchOptimizer"], dirs)
    assert record.status == "failed"
    assert "NoSuchOptimizer" in record.error
    assert (run_dir / "traceback.txt").read_text().startswith("Traceback")
    assert json.loads((run_dir / "record.json").read_text())["status"] == "failed"


def test_profile_measures_without_training(dirs: tuple[Path, Path], runs: dict) -> None:
    record, run_dir = run(["+attn=rala", "+pos=neck", "action=profile"], dirs)
    data = json.loads((run_dir / "record.json").read_text())
    assert data["status"] == "ok" and data["action"] == "profile"
    assert data["map50"] is None and data["train_seconds"] is None and data["ap_small"] is None
    assert data["gflops"] > 0 and data["arch_key"] and data["params_attn"] > 0
    assert data["params"] == data["params_attn"] + runs["baseline"][0].params
    assert not (run_dir / ULTRALYTICS_DIR).exists()
    assert record.key != runs["inserted"][0].key
