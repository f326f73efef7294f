"""The run reads top to bottom: :func:`ablate.run.execute` calls every step itself, in order (resolve,
compose, (base), start, train, evaluate, measure, record), none of them calls back into ``execute``, and the
experiment is never handed on more than two calls below it (Experiment's own properties aside). Traced with
ultralytics' training and the COCO evaluation stubbed at their entry; everything of ablate runs."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import ablate.measure.coco
import ablate.train
from ablate import run
from ablate.experiment import Experiment, experiment_from_config

from .helpers import TINY, config

ABLATE = str(Path(run.__file__).resolve().parent)
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


def holds_exp(value: Any) -> bool:
    """The experiment, or an object that holds it (an attempt)."""
    return isinstance(value, Experiment) or any(
        isinstance(v, Experiment) for v in getattr(value, "__dict__", {}).values()
    )


def trace(exp: Experiment) -> list[tuple[int, str, bool]]:
    """(depth below execute, qualified name, receives exp) of every ablate function ``execute(exp)`` runs."""
    calls: list[tuple[int, str, bool]] = []
    stack: list[bool] = []  # per frame: an ablate function?

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call":
            mine = code.co_filename.startswith(ABLATE) and not code.co_name.startswith("<")
            if mine:
                args = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
                holds = any(holds_exp(frame.f_locals.get(a)) for a in args)
                calls.append((sum(stack), code.co_qualname, holds))
            stack.append(mine)
        elif event == "return" and stack:
            stack.pop()

    sys.setprofile(profile)
    try:
        record = run.execute(exp)
    finally:
        sys.setprofile(None)
    assert record.status == "ok", record.error
    return calls


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
    assert calls[0][:2] == (0, "execute")
    assert [name for depth, name, _ in calls].count("execute") == 1  # nothing calls back into the run
    direct = [name for depth, name, _ in calls if depth == 1]
    found = [name for name in direct if name in STEPS]
    assert found == STEPS, direct
    # the experiment goes at most two calls below execute (its own properties, e.g. exp.key, aside)
    handed = [(depth, name) for depth, name, holds in calls if holds and not name.startswith("Experiment.")]
    assert max(depth for depth, _ in handed) <= 2, handed
