"""One experiment end to end, as a linear pipeline: compose → (train → evaluate) → cost → record.

One failure path (:func:`finish`) writes the record and finishes tracking, once, whatever happened. A warm
start's base run is found by :mod:`ablate.warm` (which calls :func:`execute` for the base candidates and
then for the warm start with ``base_run``); this module never chooses one."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

import modules

from . import datasets, progress
from .compose import (
    base_model_yaml,
    build_model,
    compose,
    count_params,
    format_table,
    layer_table,
    marks,
    placement_strides,
    write_yaml,
)
from .errors import AblateError
from .experiment import Experiment
from .families import family_of
from .paths import MODEL_YAML
from .records import (
    RECORD,
    RunRecord,
    Seen,
    git_sha,
    made_this_invocation,
    now,
    parse_record,
    read_bytes,
    run_dir,
    run_lock,
    versions,
    write_record,
)
from .tracking import Tracker, start_run
from .weights import Transfer, plan_transfer, read_checkpoint

log = logging.getLogger(__name__)


CONFIG_YAML = "config.yaml"
ULTRALYTICS_DIR = "ultralytics"
PREDICTIONS = "predictions.json"
# what train_and_validate returns that the record keeps as is
TRAIN_RESULT_FIELDS = (
    "map50",
    "map50_95",
    "precision",
    "recall",
    "train_seconds",
    "train_threads",
    "train_loss",
    "peak_memory_train_mb",
)


def dataset_names(dataset: dict[str, Any]) -> list[str]:
    """Class names of the dataset, read without generating or downloading anything."""
    return datasets.class_names(dataset.get("path") or str(dataset.get("generator") or dataset.get("name")))


def composed_model(exp: Experiment, nc: int) -> tuple[dict[str, Any], torch.nn.Module]:
    """Composed YAML dict and the model built from it, after a forward at the run's image size."""
    d = compose(base_model_yaml(exp.model, nc), exp.placement, exp.model)
    try:
        model = build_model(d)
    except (ValueError, AssertionError, RuntimeError) as e:
        raise AblateError(f"{exp.model} with attn={exp.attn} does not build: {e}") from None
    fail_fast(model, int(exp.train["imgsz"]), exp)
    return d, model


def fail_fast(model: torch.nn.Module, imgsz: int, exp: Experiment) -> None:
    """One forward (train and eval mode) at the run's image size, before any dataset work.

    The model is left as it was: the train-mode forward's BatchNorm statistics are put back.
    """
    stride = int(max(model.stride))
    size = max(stride, (imgsz + stride - 1) // stride * stride)  # as ultralytics rounds imgsz up
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            model.train()(torch.zeros(1, 3, size, size))
            model.eval()(torch.zeros(1, 3, size, size))
    except Exception as e:
        raise AblateError(f"{exp.model} with attn={exp.attn} fails a forward at {size}px: {e}") from None
    finally:
        model.load_state_dict(buffers)


def weights_transfer(
    exp: Experiment, d: dict[str, Any], model: torch.nn.Module, base_run: RunRecord | None = None
) -> Transfer | None:
    """Where the starting checkpoint's tensors go in the composed model: the warm start's ``base_run``,
    or ``model.weights`` (None when the run starts from scratch).

    Raises AblateError for a file that is no checkpoint or, when strict, a tensor that cannot be placed.
    """
    if base_run is not None:
        path, strict = run_dir(exp.results_dir, base_run.key) / ULTRALYTICS_DIR / "weights" / "best.pt", True
    elif exp.weights:
        path, strict = Path(exp.weights), exp.weights_strict
    else:
        return None
    ckpt = read_checkpoint(path)
    base = build_model(base_model_yaml(exp.model, int(d["nc"])))
    transfer = plan_transfer(ckpt, base, d, model, exp.model, strict=strict)
    log.info("%s", transfer.line())
    return transfer


def inspect_table(d: dict[str, Any], model: torch.nn.Module) -> str:
    marked = marks(d)
    table = [r.__class__(**{**r.__dict__, "mark": marked.get(r.index, "")}) for r in layer_table(model)]
    return format_table(table)


def base_record(
    exp: Experiment, key: str, model: torch.nn.Module | None, d: dict[str, Any] | None
) -> RunRecord:
    """The record's identity and settings (``model``/``d`` are None when the model did not build)."""
    p = exp.placement
    return RunRecord(
        key=key,
        action=exp.action,
        model=exp.model,
        family=family_of(exp.model),
        scale=next(iter(d["scales"])) if d else "",
        attn=exp.attn,
        attn_params=dict(p.attn_kwargs) if p else {},
        attn_variant=modules.variant(p.attn, p.attn_kwargs) if p else "",
        pos=exp.pos,
        layers=list(p.layers) if p else [],
        strides=placement_strides(model, d, p.layers) if p and model is not None and d is not None else [],
        mode=p.mode if p else "none",
        dataset=str(exp.dataset.get("name")),
        seed=exp.seed,
        epochs=int(exp.train["epochs"]),
        imgsz=int(exp.train["imgsz"]),
        batch=int(exp.train["batch"]),
        train=str(exp.train.get("name", "")),
        config_key=exp.config_key,
        baseline_key=exp.baseline().config_key,
        train_hash=exp.train_hash,
        train_settings=exp.train_settings,
        sweep=exp.sweep,
        role=exp.role,
        params=count_params(model) if model is not None else None,
        arch_key=architecture_of(model, d, exp) if model is not None and d is not None else "",
        versions=versions(),
        git_sha=git_sha(),
        started_at=now(),
    )


def architecture_of(model: torch.nn.Module, d: dict[str, Any], exp: Experiment) -> str:
    """The key the measurement phase times this model under: composed YAML and measured input size."""
    from .measure.cost import stride_size
    from .measure.phase import architecture_key

    return architecture_key(d, stride_size(model, int(exp.measure["imgsz"])))


def materialize_dataset(exp: Experiment) -> str:
    """The data YAML for ultralytics: a user/ultralytics YAML, or the embedded dataset (generated once;
    ``generator`` names the embedded generator of a variant such as ``shapes_small``)."""
    spec = exp.dataset
    if spec.get("path"):
        return str(datasets.resolve_data_yaml(spec["path"]))
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "path", "generator", "generator_seed")}
    seed = spec.get("generator_seed", 0)
    generator = str(spec.get("generator") or spec["name"])  # a named variant of an embedded generator
    return str(datasets.make_dataset(generator, exp.data_dir, seed=seed, **kwargs))


