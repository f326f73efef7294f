"""Hydra override strings, read with Hydra's own parser: keys, values, sweeps, and what a job's overrides
say about it (a baseline? which overrides make its baseline?).

Every part of ablate that looks inside an override (``+attn=rala``, ``seed=range(0,5)``,
``pos.layers=[0,2]``, ``~pos``, ``++x=y``, ``a='b,c'``) asks this module, which asks
:class:`hydra.core.override_parser.overrides_parser.OverridesParser`: quoting, lists, ranges, ``glob()``
and ``choice()`` behave exactly as on Hydra's command line. A list (``pos.layers=[0,2]``) is one value;
a comma outside brackets and quotes (``seed=0,1``) is a sweep.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Quote, QuotedString, Transformer
from hydra.errors import HydraException

from .errors import AblateError

# overrides that choose the attention and its placement; a job without them is its own baseline
PLACEMENT_GROUPS = ("attn", "pos")
# overrides that never apply to an auto-added baseline
NOT_FOR_BASELINE = ("force", "baseline")


@functools.cache
def _parser() -> OverridesParser:
    return OverridesParser.create()


@functools.lru_cache(maxsize=8192)
def parse(override: str) -> Override:
    """One override, as Hydra's command line reads it (cached: treat the result as read-only).

    Raises:
        AblateError: ``override`` is no Hydra override (Hydra's message says why).
    """
    try:
        return _parser().parse_override(override)
    except HydraException as e:  # OverrideParseException included
        raise AblateError(f"{override!r} is not a Hydra override: {e}") from None


def key(override: str) -> str:
    """The config key or group an override sets: ``attn`` for ``+attn=rala``, ``pos.layers`` for
    ``pos.layers=[0,2]``, ``pos`` for ``~pos``, ``hydra/launcher`` for ``hydra/launcher=joblib``."""
    return parse(override).key_or_group


def prefix(override: str) -> str:
    """``+``, ``++``, ``~`` or "" (what the override does to its key: add, force-add, delete, change)."""
    o = parse(override)
    element = o.get_key_element()
    return element[: element.index(o.key_or_group)]


def choices(override: str | Override, config_loader: Any = None) -> list[str] | None:
    """The values an override stands for, each written as an override's value: ``['0', '1', '2']`` for
    ``seed=0,1,2`` or ``seed=range(0,3)``, ``['rala']`` for ``+attn=rala``, ``["'b,c'"]`` for ``a='b,c'``,
    ``[]`` for a deletion. None for what cannot be listed here: an ``interval()``, or a ``glob()`` without
    ``config_loader`` (the groups' options come from the config)."""
    o = _listable(override, config_loader)
    if o is None or o.is_delete():
        return None if o is None else []
    return list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]


def values(override: str | Override, config_loader: Any = None) -> list[Any] | None:
    """The values an override stands for, as Hydra hands them to the config: ``[0, 1, 2]`` for
    ``seed=range(0,3)``, ``['b,c']`` for ``a='b,c'``, ``[[0, 2]]`` for ``pos.layers=[0,2]``, ``[]`` for a
    deletion; None as for :func:`choices`."""
    o = _listable(override, config_loader)
    if o is None or o.is_delete():
        return None if o is None else []
    if not o.is_sweep_override():
        return [o.value()]
    return [x.text if isinstance(x, QuotedString) else x for x in o.sweep_iterator(Transformer.identity)]


def _listable(override: str | Override, config_loader: Any) -> Override | None:
    o = parse(override) if isinstance(override, str) else override
    if o.value_type is not None and o.value_type.name == "GLOB_CHOICE_SWEEP":
        if config_loader is None:
            return None
        o = _parser_with(config_loader).parse_overrides([o.input_line])[0]
    if o.is_sweep_override() and not o.is_discrete_sweep():
        return None
    return o


def _parser_with(config_loader: Any) -> OverridesParser:
    return OverridesParser.create(config_loader=config_loader)


def is_placement(override: str) -> bool:
    """Whether the override chooses or configures the attention or its placement (``+attn=…``,
    ``attn.params.head_dim=…``, ``+pos=…``, ``pos.layers=…``, ``~pos``)."""
    k = key(override)
    return any(k == g or k.startswith(f"{g}.") for g in PLACEMENT_GROUPS)


def is_baseline(overrides: Iterable[str]) -> bool:
    """A job with no attention: its own baseline."""
    return not any(is_placement(o) for o in overrides)


def baseline_overrides(overrides: Iterable[str]) -> list[str]:
    """The job's overrides without the attention, its placement and ``force`` / ``baseline``."""
    return [o for o in overrides if not is_placement(o) and key(o) not in NOT_FOR_BASELINE]


def without(overrides: Iterable[str], keys: Iterable[str]) -> list[str]:
    """``overrides`` without those that set one of ``keys`` (whatever their prefix)."""
    drop = set(keys)
    return [o for o in overrides if key(o) not in drop]


def sets(overrides: Iterable[str], k: str, v: Any = None) -> bool:
    """Whether ``overrides`` set ``k`` (to the single value ``v`` when given: ``action=base``)."""
    return any(key(o) == k and (v is None or values(o) == [v]) for o in overrides)


def quote(text: str) -> str:
    """``text`` as an override's value that Hydra reads back as exactly that string: as it is when it
    needs nothing (``shapes``, ``/tmp/results``), else single-quoted with Hydra's escapes (``'a,b'``,
    ``'it\\'s'``, ``'1.0'`` for the string rather than the float)."""
    try:
        read = parse(f"x={text}").value()
    except AblateError:
        read = None
    if isinstance(read, str) and read == text:
        return text
    return QuotedString(text=text, quote=Quote.single).with_quotes()


def expand(overrides: Sequence[str], config_loader: Any = None) -> list[list[str]]:
    """The jobs of a multirun: Hydra's basic sweeper's cartesian product of ``overrides`` (the sweeper's
    ``params`` first, then the command line's; a later override of the same key replaces an earlier one
    in its place), each job as its list of single-valued overrides."""
    from hydra.core.plugins import Plugins

    Plugins.instance()  # the plugin scan re-executes plugin modules: import the sweeper after it
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parser = _parser() if config_loader is None else _parser_with(config_loader)
    try:
        parsed = parser.parse_overrides(list(overrides))
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except HydraException as e:
        raise AblateError(str(e)) from None
