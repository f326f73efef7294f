"""``python -m ablate.report``: tables and figures from a results root (see :mod:`ablate.report`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import AblateError
from . import __doc__ as package_doc
from . import make_tables
from .load import parse_where
from .render import format_summary
from .statistics import ALPHA, CI_METHODS, CORRECTIONS, StatOptions


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ablate.report", description=package_doc.split("\n\n")[0] if package_doc else None
    )
    p.add_argument("--results", default="results", help="results root holding runs/ (default: results)")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="keep runs whose runs.csv COLUMN equals VALUE (comma: any of; repeatable: all of)",
    )
    p.add_argument(
        "--ci", default="t", help=f"confidence interval of each Δ: {' | '.join(CI_METHODS)} (default t)"
    )
    p.add_argument(
        "--correction",
        default="holm",
        help=f"multiple-comparison correction over the table's Δs: {' | '.join(CORRECTIONS)} (default holm)",
    )
    p.add_argument(
        "--alpha", type=float, default=ALPHA, help=f"significance level; CIs at 1 - alpha (default {ALPHA})"
    )
    p.add_argument("--no-figures", action="store_true", help="skip the figures")
    p.add_argument(
        "--latency-backend",
        default="torch",
        help="whose latency the table shows (torch, onnxruntime, tensorrt)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no terminal table (warnings still shown)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and phase times")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s"
    )
    try:
        options = StatOptions(ci=args.ci, correction=args.correction, alpha=args.alpha)
        report = make_tables(
            Path(args.results), parse_where(args.where), not args.no_figures, args.latency_backend, options
        )
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if not args.quiet:
        print(format_summary(report.summary, options))
    skipped = f", {len(report.skipped)} unreadable record(s) skipped" if report.skipped else ""
    print(f"{report.n_runs} runs ({report.n_failed} failed{skipped})")
    for path in [report.runs_csv, report.summary_csv, report.tex, report.md, *report.figures]:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
