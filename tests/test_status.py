"""``python -m ablate.status``: per sweep, what finished, failed and is missing, and how to complete it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from ablate.records import write_json_atomic
from ablate.status import fold, sweep_status

ROOT = Path(__file__).resolve().parents[1]
BASE = ["dataset=shapes", "train.epochs=2"]


def status(results: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ablate.status", "--results", str(results)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def fabricated(results: Path, name: str = "multirun-2026-01-01_00-00-00-abc123") -> Path:
    """Six jobs: baselines seeds 0/1 (ok, cached), rala seeds 0/1 (failed), halo seed 0 (its process is
    gone: missing), halo seed 1 (running in this process)."""
    sweep = results / "hydra" / name
    jobs = [[*BASE, f"seed={s}"] for s in (0, 1)]
    jobs += [[*BASE, f"seed={s}", f"+attn={a}", "+pos=neck"] for a in ("rala", "halo") for s in (0, 1)]
    write_json_atomic(sweep / "sweep.json", {"total": 6, "jobs": jobs})
    hydra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.mode=MULTIRUN"]
    OmegaConf.save(
        OmegaConf.create({"hydra": {"overrides": {"hydra": hydra, "task": []}}}), sweep / "multirun.yaml"
    )
    for num, state, error in (
        (0, "ok", None),
        (1, "cached", None),
        (2, "failed", "RuntimeError: boom"),
        (3, "failed", "x"),
    ):
        write_json_atomic(
            sweep / str(num) / "outcome.json", {"status": state, "overrides": jobs[num], "error": error}
        )
    host = os.uname().nodename
    write_json_atomic(
        sweep / "4" / "progress.json",
        {
            "status": "running",
            "host": host,
            "pid": dead_pid(),
            "epoch": 1,
            "epochs": 2,
            "updated_at": time.time(),
        },
    )
    write_json_atomic(
        sweep / "5" / "progress.json",
        {"status": "running", "host": host, "pid": os.getpid(), "updated_at": time.time()},
    )
    return sweep


def test_fold_turns_a_grid_of_jobs_into_one_sweep_and_keeps_the_rest_apart() -> None:
    jobs = [[f"seed={s}", f"+attn={a}"] for a in ("rala", "halo") for s in (0, 1)]
    assert fold(jobs) == [["seed=0,1", "+attn=rala,halo"]]
    # not a grid: the odd one stays a command of its own; values Hydra would read as lists never fold
    assert fold([["seed=0", "a=1"], ["seed=1", "a=1"], ["seed=2", "a=2"]]) == [
        ["seed=0,1", "a=1"],
        ["seed=2", "a=2"],
    ]
    assert fold([["+pos.layers=[6,8]"], ["+pos.layers=[8]"]]) == [["+pos.layers=[6,8]"], ["+pos.layers=[8]"]]


def test_status_lists_failed_missing_and_running_jobs_with_the_completing_command(tmp_path: Path) -> None:
    sweep = fabricated(tmp_path)
    state = sweep_status(sweep, tmp_path)
    assert [j.status for j in state.jobs] == ["ok", "cached", "failed", "failed", "missing", "running"]
    proc = status(tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"{sweep.name}: 6 job(s): 1 ok, 1 cached, 2 failed, 1 running, 1 missing\n")
    assert "  failed  3/6 seed=0 +attn=rala +pos=neck: RuntimeError: boom" in out
    assert "  missing 5/6 seed=0 +attn=halo +pos=neck (its process is gone; epoch 1/2, last update " in out
    assert "  running 6/6 seed=1 +attn=halo +pos=neck (last update " in out
    commands = [line.strip() for line in out.splitlines() if line.strip().startswith("python -m ablate")]
    # rala seeds 0 and 1 fold into one sweep; halo seed 0 on its own; the running job is left alone
    assert len(commands) == 2
    first, second = (shlex.split(c) for c in commands)
    assert first[3:] == [
        *BASE,
        "seed=0,1",
        "+attn=rala",
        "+pos=neck",
        f"results.dir={tmp_path}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "-m",
    ]
    assert "seed=0" in second and "+attn=halo" in second and second[-1] == "-m"
    assert not any("hydra.mode" in c for c in commands)


def test_a_complete_sweep_is_one_line_and_a_missing_results_root_an_error(tmp_path: Path) -> None:
    sweep = tmp_path / "hydra" / "multirun-2026-01-02_00-00-00-def456"
    write_json_atomic(sweep / "sweep.json", {"total": 1, "jobs": [BASE]})
    write_json_atomic(sweep / "0" / "outcome.json", {"status": "ok", "overrides": BASE})
    proc = status(tmp_path)
    assert proc.returncode == 0 and proc.stdout == f"{sweep.name}: 1 job(s): 1 ok, 0 failed: complete\n"
    proc = status(tmp_path / "nowhere")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: --results ") and "nowhere" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr


def test_the_printed_command_completes_a_real_sweep(tmp_path: Path) -> None:
    """A profile sweep with one bad job, and one job whose outcome is lost (as if killed): status names both,
    and its command, run as printed, completes the lost job (the bad one fails again, as it must)."""
    results, data = tmp_path / "results", tmp_path / "data"
    args = ["action=profile", "logger=none", "measure.latency.after_sweep=false", "+attn=rala", "+pos=p5"]
    args += ["attn.params.head_dim=32,-1", "dataset=shapes", "seed=0", f"data.dir={data}"]
    cmd = [
        sys.executable,
        "-m",
        "ablate",
        *args,
        f"results.dir={results}",
        "hydra.callbacks.sweep_summary.table=false",
    ]
    first = subprocess.run([*cmd, "-m"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    (sweep,) = (results / "hydra").glob("multirun-*")
    lost = next(p for p in sorted(sweep.glob("*/outcome.json")) if "head_dim=32" in p.read_text())
    lost.unlink()  # the job was killed before it wrote its outcome
    out = status(results).stdout
    assert "3 job(s): 1 ok, 1 failed, 1 missing" in out
    assert "head_dim=-1: " in out and "head_dim" in out.split("head_dim=-1: ", 1)[1]  # the error
    (command,) = [line.strip() for line in out.splitlines() if line.strip().startswith("python -m ablate")]
    argv = shlex.split(command)
    assert "attn.params.head_dim=32,-1" in argv and argv[-1] == "-m"
    again = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=900)
    # the lost job is a cached ok run now (its record was written), the bad one fails again
    assert again.returncode == 1 and "2 job(s): 0 ok, 1 cached, 1 failed" in again.stdout, again.stdout[
        -3000:
    ]
