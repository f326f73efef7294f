"""The steps of ``python -m ablate.gpu_check``, each run in a child process (``--step NAME``).

A step appends one JSON line per finished check to ``<work>/lines/<step>.jsonl`` as soon as it has it, so
what it finished survives a time-out or a crash; its own output goes to the check's log. Each step reuses
the project's pieces: the module registry (precision), pytest (the GPU-only tests), the measurement phase
(:func:`ablate.measure.phase.measure`) and the Hydra CLI with the quick protocol (training).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .plan import (
    DTYPES,
    LATENCY_MODULES,
    ROOT,
    LatencyCase,
    Line,
    Options,
    attention_names,
    gpu_test_files,
    latency_cases,
    train_checks,
    train_commands,
)

log = logging.getLogger(__name__)

Emit = Callable[[Line], None]
COLLECT_S = 15.0  # what a step keeps of its time to collect results after its subprocesses
PGIDS = "pgids"  # the process groups a check started, one id a line


def lines_path(work: Path, step: str) -> Path:
    return Path(work) / "lines" / f"{step}.jsonl"


def emitter(path: Path) -> Emit:
    """A function that appends a :class:`Line` to ``path`` (one JSON object per line, flushed at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def emit(line: Line) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(line.to_dict(), default=str) + "\n")
        log.info("%s", line.format())

    return emit


def read_lines(path: Path) -> list[Line]:
    """The lines a step wrote (a line cut short by a kill is dropped)."""
    out = []
    if not Path(path).is_file():
        return out
    for text in Path(path).read_text().splitlines():
        try:
            out.append(Line(**json.loads(text)))
        except (ValueError, TypeError):
            continue
    return out


def child_env() -> dict[str, str]:
    """The environment of every subprocess: offline ultralytics, unbuffered output, this checkout first."""
    path = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "YOLO_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT),
    }


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """End ``proc`` and everything it started (its own process group): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def start(cmd: Sequence[str], out: IO[str], work: Path) -> subprocess.Popen:
    """``cmd`` in the checkout's root, in a process group of its own, its output to ``out``.

    The group's id goes to ``<work>/pgids`` so that whoever stops a step also stops what it started
    (:func:`stop_recorded`)."""
    proc = subprocess.Popen(
        list(cmd), cwd=ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    with open(Path(work) / PGIDS, "a") as f:
        f.write(f"{proc.pid}\n")
    return proc


def stop_recorded(work: Path) -> None:
    """SIGKILL every process group this check started that is still there (after a step was killed)."""
    path = Path(work) / PGIDS
    if not path.is_file():
        return
    for text in path.read_text().split():
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(text), signal.SIGKILL)


def wait_all(procs: Mapping[str, subprocess.Popen], until: float) -> dict[str, int | None]:
    """Wait for every process until the wall-clock time ``until``; stop those still running then.

    Returns each one's exit status (None: stopped at the limit)."""
    codes: dict[str, int | None] = {}
    for name, proc in procs.items():
        try:
            codes[name] = proc.wait(timeout=max(0.1, until - time.time()))
        except subprocess.TimeoutExpired:
            log.warning("%s still running at the step's limit: stopped", name)
            stop(proc)
            codes[name] = None
    return codes


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------ precision


def run_precision(opts: Options, emit: Emit, work: Path, deadline: float) -> None:
    """One line per module: its forward under autocast float16 and bfloat16 against float32."""
    import modules

    from .precision import module_errors, precision_line

    names = attention_names()
    if modules.attentions() != names:
        log.error("registry %s and conf/attn %s differ", modules.attentions(), names)
    for name in names:
        try:
            emit(precision_line(name, module_errors(name, opts.device, DTYPES)))
        except Exception as e:  # one module's failure is its line, the others go on
            log.exception("precision %s", name)
            emit(Line(f"precision {name}", "fail", f"{type(e).__name__}: {e}"))


