"""The live view of a sweep: progress files, the watcher's state and lines, job output in job logs
(ablate.progress writes, ablate.live reads and shows)."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf
from rich.console import Console

from ablate import live, progress
from ablate.records import write_json_atomic

from .helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
BASE = ["dataset=shapes", "seed=0", "results.dir=/r"]
JOBS = [BASE, [*BASE, "+attn=rala", "+pos=neck"], [*BASE, "+attn=halo", "+pos=neck"], [*BASE, "+attn=fla"]]


def fabricated_sweep(path: Path, now: float) -> Path:
    """Four jobs: 0 running (epoch 2/8 for 30 s), 1 ok after 100 s, 2 failed, 3 pending."""
    write_json_atomic(path / "sweep.json", {"total": 4, "jobs": JOBS})
    progress = {"job": 0, "status": "running", "phase": "training", "epoch": 2, "epochs": 8}
    write_json_atomic(path / "0" / "progress.json", {**progress, "started_at": now - 30})
    for num, status, seconds, error in ((1, "ok", 100.0, None), (2, "failed", 3.0, "RuntimeError: boom")):
        write_json_atomic(path / str(num) / "progress.json", {"job": num, "status": "done", "epoch": 8})
        outcome = {"status": status, "overrides": JOBS[num], "seconds": seconds, "error": error}
        outcome["summary"] = (
            f"{status}: yolo12n mAP50=0.6 mAP50-95=0.412 params=1" if status == "ok" else None
        )
        write_json_atomic(path / str(num) / "outcome.json", outcome)
    return path


def test_job_labels_name_what_tells_the_jobs_apart() -> None:
    base = [*BASE, "action=base", "train.base.seed=0"]
    labels = live.job_labels([*JOBS, base])
    assert labels[:4] == ["baseline", "+attn=rala +pos=neck", "+attn=halo +pos=neck", "+attn=fla"]
    assert labels[4].startswith("base run") and "train.base.seed=0" in labels[4]
    assert live.clock(75) == "1:15" and live.clock(3725) == "1:02:05"


def test_the_watcher_reads_a_sweep_dir_into_counts_eta_and_plain_lines(tmp_path: Path) -> None:
    now = time.time()
    state = live.SweepState(fabricated_sweep(tmp_path, now), started=now - 120)
    events = state.poll()
    assert [(e.kind, e.job.num) for e in events] == [("started", 0), ("finished", 1), ("finished", 2)]
    assert state.total == 4
    assert [state.count(s) for s in ("ok", "cached", "failed", "running", "pending")] == [1, 0, 1, 1, 1]
    assert state.running()[0].step() == "epoch 2/8"
    # pending: the mean of the ok jobs (100 s); job 0: 30 s for 2 epochs, so 6 more at 15 s; one at a time
    assert state.eta(now) == 100 + 90

    out = io.StringIO()
    live.PlainView(out).update(state, events, now)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[2:00] job 1/4 running: baseline"
    assert lines[1].startswith(
        "[2:00] job 2/4 ok in 100.0s: +attn=rala +pos=neck mAP50-95=0.412 | 2/4 done: 1 ok, 0 cached,"
    )
    assert lines[2].startswith("[2:00] job 3/4 FAILED in 3.0s: +attn=halo +pos=neck: RuntimeError: boom |")
    assert "1 running, 1 pending; elapsed 2:00, ETA 3:10" in lines[2]
    assert "\x1b" not in out.getvalue()  # plain lines: no ANSI

    # before any job finished, the running jobs' pace per epoch projects a job's duration (30 s / 2 * 8)
    early = live.SweepState(tmp_path / "early", started=now)
    write_json_atomic(early.sweep_dir / "sweep.json", {"total": 2, "jobs": JOBS[:2]})
    write_json_atomic(
        early.sweep_dir / "0" / "progress.json",
        {"job": 0, "status": "running", "epoch": 2, "epochs": 8, "started_at": now - 30},
    )
    early.poll()
    assert early.eta(now) == 120 + 90

    assert state.poll() == []  # nothing changed, nothing said twice
    write_json_atomic(
        tmp_path / "0" / "progress.json", {"job": 0, "status": "running", "epoch": 3, "epochs": 8}
    )
    write_json_atomic(tmp_path / "3" / "progress.json", {"job": 3, "status": "running", "started_at": now})
    assert [(e.kind, e.job.num) for e in state.poll()] == [("epoch", 0), ("started", 3)]
    assert state.max_parallel == 2 and state.count("pending") == 0
    outcome = {"status": "cached", "overrides": JOBS[3], "seconds": 0.5}
    write_json_atomic(tmp_path / "3" / "outcome.json", outcome)
    (event,) = state.poll()
    assert event.kind == "finished" and event.job.status == "cached"
    assert state.count("cached") == 1 and state.count("running") == 1


def test_the_terminal_view_shows_counts_and_running_epochs(tmp_path: Path) -> None:
    now = time.time()
    state = live.SweepState(fabricated_sweep(tmp_path, now), started=now - 120)
    state.poll()
    console = Console(file=io.StringIO(), width=120, record=True)
    console.print(live.TerminalView(io.StringIO()).render(state, now))
    text = console.export_text()
    assert "1 ok" in text and "1 failed" in text and "1 running" in text and "1 pending" in text
    assert "ETA 3:10" in text and "2/4 jobs  elapsed 2:00" in text
    (row,) = [line for line in text.splitlines() if line.startswith("1/4")]
    assert "epoch 2/8" in row and "0:30" in row and "baseline" in row


def test_watch_sweep_prints_plain_lines_when_stdout_is_no_terminal(tmp_path: Path) -> None:
    now = time.time()
    out = io.StringIO()
    with live.watch_sweep(tmp_path, OmegaConf.create({"live": True}), stream=out, interval=3600) as watcher:
        assert isinstance(watcher.view, live.PlainView)
        fabricated_sweep(tmp_path, now)  # the final poll when the block ends sees these
    assert "job 3/4 FAILED" in out.getvalue() and "job 2/4 ok" in out.getvalue()
    with live.watch_sweep(tmp_path, OmegaConf.create({"live": False}), stream=out) as watcher:
        assert watcher is None


def job_config(tmp_path: Path, launcher: str) -> OmegaConf:
    return OmegaConf.create(
        {
            "hydra": {
                "mode": "MULTIRUN",
                "runtime": {"output_dir": str(tmp_path)},
                "job": {"num": 3, "name": "cli"},
                "launcher": {"_target_": launcher},
            }
        }
    )


def test_a_job_reports_progress_and_its_output_goes_to_its_log(tmp_path: Path) -> None:
    from hydra.types import RunMode

    cfg = job_config(tmp_path, "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher")
    cfg.hydra.mode = RunMode.MULTIRUN
    callback = progress.JobProgress()
    callback.on_job_start(cfg)
    try:
        os.write(1, b"a progress bar\n")
        written = json.loads((tmp_path / "progress.json").read_text())
        assert written["status"] == "running" and written["job"] == 3 and written["pid"] == os.getpid()
        callbacks = progress.progress_callbacks()
        for func in callbacks["on_train_epoch_start"]:
            func(SimpleNamespace(epoch=2, epochs=8))
    finally:
        callback.on_job_end(cfg)
    written = json.loads((tmp_path / "progress.json").read_text())
    assert (written["epoch"], written["epochs"], written["status"]) == (3, 8, "done")
    assert "a progress bar" in (tmp_path / "cli.log").read_text()
    # the basic launcher outside the terminal view keeps the job's output where it was
    assert not progress.jobs_share_terminal(
        job_config(tmp_path, "hydra._internal.core_plugins.BasicLauncher")
    )
    progress.update(epoch=5)  # no job: a no-op
    assert json.loads((tmp_path / "progress.json").read_text())["epoch"] == 3


def sweep_command(results: Path, data: Path, *extra: str) -> list[str]:
    args = [*TINY, "train.epochs=2", "measure.coco_eval=false", "measure.latency.after_sweep=false"]
    args += ["dataset=shapes", "seed=0", "hydra.callbacks.sweep_summary.table=false"]
    return [sys.executable, "-m", "ablate", *args, *extra, f"results.dir={results}", f"data.dir={data}", "-m"]


def test_a_parallel_sweep_sends_ultralytics_output_to_the_job_logs(tmp_path: Path) -> None:
    results, data = tmp_path / "results", tmp_path / "data"
    launcher = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    cmd = sweep_command(results, data, "+attn=rala,halo", "+pos=neck", *launcher)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    terminal = proc.stdout + proc.stderr
    assert "Ultralytics" not in terminal and "Epoch" not in terminal and "\x1b" not in terminal
    for k in (1, 2, 3):  # a plain line for each finished job, the last with the final counts
        assert f"job {k}/3 ok in " in proc.stdout
    assert "3/3 done: 3 ok, 0 cached, 0 failed, 0 running, 0 pending" in proc.stdout
    (sweep_dir,) = (results / "hydra").glob("multirun-*")
    for num in range(3):
        log_text = (sweep_dir / str(num) / "cli.log").read_text()
        # ultralytics' banner and its per-batch progress bar (the epoch column, "1/2") are in the job log
        assert "Ultralytics" in log_text and "1/2" in log_text and "it/s" in log_text
        assert log_text.count("using cached dataset") <= 1  # a log line once, not again from the console
        progress = json.loads((sweep_dir / str(num) / "progress.json").read_text())
        assert (progress["job"], progress["epoch"], progress["epochs"]) == (num, 2, 2)


def read_pty(fd: int, proc: subprocess.Popen) -> str:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode(errors="replace")


def test_in_a_terminal_the_live_view_draws_and_job_output_stays_in_the_logs(tmp_path: Path) -> None:
    results, data = tmp_path / "results", tmp_path / "data"
    main, child = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}
    cmd = sweep_command(results, data, "baseline=false")  # one job, Hydra's basic launcher: in process
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    screen = read_pty(main, proc)
    os.close(main)
    assert proc.wait(timeout=600) == 0, screen[-3000:]
    assert "sweep multirun-" in screen and "1/1 jobs  elapsed" in screen and "\x1b[" in screen
    assert "Ultralytics" not in screen  # in the job's log
    (sweep_dir,) = (results / "hydra").glob("multirun-*")
    assert "Ultralytics" in (sweep_dir / "0" / "cli.log").read_text()
    assert (sweep_dir / "sweep.log").is_file()
    assert "1 job(s): 1 ok, 0 cached, 0 failed" in screen  # the summary after the view, as before
