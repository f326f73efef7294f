"""``python -m ablate.gpu_check`` without a GPU: the no-CUDA exit, the plan, the per-module bounds, the
autocast comparison (bfloat16 on the CPU), the step machinery, the training and latency lines, and the
wheels for the device machine."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

import modules
from ablate import gpu_check
from ablate.gpu import plan, precision, steps, wheels
from ablate.gpu.plan import LatencyCase, Line, Options

from .helpers import TINY, config

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = re.compile(r"^gpu-check: no CUDA device \(torch \S+, cuda available: False\); nothing run$")

# The bounds of the precision step, kept here as well: a change to ablate/gpu/precision.py's table is a
# change to this copy too (provisional, from CPU autocast; to be replaced by the first GPU measurement).
EXPECTED_BOUNDS = {
    "area": {"float16": 3e-3, "bfloat16": 2.5e-2, "half": 3e-3},
    "fla": {"float16": 3e-3, "bfloat16": 2.5e-2, "half": 3e-3},
    "halo": {"float16": 4e-3, "bfloat16": 2.5e-2, "half": 4e-3},
    "mhsa": {"float16": 3e-3, "bfloat16": 2.5e-2, "half": 3e-3},
    "rala": {"float16": 3e-3, "bfloat16": 2.5e-2, "half": 3e-3},
    "tssa": {"float16": 3e-3, "bfloat16": 2.5e-2, "half": 3e-3},
}


def gpu_check_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ablate.gpu_check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


# ---------------------------------------------------------------------------------------- entry point


def test_without_cuda_one_line_exit_2_and_nothing_written(tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    done = gpu_check_cli("--out", str(out), "--work", str(work), env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2, done.stderr[-2000:]
    assert NO_CUDA.match(done.stdout.strip()) and len(done.stdout.splitlines()) == 1, done.stdout
    assert f"torch {torch.__version__}," in done.stdout
    assert not out.exists() and not work.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--list", "--dry-run"])
def test_list_prints_the_plan_without_a_gpu(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main([flag]) == 0
    text = capsys.readouterr().out
    assert text.startswith("gpu-check plan: 4 steps, 21 checks, budget 420 s")
    for step in ("precision (limit 60 s)", "gpu-tests (limit 90 s)", "latency (limit 150 s)", "train (limit"):
        assert step in text
    for name in modules.attentions():
        assert f"precision {name}" in text and f"train {name}@neck" in text
        assert re.search(rf"^\s+{name}(\s+\d\.\de-0\d){{3}}$", text, re.M), name
    assert "python -m pytest -m gpu tests/test_modules_contract.py" in text
    assert "python -m ablate -m +attn=area,fla,halo,mhsa,rala,tssa +pos=neck" in text
    assert "python -m ablate +attn=area +pos=a2c2f" in text and "train.imgsz=320 " in text
    assert "latency torch fp16 b16" in text and "latency tensorrt" in text


def test_bad_step_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--only", "trian", "--list"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: step 'trian' is not valid; valid: precision, gpu-tests, latency, train"
    )


# ------------------------------------------------------------------------------------------------ plan


def test_plan_has_every_check_in_order() -> None:
    names = modules.attentions()
    steps = plan.build_plan(Options())
    assert [s.name for s in steps] == ["precision", "gpu-tests", "latency", "train"]
    by = {s.name: s.checks for s in steps}
    assert by["precision"] == tuple(f"precision {n}" for n in names)
    assert by["gpu-tests"] == ("gpu tests",)
    assert by["latency"] == (
        "latency torch fp32 b1",
        "latency torch fp16 b1",
        "latency torch fp32 b16",
        "latency torch fp16 b16",
        "latency tensorrt",
    )
    assert by["train"] == (
        "train base",
        "train baseline",
        *(f"train {n}@neck" for n in names),
        "train area@a2c2f",
    )
    assert plan.attention_names() == names  # conf/attn and the registry agree
    assert set(plan.LATENCY_MODULES) == set(names) - {"mhsa"}
    assert [s.name for s in plan.build_plan(Options(only=("train", "latency")))] == ["latency", "train"]
    with pytest.raises(ValueError, match="'gpu' is not valid; valid: precision, gpu-tests, latency, train"):
        plan.build_plan(Options(only=("gpu",)))


def test_step_limits_fit_the_budget_and_the_run_limit() -> None:
    """Every step fits the 8 minutes; the device run's limit leaves room for the install."""
    assert Options().budget_s <= 480 and all(limit <= 480 for limit in plan.LIMITS.values())
    assert Options().budget_s + 60 <= wheels.TIMEOUT_S <= 600


