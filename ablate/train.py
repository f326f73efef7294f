"""Training and validation through ultralytics' own trainer and validator, made offline-safe."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .measure.device import is_ddp, parts
from .weights import apply_transfer

log = logging.getLogger(__name__)

# our names for ultralytics' final validation metrics
METRICS = {
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
    "map50": "metrics/mAP50(B)",
    "map50_95": "metrics/mAP50-95(B)",
}


def offline_safe() -> None:
    """Keep ultralytics from reaching the network: no hub sync, no own wandb callback, no AMP download.

    ``YOLO_OFFLINE`` stops ultralytics' online checks; its AMP self-check (CUDA only) would download a
    model, so a failure there must mean "skip the check", never "fail the run". While ``YOLO_OFFLINE`` is
    set that download is not even tried: ultralytics would try the connection first (up to 30 s per run
    where the network drops packets) and only then notice it is offline. Its check of GPUs known to break
    AMP still runs.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.engine import trainer as trainer_module
    from ultralytics.utils import SETTINGS, downloads, env_bool

    for key, value in (("sync", False), ("hub", False), ("wandb", False)):
        if key in SETTINGS and SETTINGS[key] != value:
            dict.__setitem__(SETTINGS, key, value)  # in memory only: SETTINGS[key] = … would save the file

    original = getattr(trainer_module.check_amp, "__wrapped_by_ablate__", trainer_module.check_amp)

    def no_download(url: Any, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError(f"offline (YOLO_OFFLINE): {url} not downloaded")

    def check_amp(model: Any) -> bool:
        fetch = downloads.safe_download
        if env_bool("YOLO_OFFLINE"):
            downloads.safe_download = no_download  # what ultralytics' asset download calls
        try:
            return original(model)
        except Exception as e:  # an offline machine cannot fetch the AMP check model
            log.warning("AMP self-check skipped (%s); keeping amp=True", e)
            return True
        finally:
            downloads.safe_download = fetch

    check_amp.__wrapped_by_ablate__ = original
    trainer_module.check_amp = check_amp


ABLATE_KEYS = ("name", "extra", "init", "base", "threads")


def train_args(train: dict[str, Any], seed: int, project: Path) -> dict[str, Any]:
    """ultralytics ``model.train`` keyword arguments from our ``train`` config group (without ablate's own
    keys: the preset's name, how training starts, the base run's settings, the thread count)."""
    args = {k: v for k, v in train.items() if k not in ABLATE_KEYS and v is not None}
    args.update(train.get("extra") or {})
    args.update(
        seed=seed,
        deterministic=True,
        project=str(project.parent),
        name=project.name,
        exist_ok=True,
        plots=False,
        verbose=False,
    )
    return args


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (ultralytics would otherwise retry and carry on)."""


def nan_guard(trainer: Any) -> None:
    """ultralytics callback (``on_train_epoch_end``): stop the run when the mean epoch loss is not finite."""
    losses = trainer.tloss
    if losses is None:
        return
    values = losses.values() if isinstance(losses, dict) else [losses]
    flat = torch.cat([torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in values])
    if not torch.isfinite(flat).all():
        raise NonFiniteLossError(f"non-finite training loss {flat.tolist()} at epoch {trainer.epoch + 1}")


def last_epoch_loss(trainer: Any) -> float | None:
    """The trainer's mean training loss over its last epoch, summed over the loss terms (box, cls, dfl)."""
    losses = getattr(trainer, "tloss", None)
    if losses is None:
        return None
    values = losses.values() if isinstance(losses, dict) else [losses]
    return round(sum(float(torch.as_tensor(v, dtype=torch.float32).sum()) for v in values), 5)


def resumable_epoch(last: Path) -> int | None:
    """The epoch an interrupted run's ``last.pt`` can resume after, or None (absent, finished, corrupt)."""
    if not last.is_file():
        return None
    from .weights import load_torch_file

    try:
        ckpt = load_torch_file(last)  # as ultralytics will load it to resume (ULTRALYTICS_SAFE_LOAD)
        epoch = int(ckpt.get("epoch", -1))
    except Exception as e:  # a checkpoint cut short by a kill is not an error: start over
        log.warning("ignoring unreadable %s (%s)", last, e)
        return None
    return epoch if epoch >= 0 else None


def trim_results_csv(path: Path, epochs: int) -> None:
    """Drop the rows of ultralytics' ``results.csv`` after epoch ``epochs`` (1-based).

    ultralytics writes an epoch's row before its ``last.pt``: a run killed between the two resumes from the
    epoch before and would log that epoch twice.
    """
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [
        ln for ln in lines[1:] if ln.split(",", 1)[0].strip().isdigit() and int(ln.split(",", 1)[0]) <= epochs
    ]
    if len(keep) != len(lines):
        path.write_text("".join(keep))


def timing_callbacks(timings: dict[str, float]) -> dict[str, list[Callable[[Any], None]]]:
    """Callbacks that note when training starts, when its first step starts, and when it ends."""

    def first_step(trainer: Any) -> None:
        timings.setdefault("first_step", time.time())

    return {
        "on_train_start": [lambda trainer: timings.setdefault("train_start", time.time())],
        "on_train_batch_start": [first_step],
        "on_train_end": [lambda trainer: timings.__setitem__("train_end", time.time())],
    }


def thread_callbacks(requested: int | None, seen: dict[str, int]) -> dict[str, list[Callable[[Any], None]]]:
    """Set the CPU threads once ultralytics has chosen its own (``select_device``: cores − 1, at most 8)
    when ``requested``, and note the count training runs with in ``seen["train"]``."""

    def set_threads(trainer: Any) -> None:
        if requested:
            torch.set_num_threads(int(requested))

    return {
        "on_pretrain_routine_start": [set_threads],
        "on_train_start": [lambda trainer: seen.__setitem__("train", torch.get_num_threads())],
    }


def train_and_validate(
    model_yaml: Path,
    data_yaml: str,
    train: dict[str, Any],
    seed: int,
    project: Path,
    initial_state: dict[str, torch.Tensor] | None = None,
    callbacks: dict[str, list[Callable[[Any], None]]] | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Train ``model_yaml`` on ``data_yaml`` with ultralytics; return the reported metrics and time.

    The metrics are those of the checkpoint and split :func:`ablate.measure.coco.evaluation_plan` reports
    (``evaluated``): never of a checkpoint selected on the split it is scored on (:func:`reported_metrics`).

    ``initial_state`` (composed-model names, from :func:`ablate.weights.plan_transfer`) starts training
    from pretrained tensors: the model is built under ``seed`` (so what is not transferred is initialised
    by the seed, as without weights), the tensors are loaded, and ultralytics' trainer seeds its model from
    it (:class:`ablate.detection_trainer.AblateTrainer` checks that every tensor arrives). ``callbacks`` maps
    ultralytics event names (``on_fit_epoch_end``, ...) to extra callbacks. With
    ``resume``, an interrupted earlier attempt in ``project`` (killed, preempted) continues from its
    ``last.pt``; otherwise, or when that checkpoint is unusable, ``project`` is cleared and training starts
    over. A non-finite loss stops training with :class:`NonFiniteLossError`.
    """
    from ultralytics import YOLO

    import modules  # noqa: F401  (module classes must resolve when ultralytics parses the YAML)

    from .detection_trainer import AblateTrainer
    from .families import head_args
    from .progress import progress_callbacks

    offline_safe()
    last = project / "weights" / "last.pt"
    resumed_from = resumable_epoch(last) if resume else None
    args = train_args(train, seed, project)
    if resumed_from is not None:
        log.info("resuming the interrupted run in %s after epoch %d", project, resumed_from + 1)
        trim_results_csv(project / "results.csv", resumed_from + 1)
        model = YOLO(str(last), task="detect")
        args["resume"] = True
    else:
        if project.exists():
            shutil.rmtree(project)  # leftovers of an interrupted attempt
        start_build = time.time()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = YOLO(str(model_yaml), task="detect")
        built = time.time()
        if initial_state is not None:
            apply_transfer(model.model, initial_state)  # every tensor must land (ablate.weights)
            model.load(model.model)  # ultralytics' trainer now seeds its model from this one
    timings: dict[str, float] = {}
    if resumed_from is None:
        timings.update(ultralytics_build_start=start_build, ultralytics_model_built=built)
    threads: dict[str, int] = {}
    events: dict[str, list[Callable[[Any], None]]] = {"on_train_epoch_end": [nan_guard]}
    extras = [thread_callbacks(train.get("threads"), threads), timing_callbacks(timings), callbacks or {}]
    extras.append(progress_callbacks())  # a sweep job's epoch in its progress.json (ablate.progress)
    if is_ddp(train.get("device")):
        # ultralytics pickles the callbacks into its DDP workers, where closures over this process's
        # state (timings, the wandb run) would act on copies: only the NaN guard goes along
        log.info("DDP on devices %s: per-epoch tracking callbacks stay in this process", train.get("device"))
        extras = []
    for extra in extras:
        for event, funcs in extra.items():
            events.setdefault(event, []).extend(funcs)
    for event, funcs in events.items():
        for func in funcs:
            model.add_callback(event, func)
    cuda = torch.cuda.is_available() and parts(train.get("device")) not in (["cpu"], ["mps"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    args.update(head_args(model.model))  # validate an end-to-end head (YOLO26) on its own output, no NMS
    start = time.perf_counter()
    model.train(data=data_yaml, trainer=AblateTrainer, **args)
    seconds = time.perf_counter() - start
    metrics, evaluated = reported_metrics(
        dict(model.trainer.metrics or {}), train, data_yaml, Path(model.trainer.save_dir)
    )
    out: dict[str, Any] = {k: _float(metrics.get(v)) for k, v in METRICS.items()}
    out["evaluated"] = evaluated
    out["train_seconds"] = round(seconds, 2)
    out["train_threads"] = threads.get("train")
    out["train_loss"] = last_epoch_loss(model.trainer)
    out["save_dir"] = str(model.trainer.save_dir)
    out["resumed_from_epoch"] = None if resumed_from is None else resumed_from + 1
    out["timings"] = timings
    out["peak_memory_train_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
    return out


def reported_metrics(
    final: dict[str, Any], train: dict[str, Any], data_yaml: str, save_dir: Path
) -> tuple[dict[str, Any], str]:
    """The metrics a run reports and the record's ``evaluated``, from ultralytics' ``final`` metrics.

    ultralytics' final validation scores ``best.pt`` on val. Without per-epoch validation ``best.pt`` is
    the final epoch (:mod:`ablate.measure.coco`), so those metrics are the last epoch's on val as they are.
    With it, ``best.pt`` was selected on val: :func:`validate` scores the plan's checkpoint on its split
    instead (best.pt on a labelled test split, else last.pt on val).
    """
    from .measure.coco import evaluation_plan, validates_each_epoch

    plan = evaluation_plan(train, data_yaml)
    if not validates_each_epoch(train):
        return final, plan.evaluated
    log.info("reporting %s on the %s split (%s)", plan.checkpoint, plan.split, plan.evaluated)
    metrics = validate(save_dir / "weights" / plan.checkpoint, data_yaml, plan.split, train, save_dir)
    return metrics, plan.evaluated


def validate(
    weights: Path, data_yaml: str, split: str, train: dict[str, Any], save_dir: Path
) -> dict[str, Any]:
    """ultralytics' validator on ``split`` with the checkpoint ``weights``, as the trainer's final validation
    runs it (batch twice the training batch; one device); its metrics (``metrics/mAP50(B)``, ...)."""
    from ultralytics import YOLO

    import modules  # noqa: F401  (checkpoints pickle our module classes)

    device = train.get("device")
    if is_ddp(device):  # the validator runs on one device
        device = (device if isinstance(device, list | tuple) else str(device).split(","))[0]
    kwargs: dict[str, Any] = dict(
        data=data_yaml,
        split=split,
        imgsz=int(train["imgsz"]),
        batch=2 * int(train["batch"]),
        workers=int(train.get("workers") or 0),
        plots=False,
        verbose=False,
        project=str(save_dir),
        name=f"val-{split}",
        exist_ok=True,
    )
    if device is not None:
        kwargs["device"] = device
    return dict(YOLO(str(weights), task="detect").val(**kwargs).results_dict)


def _float(v: Any) -> float | None:
    return None if v is None else float(v)