# ------------------------------------------------------------------------------------------ gpu tests

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def pytest_counts(output: str) -> dict[str, int]:
    """The counts of pytest's final summary line (``3 passed, 1 skipped, 12 deselected in 4.2s``)."""
    lines = [ln for ln in output.strip().splitlines() if _COUNT.search(ln)]
    counts: dict[str, int] = {}
    for n, what in _COUNT.findall(lines[-1] if lines else ""):
        counts["errors" if what.startswith("error") else what] = int(n)
    return counts


def gpu_tests_line(code: int | None, counts: Mapping[str, int], files: Sequence[str]) -> Line:
    """The GPU tests pass when pytest ran some, and none failed, errored or was skipped."""
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if k != "deselected") or "no summary"
    where = f" ({', '.join(files)})" if files else ""
    if code is None:
        return Line("gpu tests", "fail", f"pytest ran past the step's limit: {summary}{where}", dict(counts))
    ok = (
        code == 0
        and counts.get("passed", 0) > 0
        and not any(counts.get(k) for k in ("failed", "errors", "skipped"))
    )
    return Line("gpu tests", "ok" if ok else "fail", f"{summary} (exit {code}){where}", dict(counts))


def run_gpu_tests(opts: Options, emit: Emit, work: Path, deadline: float) -> None:
    """``python -m pytest -m gpu`` over the test files that hold GPU-only tests."""
    files = [str(p.relative_to(ROOT)) for p in gpu_test_files()]
    if not files:
        emit(Line("gpu tests", "fail", "no test file holds a test marked @pytest.mark.gpu"))
        return
    out_path = Path(work) / "logs" / "gpu-tests.log"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", *files]
    with open(out_path, "w") as out:
        codes = wait_all({"pytest": start(cmd, out, work)}, deadline - 5)
    text = out_path.read_text(errors="replace")
    print(text, flush=True)  # into the check's log
    emit(gpu_tests_line(codes["pytest"], pytest_counts(text), files))


# -------------------------------------------------------------------------------------------- latency


def architecture(overrides: Sequence[str], imgsz: int) -> Any:
    """The measurement phase's :class:`~ablate.measure.phase.Architecture` of a configuration, composed
    as a run would compose it (Hydra config → experiment → composed YAML), at ``imgsz``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import modules

    from ..compose import compose
    from ..experiment import experiment_from_config
    from ..measure.model import architecture_key, base_model_yaml, build_model, stride_size
    from ..measure.phase import Architecture
    from ..paths import CONF_DIR
    from ..run import dataset_names

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[*overrides, "logger=none", f"train.imgsz={imgsz}"])
    exp = experiment_from_config(cfg)
    nc = len(dataset_names(exp.dataset))
    d = compose(base_model_yaml(exp.model, nc), exp.placement, exp.model)
    size = stride_size(build_model(d), imgsz)
    p = exp.placement
    return Architecture(
        key=architecture_key(d, size),
        model=exp.model,
        attn=exp.attn,
        pos=exp.pos,
        nc=nc,
        imgsz=(int(size[0]), int(size[1])),
        yaml=d,
        layers=tuple(p.layers) if p else (),
        mode=p.mode if p else "none",
        attn_variant=modules.variant(p.attn, p.attn_kwargs) if p else "",
    )


def latency_line(case: LatencyCase, result: Any) -> Line:
    """One setting's line: the baseline's median and every module's ratio to it (same rounds)."""
    if result.skipped:
        status = "skip" if case.backend == "tensorrt" else "fail"
        return Line(case.check, status, f"skipped: {result.skipped}", {"skipped": result.skipped})
    measured = sorted(result.measured, key=lambda m: (m["attn"] != "none", m["attn"]))
    good = measured and all(
        math.isfinite(m["latency_ms"]) and m["latency_ms"] > 0 and math.isfinite(m["latency_ratio"])
        for m in measured
    )
    base = next((m for m in measured if m["attn"] == "none"), None)
    ratios = ", ".join(f"{m['attn']} {m['latency_ratio']:.2f}x" for m in measured if m["attn"] != "none")
    if base is None:
        return Line(case.check, "fail", "no baseline measured", {"measured": measured})
    size = "x".join(map(str, base["imgsz"]))
    text = (
        f"baseline {base['latency_ms']:.2f} ms ({base['latency_p10_ms']:.2f}-{base['latency_p90_ms']:.2f}); "
        f"{ratios} ({size}, {base['latency_device']}, {result.wall_s:.0f} s)"
    )
    return Line(case.check, "ok" if good else "fail", text, {"measured": measured})


