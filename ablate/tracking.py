"""Experiment tracking with Weights & Biases: one wandb run per executed job, offline unless asked.

``logger=wandb`` (the default) gives every run that actually trains or profiles its own wandb run under
``<results.dir>/wandb/``: the resolved config flattened to dot keys, per-epoch training and validation
metrics from ultralytics' callbacks, and the final record as the run summary. Runs of one sweep share a
``group``; ``job_type`` is the attention module; tags name the model, position, dataset and seed. A cached
run creates no wandb run. ``logger=none`` turns tracking off.

``logger.mode=offline`` (the default) never touches the network (``wandb sync <dir>`` uploads later);
``logger.mode=online`` uses wandb's own credentials (``WANDB_API_KEY`` in the environment, or
``wandb login``). The key is never read here and never enters the config, a record or a log.

Tracking never fails a run: when wandb cannot be imported, cannot start or fails while logging, a warning
is logged and the run goes on untracked.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AblateError

if TYPE_CHECKING:
    import pandas as pd

    from .records import RunRecord

log = logging.getLogger(__name__)

Callback = Callable[[Any], None]

NAMES = ("none", "wandb")
MODES = ("offline", "online", "disabled")
CONSOLE = ("off", "wrap", "redirect", "auto")
DEFAULTS: dict[str, Any] = {
    "name": "wandb",
    "mode": "offline",
    "project": "ablate",
    "entity": None,
    "dir": None,
    "group": None,
    "tags": [],
    "console": "off",
    "system_metrics": True,
}
SINGLE = "single"  # the group of a run that is not part of a sweep
SUMMARY_JOB = "summary"
# environment variables whose values must never be written anywhere (they are masked if they show up)
SECRET_ENV = ("WANDB_API_KEY",)
MASK = "***"
ULTRALYTICS_WANDB = "ultralytics.utils.callbacks.wb"  # ultralytics' own wandb integration


def logger_settings(logger: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``logger`` config group checked and completed with defaults (``{"name": "none"}`` when off).

    Raises :class:`AblateError` on an unknown logger, mode or console setting.
    """
    logger = dict(logger or {})
    name = logger.get("name") or "none"
    if name not in NAMES:
        raise AblateError(f"logger={name!r} is not valid; valid: {', '.join(NAMES)}")
    if name == "none":
        return {"name": "none"}
    s = {**DEFAULTS, **{k: v for k, v in logger.items() if v is not None}}
    if s["mode"] not in MODES:
        raise AblateError(f"logger.mode={s['mode']!r} is not valid; valid: {', '.join(MODES)}")
    # YAML 1.1 reads a bare `off` as false
    s["console"] = {False: "off", True: "wrap"}.get(s["console"], s["console"])
    if s["console"] not in CONSOLE:
        raise AblateError(f"logger.console={s['console']!r} is not valid; valid: {', '.join(CONSOLE)}")
    tags = s["tags"]
    s["tags"] = [str(tags)] if isinstance(tags, str) else [str(t) for t in tags or []]
    return s


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to one level with dot keys: ``{"train": {"epochs": 1}}`` -> ``{"train.epochs": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def _secrets() -> list[str]:
    return [v for k in SECRET_ENV if len(v := os.environ.get(k, "")) >= 8]


def redact(value: Any, secrets: list[str] | None = None) -> Any:
    """``value`` with every secret from the environment masked (strings, and inside lists and dicts)."""
    secrets = _secrets() if secrets is None else secrets
    if not secrets:
        return value
    if isinstance(value, str):
        for s in secrets:
            value = value.replace(s, MASK)
        return value
    if isinstance(value, Mapping):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v, secrets) for v in value)
    return value


def _number(value: Any) -> float | None:
    """A finite-or-not float from a Python, numpy or torch scalar; None for anything else."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _numbers(d: Mapping[str, Any]) -> dict[str, float]:
    return {str(k): n for k, v in d.items() if (n := _number(v)) is not None}


def run_name(record: RunRecord) -> str:
    """A readable run name: ``yolo12n/rala@neck/shapes/s0`` (``baseline`` for no attention)."""
    what = "baseline" if record.attn == "none" else f"{record.attn}@{record.pos}"
    name = f"{record.model}/{what}/{record.dataset}/s{record.seed}"
    return name if record.action == "train" else f"{name}/{record.action}"


def run_tags(record: RunRecord, extra: Iterable[str] = ()) -> list[str]:
    tags = [
        f"model:{record.model}",
        f"attn:{record.attn}",
        f"pos:{record.pos}",
        f"dataset:{record.dataset}",
        f"seed:{record.seed}",
        f"action:{record.action}",
        *extra,
    ]
    return [t[:64] for t in dict.fromkeys(tags)]  # wandb's tag length limit


def run_config(record: RunRecord, config: Mapping[str, Any]) -> dict[str, Any]:
    """The wandb config: the resolved run config flattened, plus the run's identity under ``run.*``."""
    if not isinstance(config, dict):
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
    out = flatten(dict(config))
    out.update(
        {
            "run.key": record.key,
            "run.config_key": record.config_key,
            "run.sweep": record.sweep,
            "run.action": record.action,
            "run.model": record.model,
            "run.attn": record.attn,
            "run.pos": record.pos,
            "run.layers": list(record.layers),
            "run.mode": record.mode,
            "run.dataset": record.dataset,
            "run.seed": record.seed,
        }
    )
    return redact(out)


