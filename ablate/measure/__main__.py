"""The measurement phase on demand: latency of every architecture of a results root, side by side.

    python -m ablate.measure --results DIR [--where COLUMN=VALUE[,VALUE...]]... [--backend torch onnxruntime]
                             [--device cpu] [--half] [--batch 1] [--threads N] [--rounds R] [--passes P]
                             [--warmup W] [--force] [--force-load] [--max-load L] [--load-wait S]
    make measure [RESULTS=dir] [BACKEND="torch onnxruntime"]

Defaults are ``measure.latency`` of ``conf/config.yaml`` (what every sweep runs after its last training
job). Run it with nothing else on the machine: it checks (the cores other processes keep busy, the
results root's running jobs), waits up to ``--load-wait`` seconds for a busy machine, then refuses
(exit 2) unless ``--force-load``. See :mod:`ablate.measure.phase` and :mod:`ablate.measure.quiet`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import AblateError
from .phase import config_defaults, format_phase, run_phase, selected_records, settings_from_config
from .quiet import MachineBusyError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = config_defaults()
    p = argparse.ArgumentParser(prog="python -m ablate.measure", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="results", help="results root holding runs/ (default: results)")
    p.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE", help="as make table")
    p.add_argument("--backend", nargs="+", default=list(d["backends"]), help=f"default: {d['backends']}")
    p.add_argument("--device", default=d["device"])
    p.add_argument("--half", action="store_true", default=bool(d["half"]), help="fp16 (CUDA / TensorRT)")
    p.add_argument("--batch", type=int, default=d["batch"])
    p.add_argument("--threads", type=int, default=d["threads"], help="CPU threads (default: every core)")
    p.add_argument("--rounds", type=int, default=d["rounds"])
    p.add_argument("--passes", type=int, default=d["passes"], help="timed passes per architecture per round")
    p.add_argument("--warmup", type=int, default=d["warmup"], help="untimed passes per architecture")
    p.add_argument("--min-time", type=float, default=d["min_time_s"], help="timed seconds per architecture")
    p.add_argument("--force", action="store_true", help="measure again even where a measurement is stored")
    p.add_argument(
        "--force-load",
        action="store_true",
        default=bool(d["force_load"]),
        help="time even on a busy machine (recorded; the table's footnote says so)",
    )
    p.add_argument(
        "--max-load",
        type=float,
        default=d["max_load"],
        help="cores busy with other work, per core, above which the machine is busy",
    )
    p.add_argument(
        "--load-wait", type=float, default=d["load_wait_s"], help="seconds to wait for a busy machine"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    keys = ("device", "half", "batch", "threads", "rounds", "passes", "warmup", "force_load", "max_load")
    common = {k: getattr(args, k) for k in keys}
    common.update(min_time_s=args.min_time, load_wait_s=args.load_wait)
    try:
        settings = settings_from_config({**common, "backends": args.backend})
        results = Path(args.results)
        records = selected_records(results, args.where)
        if not any(r.get("status") == "ok" and r.get("arch_key") for r in records):
            raise AblateError(
                f"no ok run with an architecture under {results}/runs (run python -m ablate first)"
            )
    except (AblateError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        phases = run_phase(results, settings, records, force=args.force)
    except MachineBusyError as e:  # refused before timing: nothing written
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for result in phases:
        print(format_phase(result))


if __name__ == "__main__":
    main()
