"""The GPU path on a real accelerator, in one call: AMP training of every module, autocast precision, CUDA
latency and the GPU-only tests.

    python -m ablate.gpu_check [--out results/gpu-check] [--budget 420] [--only STEP ...] [--list]
    make gpu-check

Runs on any CUDA machine with the torch that is there (the torch version the results came from is
recorded). Each step runs in a child process with its own time limit, inside one overall budget, so a
failing or hanging step does not stop the others; every check prints one line, then a summary. Without
CUDA it prints one line and exits with status 2 before doing anything. Steps (``--list`` prints the plan):

* ``precision``: each module's forward under autocast float16 and bfloat16 against float32 with the same
  weights, max relative error within the module's bound (:mod:`ablate.gpu.precision`);
* ``gpu-tests``: the suite's tests marked ``@pytest.mark.gpu`` (skipped without CUDA);
* ``latency``: the measurement phase on CUDA at 640 px for the baseline and the five attention modules, torch
  float32 / float16 at batch 1 and 16, TensorRT where installed;
* ``train``: the quick protocol at 320 px with AMP, from a base trained there: every module at neck and
  area replacing A2C2f's attention, finite losses, no NaN guard, mAP recorded.

Files in ``--out``: ``summary.json`` (environment, options, every line), ``gpu-check.log`` (everything the
steps printed), ``precision.csv``, ``latency.csv``, ``training.csv``, ``latency.png``, ``training.png``.
Exit status: 0 when no check failed, 1 otherwise, 2 without CUDA or for bad arguments. How to run it on
a lent device machine: docs/gpu.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from .gpu.plan import LIMITS, MIN_STEP_S, STEP_NAMES, Line, Options, Step, build_plan, format_plan
from .gpu.steps import PGIDS, lines_path, read_lines, run_step, start, stop, stop_recorded

GRACE_S = 15.0  # how long a step may outlive its limit before it is killed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m ablate.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/gpu-check", help="where the files go (default: %(default)s)")
    p.add_argument("--work", default=None, help="scratch root for runs and data (default: a new temp dir)")
    p.add_argument("--budget", type=float, default=d.budget_s, help="seconds for everything (%(default)s)")
    p.add_argument("--only", nargs="+", default=[], metavar="STEP", help=f"steps: {', '.join(STEP_NAMES)}")
    p.add_argument("--device", default=d.device)
    p.add_argument("--imgsz", type=int, default=d.imgsz, help="training image size (%(default)s)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="fine-tuning epochs (%(default)s)")
    p.add_argument("--base-epochs", type=int, default=d.base_epochs, help="base run epochs (%(default)s)")
    p.add_argument("--jobs", type=int, default=d.jobs, help="training jobs at a time (%(default)s)")
    p.add_argument("--images", type=int, default=None, help="train and val images (default: the dataset's)")
    p.add_argument("--latency-imgsz", type=int, default=d.latency_imgsz)
    p.add_argument("--batches", type=int, nargs="+", default=list(d.batches))
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--min-time", type=float, default=d.min_time_s)
    p.add_argument(
        "--list", "--dry-run", dest="list", action="store_true", help="print the plan, run nothing"
    )
    p.add_argument("--step", help=argparse.SUPPRESS)  # a child: run one step
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--options", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def options(args: argparse.Namespace) -> Options:
    return Options(
        budget_s=args.budget,
        device=args.device,
        imgsz=args.imgsz,
        epochs=args.epochs,
        base_epochs=args.base_epochs,
        jobs=args.jobs,
        images=args.images,
        latency_imgsz=args.latency_imgsz,
        batches=tuple(args.batches),
        rounds=args.rounds,
        min_time_s=args.min_time,
        only=tuple(args.only),
    )


def environment(device: str) -> dict[str, Any]:
    """What the results came from: torch (not our pin: the machine's own), CUDA, the GPU, the libraries."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from .records import git_sha

    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "python": platform.python_version(),
        "git_sha": git_sha(),
    }
    try:
        env["driver"] = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            .stdout.split("\n")[0]
            .strip()
        )
    except (OSError, subprocess.SubprocessError):
        env["driver"] = None
    for pkg in ("torchvision", "ultralytics", "hydra-core", "pycocotools", "onnxruntime", "tensorrt"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    return env


def run_child(
    step: Step, opts: Options, work: Path, limit: float, log: IO[str], grace: float = GRACE_S
) -> tuple[int | None, str]:
    """Step ``step`` in a child process, its output appended to ``log``; (exit status or None, last line)."""
    options_file = work / "options.json"
    options_file.write_text(opts.to_json())
    deadline = time.time() + limit
    cmd = [sys.executable, "-m", "ablate.gpu_check", "--step", step.name, "--work", str(work)]
    cmd += ["--deadline", f"{deadline:.3f}", "--options", str(options_file)]
    log.write(f"\n===== step {step.name} (limit {limit:.0f} s) =====\n")
    log.flush()
    out_file = work / "logs" / f"step-{step.name}.log"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w") as out:
        proc = start(cmd, out, work)
        try:
            code: int | None = proc.wait(timeout=limit + grace)
        except subprocess.TimeoutExpired:
            stop(proc)
            stop_recorded(work)  # what the step started (a sweep and its workers) goes too
            code = None
    text = out_file.read_text(errors="replace")
    log.write(text)
    log.flush()
    last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
    return code, last


def missing_lines(step: Step, got: list[Line], code: int | None, last: str, limit: float) -> list[Line]:
    """A failed line for every check of ``step`` that it did not report, saying why."""
    if code is None:
        why = f"not run: step {step.name} ran past its {limit:.0f} s limit"
    elif code != 0:
        why = f"not run: step {step.name} exited with status {code} ({last[-200:]})"
    else:
        why = f"not reported by step {step.name}"
    done = {line.check for line in got}
    return [Line(c, "fail", why) for c in step.checks if c not in done]


def counts(lines: list[Line]) -> dict[str, int]:
    return {s: sum(line.status == s for line in lines) for s in ("ok", "fail", "skip")}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def latency_rows(lines: list[Line]) -> list[dict[str, Any]]:
    keep = ("label", "attn", "imgsz", "latency_backend", "latency_dtype", "latency_batch", "latency_device")
    keep += ("latency_ms", "latency_p10_ms", "latency_p90_ms", "latency_ratio", "latency_ratio_p10")
    keep += ("latency_ratio_p90", "latency_count", "latency_version")
    return [
        {"check": line.check, **{k: m.get(k) for k in keep}}
        for line in lines
        for m in line.data.get("measured", [])
    ]


def write_outputs(
    out: Path, env: dict[str, Any], opts: Options, steps: list[dict], lines: list[Line]
) -> None:
    """summary.json and the CSV files (rewritten after every step: a killed check still leaves them)."""
    summary = {
        "environment": env,
        "options": json.loads(opts.to_json()),
        "steps": steps,
        "counts": counts(lines),
        "lines": [line.to_dict() for line in lines],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    write_csv(out / "precision.csv", [line.data for line in lines if line.check.startswith("precision ")])
    write_csv(out / "latency.csv", latency_rows(lines))
    write_csv(out / "training.csv", [line.data for line in lines if line.check.startswith("train ")])


def figures(out: Path, lines: list[Line], env: dict[str, Any]) -> list[str]:
    """latency.png (ratio to the baseline per setting) and training.png (mAP50-95 per run), where data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    rows = latency_rows(lines)
    if rows:
        checks = list(dict.fromkeys(r["check"] for r in rows))
        attns = sorted({r["attn"] for r in rows if r["attn"] != "none"})
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(1, len(checks))
        for i, check in enumerate(checks):
            ratio = {r["attn"]: r["latency_ratio"] for r in rows if r["check"] == check}
            xs = [j + i * width for j in range(len(attns))]
            ax.bar(xs, [ratio.get(a, 0) for a in attns], width, label=check.removeprefix("latency "))
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xticks(
            [j + width * (len(checks) - 1) / 2 for j in range(len(attns))], [f"{a}@neck" for a in attns]
        )
        ax.set_ylabel("latency / baseline (same rounds)")
        size = "x".join(map(str, rows[0]["imgsz"] or []))
        ax.set_title(f"measurement phase at {size}, {env.get('gpu')}, torch {env.get('torch')}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=120)
        plt.close(fig)
        made.append("latency.png")
    runs = [
        line.data
        for line in lines
        if line.check.startswith("train ") and line.data.get("map50_95") is not None
    ]
    if runs:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar([r["check"].removeprefix("train ") for r in runs], [100 * r["map50_95"] for r in runs])
        ax.set_ylabel("mAP50-95 (%)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"quick protocol with AMP, {env.get('gpu')}, torch {env.get('torch')}", fontsize=9)
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(out / "training.png", dpi=120)
        plt.close(fig)
        made.append("training.png")
    return made


def child(args: argparse.Namespace) -> int:
    """``--step NAME``: run one step in this process (the parent holds its time limit)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = Options.from_json(Path(args.options).read_text())
    run_step(args.step, opts, Path(args.work), float(args.deadline))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.step:
        return child(args)
    opts = options(args)
    try:
        steps = build_plan(opts)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.list:
        print(format_plan(steps, opts))
        return 0
    import torch

    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device (torch {torch.__version__}, cuda available: False); nothing run")
        return 2
    return run(steps, opts, Path(args.out), Path(args.work) if args.work else None)


def run(
    steps: list[Step], opts: Options, out: Path, work: Path | None, env: dict[str, Any] | None = None
) -> int:
    """Every step in turn within the budget; one line per check, then the summary; the files in ``out``.

    ``env`` describes the machine (default: :func:`environment`, which needs CUDA)."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    work = work or Path(tempfile.mkdtemp(prefix="ablate-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / PGIDS).unlink(missing_ok=True)  # the process groups of this run only
    env = env or environment(opts.device)
    print(
        f"gpu-check: torch {env['torch']} (CUDA {env['cuda']}, cuDNN {env['cudnn']}), {env['gpu']} "
        f"({env['gpu_memory_gib']} GiB, driver {env['driver']}), python {env['python']}, ultralytics "
        f"{env['ultralytics']}; budget {opts.budget_s:.0f} s; work {work}",
        flush=True,
    )
    lines: list[Line] = []
    done: list[dict[str, Any]] = []
    with open(out / "gpu-check.log", "w") as log:
        log.write(json.dumps(env) + "\n")
        for step in steps:
            left = opts.budget_s - (time.monotonic() - started)
            if left < MIN_STEP_S:
                got, code, last, limit = [], None, "", 0.0
                new = [Line(c, "fail", f"not run: {left:.0f} s of the budget left") for c in step.checks]
            else:
                limit = min(LIMITS[step.name], left)
                t0 = time.monotonic()
                lines_path(work, step.name).unlink(missing_ok=True)  # a reused --work: this run's lines only
                code, last = run_child(step, opts, work, limit, log)
                got = read_lines(lines_path(work, step.name))
                new = got + missing_lines(step, got, code, last, limit)
                done.append(
                    {
                        "step": step.name,
                        "limit_s": round(limit),
                        "seconds": round(time.monotonic() - t0, 1),
                        "exit": code,
                    }
                )
            for line in new:
                print(line.format(), flush=True)
                log.write(line.format() + "\n")
            lines += new
            write_outputs(out, env, opts, done, lines)
        try:
            figures(out, lines, env)
        except Exception as e:  # the figures are a convenience: the CSV files hold the numbers
            log.write(f"figures not drawn: {type(e).__name__}: {e}\n")
        c = counts(lines)
        summary = (
            f"gpu-check: {len(lines)} checks: {c['ok']} ok, {c['fail']} failed, {c['skip']} skipped in "
            f"{time.monotonic() - started:.0f} s (budget {opts.budget_s:.0f} s); torch {env['torch']} on "
            f"{env['gpu']}; files in {out}"
        )
        print(summary, flush=True)
        log.write(summary + "\n")
    write_outputs(out, env, opts, done, lines)
    return 1 if c["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
