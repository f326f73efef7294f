"""The measurement phase: architectures from records, side-by-side timing with the baseline, storage and
reuse, ONNX Runtime, unavailable backends, the table's latency column, ``python -m ablate.measure``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ablate.errors import AblateError
from ablate.experiment import experiment_from_config
from ablate.measure import phase, store
from ablate.measure.device import check_device, is_auto, is_ddp, torch_device
from ablate.records import RunRecord
from ablate.run import execute

from .helpers import TINY, config

ROOT = Path(__file__).resolve().parents[1]
# the test machine is not quiet: timed anyway (the load check has its own tests, test_measure_fake.py)
FAST = {"rounds": 3, "passes": 2, "warmup": 1, "threads": 1, "min_time_s": 0.0, "force_load": True}


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, RunRecord]]:
    """Profile records (no training) of the baseline, rala@neck and halo@neck on two datasets."""
    results = tmp_path_factory.mktemp("results")
    data = tmp_path_factory.mktemp("data")
    out = {}
    for name, extra in {
        "baseline": [],
        "rala": ["+attn=rala", "+pos=neck"],
        "halo": ["+attn=halo", "+pos=neck"],
        "rala_small": ["+attn=rala", "+pos=neck", "dataset=shapes_small"],
    }.items():
        cfg = config([*TINY, "action=profile", *extra], results, data)
        record = execute(experiment_from_config(cfg), cfg)
        assert record is not None and record.status == "ok"
        out[name] = record
    return results, out


def records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*/record.json"))]


def test_architectures_come_from_the_records(profiled: tuple[Path, dict[str, RunRecord]]) -> None:
    results, recs = profiled
    archs = phase.architectures(records(results), results)
    # shapes and shapes_small have the same classes: rala@neck is one architecture on both
    assert recs["rala"].arch_key == recs["rala_small"].arch_key
    assert {a.key for a in archs} == {r.arch_key for r in recs.values()} and len(archs) == 3
    by_key = {a.key: a for a in archs}
    rala = by_key[recs["rala"].arch_key]
    assert rala.label == "yolo12n rala@neck" and rala.imgsz == (96, 96) and rala.layers == (14, 17, 20)
    # the baseline an architecture is compared with is the baseline run's architecture
    assert rala.baseline().key == recs["baseline"].arch_key
    assert phase.with_baselines([rala])[0].key == recs["baseline"].arch_key


def test_phase_measures_side_by_side_and_reuses(profiled: tuple[Path, dict[str, RunRecord]]) -> None:
    results, recs = profiled
    archs = phase.architectures(records(results), results)
    settings = phase.Settings(**FAST)
    first = phase.measure(archs, settings, results)
    assert first.skipped is None and len(first.measured) == 3
    by_attn = {m["attn"]: m for m in first.measured}
    # the baseline is its own reference in every round: exactly 1 (the figures themselves: test_measure_fake)
    base = by_attn["none"]
    assert (base["latency_ratio"], base["latency_ratio_p10"], base["latency_ratio_p90"]) == (1.0, 1.0, 1.0)
    assert len({m["phase_id"] for m in first.measured}) == 1  # one phase: what a table pairs them by
    for m in first.measured:
        assert m["latency_count"] == FAST["rounds"] * FAST["passes"] and m["rounds"] == FAST["rounds"]
        assert (
            m["latency_threads"] == 1 and m["latency_backend"] == "torch" and m["latency_dtype"] == "float32"
        )
        assert m["baseline_arch_key"] == recs["baseline"].arch_key
        assert m["latency_cores"] == len(os.sched_getaffinity(0)) and m["load_forced"] == m["latency_loaded"]
    assert 0 < first.timed_s < first.wall_s
    store = results / "measures" / settings.key
    assert {p.stem for p in store.glob("*.json")} == {*(m["arch_key"] for m in first.measured), "settings"}
    again = phase.measure(archs, settings, results)  # nothing changed: reused, nothing timed
    assert again.measured == [] and again.reused == 3
    other = phase.Settings(**{**FAST, "passes": 3})  # other settings: another key, measured anew
    assert other.key != settings.key
    # one new architecture: measured together with its baseline, in the same rounds, and the baseline's
    # other variant with them (a baseline and its variants always come from one phase)
    (store / f"{recs['halo'].arch_key}.json").unlink()
    partial = phase.measure(archs, settings, results)
    assert {m["attn"] for m in partial.measured} == {"halo", "none", "rala"}
    assert partial.reused == 0 and partial.retimed == 1


def test_onnxruntime_backend_times_the_exported_model(profiled: tuple[Path, dict[str, RunRecord]]) -> None:
    results, recs = profiled
    archs = [a for a in phase.architectures(records(results), results) if a.attn in ("none", "halo")]
    result = phase.measure(archs, phase.Settings(backend="onnxruntime", **FAST), results)
    assert result.skipped is None and {m["attn"] for m in result.measured} == {"none", "halo"}
    assert all(m["latency_version"].startswith("onnxruntime") for m in result.measured)
    assert (results / "measures" / "export" / f"{recs['halo'].arch_key}-b1.onnx").is_file()


def test_unavailable_backend_is_skipped_with_its_reason(profiled: tuple[Path, dict[str, RunRecord]]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: tensorrt may be available")
    results, _ = profiled
    (result,) = phase.run_phase(results, [phase.Settings(backend="tensorrt", **FAST)])
    assert result.skipped == "tensorrt needs a CUDA device; this machine has none"
    assert phase.format_phase(result) == f"latency on tensorrt: skipped ({result.skipped})"


def test_bad_settings_name_the_value() -> None:
    with pytest.raises(ValueError, match="'onnx' is not valid; valid: torch, onnxruntime, tensorrt"):
        phase.Settings(backend="onnx").check()
    with pytest.raises(ValueError, match="half=true needs a CUDA device"):
        phase.Settings(half=True).check()


def test_device_strings_are_read_in_one_place() -> None:
    """ultralytics' spellings as torch names them, as DDP reads them, and checked against this machine."""
    assert torch_device("0") == "cuda:0" and torch_device(None) == "cpu" and torch_device("") == "cpu"
    assert torch_device([1, 2]) == "cuda:1" and torch_device("cuda:3") == "cuda:3"
    assert torch_device("mps") == "mps" and torch_device(" CPU ") == "cpu"
    assert is_ddp("0,1") and is_ddp([0, 1]) and is_ddp("cuda:0, cuda:1")
    assert not any(is_ddp(v) for v in ("0", 0, "cpu", None, [0], ""))
    assert is_auto(None) and is_auto("") and is_auto("auto") and not is_auto(0) and not is_auto("cpu")
    check_device("train.device", None)  # ultralytics chooses
    check_device("train.device", "cpu")
    gpus = torch.cuda.device_count()
    with pytest.raises(AblateError, match=rf"train.device='cuda:{gpus}' is not available on this machine"):
        check_device("train.device", f"cuda:{gpus}")
    with pytest.raises(AblateError, match=r"train.device='auto' is not available"):  # ultralytics has no auto
        check_device("train.device", "auto")


