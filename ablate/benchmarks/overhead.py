"""Orchestration overhead of a sweep job: launch → first training step, minus model building.

``python -m ablate.benchmarks.overhead`` runs a small sweep of 1-epoch trainings on the embedded data (the
dataset generated beforehand) with the basic launcher, then reads each record's timings:

- job overhead: job start → first training step, minus ablate's model build (compose + forward check)
  and ultralytics' own build of the same YAML; what is left is config, dataset and trainer setup;
- the first job also pays the process launch (interpreter, imports, Hydra, the sweeper).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..records import RunRecord, read_records

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "dataset=shapes",
    "dataset.train_images=16",
    "dataset.val_images=8",
    "train.epochs=1",
    "measure.latency.after_sweep=false",
    "measure.coco_eval=false",
    "baseline=false",
]


def sweep(args: list[str], results: Path, data: Path) -> float:
    """Run one sweep; return the wall-clock time it was launched at."""
    launched = time.time()
    cmd = [sys.executable, "-m", "ablate", *args, f"results.dir={results}", f"data.dir={data}", "-m"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return launched


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="jobs in the measured sweep (seeds)")
    parser.add_argument("--logger", default="none", help="logger config group option (none | wandb)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data"
        sweep([*TINY, "logger=none", "seed=0"], tmp_path / "warm", data)  # generates the dataset once
        seeds = ",".join(str(s) for s in range(args.jobs))
        launched = sweep([*TINY, f"logger={args.logger}", f"seed={seeds}"], tmp_path / "results", data)
        loaded = read_records(tmp_path / "results").records
    records = sorted((RunRecord.from_dict(d) for d in loaded), key=lambda r: r.timings["job_start"])
    header = ("seed", "to first step s", "ablate build s", "ultralytics build s", "overhead s")
    print(f"{header[0]:>4} {header[1]:>16} {header[2]:>15} {header[3]:>20} {header[4]:>11}")
    overheads = []
    for r in records:
        t = r.timings
        total = t["first_step"] - t["job_start"]
        ours = t["model_built"] - t["job_start"]
        theirs = t["ultralytics_model_built"] - t["ultralytics_build_start"]
        overheads.append(total - ours - theirs)
        print(f"{r.seed:>4} {total:>16.2f} {ours:>15.2f} {theirs:>20.2f} {overheads[-1]:>11.2f}")
    first = records[0].timings
    launch = first["job_start"] - launched
    print(f"process launch → first job start (interpreter, imports, Hydra, sweeper): {launch:.2f} s")
    print(
        f"overhead per job (logger={args.logger}): mean {sum(overheads) / len(overheads):.2f} s, "
        f"max {max(overheads):.2f} s; first job incl. launch {launch + overheads[0]:.2f} s"
    )


if __name__ == "__main__":
    main()
