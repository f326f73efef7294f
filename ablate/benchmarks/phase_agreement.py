"""The measurement phase, twice back to back on one results root: does it agree with itself?

    python -m ablate.benchmarks.phase_agreement --results DIR [--backend torch onnxruntime] [--rounds R] ...
                                              [--force-load]
    make measure-bench [RESULTS=dir] [BACKEND="torch onnxruntime"]

For every backend, runs the phase (:func:`ablate.measure.phase.measure`, every architecture of the results
root with its baseline, measurements forced) twice in a row in this process, and prints:

* both phases' tables (median ms, p10–p90, ratio to the baseline timed in the same rounds);
* per architecture the two ratios and their relative difference ``|r2 − r1| / r1`` (target: ≤ 3 %);
* whether the baseline is the fastest of the insert-mode variants in each phase;
* each phase's overhead: the share of its wall time outside the timed passes (target: ≤ 10 %; it includes
  building, fusing, exporting and the warm-up passes).

Run it with nothing else on the machine: the load is checked once, before the first phase, as the phase
does (``--force-load`` to time anyway; the reading is stored with the measurements and printed). The second
phase's measurements stay stored (they are as valid as any other).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..measure.phase import (
    PhaseResult,
    Settings,
    architectures,
    config_defaults,
    format_phase,
    measure,
    selected_records,
)
from ..measure.quiet import MachineBusyError
from ..measure.store import write_latency_csv


def agreement(first: PhaseResult, second: PhaseResult) -> list[tuple[str, float, float, float]]:
    """(label, ratio 1, ratio 2, relative difference) for every variant both phases measured."""
    again = {m["arch_key"]: m for m in second.measured}
    out = []
    for m in first.measured:
        other = again.get(m["arch_key"])
        if m["attn"] != "none" and other is not None:
            r1, r2 = m["latency_ratio"], other["latency_ratio"]
            out.append((m["label"], r1, r2, abs(r2 - r1) / r1))
    return out


def baseline_fastest(result: PhaseResult) -> bool | None:
    """Whether every insert-mode variant is slower than its baseline (None when there is none)."""
    inserted = [m for m in result.measured if m["mode"] == "after"]
    return all(m["latency_ratio"] > 1 for m in inserted) if inserted else None


def main(argv: list[str] | None = None) -> None:
    d = config_defaults()
    p = argparse.ArgumentParser(
        prog="python -m ablate.benchmarks.phase_agreement", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--results", default="results")
    p.add_argument("--backend", nargs="+", default=list(d["backends"]))
    p.add_argument("--threads", type=int, default=d["threads"])
    p.add_argument("--rounds", type=int, default=d["rounds"])
    p.add_argument("--passes", type=int, default=d["passes"])
    p.add_argument("--warmup", type=int, default=d["warmup"])
    p.add_argument("--force-load", action="store_true", help="time even on a busy machine (recorded)")
    args = p.parse_args(argv)
    results = Path(args.results)
    archs = architectures(selected_records(results, []), results)
    if not archs:
        print(f"error: no ok run with an architecture under {results}/runs", file=sys.stderr)
        sys.exit(2)
    load = None  # read once, before the first phase: later readings would count this benchmark's own timing
    for backend in args.backend:
        s = Settings(
            backend=backend,
            threads=args.threads,
            rounds=args.rounds,
            passes=args.passes,
            warmup=args.warmup,
            min_time_s=d["min_time_s"],
            force_load=args.force_load,
            max_load=d["max_load"],
            load_wait_s=d["load_wait_s"],
        )
        phases = []
        for _ in range(2):
            try:
                phases.append(measure(archs, s, results, force=True, load=load))
            except MachineBusyError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            load = load or phases[-1].load
        for i, phase in enumerate(phases, 1):
            print(f"--- phase {i} ---")
            print(format_phase(phase))
        if any(ph.skipped for ph in phases):
            continue
        rows = agreement(*phases)
        print(f"{'architecture':<34} {'ratio 1':>8} {'ratio 2':>8} {'|diff|':>7}")
        for label, r1, r2, diff in rows:
            print(f"{label:<34} {r1:>8.3f} {r2:>8.3f} {100 * diff:>6.1f}%")
        worst = max((r[3] for r in rows), default=0.0)
        print(
            f"{backend}: largest ratio difference between the two phases {100 * worst:.1f} % "
            "(target <= 3 %); "
            f"baseline fastest among insert variants: {[baseline_fastest(ph) for ph in phases]}; "
            f"overhead outside the timed passes: {', '.join(f'{100 * ph.overhead:.1f} %' for ph in phases)} "
            f"(target <= 10 %)"
        )
    write_latency_csv(results)


if __name__ == "__main__":
    main()