def record_summary(record: RunRecord) -> dict[str, Any]:
    """The record flattened to scalars (numbers, strings, booleans) for the wandb run summary."""
    flat = flatten(record.to_dict())
    return redact({k: v for k, v in flat.items() if isinstance(v, int | float | str | bool)})


def _settings(wandb: Any, s: dict[str, Any]) -> Any:
    return wandb.Settings(
        silent=True,  # no banner, no sync hints: ablate logs one line itself
        console=s["console"],
        disable_git=True,  # a remote URL can carry credentials; the record has the commit
        save_code=False,
        disable_code=True,
        disable_job_creation=True,
        x_disable_stats=not s["system_metrics"],
    )


def _init(s: dict[str, Any], directory: Path, **kwargs: Any) -> Any:
    """``wandb.init`` for the settings ``s``; None (and a warning) when wandb is missing or fails."""
    try:
        import wandb
    except Exception as e:  # not installed or broken: the run goes on without tracking
        log.warning("wandb is not available (%s): not tracked", e)
        return None
    if s["mode"] != "online":
        os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # offline means no network, crash reports too
    try:
        directory.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        run = wandb.init(
            project=s["project"],
            entity=s["entity"],
            dir=str(directory),
            mode=s["mode"],
            reinit="create_new",  # ours only: never finish or reuse a run someone else started
            settings=_settings(wandb, s),
            **kwargs,
        )
        log.debug("wandb.init took %.2fs", time.perf_counter() - start)
        return run
    except Exception as e:
        log.warning("wandb run could not start (%s: %s): not tracked", type(e).__name__, redact(str(e)))
        return None


class Tracker:
    """What :func:`start_run` returns when tracking is off or unavailable: every method does nothing."""

    run: Any = None

    @property
    def directory(self) -> Path | None:
        """The wandb run directory (``.../wandb/offline-run-*``), None when not tracked."""
        return Path(self.run.dir).parent if self.run is not None else None

    def callbacks(self) -> dict[str, list[Callback]]:
        """ultralytics callbacks by event, for ``train_and_validate(callbacks=...)``."""
        return {}

    def finish(self, record: RunRecord) -> None:
        """Close the run with ``record`` as its summary (failed runs: exit code 1 and the error)."""


class WandbTracker(Tracker):
    """One wandb run for one ablate run."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self._train_epoch: int | None = None  # the epoch of the last on_train_epoch_end
        self._broken = False

    def _safely(self, what: str, func: Callable[[], None]) -> None:
        """Run one logging step; a failure stops further logging but never the training."""
        if self.run is None or self._broken:
            return
        try:
            func()
        except Exception as e:
            self._broken = True
            log.warning("wandb %s failed (%s: %s): no more metrics for this run", what, type(e).__name__, e)

    def callbacks(self) -> dict[str, list[Callback]]:
        return {
            "on_pretrain_routine_start": [self._drop_ultralytics_wandb],
            "on_train_epoch_end": [self._on_train_epoch_end],
            "on_fit_epoch_end": [self._on_fit_epoch_end],
        }

    @staticmethod
    def _drop_ultralytics_wandb(trainer: Any) -> None:
        """Remove ultralytics' own wandb callbacks (a second run) should its settings have enabled them."""
        removed = 0
        for funcs in trainer.callbacks.values():
            keep = [f for f in funcs if getattr(f, "__module__", None) != ULTRALYTICS_WANDB]
            removed += len(funcs) - len(keep)
            funcs[:] = keep
        if removed:
            log.info("removed %d ultralytics wandb callbacks: ablate tracks this run itself", removed)

    def _on_train_epoch_end(self, trainer: Any) -> None:
        self._train_epoch = int(trainer.epoch)

    def _on_fit_epoch_end(self, trainer: Any) -> None:
        metrics = _numbers(trainer.metrics or {})
        if self._train_epoch is None or int(trainer.epoch) != self._train_epoch:
            # ultralytics' final validation of best.pt (trainer.epoch is one past the last epoch there):
            # the record carries these numbers; keep them out of the per-epoch history
            best = {f"best/{k}": v for k, v in metrics.items()}
            self._safely("summary", lambda: self.run.summary.update(best))
            return
        epoch = int(trainer.epoch) + 1  # 1-based, as in ultralytics' results.csv
        data: dict[str, Any] = {"epoch": epoch}
        losses = trainer.label_loss_items(trainer.tloss, prefix="train") if trainer.tloss is not None else {}
        for part in (losses, metrics, trainer.lr or {}):
            data.update(_numbers(part))
        data.update(_numbers({"fitness": trainer.fitness, "time/epoch_s": trainer.epoch_time}))
        self._safely("log", lambda: self.run.log(data, step=epoch, commit=True))

    def finish(self, record: RunRecord) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        failed = record.status != "ok"
        try:
            run.summary.update(record_summary(record))
            if failed:
                log.info("wandb run %s marked failed: %s", run.name, redact(record.error))
            run.finish(exit_code=1 if failed else 0)
        except Exception as e:
            log.warning("wandb run could not finish cleanly (%s: %s)", type(e).__name__, e)