def test_training_commands_run_the_quick_protocol_on_the_gpu() -> None:
    cmds = plan.train_commands(Options(), ["area", "rala"], "/w/results", "/w/data")
    sweep, single = cmds["sweep"], cmds["a2c2f"]
    assert sweep[:3] == ["-m", "+attn=area,rala", "+pos=neck"]
    for args in (sweep, single):
        assert {"train.imgsz=320", "dataset.imgsz=320", "train.amp=true", "logger=none"} <= set(args)
        assert {"train.base.candidates=1", "results.dir=/w/results", "data.dir=/w/data"} <= set(args)
        assert not any(
            a.startswith(("train.init=", "train=")) for a in args
        )  # the quick protocol's warm start
    assert "train.device=null" in sweep and "hydra/launcher=joblib" in sweep
    assert "measure.latency.after_sweep=false" in sweep
    assert single[:2] == ["+attn=area", "+pos=a2c2f"] and "train.device=0" in single
    # the commands compose: Hydra accepts every override
    for args in (sweep, single):
        overrides = [a for a in args if a != "-m" and not a.startswith("hydra")]
        overrides = [a.split(",")[0] if a.startswith("+attn=") else a for a in overrides]
        cfg = config([a.replace("=null", "=cpu") for a in overrides], Path("/w/results"), Path("/w/data"))
        assert cfg.train.imgsz == 320 and cfg.train.base.candidates == 1 and cfg.train.init == "warm"


# ------------------------------------------------------------------------------------------ precision


def test_bounds_table_covers_every_module() -> None:
    assert precision.BOUNDS == EXPECTED_BOUNDS
    assert set(precision.BOUNDS) == set(modules.attentions())
    for bounds in precision.BOUNDS.values():
        assert set(bounds) == set(plan.DTYPES)
        assert 0 < bounds["float16"] < bounds["bfloat16"] < 0.1 and 0 < bounds["half"] < 0.1


class KnownError(torch.nn.Module):
    """The identity, except under autocast: then one element is off by ``error`` x max |x|."""

    def __init__(self, error: float) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        if torch.is_autocast_enabled(x.device.type):
            y.view(-1)[0] += self.error * x.abs().max()
        return y


@pytest.mark.parametrize(("error", "ok"), [(4e-4, True), (9e-4, True), (1.2e-3, False), (math.inf, False)])
def test_a_known_error_passes_or_fails_its_bound(error: float, ok: bool) -> None:
    bounds = {"fake": {"bfloat16": 1e-3}}
    x = torch.randn(2, 8, 5, 5)
    measured = precision.autocast_errors(KnownError(error), x, ["bfloat16"])["bfloat16"]
    if math.isfinite(error):
        assert measured == pytest.approx(error, rel=1e-4)
    else:
        assert measured == math.inf  # a non-finite output is an infinite error
    assert precision.within_bound("fake", "bfloat16", measured, bounds) is ok
    line = precision.precision_line("fake", {"bfloat16": measured}, bounds)
    assert line.status == ("ok" if ok else "fail")
    assert line.check == "precision fake" and ("<= 1.0e-03" if ok else "> 1.0e-03") in line.text
    assert not precision.within_bound("fake", "float16", 0.0, bounds)  # no bound: fails
    assert not precision.within_bound("fake", "bfloat16", math.nan, bounds)


def test_relative_error_is_relative_to_the_reference() -> None:
    ref = torch.tensor([10.0, -20.0, 5.0])
    assert precision.relative_error(ref + torch.tensor([0.0, 0.2, 0.0]), ref) == pytest.approx(0.01, rel=1e-5)
    assert precision.relative_error(ref.to(torch.bfloat16), ref) == 0.0
    assert precision.relative_error(torch.tensor([float("nan"), 0.0, 0.0]), ref) == math.inf


def test_precision_step_runs_bf16_autocast_on_the_cpu(tmp_path: Path) -> None:
    """The step's real code path on the CPU: every module, float16 and bfloat16 autocast and a float16
    module (the CPU supports all three), its lines written and read back, every error finite, non-zero and
    within its bound."""
    steps.run_precision(
        Options(device="cpu"), steps.emitter(tmp_path / "p.jsonl"), tmp_path, time.time() + 60
    )
    lines = steps.read_lines(tmp_path / "p.jsonl")
    assert [line.check for line in lines] == [f"precision {n}" for n in modules.attentions()]
    for line in lines:
        assert line.status == "ok", line.format()
        for dtype in plan.DTYPES:
            err = line.data[f"err_{dtype}"]
            assert 0 < err <= precision.BOUNDS[line.data["module"]][dtype]
        assert line.data["err_float16"] < line.data["err_bfloat16"]  # 3 more mantissa bits


