"""How far one run's experiment travels: the walk of ``exp`` from :func:`ablate.run.execute`.

``python -m ablate.benchmarks.run_walk`` runs one tiny training run (``+attn=rala +pos=p5``, ultralytics'
training and the COCO evaluation stubbed at their entry; everything of ablate runs) under a profiler and
prints every ablate function the experiment is handed to, indented by call depth, then

- stays: functions that receive the experiment (or an object holding it), counted with and without the
  experiment's own properties (``Experiment.key`` …, each computed once);
- climbs back: how often the walk returns to a shallower function before going on;
- files: the source files the stays are in.

The issue that asked for a straight run measured 43 stays in 11 files with 20 climbs before it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from hydra import compose, initialize_config_dir

from .. import run
from ..experiment import Experiment, experiment_from_config
from ..paths import CONF_DIR

ABLATE = str(Path(run.__file__).resolve().parent)
TINY = [
    "dataset=shapes",
    "dataset.train_images=16",
    "dataset.val_images=8",
    "train.epochs=1",
    "train.init=scratch",
    "logger=none",
    "+attn=rala",
    "+pos=p5",
]


@dataclass(frozen=True)
class Call:
    depth: int  # calls below execute
    name: str  # qualified name
    file: str
    holds: bool  # receives the experiment (or an object that holds it)


def holds_exp(value: Any) -> bool:
    """The experiment, or an object that holds it (an attempt)."""
    return isinstance(value, Experiment) or any(
        isinstance(v, Experiment) for v in getattr(value, "__dict__", {}).values()
    )


def trace(exp: Experiment) -> list[Call]:
    """Every ablate function ``execute(exp)`` runs, in order; the run must end ok."""
    calls: list[Call] = []
    stack: list[bool] = []  # per frame: an ablate function?

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        code = frame.f_code
        if event == "call":
            mine = code.co_filename.startswith(ABLATE) and not code.co_name.startswith("<")
            if mine:
                args = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
                holds = any(holds_exp(frame.f_locals.get(a)) for a in args)
                calls.append(Call(sum(stack), code.co_qualname, code.co_filename, holds))
            stack.append(mine)
        elif event == "return" and stack:
            stack.pop()

    sys.setprofile(profile)
    try:
        record = run.execute(exp)
    finally:
        sys.setprofile(None)
    if record.status != "ok":
        raise RuntimeError(f"the traced run failed: {record.error}")
    return calls


def stays(calls: list[Call], properties: bool = True) -> list[Call]:
    """The calls that receive the experiment (``properties=False``: Experiment's own methods left out)."""
    return [c for c in calls if c.holds and (properties or not c.name.startswith("Experiment."))]


def climbs(walk: list[Call]) -> int:
    """How often the walk goes back up to a shallower function."""
    return sum(b.depth < a.depth for a, b in zip(walk, walk[1:], strict=False))


def stub_training() -> None:
    """ultralytics' training and the COCO evaluation replaced at their entry (nothing is trained)."""
    import ablate.measure.coco
    import ablate.train

    fields = dict.fromkeys(run.TRAIN_RESULT_FIELDS)
    ablate.train.train_and_validate = lambda *a, **k: {**fields, "resumed_from_epoch": None, "timings": {}}
    ablate.measure.coco.ap_by_size = lambda *a, **k: {}


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    stub_training()
    with (
        tempfile.TemporaryDirectory() as tmp,
        initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"),
    ):
        cfg = compose("config", overrides=[*TINY, f"results.dir={tmp}/results", f"data.dir={tmp}/data"])
        calls = trace(experiment_from_config(cfg))
    walk = stays(calls)
    for c in walk:
        print(f"{'  ' * c.depth}{c.name}  ({Path(c.file).relative_to(Path(ABLATE).parent)})")
    own = stays(calls, properties=False)
    print(
        f"walk of exp from execute: {len(walk)} stays in {len({c.file for c in walk})} files, "
        f"{climbs(walk)} climbs back; without Experiment's own properties: {len(own)} stays in "
        f"{len({c.file for c in own})} files, {climbs(own)} climbs back (issue 20 before: 43 in 11, 20)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