def start_run(
    record: RunRecord, logger: Mapping[str, Any] | None, results_dir: Path, config: Mapping[str, Any]
) -> Tracker:
    """Start tracking the run ``record`` describes (once it is known to execute, not for a cached one).

    ``logger`` holds the tracking settings (:func:`logger_settings`); the run's sweep names the group
    (``logger.group`` wins; none = ``single``); ``config`` (the resolved Hydra config, or the experiment
    spec) is logged as the wandb config. Returns a no-op :class:`Tracker` when ``logger`` is ``none``,
    ``logger.mode=disabled``, or wandb cannot start.
    """
    s = logger_settings(logger)
    if s["name"] == "none" or s["mode"] == "disabled":
        return Tracker()
    run = _init(
        s,
        Path(s["dir"]).expanduser() if s["dir"] else Path(results_dir),
        group=s["group"] or record.sweep or SINGLE,
        job_type=record.attn,
        name=run_name(record),
        tags=run_tags(record, s["tags"]),
        config=run_config(record, config),
    )
    if run is None:
        return Tracker()
    log.info("wandb run %s (%s): %s", run.name, s["mode"], Path(run.dir).parent)
    return WandbTracker(run)


def _cell(value: Any) -> Any:
    """A wandb.Table cell: lists and dicts as JSON text, everything else as is."""
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=str)
    return value


def log_sweep_summary(
    results_dir: Path,
    logger: Mapping[str, Any] | None,
    sweep: str,
    table: pd.DataFrame | list[dict[str, Any]],
    figures: Iterable[Path] = (),
) -> None:
    """One summary wandb run for a sweep (``job_type=summary``, the sweep's group): the aggregated
    ``table`` as a ``wandb.Table`` and every PNG in ``figures`` that exists as a ``wandb.Image``."""
    s = logger_settings(logger)
    if s["name"] == "none" or s["mode"] == "disabled":
        return
    import pandas as pd

    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))
    df = df.astype(object).apply(lambda col: col.map(_cell)) if len(df) else df
    df = redact(df.to_dict("list"))
    pngs = [Path(f) for f in figures if Path(f).suffix.lower() == ".png" and Path(f).is_file()]
    run = _init(
        s,
        Path(s["dir"]).expanduser() if s["dir"] else Path(results_dir),
        group=s["group"] or sweep,
        job_type=SUMMARY_JOB,
        name=f"summary/{sweep}",
        tags=[f"sweep:{sweep}"[:64], SUMMARY_JOB, *s["tags"]],
        config={"sweep": sweep, "rows": len(next(iter(df.values()), []))},
    )
    if run is None:
        return
    try:
        import wandb

        data: dict[str, Any] = {"table": wandb.Table(dataframe=pd.DataFrame(df))}
        data.update({f"figures/{p.stem}": wandb.Image(str(p)) for p in pngs})
        run.log(data)
        run.finish()
        log.info("wandb sweep summary %s: %s", run.name, Path(run.dir).parent)
    except Exception as e:
        log.warning("wandb sweep summary failed (%s: %s)", type(e).__name__, e)
        try:
            run.finish(exit_code=1)
        except Exception:  # already reported above
            log.debug("wandb finish after a failed summary also failed", exc_info=True)
