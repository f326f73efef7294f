"""One experiment end to end, as a linear pipeline: compose → (train → evaluate) → cost → record.

One failure path (:func:`finish`) writes the record and finishes tracking, once, whatever happened."""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
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
from .records import RunRecord, git_sha, now, read_record, run_dir, run_lock, versions, write_record
from .tracking import Tracker, start_run
from .weights import Transfer, plan_transfer, read_checkpoint

log = logging.getLogger(__name__)

MODEL_YAML = "model.yaml"
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


def ensure_base(exp: Experiment) -> RunRecord | None:
    """The base run a warm start fine-tunes (None when ``exp`` does not warm-start)."""
    return chosen_base(exp) if exp.warm else None


def chosen_base(exp: Experiment) -> RunRecord:
    """Train (or find cached) every base candidate of ``exp``; return the one with the lowest final
    training loss (ties: the lower seed). The val split is never looked at.

    From scratch, whether a short schedule takes off depends on the seed: a candidate that does not ends
    with a training loss far above one that does, so the choice is clear-cut (README, "The default
    protocol"). Each candidate is an ordinary run under its own lock. Raises AblateError when no
    candidate succeeded (a candidate that failed earlier in the same sweep is not tried again).
    """
    records = []
    for candidate in exp.base_candidates():
        previous = read_record(run_dir(candidate.results_dir, candidate.key))
        if previous is not None and previous.status == "failed" and exp.sweep and previous.sweep == exp.sweep:
            records.append(previous)
            continue
        records.append(execute(dataclasses.replace(candidate, force=False), record_errors=True))
    ok = [r for r in records if r is not None and r.status == "ok" and r.train_loss is not None]
    if not ok:
        errors = "; ".join(f"{r.key}: {r.error}" for r in records if r is not None)
        raise AblateError(f"no warm-start base candidate of this configuration trained: {errors}")
    best = min(ok, key=lambda r: (r.train_loss, r.seed))
    if len(records) > 1:
        losses = ", ".join(f"seed {r.seed}: {r.train_loss:.3f}" for r in ok)
        log.info("warm-start base: run %s (final training loss %s)", best.key, losses)
    return best


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


def cached_record(exp: Experiment) -> RunRecord | None:
    """The ``ok`` record of this experiment's run key, unless ``force`` asks for a re-run."""
    previous = read_record(run_dir(exp.results_dir, exp.key))
    if previous is not None and previous.status == "ok" and not exp.force:
        previous.cached = True
        return previous
    return None


def execute(exp: Experiment, cfg: DictConfig | None = None, record_errors: bool = False) -> RunRecord | None:
    """Run one experiment. Returns its record (None for ``action=inspect``; ``record.cached`` when reused).

    Bad input raises :class:`AblateError` before anything is written, unless ``record_errors`` (sweeps):
    then a model that does not build is recorded as ``failed`` like any other failure. Failures during
    training are caught and recorded as ``status=failed`` with the error and a ``traceback.txt``. The run
    directory is locked while the run executes, so two jobs with the same key never train it twice.
    """
    started = time.time()
    names = dataset_names(exp.dataset)
    if exp.action == "base":
        return chosen_base(exp)
    if exp.action == "inspect":
        d, model = composed_model(exp, len(names))
        transfer = weights_transfer(exp, d, model)  # model.weights only: inspect trains no base run
        print(f"{exp.model} + attn={exp.attn} pos={exp.pos}: {count_params(model):,} parameters")
        print(inspect_table(d, model))
        if transfer is not None:
            print(transfer.line())
        return None
    cached = cached_record(exp)
    if cached is not None:
        log.info("cached: run %s already has an ok record (force=true re-runs)", cached.key)
        return cached
    try:
        d, model = composed_model(exp, len(names))
        base_run = ensure_base(exp)
        transfer = weights_transfer(exp, d, model, base_run)
    except AblateError as e:
        if not record_errors:
            raise
        return record_failure(exp, base_record(exp, exp.key, None, None), e)

    directory = run_dir(exp.results_dir, exp.key)
    with run_lock(directory) as waited:
        if waited:
            log.info("run %s was running in another job; waited for it", exp.key)
            again = cached_record(dataclasses.replace(exp, force=False))
            if again is not None:
                return again
        record = base_record(exp, exp.key, model, d)
        record.init = "warm" if base_run is not None else "weights" if transfer is not None else "scratch"
        record.init_run = base_run.key if base_run is not None else None
        if transfer is not None:
            record.update(transfer.record_fields())
        record.timings["job_start"] = started
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
            progress.report(phase="preparing data")  # a sweep job's progress.json (no-op in a single run)
            data_yaml = materialize_dataset(exp)
            trained = train(exp, data_yaml, directory, transfer, tracker)
            record.update({**trained, "timings": {**record.timings, **trained["timings"]}})
            if exp.measure.get("coco_eval", True) and exp.role != "base":  # a base run is not tabulated
                progress.report(phase="evaluating")
                record.update(evaluate(exp, data_yaml, directory))
        from .measure.cost import cost_fields

        progress.report(phase="measuring cost")

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
    """COCO AP overall and by object size of the checkpoint the run reports, on the split it reports it on
    (:func:`ablate.evaluation.evaluation_plan`: the last epoch on val, or best-on-val on test), and the
    record's ``evaluated`` saying which."""
    from .evaluation import ap_by_size, evaluation_plan

    plan = evaluation_plan(exp.train, data_yaml)
    weights = directory / ULTRALYTICS_DIR / "weights" / plan.checkpoint
    ap = ap_by_size(data_yaml, weights, int(exp.train["imgsz"]), directory / PREDICTIONS, split=plan.split)
    return {**ap, "evaluated": plan.evaluated}


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
