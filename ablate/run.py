"""One run, top to bottom: resolve → compose → (base) → train → evaluate → measure → record.

:func:`execute` is the run, one step a line; :class:`Attempt` is its failure policy, in one place: what is
raised, what is recorded ``failed``, and that the record is written and tracking finished once, ok or not.
A warm start's base run is chosen before the run by :mod:`ablate.warm` (or trained first by the planner's
base jobs) and handed in; ``action=inspect`` prints a model and runs nothing (:func:`ablate.cli.inspect`);
the latency of ``action=profile`` is the measurement phase's (:func:`ablate.measure.phase.profile`).
"""

from __future__ import annotations

import logging
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

import modules

from . import data_identity, datasets, progress
from .compose import compose, write_yaml
from .errors import AblateError
from .experiment import Experiment
from .families import family_of
from .measure.cost import cost_fields
from .measure.model import base_model_yaml, build_model, model_fields
from .paths import MODEL_YAML
from .records import (
    RECORD,
    RunRecord,
    Seen,
    git_sha,
    now,
    reusable_record,
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
TRACEBACK = "traceback.txt"
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
    "evaluated",
)


def execute(
    exp: Experiment,
    cfg: DictConfig | None = None,
    record_errors: bool = False,
    base_run: RunRecord | None = None,
    start: JobStart | None = None,
) -> RunRecord:
    """Run one experiment (``action`` train or profile) and return its record; ``record.cached`` when an ok
    record of its key was reused instead (:func:`ablate.records.reusable_record`).

    ``base_run`` is the run a warm start fine-tunes: :func:`ablate.warm.execute` finds it and passes the
    job's ``start`` (its model, built before the base trained). ``cfg`` is the Hydra config written to the
    run directory (the experiment's spec without it). What fails how: :class:`Attempt`; ``record_errors``
    (sweeps) records bad input as a failed run instead of raising it.
    """
    if exp.action == "inspect":
        raise ValueError("action=inspect runs nothing: ablate.cli.inspect prints the composed model")
    if exp.action == "base" or (exp.warm and base_run is None):
        raise ValueError(
            f"run {exp.key} (action={exp.action}, train.init={exp.train.get('init')}) needs its warm-start "
            "base: run it with ablate.warm.execute"
        )
    start = start if start is not None else job_start(exp)
    reused = reusable_record(
        exp.results_dir, exp.key, exp.force, exp.sweep, start.seen, data_identity.current(exp)
    )  # resolve
    if reused is not None:
        log.info("cached: run %s already has an ok record (force=true re-runs)", exp.key)
        return reused
    with Attempt(exp, start, record_errors) as attempt:
        d, model = start.built or composed_model(exp)  # compose
        transfer = weights_transfer(exp, d, model, base_run)  # (base)
        record = attempt.begin(cfg, d, model, transfer, base_run)  # the run starts, under its lock ...
        if record is None:  # ... unless another job finished it meanwhile
            return attempt.record
        if exp.action == "train":
            progress.update(phase="preparing data")  # a sweep job's progress.json (no-op in a single run)
            data_yaml = start.data_yaml or materialize_dataset(exp)
            record.update(data_identity.record_fields(data_yaml, exp.data_dir))  # what data it is
            record.update(train(exp, data_yaml, attempt.directory, transfer, attempt.tracker))  # train
            if exp.measure.get("coco_eval", True) and exp.role != "base":  # a base run is not tabulated
                progress.update(phase="evaluating")
                record.update(evaluate(exp, data_yaml, attempt.directory))  # evaluate
        progress.update(phase="measuring cost")
        record.update(cost_fields(model, int(exp.measure["imgsz"])))  # measure
    return attempt.record  # record: written when the attempt ends


