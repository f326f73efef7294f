"""Command-line entry point: Hydra composes the config, ablate runs the experiment.

User errors (unknown names, bad indices, missing files) print one line ``error: ...`` to stderr and
exit with status 2, without a traceback and without writing results.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .errors import AblateError
from .records import RunRecord

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "attn", "pos", "dataset", "train", "logger")
_GROUP_OVERRIDE = re.compile(r"^[+~]{0,2}(?P<group>" + "|".join(GROUPS) + r")=(?P<value>[^()\[\]]*)$")

log = logging.getLogger("ablate")


def group_options(group: str) -> list[str]:
    """Selectable options of a config group: its YAML files, except ``_``-prefixed shared parts."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.name.startswith("_"))


def check_group_overrides(argv: list[str]) -> None:
    """Reject ``group=unknown`` with one line naming the valid options (Hydra's own message is long)."""
    for arg in argv:
        m = _GROUP_OVERRIDE.match(arg)
        if not m or m.group("value") in ("", "null"):
            continue
        valid = group_options(m.group("group"))
        for value in m.group("value").split(","):
            if value.strip() not in valid:
                raise AblateError(
                    f"{m.group('group')}={value.strip()!r} is not valid; valid: {', '.join(valid)}"
                )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_line(record: RunRecord, directory: Path) -> str:
    """One line per finished run: what ran, its metrics and measures, where its files are."""
    return (
        f"{record.status}: {record.model} attn={record.attn} pos={record.pos} dataset={record.dataset} "
        f"seed={record.seed} mAP50={_fmt(record.map50, '.3f')} mAP50-95={_fmt(record.map50_95, '.3f')} "
        f"params={_fmt(record.params, ',')} GFLOPs={_fmt(record.gflops, '.2f')} "
        f"latency={_fmt(record.latency_ms, '.1f')}ms -> {directory}"
    )


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def run_job(cfg: DictConfig) -> float | None:
    from .experiment import experiment_from_config
    from .run import execute

    try:
        record = execute(experiment_from_config(cfg), cfg)
    except AblateError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("error: %s", e)
            return None
        fail(str(e))
        return None
    if record is None:
        return None
    print(summary_line(record, Path(cfg.results.dir) / "runs" / record.key))
    if record.status != "ok" and HydraConfig.get().mode != RunMode.MULTIRUN:
        fail(f"run {record.key} failed: {record.error}")
    return record.map50_95


def main() -> None:
    try:
        check_group_overrides(sys.argv[1:])
    except AblateError as e:
        fail(str(e))
    run_job()
