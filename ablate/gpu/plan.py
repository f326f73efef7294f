"""What ``python -m ablate.gpu_check`` runs: steps, their checks and time limits, the training commands and
the latency settings. Built without a GPU and without importing ultralytics or Hydra (``--list`` prints it
anywhere).

A **step** runs in a child process of its own with a time limit (a crash or a hang ends that step only);
it reports one **check** per line. Every check a step should report is known in advance, so a step that
runs out of time or dies still accounts for each of its checks ("not run").
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..paths import CONF_DIR

ROOT = CONF_DIR.parent  # the checkout: conf/, ablate/, modules/, tests/
TESTS_DIR = ROOT / "tests"
GPU_MARK = "pytest.mark.gpu"

# the five attention modules of the study (README): the latency step times these and the baseline
LATENCY_MODULES = ("area", "fla", "halo", "rala", "tssa")
DTYPES = ("float16", "bfloat16", "half")  # autocast to float16 / bfloat16, and a float16 model (.half())

# (channels, height, width) of the inputs: neck-sized maps (40x40 is P3 at 320 px, 20x20 P3 at 160 px or
# P4 at 320 px); batch 2, unit-scale inputs as the insertion wrapper's LayerNorm hands them over
SHAPES: tuple[tuple[int, int, int], ...] = ((128, 40, 40), (256, 20, 20))
BATCH = 2

# Bounds on the relative error per module and way. PROVISIONAL: 4x the largest error measured on a CPU
# (torch 2.14.1, seed 0, SHAPES; float16 6.2e-4..8.2e-4, bfloat16 4.6e-3..6.0e-3, half 6.2e-4..8.1e-4
# over the modules), rounded up. The first run on a GPU prints the CUDA errors: replace these by about 2x
# those measurements (and keep tests/test_gpu_check.py's copy of the table in step).
BOUNDS: dict[str, dict[str, float]] = {
    "area": {"float16": 3e-3, "bfloat16": 2.5e-2, "half": 3e-3},
    "fla": {"float16": 3e-3, "bfloat16": 2.5e-2, "half": 3e-3},
    "halo": {"float16": 4e-3, "bfloat16": 2.5e-2, "half": 4e-3},
    "mhsa": {"float16": 3e-3, "bfloat16": 2.5e-2, "half": 3e-3},
    "rala": {"float16": 3e-3, "bfloat16": 2.5e-2, "half": 3e-3},
    "tssa": {"float16": 3e-3, "bfloat16": 2.5e-2, "half": 3e-3},
}
STATUSES = ("ok", "fail", "skip")


def attention_names() -> list[str]:
    """Every attention a run can select (``conf/attn/*.yaml`` except the controls, ``kind: control``; the
    registry's :func:`modules.attentions` holds the same names, which the precision step checks)."""
    import yaml

    files = [p for p in (CONF_DIR / "attn").glob("*.yaml") if not p.name.startswith("_")]
    return sorted(p.stem for p in files if (yaml.safe_load(p.read_text()) or {}).get("kind") != "control")


def gpu_test_files(tests_dir: Path = TESTS_DIR) -> list[Path]:
    """The test files holding GPU-only tests (marked ``@pytest.mark.gpu``; skipped without CUDA)."""
    return sorted(p for p in tests_dir.glob("test_*.py") if GPU_MARK in p.read_text())


@dataclass(frozen=True)
class Options:
    """The knobs of one gpu-check (the defaults fit the 8-minute budget on one H200)."""

    budget_s: float = 420.0  # the whole check, every step included
    device: str = "cuda:0"
    # training: the quick protocol at imgsz with AMP, from a base trained here
    imgsz: int = 320
    epochs: int = 5  # fine-tuning epochs of every run
    base_epochs: int = 15  # the base run, from scratch (one candidate)
    jobs: int = 4  # sweep jobs at a time (joblib), all on the one GPU
    workers: int = 2  # dataloader workers per job
    threads: int = 2  # torch CPU threads per job
    images: int | None = None  # train and val images of the dataset (None: the dataset's own, 256 each)
    # latency: the measurement phase at latency_imgsz
    latency_imgsz: int = 640
    batches: tuple[int, ...] = (1, 16)
    rounds: int = 10
    passes: int = 10
    warmup: int = 10
    min_time_s: float = 1.0
    only: tuple[str, ...] = ()  # steps to run (default: all)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Options:
        d = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class Step:
    """One child process: its name, what it does, its time limit and the checks it reports."""

    name: str
    what: str
    limit_s: float
    checks: tuple[str, ...]
    detail: tuple[str, ...] = ()  # extra lines for --list (commands, bounds)


@dataclass
class Line:
    """One check's outcome: one line of the report (``data`` goes to the CSV files and summary.json)."""

    check: str
    status: str  # ok | fail | skip
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not valid; valid: {', '.join(STATUSES)}")

    def format(self) -> str:
        mark = {"ok": "ok", "fail": "FAIL", "skip": "skip"}[self.status]
        return f"[{mark:<4}] {self.check:<24} {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------- training

TRAIN_CHECKS_BASE = ("train base", "train baseline")


def train_checks(names: list[str]) -> tuple[str, ...]:
    """The training step's checks: the base, the baseline, every module at neck, area replacing A2C2f's."""
    return (*TRAIN_CHECKS_BASE, *(f"train {m}@neck" for m in names), "train area@a2c2f")


def common_overrides(opts: Options, results: str, data: str) -> list[str]:
    """Overrides of every training run: the quick protocol (warm start) at ``imgsz`` with AMP, shortened."""
    return [
        "dataset=shapes",
        "seed=0",
        f"dataset.imgsz={opts.imgsz}",
        f"train.imgsz={opts.imgsz}",
        f"train.epochs={opts.epochs}",
        f"train.base.epochs={opts.base_epochs}",
        "train.base.candidates=1",
        "train.amp=true",
        f"train.workers={opts.workers}",
        f"train.threads={opts.threads}",
        "logger=none",
        f"results.dir={results}",
        f"data.dir={data}",
        *(
            [f"dataset.train_images={opts.images}", f"dataset.val_images={opts.images}"]
            if opts.images
            else []
        ),
    ]


def train_commands(opts: Options, names: list[str], results: str, data: str) -> dict[str, list[str]]:
    """The two CLI invocations of the training step (``python -m ablate`` arguments).

    ``sweep``: every module at neck as the demo runs it (joblib, the baseline and the base run added by
    the sweep; ``train.device=null`` so that each job is placed on a GPU as the launcher does);
    ``a2c2f``: area attention replacing YOLO12's inside A2C2f, a single run that fine-tunes the same base
    (the run lock makes it wait for the base if the sweep is training it).
    """
    common = common_overrides(opts, results, data)
    sweep = [
        "-m",
        f"+attn={','.join(names)}",
        "+pos=neck",
        *common,
        "train.device=null",
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={opts.jobs}",
        "hydra.callbacks.sweep_summary.table=false",
        "measure.latency.after_sweep=false",
        "live=false",
    ]
    device = opts.device.split(":")[-1] if opts.device.startswith("cuda") else opts.device
    a2c2f = ["+attn=area", "+pos=a2c2f", *common, f"train.device={device}"]
    return {"sweep": sweep, "a2c2f": a2c2f}


# -------------------------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyCase:
    """One setting of the measurement phase in the latency step."""

    backend: str
    half: bool
    batch: int

    @property
    def check(self) -> str:
        if self.backend == "tensorrt":
            return "latency tensorrt"
        return f"latency {self.backend} {'fp16' if self.half else 'fp32'} b{self.batch}"


def latency_cases(opts: Options) -> list[LatencyCase]:
    """torch fp32 and fp16 at every batch, then TensorRT fp16 at the first batch (where it is installed)."""
    cases = [LatencyCase("torch", half, b) for b in opts.batches for half in (False, True)]
    return [*cases, LatencyCase("tensorrt", True, opts.batches[0])]


# ------------------------------------------------------------------------------------------------ plan

LIMITS = {"precision": 60.0, "gpu-tests": 90.0, "latency": 150.0, "train": 330.0}
STEP_NAMES = tuple(LIMITS)
MIN_STEP_S = 20.0  # a step with less time left than this is not started


def build_plan(opts: Options, tests_dir: Path = TESTS_DIR) -> list[Step]:
    """The steps of one gpu-check, in the order they run (cheap and independent first)."""
    unknown = [s for s in opts.only if s not in STEP_NAMES]
    if unknown:
        raise ValueError(f"step {unknown[0]!r} is not valid; valid: {', '.join(STEP_NAMES)}")
    names = attention_names()
    shapes = ", ".join(f"C={c} {h}x{w}" for c, h, w in SHAPES)
    bounds = [f"{'module':<8}" + "".join(f"{d + ' bound':>16}" for d in DTYPES)] + [
        f"{m:<8}" + "".join(f"{BOUNDS.get(m, {}).get(d, float('nan')):>16.1e}" for d in DTYPES) for m in names
    ]
    files = [
        str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in gpu_test_files(tests_dir)
    ]
    cases = latency_cases(opts)
    commands = train_commands(opts, names, "WORK/results", "WORK/data")
    steps = [
        Step(
            "precision",
            "each module's forward under autocast float16 and bfloat16, and as a float16 model (.half(), as "
            f"half=True inference runs it), against float32 with the same weights ({shapes}, batch 2, eval): "
            "max |y - y32| / max |y32| within the module's bound",
            LIMITS["precision"],
            tuple(f"precision {m}" for m in names),
            tuple(bounds),
        ),
        Step(
            "gpu-tests",
            "the suite's GPU-only tests (skipped without CUDA): python -m pytest -m gpu " + " ".join(files),
            LIMITS["gpu-tests"],
            ("gpu tests",),
        ),
        Step(
            "latency",
            f"the measurement phase on {opts.device} at {opts.latency_imgsz} px: baseline and "
            f"{', '.join(LATENCY_MODULES)} at neck, torch float32 / float16 x batch "
            f"{' / '.join(map(str, opts.batches))}, {opts.rounds} rounds x {opts.passes} passes after "
            f"{opts.warmup} warm-up (at least {opts.min_time_s:g} s each); TensorRT where installed",
            LIMITS["latency"],
            tuple(c.check for c in cases),
        ),
        Step(
            "train",
            f"the quick protocol at {opts.imgsz} px with AMP on {opts.device}: a base from scratch "
            f"({opts.base_epochs} epochs, one candidate), then {opts.epochs}-epoch fine-tuning of the "
            "baseline, every module at neck and area replacing A2C2f's attention: finite losses, no NaN "
            "guard, mAP recorded",
            LIMITS["train"],
            train_checks(names),
            tuple(f"python -m ablate {' '.join(args)}" for args in commands.values()),
        ),
    ]
    return [s for s in steps if not opts.only or s.name in opts.only]


def format_plan(steps: list[Step], opts: Options) -> str:
    """The plan as ``--list`` prints it: every step, its limit, its checks and details."""
    n = sum(len(s.checks) for s in steps)
    lines = [f"gpu-check plan: {len(steps)} steps, {n} checks, budget {opts.budget_s:.0f} s"]
    for s in steps:
        lines.append(f"{s.name} (limit {s.limit_s:.0f} s): {s.what}")
        lines.extend(f"    {d}" for d in s.detail)
        lines.append(f"    checks: {', '.join(s.checks)}")
    return "\n".join(lines)