@dataclass
class JobStart:
    """What a job knew when it started, kept until its run takes the lock: when it started (``job_start``
    in the record's timings), its run's record as it first read it (``force`` reuses a record written since:
    :func:`cached_record`) and, once built, the composed model."""

    at: float
    seen: Seen
    built: tuple[dict[str, Any], torch.nn.Module] | None = None


def job_start(exp: Experiment) -> JobStart:
    """The start of a job that runs ``exp``: now, and its record as it is now."""
    return JobStart(time.time(), Seen.read(run_dir(exp.results_dir, exp.key) / RECORD))


def build(exp: Experiment, start: JobStart) -> tuple[dict[str, Any], torch.nn.Module]:
    """The composed YAML and model of ``exp`` (:func:`composed_model`), built once per job."""
    if start.built is None:
        start.built = composed_model(exp, len(dataset_names(exp.dataset)))
    return start.built


def cached_record(exp: Experiment, seen: Seen | None = None) -> RunRecord | None:
    """The ``ok`` record of this experiment's run key when this job reuses it instead of running.

    Without ``force`` any ok record is reused. ``force=true`` re-runs once per invocation, not once per job
    that reaches the run: a forced job reuses an ok record made during this invocation, by a job of the
    same sweep or, given ``seen`` (the record as this job first read it), by any job since
    (:func:`ablate.records.made_this_invocation`).
    """
    raw = read_bytes(run_dir(exp.results_dir, exp.key) / RECORD)
    previous = parse_record(raw)
    if previous is None or previous.status != "ok":
        return None
    if exp.force and not made_this_invocation(raw, previous.sweep, exp.sweep, seen):
        return None
    previous.cached = True
    return previous


def execute(
    exp: Experiment,
    cfg: DictConfig | None = None,
    record_errors: bool = False,
    base_run: RunRecord | None = None,
    start: JobStart | None = None,
) -> RunRecord | None:
    """Run one experiment. Returns its record (None for ``action=inspect``; ``record.cached`` when reused).

    A warm start fine-tunes ``base_run``: job entry points call :func:`ablate.warm.execute`, which finds
    it (:func:`ablate.warm.base_for`) and passes the job's ``start`` (its model is built before the base
    trains, so a model that does not build fails in seconds). Bad input raises :class:`AblateError` before
    anything is written, unless ``record_errors`` (sweeps): then a model that does not build is recorded as
    ``failed`` like any other failure. Failures during training are caught and recorded as
    ``status=failed`` with the error and a ``traceback.txt``. The run directory is locked while the run
    executes, and the record is read again once the lock is held: a job with the same key that finished
    while this one started (built its model, found its base, waited for the lock) is reused
    (:func:`cached_record`), so two jobs never train one key twice.
    """
    if exp.action == "base" or (exp.warm and base_run is None):
        raise ValueError(
            f"run {exp.key} (action={exp.action}, train.init={exp.init}) needs its warm-start base: "
            "run it with ablate.warm.execute"
        )
    start = start if start is not None else job_start(exp)
    directory = run_dir(exp.results_dir, exp.key)
    if exp.action == "inspect":
        d, model = build(exp, start)
        transfer = weights_transfer(exp, d, model)  # model.weights only: inspect trains no base run
        print(f"{exp.model} + attn={exp.attn} pos={exp.pos}: {count_params(model):,} parameters")
        print(inspect_table(d, model))
        if transfer is not None:
            print(transfer.line())
        return None
    cached = cached_record(exp, start.seen)
    if cached is not None:
        log.info("cached: run %s already has an ok record (force=true re-runs)", cached.key)
        return cached
    try:
        d, model = build(exp, start)
        transfer = weights_transfer(exp, d, model, base_run)
    except AblateError as e:
        if not record_errors:
            raise
        return record_failure(exp, base_record(exp, exp.key, None, None), e)

    with run_lock(directory) as waited:
        if waited:
            log.info("run %s was running in another job; waited for it", exp.key)
        again = cached_record(exp, start.seen)  # always: it may have finished since the check above
        if again is not None:
            log.info("cached: run %s finished in another job while this one started", again.key)
            return again
        record = base_record(exp, exp.key, model, d)
        record.init = "warm" if base_run is not None else "weights" if transfer is not None else "scratch"
        record.init_run = base_run.key if base_run is not None else None
        if transfer is not None:
            record.update(transfer.record_fields())
        record.timings["job_start"] = start.at
        record.timings["model_built"] = time.time()
        return run_locked(exp, cfg, record, d, model, directory, transfer)