class Attempt:
    """The failure policy of one run (:func:`execute` runs its steps inside one), in one place:

    * Until :meth:`begin`, the run has not started. Bad input found then (an :class:`AblateError`: a model
      that does not build, weights that do not fit, a warm-start base that cannot be had) is raised again
      and nothing is written, unless ``record_errors`` (sweeps): then the run is recorded ``failed`` like any
      other failure. Any other exception is raised again.
    * :meth:`begin` takes the run directory's lock and tests the record again: a job with the same key that
      finished while this one started (built its model, found its base, waited for the lock) is reused
      (:attr:`record` is that record, nothing is written); two jobs never train one key twice. Otherwise the
      run starts: the record gets its model's numbers, the run its files and its tracking.
    * From then on any exception is recorded: ``status=failed``, the error, and ``traceback.txt``.
    * At the end, ok or failed, the record is written and tracking finished, once; then the lock is released.
    """

    def __init__(self, exp: Experiment, start: JobStart | None = None, record_errors: bool = False) -> None:
        self.exp = exp
        self.start = start if start is not None else job_start(exp)
        self.record_errors = record_errors
        self.directory = run_dir(exp.results_dir, exp.key)
        self.record = new_record(exp)
        self.tracker = Tracker()  # no-op until the run starts
        self.begun = False
        self._lock = ExitStack()

    def __enter__(self) -> Attempt:
        return self

    def begin(
        self,
        cfg: DictConfig | None,
        d: dict[str, Any],
        model: torch.nn.Module,
        transfer: Transfer | None = None,
        base_run: RunRecord | None = None,
    ) -> RunRecord | None:
        """The run starts (see the class): its lock; its record, with the model's numbers and how it starts
        (``base_run``, ``model.weights`` or scratch); its files; tracking. Returns the record, or None when
        the run's ok record turned up under the lock (:attr:`record` is that record)."""
        exp, record = self.exp, self.record
        if self._lock.enter_context(run_lock(self.directory)):
            log.info("run %s was running in another job; waited for it", exp.key)
        reused = reusable_record(
            exp.results_dir, exp.key, exp.force, exp.sweep, self.start.seen, data_identity.current(exp)
        )
        if reused is not None:  # always tested: it may have finished since the test before the lock
            log.info("cached: run %s finished in another job while this one started", exp.key)
            self.record = reused
            return None
        self.begun = True
        layers = exp.placement.layers if exp.placement else ()
        record.update(model_fields(model, d, layers, int(exp.measure["imgsz"])))
        record.init = "warm" if base_run is not None else "weights" if transfer is not None else "scratch"
        record.init_run = base_run.key if base_run is not None else None
        if transfer is not None:
            record.update(transfer.record_fields())
        record.update({"timings": {"job_start": self.start.at, "model_built": time.time()}})
        record.started_at = now()
        write_run_files(exp, cfg, d, self.directory)
        config = cfg if cfg is not None else exp.spec
        self.tracker = start_run(record, exp.logger, exp.results_dir, config)  # logger=none: a no-op tracker
        return record

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> bool:
        with self._lock:  # released last
            if error is not None and not isinstance(error, Exception):
                return False  # KeyboardInterrupt, SystemExit: the job is being stopped
            if not self.begun and not (self.record_errors and isinstance(error, AblateError)):
                return False  # the run did not start (bad input, or reused): raised as is, nothing written
            if error is None:
                self.record.status = "ok"
            else:
                self.directory.mkdir(parents=True, exist_ok=True)
                self.record.status, self.record.error = "failed", f"{type(error).__name__}: {error}"
                (self.directory / TRACEBACK).write_text("".join(traceback.format_exception(error)))
                log.error("run %s failed: %s", self.exp.key, self.record.error)
            self.record.finished_at = now()
            write_record(self.directory, self.record)
            self.tracker.finish(self.record)
            return True


def record_failure(exp: Experiment, error: AblateError, record_errors: bool) -> RunRecord:
    """A run that failed before it started (:class:`Attempt`'s policy): ``error`` raised again, unless
    ``record_errors``: then the run recorded ``failed``."""
    with Attempt(exp, record_errors=record_errors) as attempt:
        raise error
    return attempt.record  # reached when the attempt recorded the failure


@dataclass
class JobStart:
    """What a job knew when it started, kept until its run takes the lock: when it started (``job_start``
    in the record's timings), its run's record as it first read it (``force`` reuses a record written
    since: :func:`ablate.records.reusable_record`), its data YAML once made and, once built, the composed
    model."""

    at: float
    seen: Seen
    data_yaml: str | None = None
    built: tuple[dict[str, Any], torch.nn.Module] | None = None