# --------------------------------------------------------------------------------------- step plumbing


def test_pytest_counts_and_the_gpu_tests_line() -> None:
    out = "....\n= 4 passed, 1 skipped, 12 deselected in 4.20s ="
    counts = steps.pytest_counts(out)
    assert counts == {"passed": 4, "skipped": 1, "deselected": 12}
    assert steps.gpu_tests_line(0, counts, ["t.py"]).status == "fail"  # a skipped GPU test did not run
    assert steps.gpu_tests_line(0, {"passed": 6}, ["t.py"]).status == "ok"
    assert steps.gpu_tests_line(1, {"passed": 5, "failed": 1}, []).status == "fail"
    assert steps.gpu_tests_line(5, {}, []).status == "fail"  # no test ran
    assert "past the step's limit" in steps.gpu_tests_line(None, {"passed": 2}, []).text
    assert steps.pytest_counts("1 error in 0.1s") == {"errors": 1}


def test_missing_checks_say_why() -> None:
    step = plan.Step("s", "what", 10, ("a", "b", "c"))
    got = [Line("b", "ok", "")]
    assert [(m.check, m.status) for m in gpu_check.missing_lines(step, got, None, "", 10)] == [
        ("a", "fail"),
        ("c", "fail"),
    ]
    assert (
        gpu_check.missing_lines(step, got, None, "", 10)[0].text == "not run: step s ran past its 10 s limit"
    )
    assert "exited with status 1 (Boom)" in gpu_check.missing_lines(step, [], 1, "Boom", 10)[0].text
    assert gpu_check.missing_lines(step, [], 0, "", 10)[0].text == "not reported by step s"
    with pytest.raises(ValueError, match="status 'maybe' is not valid"):
        Line("x", "maybe", "")


def test_a_step_past_its_limit_is_stopped(tmp_path: Path) -> None:
    """The child is killed after its limit and grace; its checks are reported as not run."""
    step = plan.build_plan(Options(only=("train",)))[0]
    start = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        code, _ = gpu_check.run_child(step, Options(), tmp_path, 0.05, log, grace=0.2)
    assert code is None and time.monotonic() - start < 30
    missing = gpu_check.missing_lines(
        step, steps.read_lines(steps.lines_path(tmp_path, "train")), code, "", 0.05
    )
    assert len(missing) == len(step.checks) and all("ran past" in m.text for m in missing)
    assert (tmp_path / "pgids").read_text().split()  # the child's process group was recorded