def test_table_reads_the_phase(profiled: tuple[Path, dict[str, RunRecord]]) -> None:
    from ablate.report import load

    results, recs = profiled
    phase.run_phase(results, [phase.Settings(**FAST)])
    runs = load.with_latency(load.runs_frame(load.load_records(results).records), results)
    stored = {m["arch_key"]: m for m in store.read_measures(results) if m["latency_backend"] == "torch"}
    for row in runs.to_dict("records"):
        assert row["latency_ms"] == stored[row["arch_key"]]["latency_ms"]
    assert (results / "measures" / "latency.csv").is_file()


def test_cli_measures_and_rejects_bad_input(
    profiled: tuple[Path, dict[str, RunRecord]], tmp_path: Path
) -> None:
    results, _ = profiled
    fast = [
        "--rounds",
        "2",
        "--passes",
        "2",
        "--warmup",
        "1",
        "--threads",
        "1",
        "--min-time",
        "0",
        "--force-load",
    ]
    cmd = [sys.executable, "-m", "ablate.measure", "--results", str(results), *fast]
    proc = subprocess.run([*cmd, "--where", "attn=rala", "--force"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "yolo12n rala@neck" in proc.stdout and "yolo12n baseline" in proc.stdout  # with its baseline
    assert "yolo12n halo@neck" not in proc.stdout and "x baseline" in proc.stdout
    bad = subprocess.run([*cmd, "--backend", "onnx"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: measure backend 'onnx' is not valid")
    assert "Traceback" not in bad.stderr
    empty = [sys.executable, "-m", "ablate.measure", "--results", str(tmp_path / "none")]
    proc = subprocess.run(empty, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "no ok run with an architecture" in proc.stderr
    assert not (tmp_path / "none").exists()  # nothing written


def test_profile_times_the_profiled_run_beside_its_baseline(
    profiled: tuple[Path, dict[str, RunRecord]], tmp_path: Path
) -> None:
    """``action=profile``'s latency (the CLI prints it): the phase for that run's architecture and its
    baseline's, under the run's ``measure.latency`` settings."""
    results, recs = profiled
    for name in ("halo", "baseline"):  # a results root of their own: the other tests' phases stay as they are
        shutil.copytree(results / "runs" / recs[name].key, tmp_path / "runs" / recs[name].key)
    (result,) = phase.profile(recs["halo"], {"backends": ["torch"], **FAST}, None, tmp_path)
    assert result.settings.device == "cpu" and result.skipped is None and len(result.measured) == 2
    by_attn = {m["attn"]: m for m in result.measured}
    assert set(by_attn) == {"none", "halo"} and by_attn["halo"]["arch_key"] == recs["halo"].arch_key
    assert by_attn["halo"]["baseline_arch_key"] == by_attn["none"]["arch_key"] == recs["baseline"].arch_key
    assert (tmp_path / "measures" / "latency.csv").is_file()