def run_latency(
    opts: Options,
    emit: Emit,
    work: Path,
    deadline: float,
    cases: Sequence[LatencyCase] | None = None,
    names: Sequence[str] = LATENCY_MODULES,
) -> None:
    """The measurement phase for the baseline and ``names`` at neck, one line per setting."""
    from ..measure.phase import Settings, measure

    cases = list(cases if cases is not None else latency_cases(opts))
    try:
        archs = [architecture([f"+attn={n}", "+pos=neck"], opts.latency_imgsz) for n in names]
    except Exception as e:
        log.exception("composing the architectures")
        for case in cases:
            emit(Line(case.check, "fail", f"architectures not composed: {type(e).__name__}: {e}"))
        return
    results = Path(work) / "results"
    for case in cases:
        if time.time() > deadline - 5:
            emit(Line(case.check, "fail", "not run: the step's time is spent"))
            continue
        settings = Settings(
            backend=case.backend,
            device=opts.device,
            half=case.half,
            batch=case.batch,
            threads=1,
            rounds=opts.rounds,
            passes=opts.passes,
            warmup=opts.warmup,
            min_time_s=opts.min_time_s,
            # the check owns its (lent) machine and has no minutes to wait: it times at once, and the load
            # it read is stored with each measurement and printed, as the phase does when forced
            force_load=True,
            load_wait_s=0.0,
        )
        try:
            result = measure(archs, settings, results, force=True)
        except Exception as e:
            log.exception("latency %s", case.check)
            emit(Line(case.check, "fail", f"{type(e).__name__}: {e}"))
            continue
        emit(latency_line(case, result))


# ------------------------------------------------------------------------------------------- training


def check_of(record: Mapping[str, Any]) -> str:
    """The training check a record answers: ``train base``, ``train baseline`` or ``train attn@pos``."""
    if record.get("role") == "base":
        return "train base"
    if (record.get("attn") or "none") == "none":
        return "train baseline"
    return f"train {record['attn']}@{record['pos']}"


def epoch_losses(results_csv: Path) -> list[dict[str, float]]:
    """The training losses of every epoch in ultralytics' ``results.csv`` (``train/box_loss`` …)."""
    if not results_csv.is_file():
        return []
    with open(results_csv) as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        losses = {}
        for k, v in row.items():
            if k and k.strip().startswith("train/"):
                try:
                    losses[k.strip()] = float(v)
                except (TypeError, ValueError):
                    losses[k.strip()] = math.nan
        out.append(losses)
    return out


def train_line(check: str, record: Mapping[str, Any] | None, run_dir: Path | None, epochs: int) -> Line:
    """One training check: an ok record, finite losses in every epoch, the NaN guard silent, mAP recorded."""
    if record is None or run_dir is None:
        return Line(check, "fail", "no record: the run did not finish within the step's limit (see the log)")
    losses = epoch_losses(run_dir / "ultralytics" / "results.csv")
    finite = bool(losses) and all(math.isfinite(v) for row in losses for v in row.values())
    error = str(record.get("error") or "")
    nan_guard = "NonFiniteLossError" in error or "non-finite training loss" in error
    m50_95, m50 = record.get("map50_95"), record.get("map50")
    data = {
        "check": check,
        "key": record.get("key"),
        "status": record.get("status"),
        "attn": record.get("attn"),
        "pos": record.get("pos"),
        "role": record.get("role"),
        "epochs": len(losses),
        "epochs_planned": epochs,
        "losses_finite": finite,
        "nan_guard": nan_guard,
        "map50": m50,
        "map50_95": m50_95,
        "train_loss": record.get("train_loss"),
        "train_seconds": record.get("train_seconds"),
        "peak_memory_train_mb": record.get("peak_memory_train_mb"),
        "init": record.get("init"),
        "error": error or None,
    }
    if record.get("status") != "ok":
        what = "NaN guard triggered: " if nan_guard else "failed: "
        return Line(check, "fail", what + error[:300], data)
    problems = []
    if not finite:
        problems.append(f"non-finite or missing losses in results.csv ({len(losses)} epochs)")
    if len(losses) != epochs:
        problems.append(f"{len(losses)} epochs, {epochs} planned")
    if m50_95 is None or not math.isfinite(float(m50_95)):
        problems.append("no mAP recorded")
    memory = record.get("peak_memory_train_mb")
    text = (
        f"mAP50-95 {_num(m50_95, '.3f')} (mAP50 {_num(m50, '.3f')}), final loss "
        f"{_num(record.get('train_loss'), '.3f')}, {len(losses)} epochs with finite losses, "
        f"{_num(record.get('train_seconds'), '.0f')} s, peak {_num(memory, '.0f')} MB"
    )
    if problems:
        return Line(check, "fail", "; ".join(problems) + f" ({text})", data)
    return Line(check, "ok", text, data)


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(float(value), spec)