def test_run_on_the_cpu_writes_lines_files_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orchestrator end to end with the one step that runs anywhere (the GPU tests, all skipped on a
    CPU: a failure) and one step with no budget left after it (every step needs 100 s, 100.5 s in all)."""
    out, work = tmp_path / "out", tmp_path / "work"
    steps_ = plan.build_plan(Options(only=("gpu-tests", "latency")))
    env = {"torch": torch.__version__, "cuda": None, "cudnn": None, "gpu": "cpu", "gpu_memory_gib": 0}
    env.update(driver=None, python="3", ultralytics="x")
    monkeypatch.setattr(gpu_check, "MIN_STEP_S", 100.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the GPU tests skip, also on a machine with CUDA
    code = gpu_check.run(steps_, Options(budget_s=100.5), out, work, env)
    text = capsys.readouterr().out.splitlines()
    assert code == 1
    assert text[0].startswith(f"gpu-check: torch {torch.__version__}")
    assert re.match(r"\[FAIL\] gpu tests +\d+ skipped \(exit 0\) \(tests/test_modules_contract.py\)", text[1])
    latency = [t for t in text if t.startswith("[FAIL] latency")]
    assert len(latency) == 5 and all("of the budget left" in t for t in latency)
    assert text[-1].startswith("gpu-check: 6 checks: 0 ok, 6 failed, 0 skipped in ")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 0, "fail": 6, "skip": 0} and summary["environment"]["gpu"] == "cpu"
    assert [s["step"] for s in summary["steps"]] == ["gpu-tests"]
    assert "test_finite_under_fp16_autocast_on_cuda" in (out / "gpu-check.log").read_text()


# ------------------------------------------------------------------------------------------- training


def write_run(results: Path, key: str, record: dict, losses: list[float] | None) -> None:
    run = results / "runs" / key
    (run / "ultralytics").mkdir(parents=True)
    (run / "record.json").write_text(json.dumps({"key": key, "action": "train", **record}))
    if losses is not None:
        with open(run / "ultralytics" / "results.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "  train/box_loss", "train/cls_loss", "metrics/mAP50(B)"])
            for i, loss in enumerate(losses):
                w.writerow([i + 1, loss, 1.0, 0.5])


def test_training_lines_from_the_records(tmp_path: Path) -> None:
    ok = {"status": "ok", "map50": 0.9, "map50_95": 0.7, "train_loss": 2.5, "train_seconds": 12.0}
    write_run(tmp_path, "b", {**ok, "role": "base", "attn": "none", "pos": "none"}, [3.0] * 4)
    write_run(tmp_path, "n", {**ok, "role": "run", "attn": "none", "pos": "none"}, [2.0] * 2)
    write_run(tmp_path, "r", {**ok, "attn": "rala", "pos": "neck"}, [2.0, float("nan")])
    nan_error = "NonFiniteLossError: non-finite training loss [nan, 1.0, 2.0] at epoch 2"
    failed = {"status": "failed", "error": nan_error, "attn": "tssa", "pos": "neck"}
    write_run(tmp_path, "t", failed, [2.0])
    write_run(tmp_path, "a", {**ok, "attn": "area", "pos": "a2c2f", "map50_95": None}, [2.0] * 2)
    write_run(tmp_path, "f", {**ok, "attn": "fla", "pos": "neck", "epochs": 9}, [2.0] * 9)  # other settings
    checks = ["train base", "train baseline", "train rala@neck", "train tssa@neck", "train fla@neck"]
    lines = steps.training_lines(tmp_path, [*checks, "train area@a2c2f"], Options(epochs=2, base_epochs=4))
    by = {line.check: line for line in lines}
    assert [line.check for line in lines] == [*checks, "train area@a2c2f"]
    assert by["train base"].status == "ok" and by["train baseline"].status == "ok"
    assert by["train baseline"].text.startswith("mAP50-95 0.700 (mAP50 0.900), final loss 2.500, 2 epochs")
    assert (
        by["train rala@neck"].status == "fail"
        and "non-finite or missing losses" in by["train rala@neck"].text
    )
    assert by["train tssa@neck"].text.startswith("NaN guard triggered: NonFiniteLossError")
    assert by["train tssa@neck"].data["nan_guard"] is True
    assert by["train fla@neck"].status == "fail" and by["train fla@neck"].text.startswith(
        "no record"
    )  # 9 epochs
    assert by["train area@a2c2f"].status == "fail" and "no mAP recorded" in by["train area@a2c2f"].text


def test_a_run_with_fewer_epochs_than_planned_fails(tmp_path: Path) -> None:
    write_run(tmp_path, "n", {"status": "ok", "attn": "none", "pos": "none", "map50_95": 0.5}, [2.0])
    (line,) = steps.training_lines(tmp_path, ["train baseline"], Options(epochs=3))
    assert line.status == "fail" and "1 epochs, 3 planned" in line.text


# -------------------------------------------------------------------------------------------- latency


def test_latency_step_times_on_the_cpu_and_skips_tensorrt(tmp_path: Path) -> None:
    """The step's code path on the CPU at 64 px: the measurement phase for the baseline and one module,
    one line per setting; TensorRT skipped with its reason."""
    opts = Options(device="cpu", latency_imgsz=64, rounds=1, passes=1, warmup=0, min_time_s=0)
    cases = [LatencyCase("torch", False, 1), LatencyCase("tensorrt", True, 1)]
    emit = steps.emitter(tmp_path / "l.jsonl")
    steps.run_latency(opts, emit, tmp_path, time.time() + 120, cases=cases, names=("tssa",))
    torch_line, trt = steps.read_lines(tmp_path / "l.jsonl")
    assert torch_line.check == "latency torch fp32 b1" and torch_line.status == "ok", torch_line.text
    assert re.match(r"baseline \d+\.\d\d ms \(.*\); tssa \d+\.\d\dx \(64x64, ", torch_line.text)
    assert {m["attn"] for m in torch_line.data["measured"]} == {"none", "tssa"}
    assert trt.check == "latency tensorrt"
    if not torch.cuda.is_available():
        assert (trt.status, trt.text) == (
            "skip",
            "skipped: tensorrt needs a CUDA device; this machine has none",
        )


def test_latency_architecture_is_the_one_a_run_records(tmp_path: Path) -> None:
    """The step composes the same architecture (key) that a profile run of the configuration records."""
    from ablate.experiment import experiment_from_config
    from ablate.run import execute

    overrides = ["+attn=tssa", "+pos=neck"]
    cfg = config([*TINY, *overrides, "action=profile", "train.imgsz=64"], tmp_path / "r", tmp_path / "d")
    record = execute(experiment_from_config(cfg), cfg)
    arch = steps.architecture(overrides, 64)
    assert record.arch_key == arch.key and arch.imgsz == (64, 64) and arch.nc == 5
    assert (arch.attn, arch.pos, arch.mode, arch.layers) == ("tssa", "neck", "after", (14, 17, 20))


# --------------------------------------------------------------------------------------------- wheels


def test_wheel_download_is_cp312_manylinux_without_dependencies(tmp_path: Path) -> None:
    args = wheels.download_args("orjson", "3.13.0", tmp_path)
    assert args[:3] == ["download", "--no-deps", "--only-binary=:all:"]
    assert args[args.index("--python-version") + 1] == "3.12" and args[-1] == "orjson==3.13.0"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--platform"] == list(wheels.PLATFORMS)
    assert wheels.build_args("antlr4-python3-runtime", "4.9.3", tmp_path)[:2] == ["wheel", "--no-deps"]


def test_pins_satisfy_the_project_requirements() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    assert str(requirements["ultralytics"].specifier) == f"=={wheels.PINS['ultralytics']}"
    named = [n for n in wheels.PINS if n in requirements]
    assert {"ultralytics", "hydra-core", "omegaconf", "pycocotools", "orjson"} <= set(named)
    for name in named:
        assert requirements[name].specifier.contains(wheels.PINS[name]), name
    assert "wandb" not in wheels.PINS and "torch" not in wheels.PINS  # not needed / the machine's own


def test_stale_and_missing_wheels(tmp_path: Path) -> None:
    pins = {"polars-runtime-32": "2.1.0", "orjson": "3.13.0"}
    keep = tmp_path / "polars_runtime_32-2.1.0-cp311-abi3-manylinux_2_17_x86_64.whl"
    other = tmp_path / "orjson-3.12.0-cp312-cp312-manylinux_2_17_x86_64.whl"
    unknown = tmp_path / "wandb-0.31.0-py3-none-any.whl"
    for p in (keep, other, unknown):
        p.write_bytes(b"")
    assert wheels.stale(tmp_path, pins) == [other, unknown]
    assert wheels.missing(tmp_path, pins) == ["orjson"]
    assert wheels.wheel_stem("Polars-Runtime.32") == "polars_runtime_32"


def test_device_command_fits_and_the_folder_is_ignored() -> None:
    command = wheels.device_command()
    assert len(command) <= 2000
    assert "--no-index --no-deps" in command and "--target /tmp/site .gpu-wheels/*.whl" in command
    assert command.endswith("python3 -m ablate.gpu_check --out $OUT --work /tmp/gpu-check")
    spec = wheels.run_spec()
    assert 'carry=[".gpu-wheels"]' in spec and f"timeout_s={wheels.TIMEOUT_S}" in spec
    ignored = subprocess.run(["git", "check-ignore", "-q", ".gpu-wheels/x.whl"], cwd=ROOT)
    assert ignored.returncode == 0


# ------------------------------------------------------------------------------- found for the GPU path


@pytest.mark.parametrize("offline", ["1", "0"])
def test_amp_self_check_does_not_try_the_network_offline(
    offline: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA, ultralytics' AMP self-check downloads a model; offline (ablate's default) the download is
    refused at once instead of waiting for a connection that cannot come (up to 30 s per training run)."""
    from ultralytics.engine import trainer as trainer_module
    from ultralytics.utils import downloads

    from ablate.train import offline_safe

    seen: list[object] = []

    def fake_check_amp(model: object) -> bool:  # where ultralytics' check downloads its model
        seen.append(downloads.safe_download)
        try:
            downloads.safe_download("https://example.invalid/yolo26n.pt", file="yolo26n.pt")
        except ConnectionError as e:
            seen.append(str(e))
        return True

    monkeypatch.setenv("YOLO_OFFLINE", offline)
    monkeypatch.setattr(trainer_module, "check_amp", fake_check_amp)
    monkeypatch.setattr(downloads, "safe_download", lambda url, **kw: seen.append(f"fetched {url}"))
    real = downloads.safe_download
    offline_safe()
    assert trainer_module.check_amp(None) is True
    if offline == "1":
        assert (
            seen[0] is not real
            and seen[1] == "offline (YOLO_OFFLINE): https://example.invalid/yolo26n.pt not downloaded"
        )
    else:
        assert seen == [real, "fetched https://example.invalid/yolo26n.pt"]
    assert downloads.safe_download is real  # put back after the check
