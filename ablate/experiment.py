"""From a composed Hydra config to a validated, resolved experiment (no training, no dataset work)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .data_identity import dataset_spec
from .errors import AblateError
from .measure.device import check_device
from .placement import Placement, resolve_placement
from .records import run_key
from .tracking import logger_settings

log = logging.getLogger(__name__)

ACTIONS = ("train", "profile", "inspect", "base")
INITS = ("warm", "scratch")
# train settings that choose where/how fast a run executes, not what it computes: not part of the run key
EXECUTION_KEYS = ("device", "workers", "threads")
# train settings of a protocol that are not training settings of one run: how it starts
PROTOCOL_KEYS = ("init", "base")
CANDIDATE_SEED_STRIDE = 1000  # base candidate k of base seed s has seed s + 1000·k


@dataclass(frozen=True)
class Experiment:
    """Everything that defines one run, resolved and checked."""

    action: str
    model: str
    placement: Placement | None
    pos: str
    dataset: dict[str, Any]
    seed: int
    train: dict[str, Any]
    results_dir: Path
    data_dir: Path
    weights: str | None = None  # resolved path of the base checkpoint (model.weights)
    weights_sha256: str | None = None
    weights_strict: bool = True
    force: bool = False
    measure: dict[str, Any] = field(default_factory=dict)
    sweep: str | None = None  # the multirun this run belongs to (its sweep directory's name)
    logger: dict[str, Any] = field(default_factory=dict)  # tracking settings (not part of the run key)
    role: str = "run"  # "base": the warm-start base run of some configuration

    @property
    def warm(self) -> bool:
        """Whether this run fine-tunes the protocol's base run (``train.init: warm``, default ``scratch``;
        ``model.weights``, when given, wins)."""
        return self.train.get("init", "scratch") == "warm" and self.action == "train" and not self.weights

    @cached_property
    def attn(self) -> str:
        return self.placement.attn if self.placement else "none"

    @cached_property
    def spec(self) -> dict[str, Any]:
        """What defines the experiment (computed once: read, never edit); its hash is the run key."""
        p = self.placement
        return {
            "action": "train" if self.action == "inspect" else self.action,
            "model": self.model,
            "weights": {"sha256": self.weights_sha256, "strict": self.weights_strict}
            if self.weights
            else None,
            "attn": p.attn if p else "none",
            "attn_params": dict(p.attn_kwargs) if p else {},
            "gamma": p.gamma if p and p.mode == "after" else None,
            "layers": list(p.layers) if p else [],
            "mode": p.mode if p else "none",
            "dataset": self.dataset,
            "seed": self.seed,
            "train": {k: v for k, v in self.train.items() if k not in EXECUTION_KEYS},
            "measure": {"imgsz": self.measure.get("imgsz")},
        }

    @cached_property
    def key(self) -> str:
        """The run key: hash of :attr:`spec` (computed once: an experiment does not change)."""
        return run_key(self.spec)

    @cached_property
    def config_key(self) -> str:
        """The configuration across seeds: hash of :attr:`spec` without the seed."""
        return run_key({k: v for k, v in self.spec.items() if k != "seed"})

    @cached_property
    def train_hash(self) -> str:
        return run_key(self.spec["train"])

    def baseline(self) -> Experiment:
        """The same model, dataset, seed and settings without any attention: what this run is compared to."""
        return dataclasses.replace(self, placement=None, pos="none")

    def base_candidates(self) -> list[Experiment]:
        """The runs a warm start chooses its base from: the baseline trained from scratch with the
        ``train.base`` settings, once per candidate seed.

        ``train.base`` overrides the protocol's training settings (its ``extra`` merged over theirs). Its
        ``seed`` is the first candidate's seed (null: this run's own seed, one base per seed) and
        ``candidates`` how many there are, with seeds ``seed + 1000·k``; the base is the candidate with
        the lowest final training loss, and the choice is pinned (:mod:`ablate.warm`). The candidates'
        settings hold no protocol keys, so every protocol with the same base settings shares them.
        """
        base = dict(self.train.get("base") or {})
        seed = base.pop("seed", 0)
        count = int(base.pop("candidates", 1))
        extra = {**(self.train.get("extra") or {}), **(base.pop("extra", None) or {})}
        train = {k: v for k, v in self.train.items() if k not in PROTOCOL_KEYS}
        # named "base", not after the protocol: protocols that differ only in how they fine-tune (quick,
        # reference) share their base runs
        train.update(base, extra=extra, init="scratch", name="base")
        first = self.seed if seed is None else int(seed)
        return [
            dataclasses.replace(
                self,
                action="train",
                placement=None,
                pos="none",
                seed=first + CANDIDATE_SEED_STRIDE * k,
                train=train,
                weights=None,
                weights_sha256=None,
                role="base",
            )
            for k in range(count)
        ]


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _choice(value: Any, name: str, valid: list[str] | tuple[str, ...]) -> str:
    if value not in valid:
        raise AblateError(f"{name}={value!r} is not valid; valid: {', '.join(map(str, valid))}")
    return value


def resolve_dataset(cfg: DictConfig) -> dict[str, Any]:
    """The dataset part of the experiment: an embedded generator's settings or a data YAML path."""
    d = _container(cfg.dataset) or {}
    path = d.get("path")
    if path:
        return dataset_spec(d)
    return d


