"""`python -m ablate`: bad input gives one line, exit 2, no traceback, nothing written; inspect works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ablate import overrides
from ablate.cli import group_options, pinned_argv, read_command
from ablate.sweepdir import read_outcomes


def ablate(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    cmd = [
        sys.executable,
        "-m",
        "ablate",
        *args,
        f"results.dir={tmp_path / 'results'}",
        f"data.dir={tmp_path / 'data'}",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


def bad_dataset_yamls(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    no_names = tmp_path / "no_names.yaml"
    no_names.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "imgs", "val": "imgs"}))
    no_split = tmp_path / "no_split.yaml"
    no_split.write_text(
        yaml.safe_dump({"path": str(tmp_path), "train": "imgs", "val": "missing", "names": ["a"]})
    )
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a checkpoint")
    return {"no_names": no_names, "no_split": no_split, "garbage": garbage, "dir": tmp_path / "imgs"}


CASES = {
    "unknown attn": (
        ["+attn=nope"],
        rf"attn='nope' is not valid; valid: {', '.join(group_options('attn'))}$",
    ),
    "unknown pos": (["+attn=rala", "+pos=middle"], r"pos='middle' is not valid; valid: a2c2f, backbone"),
    "unknown attn in a sweep": (["+attn=rala,nope"], r"attn='nope' is not valid; valid: area, fla"),
    "unknown preset": (["experiment=paper"], r"experiment='paper' is not valid; valid: attn_zoo, demo"),
    "unknown model": (["model=yolo99"], r"model='yolo99' is not valid; valid: yolo11l"),
    "unknown dataset": (["dataset=imagenet"], r"dataset='imagenet' is not valid; valid: VOC"),
    "preset not in family": (
        ["model=yolov8n", "+attn=rala", "+pos=a2c2f"],
        r"pos='a2c2f' is not defined for yolov8n",
    ),
    "index names Detect": (
        ["+attn=rala", "+pos.layers=[21]"],
        r"layer index 21 is the Detect head of yolo12n",
    ),
    "index out of range": (["+attn=rala", "+pos.layers=[40]"], r"layer index 40 is out of range"),
    "negative index": (["+attn=rala", "+pos.layers=[-2]"], r"layer index -2 is out of range"),
    "replace without attention": (
        ["+attn=rala", "+pos=custom", "pos.layers=[14]", "pos.mode=replace"],
        r"layer 14 of yolo12n \(A2C2f\) holds no attention; layers with attention: 6, 8",
    ),
    "heads do not divide": (
        ["+attn=rala", "attn.params.num_heads=3"],
        r"num_heads=3 does not divide channels=64",
    ),
    "bad hyperparameter": (["+attn=halo", "attn.params.block_size=0"], r"block_size"),
    "missing dataset file": (["dataset.path=/no/such/data.yaml"], r"/no/such/data.yaml"),
    "dataset without names": (["dataset.path={no_names}"], r"names"),
    "dataset split missing": (["dataset.path={no_split}"], r"missing"),
    "image size zero": (["train.imgsz=0"], r"train.imgsz=0 is not valid"),
    "bad action": (["action=fly"], r"action='fly' is not valid; valid: train, profile, inspect"),
    "missing weights": (["model.weights=/no/such/w.pt"], r"model.weights='/no/such/w.pt': no such file"),
    "weights directory": (["model.weights={dir}"], r"model.weights='.*imgs' is a directory"),
    "weights not a checkpoint": (
        ["model.weights={garbage}"],
        r"garbage.pt' is not a checkpoint torch can read",
    ),
    "weights of another scale": (
        ["+attn=rala", "model.weights={yolo12s}"],
        r"cannot be placed in yolo12n, e\.g\. model\.0\.conv\.weight: shape \(32, 3, 3, 3\)",
    ),
    "device this machine lacks": (
        ["train.device=cuda:7"],
        r"train.device='cuda:7' is not available on this machine",
    ),
    "latency device this machine lacks": (
        ["measure.latency.device=7"],
        r"measure.latency.device=7 is not available",
    ),
    "unknown latency backend": (
        ["measure.latency.backends=[torch,onnx]"],
        r"measure backend 'onnx' is not valid; valid: torch, onnxruntime, tensorrt",
    ),
    "bad strictness": (
        ["model.weights_strict=maybe"],
        r"model.weights_strict='maybe' is not valid; valid: true",
    ),
}


@pytest.fixture(scope="module")
def yolo12s_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ablate.measure.model import base_model_yaml, build_model

    path = tmp_path_factory.mktemp("ckpt") / "yolo12s.pt"
    torch.save(build_model(base_model_yaml("yolo12s", 5)).state_dict(), path)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_nothing_written(case: str, tmp_path: Path, yolo12s_state: Path) -> None:
    args, pattern = CASES[case]
    paths = {**bad_dataset_yamls(tmp_path), "yolo12s": yolo12s_state}
    args = [a.format(**paths) for a in args]
    out = ablate(args, tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, out.stderr[-2000:]
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").iterdir())


def test_inspect_prints_marked_layer_table_and_trains_nothing(tmp_path: Path) -> None:
    out = ablate(["action=inspect", "+attn=rala", "+pos=neck"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    table = [line for line in out.stdout.splitlines() if "inserted" in line]
    assert len(table) == 3 and all("AttentionResidual" in line for line in table)
    assert "idx" in out.stdout and "stride" in out.stdout
    assert not (tmp_path / "results" / "runs").exists()
    assert not (tmp_path / "data").exists(), "inspect must not generate data"


def test_attn_alone_uses_its_default_placement(tmp_path: Path) -> None:
    out = ablate(["action=inspect", "+attn=mhsa"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pos=p5" in out.stdout
    assert sum("inserted" in line for line in out.stdout.splitlines()) == 1


def test_inspect_with_weights_prints_the_transfer_line(tmp_path: Path) -> None:
    from ablate.measure.model import base_model_yaml, build_model

    ckpt = tmp_path / "base.pt"
    torch.save({"model": build_model(base_model_yaml("yolo12n", 5)).half()}, ckpt)
    out = ablate(["action=inspect", "+attn=rala", "+pos=a2c2f", f"model.weights={ckpt}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("weights: transferred 547/691 tensors of the base checkpoint ")
    assert line.endswith("; skipped 144 (attention replaced by rala)")
    assert not (tmp_path / "results" / "runs").exists()


def test_the_cli_reads_its_command_line_before_hydra_starts(tmp_path: Path) -> None:
    results = tmp_path / "results"
    sweep = read_command(["+attn=rala,tssa", f"results.dir={results}", "-m"])
    assert sweep is not None and sweep.multirun and sweep.plan is None
    assert sweep.sweep_dir is not None and sweep.sweep_dir.parent == results / "hydra"
    assert sweep.sweep_dir.name.startswith("multirun-")
    single = read_command(["+attn=rala", f"results.dir={results}"])
    assert single is not None and not single.multirun and single.sweep_dir is None and single.plan is None
    dry = read_command(["+attn=rala", f"results.dir={results}", f"data.dir={tmp_path}", "dry_run=true"])
    assert dry is not None and dry.plan is not None  # the run and its warm start's base runs, no baseline
    assert [j.role for j in dry.plan.jobs] == ["base", "base", "job"]
    # Hydra alone: its flags, a sweep without -m, what does not compose
    assert read_command(["--cfg", "job"]) is None
    assert read_command(["seed=0,1", "dry_run=true"]) is None
    assert read_command(["no.such.key=1"]) is None
    assert not (results / "hydra").exists()  # reading the command line writes nothing


def test_the_sweep_dir_is_pinned_beside_the_other_overrides() -> None:
    odd = Path("/tmp/a b/r,1/hydra/multirun-x")
    argv = pinned_argv(["+attn=rala", "hydra.sweep.dir=elsewhere", "seed=0,1", "-m"], odd)
    assert argv[:2] == ["+attn=rala", "seed=0,1"] and argv[-1] == "-m"
    assert overrides.key(argv[2]) == "hydra.sweep.dir" and overrides.values(argv[2]) == [str(odd)]
    assert pinned_argv(["-m"], odd)[0] == "-m"


def test_a_failed_job_makes_the_multirun_exit_1(tmp_path: Path) -> None:
    """The CLI fixes the sweep directory (here under a path Hydra must read quoted) and reads the jobs'
    outcomes back from it for its exit status."""
    results = tmp_path / "my results, 1"
    args = [
        "action=inspect",
        "+attn=rala",
        "+pos=p5",
        "attn.params.head_dim=32,-1",
        "dataset=shapes",
        "seed=0",
    ]
    args += ["baseline=false", f"data.dir={tmp_path / 'data'}"]
    args += ["logger=none", "measure.latency.after_sweep=false", "hydra.callbacks.sweep_summary.table=false"]
    cmd = [sys.executable, "-m", "ablate", *args, f"results.dir={overrides.quote(str(results))}", "-m"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    (sweep,) = (results / "hydra").glob("multirun-*")
    assert sorted(o.status for o in read_outcomes(sweep).outcomes) == ["failed", "ok"]
    assert "2 job(s): 1 ok, 0 cached, 1 failed" in proc.stdout
