"""Runs without training: ``ablate.run``'s training, dataset, weight transfer and cost steps replaced, so a
test of the harness's logic (caching, locks, the warm-start base) takes a second and counts trainings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ablate import run
from ablate.experiment import Experiment
from ablate.records import RunRecord, run_dir, write_record

COARSE = ["measure.coco_eval=false"]  # with the fake: no evaluation (it would read a checkpoint)


@dataclass
class FakeTraining:
    """What the fake trained: the run keys in order; ``losses`` sets a seed's final training loss."""

    trained: list[str] = field(default_factory=list)
    losses: dict[int, float] = field(default_factory=dict)

    def count(self, key: str) -> int:
        return self.trained.count(key)


def install_fake_training(monkeypatch: pytest.MonkeyPatch) -> FakeTraining:
    """Replace training (and what needs a trained checkpoint or a dataset) in ``ablate.run``."""
    fake = FakeTraining()

    def train(
        exp: Experiment, data_yaml: str, directory: Path, transfer: Any, tracker: Any
    ) -> dict[str, Any]:
        fake.trained.append(directory.name)
        fields = dict.fromkeys(run.TRAIN_RESULT_FIELDS)
        fields["train_loss"] = fake.losses.get(exp.seed, 3.0)
        return {**fields, "resumed_from_epoch": None, "timings": {}}

    monkeypatch.setattr(run, "train", train)
    monkeypatch.setattr(run, "materialize_dataset", lambda exp: "fake-data.yaml")
    monkeypatch.setattr(run.data_identity, "record_fields", lambda data_yaml, data_dir=None: {})
    monkeypatch.setattr(run, "weights_transfer", lambda exp, d, model, base_run=None: None)
    monkeypatch.setattr(run, "cost_fields", lambda model, imgsz: {})
    return fake


def write_candidate(
    candidate: Experiment, status: str, loss: float | None, sweep: str | None, error: str | None = None
) -> RunRecord:
    """A base candidate's record written by hand: ``status`` with final training loss ``loss``."""
    record = RunRecord(
        key=candidate.key,
        status=status,
        error=error,
        model=candidate.model,
        seed=candidate.seed,
        role="base",
        sweep=sweep,
        train_loss=loss,
        finished_at="2025-01-01T00:00:00+00:00",
    )
    write_record(run_dir(candidate.results_dir, candidate.key), record)
    return record
