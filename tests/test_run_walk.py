"""The run reads top to bottom: :func:`ablate.run.execute` calls every step itself, in order (resolve,
compose, (base), start, train, evaluate, measure, record), none of them calls back into ``execute``, and the
experiment is never handed on more than two calls below it (Experiment's own properties aside). Traced with
ultralytics' training and the COCO evaluation stubbed at their entry; everything of ablate runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import ablate.measure.coco
import ablate.train
from ablate import run
from ablate.benchmarks.run_walk import climbs, stays, trace
from ablate.experiment import experiment_from_config

from .helpers import TINY, config

# what execute calls, in this order, for a run that trains (``resolve`` is job_start + reusable_record)
STEPS = [
    "job_start",
    "reusable_record",
    "Attempt.__init__",
    "composed_model",
    "weights_transfer",
    "Attempt.begin",
    "materialize_dataset",
    "train",
    "evaluate",
    "cost_fields",
    "Attempt.__exit__",
]


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = dict.fromkeys(run.TRAIN_RESULT_FIELDS)

    def train_and_validate(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**fields, "resumed_from_epoch": None, "timings": {}}

    monkeypatch.setattr(ablate.train, "train_and_validate", train_and_validate)
    monkeypatch.setattr(ablate.measure.coco, "ap_by_size", lambda *args, **kwargs: {})


@pytest.mark.usefixtures("stubbed")
def test_execute_calls_its_steps_in_order_and_never_itself(tmp_path: Path) -> None:
    cfg = config([*TINY, "+attn=rala", "+pos=p5"], tmp_path / "results", tmp_path / "data")
    calls = trace(experiment_from_config(cfg))
    assert (calls[0].depth, calls[0].name) == (0, "execute")
    assert [c.name for c in calls].count("execute") == 1  # nothing calls back into the run
    direct = [c.name for c in calls if c.depth == 1]
    found = [name for name in direct if name in STEPS]
    assert found == STEPS, direct
    # the experiment goes at most two calls below execute (its own properties, e.g. exp.key, aside) and the
    # walk climbs back up at most four times (python -m ablate.benchmarks.run_walk prints it)
    handed = stays(calls, properties=False)
    assert max(c.depth for c in handed) <= 2, handed
    assert climbs(stays(calls)) <= 4, stays(calls)
