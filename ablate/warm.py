"""The warm start's base run, in one place: its candidates trained or found, the choice among them, and the
pin that keeps that choice.

A warm start fine-tunes a *base run*: the baseline trained from scratch with the protocol's ``train.base``
settings. Its candidates (:meth:`ablate.experiment.Experiment.base_candidates`: seeds s + 1000·k) are
ordinary runs; the base is the candidate with the lowest final training loss, ties to the lower seed
(:func:`choose`; the val split is never looked at).

**The pin.** Once chosen, the choice is written to ``<results>/bases/<id>.json`` (:func:`pin_path`; ``<id>``
hashes the candidates' run keys, their shared identity: model, dataset, base settings, seeds), naming the
chosen run key and every candidate's key, seed, status and loss. Every later job, of this sweep or of any
later one, fine-tunes the pinned base: a candidate that failed when the choice was made and trains later
(with a lower loss, maybe) changes nothing, so every run of a table shares one base. The choice is made
under a lock, so two jobs choosing at once agree. ``force=true`` chooses again, once per invocation: a pin
written during this invocation (by a job of the same sweep, or by another job since this one started) is
kept (:func:`ablate.records.made_this_invocation`). A configuration with one candidate has nothing to
choose and no pin.

Job entry points call :func:`execute`: ``action=base`` trains the candidates and returns the base; a warm
start finds its base (:func:`base_for`), then runs (:func:`ablate.run.execute` with ``base_run``); anything
else just runs. :mod:`ablate.run` never chooses a base (and never imports this module); it is imported
here where it is used, so that reading a pin (:func:`needed_candidates`, for a planner) imports no torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data_identity import current
from .errors import AblateError
from .records import (
    Seen,
    file_lock,
    made_this_invocation,
    now,
    read_bytes,
    read_record,
    reusable_record,
    run_dir,
    run_key,
    write_json_atomic,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .experiment import Experiment
    from .records import RunRecord

log = logging.getLogger(__name__)

BASES = "bases"  # <results>/bases/<id>.json: the pinned choice of each candidate set
RULE = "lowest final training loss (ties: the lower seed)"


def execute(exp: Experiment, cfg: DictConfig | None = None, record_errors: bool = False) -> RunRecord:
    """Run one job: ``action=base`` trains the base candidates and returns the base; a warm start finds its
    base, then runs; anything else just runs (:func:`ablate.run.execute`, which says what is returned and
    raised).

    A warm start's model is built before its base trains (a model that does not build fails in seconds);
    when no base can be had, the run is recorded as failed under ``record_errors`` (sweeps) and raises
    :class:`AblateError` otherwise (:func:`ablate.run.record_failure`).
    """
    from . import run

    # the data first (cached after the first job): data that cannot be had, e.g. neon_trees offline without
    # its wheel, is one error line before any run is written
    data_yaml = run.materialize_dataset(exp) if exp.action in ("train", "base") else None
    if exp.action == "base":
        return base_for(exp)
    start = run.job_start(exp, data_yaml)
    if not exp.warm:
        return run.execute(exp, cfg, record_errors, start=start)
    reused = reusable_record(exp.results_dir, exp.key, exp.force, exp.sweep, start.seen, current(exp))
    if reused is not None:
        log.info("cached: run %s already has an ok record (force=true re-runs)", exp.key)
        return reused
    try:
        start.built = run.composed_model(exp)
        base = base_for(exp)
    except AblateError as e:
        return run.record_failure(exp, e, record_errors)
    return run.execute(exp, cfg, record_errors, base_run=base, start=start)


def base_for(exp: Experiment) -> RunRecord:
    """The base run ``exp`` fine-tunes: the pinned choice among its candidates, or, before any choice (or
    with ``force``), the candidates trained or found, the base chosen and pinned.

    Raises :class:`AblateError` when no candidate trained, or when the pinned base no longer does.
    """
    candidates = exp.base_candidates()
    if len(candidates) == 1:
        return choose(candidate_records(exp, candidates))
    path = pin_path(exp.results_dir, candidates)
    seen = Seen.read(path)
    chosen = pinned(exp, path, candidates, seen)
    if chosen is not None:
        return pinned_base(exp, path, candidates, chosen)
    if exp.force and seen.raw is not None:
        log.info("force=true: choosing the warm-start base of %s again", path.name)
    records = candidate_records(exp, candidates)
    with file_lock(path.with_suffix(".lock")):
        chosen = pinned(exp, path, candidates, seen)  # another job chose while this one trained
        if chosen is None:
            best = choose(records)
            write_json_atomic(path, pin(exp, candidates, records, best))
            losses = ", ".join(f"seed {r.seed}: {_loss(r)}" for r in records)
            log.info("warm-start base: run %s (final training loss %s), pinned in %s", best.key, losses, path)
            return best
    return pinned_base(exp, path, candidates, chosen, records)


def pin_path(results_dir: Path, candidates: list[Experiment]) -> Path:
    """Where the choice among ``candidates`` is pinned: ``<results>/bases/<id>.json``, ``<id>`` the hash of
    the candidates' run keys."""
    return Path(results_dir) / BASES / f"{run_key({'base_candidates': [c.key for c in candidates]})}.json"


