"""The comparisons of a fidelity study, the sweeps that train them, and their runs read back by key."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ..errors import AblateError
from ..experiment import Experiment, experiment_from_config
from ..paths import CONF_DIR
from ..records import read_record, run_dir

log = logging.getLogger(__name__)

STUDY_DIR = CONF_DIR / "fidelity"
KINDS = ("module", "null", "positive")
EXPECT = ("+", "-")
# set by the study itself for every arm: a comparison's overrides may not set them
OWNED = ("dataset", "seed", "train", "results.dir", "baseline", "hydra/launcher", "action")


@dataclass(frozen=True)
class Comparison:
    """A variant and what it is compared with (overrides; ``versus`` [] means the variant's baseline)."""

    name: str
    kind: str
    variant: tuple[str, ...]
    versus: tuple[str, ...]
    expect: str | None = None  # the known sign of a positive control

    def arms(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The variant's overrides and its comparator's (the baseline: the variant without attn/pos)."""
        versus = self.versus if self.versus else tuple(o for o in self.variant if not _placement(o))
        return self.variant, versus


@dataclass(frozen=True)
class Study:
    """What one fidelity study runs: comparisons × datasets × protocols × seeds, with shared overrides."""

    comparisons: tuple[Comparison, ...]
    datasets: tuple[str, ...]
    protocols: tuple[str, str]  # (quick, reference)
    seeds: tuple[int, ...]
    metric: str = "map50_95"
    overrides: tuple[str, ...] = ()  # applied to every arm (model, train.*, dataset.* ...)

    def arms(self) -> list[tuple[str, ...]]:
        """Every distinct arm (a list of overrides), in first-seen order."""
        out: list[tuple[str, ...]] = []
        for c in self.comparisons:
            for arm in c.arms():
                if arm not in out:
                    out.append(arm)
        return out


def _placement(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key in ("attn", "pos") or key.startswith(("attn.", "pos."))


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def load_study(
    name: str = "default",
    only: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> Study:
    """The study ``conf/fidelity/<name>.yaml`` (or a YAML file of that shape), narrowed to ``only``
    comparisons (default: the study's ``run`` list, else all) / ``datasets`` / ``seeds``.

    Raises AblateError naming the bad value and the valid ones (before anything runs).
    """
    valid = sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))
    path = Path(name) if name.endswith((".yaml", ".yml")) else STUDY_DIR / f"{name}.yaml"
    if not path.is_file():
        raise AblateError(f"study {name!r} is not defined; valid: {', '.join(valid)} or a YAML file")
    spec: dict[str, Any] = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    comparisons = [_comparison(k, v) for k, v in spec["comparisons"].items()]
    only = only or spec.get("run")  # the study's own selection unless --only chooses
    if only:
        names = [c.name for c in comparisons]
        bad = [o for o in only if o not in names]
        if bad:
            raise AblateError(f"comparison {bad[0]!r} is not in study {name!r}; valid: {', '.join(names)}")
        comparisons = [c for c in comparisons if c.name in only]
    for o in overrides:
        if _key(o) in OWNED or _placement(o) or o == "-m":
            raise AblateError(
                f"{o!r} is set by the fidelity study itself; valid: model, train.* and dataset.* overrides "
                "(--datasets, --seeds and conf/fidelity/*.yaml choose the rest)"
            )
    seeds = tuple(int(s) for s in (seeds if seeds is not None else spec["seeds"]))
    if len(seeds) < 2 or any(s < 0 for s in seeds):
        raise AblateError(f"seeds={list(seeds)} is not valid; a CI needs at least 2 non-negative seeds")
    protocols = tuple(spec["protocols"])
    if len(protocols) != 2:
        raise AblateError(f"protocols={list(protocols)} is not valid; give two: [quick, reference]")
    study = Study(
        comparisons=tuple(comparisons),
        datasets=tuple(datasets if datasets else spec["datasets"]),
        protocols=(str(protocols[0]), str(protocols[1])),
        seeds=seeds,
        metric=str(spec.get("metric", "map50_95")),
        overrides=tuple(overrides),
    )
    check_composes(study)
    return study


def _comparison(name: str, spec: dict[str, Any]) -> Comparison:
    kind = str(spec.get("kind"))
    if kind not in KINDS:
        raise AblateError(f"comparison {name!r}: kind={kind!r} is not valid; valid: {', '.join(KINDS)}")
    expect = spec.get("expect")
    if kind == "positive" and expect not in EXPECT:
        raise AblateError(f"positive control {name!r}: expect={expect!r} is not valid; valid: + or -")
    return Comparison(name, kind, tuple(spec.get("variant") or ()), tuple(spec.get("versus") or ()), expect)


def arm_overrides(study: Study, arm: Sequence[str], dataset: str, protocol: str) -> list[str]:
    return [*study.overrides, *arm, f"dataset={dataset}", f"train={protocol}"]


def check_composes(study: Study) -> None:
    """Every arm composes into a valid experiment (bad names fail here, before anything trains)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for arm in study.arms():
            for dataset in study.datasets:
                for protocol in study.protocols:
                    overrides = [*arm_overrides(study, arm, dataset, protocol), f"seed={study.seeds[0]}"]
                    try:
                        experiment_from_config(compose("config", overrides=overrides))
                    except AblateError:
                        raise
                    except Exception as e:  # Hydra: an unknown group option or key
                        first = str(e).strip().splitlines()[0]
                        raise AblateError(f"{' '.join(overrides)}: {first}") from None


def sweep_commands(
    study: Study, results: Path, jobs: int = 2, dry_run: bool = False, live: bool = True
) -> list[list[str]]:
    """The ``python -m ablate ... -m`` sweeps that train every arm: one per protocol and group of arms that
    differ only in ``+attn`` (one sweep lists those modules); datasets and seeds are swept in each."""
    attns: dict[tuple[str, ...], list[str]] = {}  # the other overrides -> the modules swept with them
    bare: list[tuple[str, ...]] = []  # arms without a module (baselines, other models)
    for arm in study.arms():
        rest = tuple(o for o in arm if _key(o) != "attn")
        attn = [o.split("=", 1)[1] for o in arm if _key(o) == "attn"]
        if attn:
            attns.setdefault(rest, []).append(attn[0])
        elif rest not in bare:
            bare.append(rest)
    sweeps = [[*rest, f"+attn={','.join(names)}"] for rest, names in attns.items()] + [list(r) for r in bare]
    commands = []
    for protocol in study.protocols:
        for arm in sweeps:
            cmd = [
                sys.executable,
                "-m",
                "ablate",
                *study.overrides,
                *arm,
                f"dataset={','.join(study.datasets)}",
                f"seed={','.join(map(str, study.seeds))}",
                f"train={protocol}",
                "baseline=false",
                f"results.dir={results}",
                "hydra.callbacks.sweep_summary.table=false",
            ]
            if jobs > 1:
                cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
            if dry_run:
                cmd.append("dry_run=true")
            if not live:
                cmd.append("live=false")
            commands.append([*cmd, "-m"])
    return commands


def read_pairs(study: Study, results: Path) -> pd.DataFrame:
    """One row per (dataset, protocol, comparison, seed): the variant's and the comparator's metric.

    Runs are found by their run key (composed exactly as the sweeps compose them); a missing or failed
    run leaves NaN. ``same_base`` is False when both arms choose their base from the same candidates yet
    fine-tuned different base runs (such a pair is left out of the Δ, as the table does); arms with bases of
    their own (another scale, another input size) are paired by seed.
    """
    rows = []
    cache: dict[tuple[str, ...], Any] = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):

        def record(overrides: list[str]) -> Any:
            key = tuple(overrides)
            if key not in cache:
                exp = experiment_from_config(
                    compose("config", overrides=[*overrides, f"results.dir={results}"])
                )
                rec = read_record(run_dir(exp.results_dir, exp.key))
                cache[key] = (exp, rec if rec is not None and rec.status == "ok" else None)
            return cache[key]

        for dataset in study.datasets:
            for protocol in study.protocols:
                for c in study.comparisons:
                    variant, versus = c.arms()
                    for seed in study.seeds:
                        ev, rv = record([*arm_overrides(study, variant, dataset, protocol), f"seed={seed}"])
                        eb, rb = record([*arm_overrides(study, versus, dataset, protocol), f"seed={seed}"])
                        shared = _candidate_keys(ev) == _candidate_keys(eb)
                        same_base = not (
                            shared and rv is not None and rb is not None and rv.init_run != rb.init_run
                        )
                        rows.append(
                            {
                                "dataset": dataset,
                                "protocol": protocol,
                                "comparison": c.name,
                                "kind": c.kind,
                                "expect": c.expect or "",
                                "seed": seed,
                                "variant": _value(rv, study.metric),
                                "versus": _value(rb, study.metric),
                                "same_base": same_base,
                                "variant_key": ev.key,
                                "versus_key": eb.key,
                            }
                        )
    return pd.DataFrame(rows)


def _candidate_keys(exp: Experiment) -> tuple[str, ...]:
    """The run keys of the base candidates a warm start chooses from (none for other starts)."""
    return tuple(c.key for c in exp.base_candidates()) if exp.warm else ()


def _value(record: Any, metric: str) -> float:
    value = getattr(record, metric, None) if record is not None else None
    return float("nan") if value is None else 100.0 * float(value)  # points of %