def job_start(exp: Experiment, data_yaml: str | None = None) -> JobStart:
    """The start of a job that runs ``exp``: now, its record as it is now, and its data YAML when the job
    made it already (:func:`materialize_dataset`)."""
    return JobStart(time.time(), Seen.read(run_dir(exp.results_dir, exp.key) / RECORD), data_yaml)


def new_record(exp: Experiment) -> RunRecord:
    """The record's identity and settings, before any model is built (:meth:`Attempt.begin` adds the
    model's numbers and how the run starts)."""
    p = exp.placement
    return RunRecord(
        key=exp.key,
        action=exp.action,
        model=exp.model,
        family=family_of(exp.model),
        attn=exp.attn,
        attn_params=dict(p.attn_kwargs) if p else {},
        attn_variant=modules.variant(p.attn, p.attn_kwargs) if p else "",
        pos=exp.pos,
        layers=list(p.layers) if p else [],
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
        train_settings=dict(exp.spec["train"]),
        sweep=exp.sweep,
        role=exp.role,
        versions=versions(),
        git_sha=git_sha(),
        started_at=now(),
    )


def dataset_names(dataset: dict[str, Any]) -> list[str]:
    """Class names of the dataset, read without generating or downloading anything."""
    return datasets.class_names(dataset.get("path") or str(dataset.get("generator") or dataset.get("name")))


def composed_model(exp: Experiment, nc: int | None = None) -> tuple[dict[str, Any], torch.nn.Module]:
    """Composed YAML dict and the model built from it (``nc`` classes, default: the dataset's), after one
    forward in train and in eval mode at the run's image size, before any dataset work (the model is left
    as it was: the train-mode forward's BatchNorm statistics are put back)."""
    nc = len(dataset_names(exp.dataset)) if nc is None else nc
    what = f"{exp.model} with attn={exp.attn}"
    d = compose(base_model_yaml(exp.model, nc), exp.placement, exp.model)
    try:
        model = build_model(d)
    except (ValueError, AssertionError, RuntimeError) as e:
        raise AblateError(f"{what} does not build: {e}") from None
    stride = int(max(model.stride))
    size = max(stride, (int(exp.train["imgsz"]) + stride - 1) // stride * stride)  # as ultralytics rounds
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            model.train()(torch.zeros(1, 3, size, size))
            model.eval()(torch.zeros(1, 3, size, size))
    except Exception as e:
        raise AblateError(f"{what} fails a forward at {size}px: {e}") from None
    finally:
        model.load_state_dict(buffers)
    return d, model


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


def write_run_files(exp: Experiment, cfg: DictConfig | None, d: dict[str, Any], directory: Path) -> None:
    """``model.yaml`` and ``config.yaml`` of the run; a previous attempt's record and traceback removed."""
    header = f"ablate {exp.model} + attn={exp.attn} pos={exp.pos} key={exp.key}"
    write_yaml(d, directory / MODEL_YAML, header=header)
    if cfg is not None:
        (directory / CONFIG_YAML).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    else:
        (directory / CONFIG_YAML).write_text(yaml.safe_dump(exp.spec, sort_keys=False))
    for stale in (RECORD, TRACEBACK):
        (directory / stale).unlink(missing_ok=True)


def train(
    exp: Experiment, data_yaml: str, directory: Path, transfer: Transfer | None, tracker: Tracker
) -> dict[str, Any]:
    """Train and validate; the record fields of the result (its ``timings`` join the record's)."""
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
    return {k: result[k] for k in (*TRAIN_RESULT_FIELDS, "resumed_from_epoch", "timings")}


def evaluate(exp: Experiment, data_yaml: str, directory: Path) -> dict[str, Any]:
    """COCO AP overall and by object size of the checkpoint the run reports, on the split it reports it on
    (:func:`ablate.measure.coco.evaluation_plan`: the last epoch on val, or best-on-val on test), and the
    record's ``evaluated`` saying which."""
    from .measure.coco import ap_by_size, evaluation_plan

    plan = evaluation_plan(exp.train, data_yaml)
    weights = directory / ULTRALYTICS_DIR / "weights" / plan.checkpoint
    ap = ap_by_size(data_yaml, weights, int(exp.train["imgsz"]), directory / PREDICTIONS, split=plan.split)
    return {**ap, "evaluated": plan.evaluated}
