"""The fidelity study: the quick protocol's verdicts against a longer reference, per dataset.

    python -m ablate.fidelity [--study default] [--only rala,identity] [--datasets shapes_small,neon_trees]
                              [--seeds 0,1,2] [--jobs 2] [--results results] [--dry-run] [OVERRIDE ...]
    make fidelity [ARGS="--datasets shapes_small"]

Trains every comparison of ``conf/fidelity/<study>.yaml`` under both protocols (ordinary sweeps: cached
runs are reused, any launcher override works, the live view shows each sweep), then writes
``<results>/fidelity/fidelity.csv`` (per dataset and comparison: Δ with CI under each protocol),
``fidelity.md`` (what the terminal prints) and ``figures/fidelity.png``. ``--report-only`` skips the
sweeps and reports on the runs that exist. OVERRIDEs (model, train.*, dataset.*) apply to every run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from ..errors import AblateError
from ..records import write_text_atomic
from .agreement import (
    control_verdicts,
    deltas,
    flips_by_bin,
    kept_sign_from,
    side_by_side,
    sign_agreement,
    tau_with_ci,
)
from .figure import plot_fidelity
from .study import Study, load_study, read_pairs, sweep_commands

FIDELITY_DIR = "fidelity"
FIDELITY_CSV = "fidelity.csv"
FIDELITY_MD = "fidelity.md"


def _csv_list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _fmt(v: float, spec: str = "+.1f") -> str:
    return "–" if v != v else format(v, spec).replace("-", "−")


def _ci(row: pd.Series, label: str) -> str:
    d, lo, hi, n = (row[f"{label}_{k}"] for k in ("delta", "ci_low", "ci_high", "n"))
    if n == 0 or d != d:
        return "missing"
    if row[f"{label}_identical"] is True or row[f"{label}_identical"] == 1:
        return f"{_fmt(d)} (seeds identical, n={n})"
    if n < 2:
        return f"{_fmt(d)} (n=1, no CI)"
    return f"{_fmt(d)} [{_fmt(lo)}, {_fmt(hi)}] n={n}"


def summary_text(study: Study, pairs: pd.DataFrame, rows: pd.DataFrame) -> str:
    """What the terminal and ``fidelity.md`` say, per dataset."""
    quick, ref = study.protocols
    lines = [
        f"Fidelity of train={quick} against train={ref}: Δ {study.metric} in points vs the comparator, "
        f"paired by seed (seeds {', '.join(map(str, study.seeds))}), 95% paired-t CIs."
    ]
    verdicts = pd.DataFrame(control_verdicts(rows))
    for dataset in study.datasets:
        part = rows[rows["dataset"] == dataset]
        lines.append("")
        lines.append(f"## {dataset}")
        lines.append(f"| comparison | kind | {quick} Δ [CI] | {ref} Δ [CI] | sign kept |")
        lines.append("|---|---|---|---|---|")
        for _, r in part.iterrows():
            kind = r["kind"] + (f" ({r['expect']})" if r["expect"] else "")
            kept = (
                "–"
                if r["quick_delta"] != r["quick_delta"] or r["reference_delta"] != r["reference_delta"]
                else ("no" if r["flip"] else "yes")
            )
            lines.append(
                f"| {r['comparison']} | {kind} | {_ci(r, 'quick')} | {_ci(r, 'reference')} | {kept} |"
            )
        tau, lo, hi = tau_with_ci(pairs, dataset, study.protocols)
        modules_and_controls = int(part["quick_delta"].notna().sum())
        lines.append("")
        lines.append(
            f"Kendall τ between the protocols' Δ: {_fmt(tau, '+.2f')} "
            f"[{_fmt(lo, '+.2f')}, {_fmt(hi, '+.2f')}] "
            f"({modules_and_controls} comparisons; CI: bootstrap over seeds)"
        )
        kept, of = sign_agreement(part)
        lines.append(f"Sign agreement where the {ref} CI excludes 0: {kept} of {of}")
        bins = ", ".join(f"{label}: {f}/{n}" for label, f, n in flips_by_bin(part) if n)
        lines.append(f"Sign flips by |{quick} Δ| (points): {bins or 'none'}")
        kept_from = kept_sign_from(part)
        if kept_from is None:
            lines.append(
                f"The largest {quick} Δ changed sign under the {ref} protocol: no quick verdict holds."
            )
        else:
            x, k = kept_from
            lines.append(
                f"A {quick} Δ of ≥ {x:.1f} points kept its sign under the {ref} protocol in {k} of {k} "
                "comparisons."
            )
        if not verdicts.empty:
            for _, v in verdicts[verdicts["dataset"] == dataset].iterrows():
                must = "must read 0" if v["kind"] == "null" else f"must be detected with sign {v['expect']}"
                verdict = "ok" if v["ok"] else "FAILED"
                lines.append(f"Control {v['comparison']} ({must}) under {v['protocol']}: {verdict}")
        mismatched = int(
            part[["quick_mismatched_bases", "reference_mismatched_bases"]].fillna(0).to_numpy().sum()
        )
        if mismatched:
            lines.append(f"{mismatched} seed pairs left out: their two runs fine-tuned different base runs.")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ablate.fidelity", description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default="default", help="conf/fidelity/<study>.yaml (default: default)")
    p.add_argument("--only", help="comma-separated comparisons of the study (default: all)")
    p.add_argument("--datasets", help="comma-separated datasets (default: the study's)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the study's)")
    p.add_argument("--jobs", type=int, default=2, help="jobs at a time (joblib; 1: one after another)")
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument("--dry-run", action="store_true", help="print each sweep's plan; train nothing")
    p.add_argument("--report-only", action="store_true", help="no sweeps: report on the runs that exist")
    p.add_argument("overrides", nargs="*", help="python -m ablate overrides for every run (model, train.*)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.jobs < 1:
            raise AblateError(f"--jobs={args.jobs} is not valid; it must be at least 1")
        seeds = _csv_list(args.seeds)
        try:
            seed_values = [int(s) for s in seeds] if seeds else None
        except ValueError:
            raise AblateError(f"--seeds={args.seeds!r} is not valid; give integers, e.g. 0,1,2") from None
        study = load_study(
            args.study, _csv_list(args.only), _csv_list(args.datasets), seed_values, args.overrides
        )
    except AblateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    results = Path(args.results).expanduser().resolve()
    status = 0
    if not args.report_only:
        for cmd in sweep_commands(study, results, args.jobs, dry_run=args.dry_run, live=sys.stdout.isatty()):
            print("$", " ".join(cmd[1:]), flush=True)
            status = subprocess.call(cmd) or status
        if args.dry_run:
            sys.exit(status)
    pairs = read_pairs(study, results)
    rows = side_by_side(deltas(pairs), study.protocols)
    out = results / FIDELITY_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / FIDELITY_CSV, rows.to_csv(index=False, float_format="%.4f"))
    text = summary_text(study, pairs, rows)
    write_text_atomic(out / FIDELITY_MD, text + "\n")
    figures = plot_fidelity(rows, results / "figures" / "fidelity")
    print(text)
    print(f"wrote {out / FIDELITY_CSV}, {out / FIDELITY_MD}, {figures[0]}")
    sys.exit(1 if status else 0)


if __name__ == "__main__":
    main()