def _parse(raw: bytes | None) -> dict[str, Any] | None:
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def pinned(exp: Experiment, path: Path, candidates: list[Experiment], seen: Seen | None = None) -> str | None:
    """The run key the pin at ``path`` names, when ``exp`` uses it: always without ``force``; with it, only
    a pin written during this invocation (``seen``: the pin as this job first read it). None otherwise, and
    for a pin that is unreadable or names none of ``candidates``."""
    raw = read_bytes(path)
    data = _parse(raw)
    if data is None or data.get("chosen") not in {c.key for c in candidates}:
        if raw is not None:
            log.warning("ignoring %s: it names no base candidate of this configuration", path)
        return None
    if exp.force and not made_this_invocation(raw, data.get("sweep"), exp.sweep, seen):
        return None
    return str(data["chosen"])


def pinned_base(
    exp: Experiment, path: Path, candidates: list[Experiment], key: str, records: Sequence[RunRecord] = ()
) -> RunRecord:
    """The pinned candidate's record: among ``records`` (already found), else its run found (or trained
    again: its record was removed). Raises :class:`AblateError` when it is not ok."""
    from . import run

    found = [r for r in records if r.key == key and r.status == "ok"]
    if found:
        return found[0]
    (candidate,) = [c for c in candidates if c.key == key]
    record = run.execute(dataclasses.replace(candidate, force=False), record_errors=True)
    if record.status != "ok":
        error = _first_line(record.error)
        raise AblateError(
            f"the pinned warm-start base run {key} ({path}) did not train: {error}; "
            "force=true chooses the base again"
        )
    return record


def candidate_records(exp: Experiment, candidates: list[Experiment]) -> list[RunRecord]:
    """Every candidate's record: trained, or found (ok, or failed earlier in the same sweep: not tried
    again). A candidate runs as an ordinary run under its own lock, never forced (``force=true`` re-runs the
    warm start, not its base)."""
    from . import run

    records = []
    for candidate in candidates:
        previous = read_record(run_dir(candidate.results_dir, candidate.key))
        if previous is not None and previous.status == "failed" and exp.sweep and previous.sweep == exp.sweep:
            records.append(previous)
            continue
        records.append(run.execute(dataclasses.replace(candidate, force=False), record_errors=True))
    return records


def choose(records: list[RunRecord]) -> RunRecord:
    """The base among the candidates' ``records``: the ok one with the lowest final training loss (ties: the
    lower seed). Raises :class:`AblateError` when none is ok."""
    ok = [r for r in records if r.status == "ok" and r.train_loss is not None]
    if not ok:
        errors = "; ".join(f"{r.key}: {_first_line(r.error)}" for r in records)
        raise AblateError(f"no warm-start base candidate of this configuration trained: {errors}")
    return min(ok, key=lambda r: (r.train_loss, r.seed))


def pin(
    exp: Experiment, candidates: list[Experiment], records: list[RunRecord], best: RunRecord
) -> dict[str, Any]:
    """The content of a pin: the chosen run key, the rule, and every candidate as it was when chosen."""
    return {
        "chosen": best.key,
        "rule": RULE,
        "model": exp.model,
        "dataset": str(exp.dataset.get("name")),
        "config_key": candidates[0].config_key,
        "candidates": [
            {"key": c.key, "seed": c.seed, "status": r.status, "train_loss": r.train_loss, "error": r.error}
            for c, r in zip(candidates, records, strict=True)
        ],
        "sweep": exp.sweep,
        "chosen_at": now(),
    }


def needed_candidates(exp: Experiment) -> list[Experiment]:
    """The base candidates a warm start ``exp`` still depends on: the pinned one once the choice is pinned
    (and ``force`` does not redo it), else all of them. For a planner: a candidate the pin left out need not
    be trained again."""
    candidates = exp.base_candidates()
    if len(candidates) == 1:
        return candidates
    chosen = pinned(exp, pin_path(exp.results_dir, candidates), candidates)
    return [c for c in candidates if chosen is None or c.key == chosen]


def _loss(record: RunRecord) -> str:
    return (
        f"{record.train_loss:.3f}"
        if record.status == "ok" and record.train_loss is not None
        else record.status
    )


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "no error recorded"