def run_locked(
    exp: Experiment,
    cfg: DictConfig | None,
    record: RunRecord,
    d: dict[str, Any],
    model: torch.nn.Module,
    directory: Path,
    transfer: Transfer | None = None,
) -> RunRecord:
    """The run itself, with the run directory locked: its files, then train → evaluate → cost, then
    :func:`finish` (also on failure: one failed run must not hide the others)."""
    write_run_files(exp, cfg, record.key, d, directory)
    config = cfg if cfg is not None else exp.spec()
    tracker = start_run(record, exp.logger, exp.results_dir, config)  # logger=none: a no-op tracker
    try:
        if exp.action == "train":
            progress.update(phase="preparing data")  # a sweep job's progress.json (no-op in a single run)
            data_yaml = materialize_dataset(exp)
            trained = train(exp, data_yaml, directory, transfer, tracker)
            record.update({**trained, "timings": {**record.timings, **trained["timings"]}})
            if exp.measure.get("coco_eval", True) and exp.role != "base":  # a base run is not tabulated
                progress.update(phase="evaluating")
                record.update(evaluate(exp, data_yaml, directory))
        from .measure.cost import cost_fields

        progress.update(phase="measuring cost")

        record.update(cost_fields(model, int(exp.measure["imgsz"])))
        record.status = "ok"
    except Exception as e:
        mark_failed(record, e, directory)
    return finish(record, directory, tracker)


def write_run_files(
    exp: Experiment, cfg: DictConfig | None, key: str, d: dict[str, Any], directory: Path
) -> None:
    """``model.yaml`` and ``config.yaml`` of the run; a previous attempt's record and traceback removed."""
    write_yaml(
        d, directory / MODEL_YAML, header=f"ablate {exp.model} + attn={exp.attn} pos={exp.pos} key={key}"
    )
    if cfg is not None:
        (directory / CONFIG_YAML).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    else:
        (directory / CONFIG_YAML).write_text(yaml.safe_dump(exp.spec(), sort_keys=False))
    for stale in ("record.json", "traceback.txt"):
        (directory / stale).unlink(missing_ok=True)


def train(
    exp: Experiment, data_yaml: str, directory: Path, transfer: Transfer | None, tracker: Tracker
) -> dict[str, Any]:
    """Train and validate; the record fields of the result (``timings`` to be merged)."""
    from .train import train_and_validate

    result = train_and_validate(
        directory / MODEL_YAML,
        data_yaml,
        exp.train,
        exp.seed,
        directory / ULTRALYTICS_DIR,
        initial_state=transfer.state if transfer is not None else None,
        callbacks=tracker.callbacks(),
        resume=not exp.force,
    )
    fields = {k: result[k] for k in TRAIN_RESULT_FIELDS}
    return {**fields, "resumed_from_epoch": result["resumed_from_epoch"], "timings": result["timings"]}


def evaluate(exp: Experiment, data_yaml: str, directory: Path) -> dict[str, Any]:
    """COCO AP overall and by object size of the run's best checkpoint on the val split."""
    from .evaluation import ap_by_size

    best = directory / ULTRALYTICS_DIR / "weights" / "best.pt"
    return ap_by_size(data_yaml, best, int(exp.train["imgsz"]), directory / PREDICTIONS)


def mark_failed(record: RunRecord, error: BaseException, directory: Path) -> None:
    """``record`` becomes ``failed`` with the error; the traceback goes to ``traceback.txt``."""
    directory.mkdir(parents=True, exist_ok=True)
    record.status, record.error = "failed", f"{type(error).__name__}: {error}"
    (directory / "traceback.txt").write_text("".join(traceback.format_exception(error)))
    log.error("run %s failed: %s", record.key, record.error)


def finish(record: RunRecord, directory: Path, tracker: Tracker | None = None) -> RunRecord:
    """The end of every run, ok or failed: the record written, tracking finished (once)."""
    record.finished_at = now()
    write_record(directory, record)
    if tracker is not None:
        tracker.finish(record)
    return record


def record_failure(exp: Experiment, record: RunRecord, error: BaseException) -> RunRecord:
    """A run that failed before it started (a model that does not build in a sweep): its record."""
    directory = run_dir(exp.results_dir, record.key)
    mark_failed(record, error, directory)
    return finish(record, directory)