def planned_epochs(check: str, opts: Options) -> int:
    return opts.base_epochs if check == "train base" else opts.epochs


def training_lines(results: Path, checks: Sequence[str], opts: Options) -> list[Line]:
    """One line per expected training check, from the records under ``results`` (missing: a failure).

    Only records of this check's settings count (image size, planned epochs: a reused ``--work`` may hold
    others); of several, the last finished."""
    from ..records import RUNS

    found: dict[str, tuple[dict[str, Any], Path]] = {}
    for path in sorted((Path(results) / RUNS).glob("*/record.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        check = check_of(record)
        if record.get("action", "train") != "train" or record.get("imgsz", opts.imgsz) != opts.imgsz:
            continue
        if record.get("epochs", planned_epochs(check, opts)) != planned_epochs(check, opts):
            continue
        if check not in found or str(record.get("finished_at")) >= str(found[check][0].get("finished_at")):
            found[check] = (record, path.parent)
    out = []
    for check in checks:
        record, run_dir = found.get(check, (None, None))
        out.append(train_line(check, record, run_dir, planned_epochs(check, opts)))
    return out


def run_train(opts: Options, emit: Emit, work: Path, deadline: float) -> None:
    """The demo's sweep (every module at neck, joblib on the GPU) and area replacing A2C2f's attention,
    side by side; then one line per run from the records."""
    names = attention_names()
    results, data = Path(work) / "results", Path(work) / "data"
    commands = train_commands(opts, names, str(results), str(data))
    logs = Path(work) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    files = {name: open(logs / f"train-{name}.log", "w") for name in commands}  # noqa: SIM115
    try:
        procs = {}
        for name, args in commands.items():
            log.info("train %s: python -m ablate %s", name, " ".join(args))
            procs[name] = start([sys.executable, "-m", "ablate", *args], files[name], work)
        codes = wait_all(procs, deadline - COLLECT_S)
    finally:
        for f in files.values():
            f.close()
    for name, code in codes.items():
        print(f"--- train {name}: exit {code} (None: stopped at the limit); last lines:", flush=True)
        print(tail(logs / f"train-{name}.log"), flush=True)
    for line in training_lines(results, train_checks(names), opts):
        if line.status == "fail" and line.data.get("key"):
            print(f"--- {line.check}: {tail(results / 'runs' / line.data['key'] / 'traceback.txt', 15)}")
        emit(line)


STEPS: dict[str, Callable[[Options, Emit, Path, float], None]] = {
    "precision": run_precision,
    "gpu-tests": run_gpu_tests,
    "latency": run_latency,
    "train": run_train,
}


def run_step(name: str, opts: Options, work: Path, deadline: float) -> None:
    """Run step ``name`` in this process, its lines to ``<work>/lines/<name>.jsonl``."""
    STEPS[name](opts, emitter(lines_path(work, name)), Path(work), deadline)
