"""Benchmark of ``make table``: synthetic records in a temporary results root, timed end to end.

    python -m ablate.benchmarks.table_timing [--records 10000] [--repeats 3] [--keep DIR]

Writes ``--records`` synthetic ``record.json`` files shaped like real ones (2 training settings ×
4 datasets × (baseline + 6 modules × 8 positions) = 392 configurations, seeds 0, 1, … until the
count is reached; about 1.5 % failed runs; the ``paper`` runs on VOC are ``action=profile``, without
mAP) unless ``--keep DIR`` already holds them. Then it times ``python -m ablate.report --results ROOT
-q`` in a fresh interpreter (imports, loading, summary, csv/tex/md and figures: what ``make table``
does) ``--repeats`` times, printing wall and CPU seconds (the process and its figure workers) and the
1-minute load average before each run (the machine is shared: compare runs at a low load), and the
in-process phase times of one more run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..measure.store import MEASURES
from ..records import RECORD, RUNS, RunRecord, run_key

log = logging.getLogger(__name__)

DATASETS = ("shapes", "digits", "coco8", "VOC")
ATTNS = ("rala", "halo", "tssa", "fla", "area", "mhsa")
POSITIONS = ("backbone", "neck", "p3", "p4", "p5", "a2c2f", "custom", "c2psa")
TRAINS = (
    {"name": "quick", "epochs": 40, "imgsz": 96, "batch": 8},
    {"name": "paper", "epochs": 600, "imgsz": 640},
)
PROFILED = ("paper", "VOC")  # (train, dataset) measured with action=profile only: no mAP
VERSIONS = {"python": "3.11.2", "torch": "2.14.1", "torchvision": "0.29.1", "ultralytics": "8.4.190"}


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    """``n`` record dicts with plausible metrics (mAP effects per module and position, seed noise)."""
    rng = np.random.default_rng(seed)
    configs = []
    for train in TRAINS:
        for ds_i, ds in enumerate(DATASETS):
            configs.append((train, ds, ds_i, "none", "none"))
            configs += [(train, ds, ds_i, a, p) for a in ATTNS for p in POSITIONS]
    effect = {(a, p): rng.normal(0.01, 0.01) for a in ATTNS for p in POSITIONS}
    out: list[dict] = []
    s = 0
    while len(out) < n:
        for train, ds, ds_i, attn, pos in configs:
            if len(out) >= n:
                break
            out.append(_record(train, ds, ds_i, attn, pos, s, effect.get((attn, pos), 0.0), rng))
        s += 1
    return out


def _record(train: dict, ds: str, ds_i: int, attn: str, pos: str, seed: int, effect: float, rng) -> dict:  # noqa: ANN001
    settings = {**train, "optimizer": "AdamW", "lr0": 0.004, "extra": {}}
    spec = {"model": "yolo12n", "attn": attn, "pos": pos, "dataset": ds, "train": settings}
    base = {**spec, "attn": "none", "pos": "none"}
    status = "failed" if rng.random() < 0.015 else "ok"
    action = "profile" if (train["name"], ds) == PROFILED else "train"
    m5095 = 0.30 + 0.05 * ds_i + effect + rng.normal(0, 0.01)
    rec = RunRecord(
        key=run_key({**spec, "seed": seed, "action": action}),
        status=status,
        error="synthetic failure" if status != "ok" else None,
        action=action,
        model="yolo12n",
        scale="n",
        attn=attn,
        attn_params={} if attn == "none" else {"num_heads": 4},
        pos=pos,
        layers=[] if attn == "none" else [14, 17, 20],
        mode="none" if attn == "none" else "after",
        dataset=ds,
        seed=seed,
        epochs=train["epochs"],
        imgsz=train["imgsz"],
        batch=8,
        train=train["name"],
        config_key=run_key({**spec, "action": action}),
        baseline_key=run_key({**base, "action": action}),
        train_hash=run_key(settings),
        train_settings=settings,
        params=2_560_000 + (0 if attn == "none" else 40_000 + 1000 * ATTNS.index(attn)),
        params_attn=0 if attn == "none" else 40_000,
        gflops=0.15 + (0 if attn == "none" else 0.01 * (1 + ATTNS.index(attn))),
        arch_key=run_key({"attn": attn, "pos": pos, "dataset": ds, "imgsz": train["imgsz"]}),
        versions=VERSIONS,
        git_sha="0" * 40,
    )
    if status == "ok" and action == "train":
        rec.map50 = m5095 + 0.2
        rec.map50_95 = m5095
        rec.ap_small = m5095 - 0.15
        rec.ap_medium, rec.ap_large = m5095, m5095 + 0.1
        rec.precision, rec.recall, rec.train_seconds = 0.6, 0.5, 380.0
    return rec.to_dict()


def write_results(root: Path, records: list[dict]) -> Path:
    """The records, and one synthetic measurement-phase latency per architecture."""
    runs = root / RUNS
    for d in records:
        directory = runs / d["key"]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / RECORD).write_text(json.dumps(d, indent=2))
    store = root / MEASURES / "torch-synthetic"
    store.mkdir(parents=True, exist_ok=True)
    for d in {d["arch_key"]: d for d in records}.values():
        ms = 10 + (0 if d["attn"] == "none" else 1 + ATTNS.index(d["attn"]))
        entry = {
            "arch_key": d["arch_key"],
            "latency_ms": ms,
            "latency_p10_ms": ms - 0.2,
            "latency_p90_ms": ms + 0.3,
            "latency_ratio": ms / 10,
            "latency_backend": "torch",
            "latency_device": "synthetic CPU",
            "latency_dtype": "float32",
            "latency_batch": 1,
            "latency_threads": 2,
            "phase": "2026-01-01T00:00:00+00:00",
        }
        (store / f"{d['arch_key']}.json").write_text(json.dumps(entry))
    return root


def time_cli(root: Path, repeats: int) -> list[tuple[float, float, float]]:
    """(wall s, CPU s of the process and its workers, 1-min load average before) per repeat of
    ``python -m ablate.report --results root -q`` in a fresh interpreter."""
    out = []
    for _ in range(repeats):
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ablate.report", "--results", str(root), "-q"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        out.append((wall, cpu, load))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="results root to write (or reuse) and keep")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="table_bench_") as tmp:
        root = args.keep or Path(tmp)
        if not (root / RUNS).is_dir():
            start = time.perf_counter()
            write_results(root, synthetic_records(args.records))
            took = time.perf_counter() - start
            print(f"wrote {args.records} synthetic records under {root / RUNS} in {took:.1f} s")
        runs = time_cli(root, args.repeats)
        for wall, cpu, load in runs:
            print(f"  python -m ablate.report: {wall:.2f} s wall, {cpu:.2f} s CPU (load before: {load:.2f})")
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from ..report import make_tables

        start = time.perf_counter()
        report = make_tables(root)  # logs its phase times
        inproc = time.perf_counter() - start
    walls = sorted(w for w, _, _ in runs)
    print(
        f"make table, {args.records} records, {os.cpu_count()} CPUs: {statistics.median(walls):.2f} s "
        f"median wall end to end (fresh interpreter, imports included; best {walls[0]:.2f} s); "
        f"{inproc:.2f} s in process after imports; {len(report.summary)} configurations, "
        f"{len(report.figures)} figure files"
    )


if __name__ == "__main__":
    main()