def check_train(train: dict[str, Any], prefix: str = "train.") -> None:
    for key in ("epochs", "imgsz", "batch"):
        value = train.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise AblateError(f"{prefix}{key}={value!r} is not valid; it must be a positive integer")


def check_latency(latency: dict[str, Any], train_device: Any) -> None:
    """The measurement phase's settings (``measure.latency``): backends, device, schedule."""
    from .measure.phase import settings_from_config

    device = latency.get("device") or train_device
    check_device("measure.latency.device", device)
    try:
        settings_from_config(latency, train_device)
    except (ValueError, TypeError) as e:
        raise AblateError(str(e)) from None


def resolve_weights(cfg: DictConfig) -> tuple[str | None, str | None, bool]:
    """``model.weights`` as (resolved path, sha256, strict); the file must exist and be readable."""
    from .weights import check_weights_file, file_sha256

    value = cfg.model.get("weights")
    strict = cfg.model.get("weights_strict", True)
    if not isinstance(strict, bool):
        raise AblateError(f"model.weights_strict={strict!r} is not valid; valid: true, false")
    if value is None or str(value) == "":
        return None, None, strict
    path = check_weights_file(value)
    return str(path), file_sha256(path), strict


def check_init(train: dict[str, Any]) -> None:
    init = _choice(train.get("init", "scratch"), "train.init", INITS)
    base = train.get("base")
    if init == "warm":
        if not isinstance(base, dict):
            raise AblateError(f"train.init=warm needs train.base (the base run's settings); got {base!r}")
        seed = base.get("seed", 0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise AblateError(f"train.base.seed={seed!r} is not valid; valid: a non-negative integer or null")
        count = base.get("candidates", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise AblateError(f"train.base.candidates={count!r} is not valid; it must be a positive integer")
        check_train({**train, **base}, prefix="train.base.")


def experiment_from_config(cfg: DictConfig) -> Experiment:
    """Validate ``cfg`` and resolve it into an :class:`Experiment` (raises AblateError on bad input).

    ``action=base`` (kept as the experiment's action) trains the configuration's warm-start base
    candidates and chooses the base (:meth:`Experiment.base_candidates`, :func:`ablate.warm.base_for`).
    """
    action = _choice(cfg.get("action", "train"), "action", ACTIONS)
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise AblateError(f"seed={seed!r} is not valid; it must be a non-negative integer")
    train = _container(cfg.train) or {}
    check_train(train)
    check_device("train.device", train.get("device"))
    placement, pos = resolve_placement(cfg)
    measure = _container(cfg.get("measure")) or {}
    measure["imgsz"] = measure.get("imgsz") or train["imgsz"]
    if isinstance(measure["imgsz"], bool) or not isinstance(measure["imgsz"], int) or measure["imgsz"] <= 0:
        raise AblateError(f"measure.imgsz={measure['imgsz']!r} is not valid; it must be a positive integer")
    check_latency(measure.setdefault("latency", {}), train.get("device"))
    weights, weights_sha256, weights_strict = resolve_weights(cfg)
    check_init(train)
    if action == "base" and not isinstance(train.get("base"), dict):
        name = train.get("name")
        raise AblateError(f"action=base needs train.base (the base run's settings); train={name!r} has none")
    return Experiment(
        action=action,
        model=str(cfg.model.name),
        placement=placement,
        pos=pos,
        dataset=resolve_dataset(cfg),
        seed=int(seed),
        train=train,
        results_dir=Path(str(cfg.results.dir)).expanduser().resolve(),
        data_dir=Path(str(cfg.data.dir)).expanduser().resolve(),
        weights=weights,
        weights_sha256=weights_sha256,
        weights_strict=weights_strict,
        force=bool(cfg.get("force", False)),
        measure=measure,
        logger=logger_settings(_container(cfg.get("logger"))),
    )
