"""Module complexity benchmark: every registered attention module alone, beside its peers.

    python -m ablate.benchmarks.complexity [--channels 64 128 256] [--grids 20 40 80 160] [--modules ...]
                                           [--repeats N]
                           [--warmup N] [--threads N] [--out results/bench] [--quick]

For every module, channel count C and token grid G×G (N = G² tokens), batch 1, float32, eval mode:

* ``gflops_fwd``: FLOPs (2·MACs) of one forward, counted by :func:`ablate.measure.count_module_flops`
  (``FlopCounterMode`` plus the fused SDPA kernels); ``gflops_fwdbwd``: the same counter over one
  forward + backward (``y.sum().backward()``, input and parameters requiring grad).
* ``fwd_ms`` / ``fwdbwd_ms``: median wall-clock time of a forward under ``torch.inference_mode`` and of
  a forward + backward. Time-budgeted: after ``warmup`` untimed passes, passes repeat until at least
  ``repeats`` are timed and their sum reaches ``min_time_s`` (at most ``max_repeats``). Peers are timed
  side by side with the module they are compared to, alternating pass by pass in the same loop.
* ``saved_act_mb``: the activation memory of a training step, measured as the bytes of every tensor
  autograd saves for backward during the forward (``torch.autograd.graph.saved_tensors_hooks``),
  parameters excluded, each storage counted once. This is what a forward + backward holds beyond the
  weights between the two passes; it is deterministic and device independent (unlike CPU peak RSS).

A configuration is skipped, with the reason in the ``status`` column, when its predicted activation
memory exceeds ``mem_budget_mb`` or its predicted single forward + backward exceeds ``max_call_s``;
predictions extrapolate the previous (smaller) grid of the same module and C by the larger of the
FLOPs ratio and the measured memory/time growth exponent. Peers that cannot run a configuration (timm's
``HaloAttn`` needs G divisible by its block size) are skipped with the error as reason.

Scaling exponents are the least-squares slope of log(cost) against log(N) over the grids ≥ ``fit_from``
(all grids when fewer than two qualify), per module and C, for FLOPs, forward and forward + backward
time. Outputs: ``modules.csv`` (one row per configuration), ``exponents.csv``, and ``complexity.png`` /
``complexity.pdf`` (log–log FLOPs and forward latency against N at one C).

Peers (bench only): timm's ``HaloAttn(dim=C, dim_out=C, num_heads=heads, block_size=8, halo_size=3)``
beside ``halo`` built with ``qkv_bias=False`` (timm's default; ours keeps its output projection, which
timm lacks), and ultralytics' ``AAttn(C, heads, 4)`` beside ``area`` (4 areas). ``heads`` is the
registry's default for C (head dim 32).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

import modules

from ..measure.cost import COUNTER, count_module_flops, flop_counter
from ..measure.latency import time_interleaved
from ..report.figures import plot_bench

log = logging.getLogger(__name__)

DEFAULT_CHANNELS = (64, 128, 256)
DEFAULT_GRIDS = (20, 40, 80, 160)
QUICK_CHANNELS = (64, 128)
QUICK_GRIDS = (20, 40, 80)
PLOT_CHANNELS = 128
HALO_BLOCK, HALO_SIZE, AREAS = 8, 3, 4
TIMM_HALO = "timm_halo"
ULTRA_AATTN = "ultra_aattn"
PEERS = {TIMM_HALO: "halo", ULTRA_AATTN: "area"}  # peer -> the module of ours it is compared with


# ------------------------------------------------------------------------------------------ entries


def _heads(channels: int) -> int:
    """The registry's default number of heads for ``channels`` (head dim 32)."""
    return modules.build("mhsa", channels).num_heads


def _build_ours(name: str, channels: int) -> nn.Module:
    heads = _heads(channels)
    if name == "halo":  # equal configuration to timm's HaloAttn (no qkv bias)
        return modules.build(
            "halo", channels, num_heads=heads, block_size=HALO_BLOCK, halo_size=HALO_SIZE, qkv_bias=False
        )
    if name == "area":
        return modules.build("area", channels, num_heads=heads, area=AREAS)
    return modules.build(name, channels, num_heads=heads)


def _build_timm_halo(channels: int) -> nn.Module:
    from timm.layers.halo_attn import HaloAttn

    return HaloAttn(
        dim=channels, dim_out=channels, num_heads=_heads(channels), block_size=HALO_BLOCK, halo_size=HALO_SIZE
    )


def _build_aattn(channels: int) -> nn.Module:
    from ultralytics.nn.modules.block import AAttn

    return AAttn(channels, _heads(channels), AREAS)


def builders(names: Sequence[str]) -> dict[str, Callable[[int], nn.Module]]:
    """Name -> ``build(C)`` for ours and the peers, in benchmark order (a peer right after its module)."""
    out: dict[str, Callable[[int], nn.Module]] = {}
    for name in names:
        if name == TIMM_HALO:
            out[name] = _build_timm_halo
        elif name == ULTRA_AATTN:
            out[name] = _build_aattn
        else:
            modules.get(name)  # raises UnknownModuleError with the valid names
            out[name] = lambda c, n=name: _build_ours(n, c)
    return out


def default_modules() -> list[str]:
    """Every registered module, each peer right after the module it is compared with."""
    names: list[str] = []
    for name in modules.attentions():
        names.append(name)
        names += [p for p, ours in PEERS.items() if ours == name]
    return names


def _groups(names: Sequence[str]) -> list[list[str]]:
    """Timing groups: a module together with its peers (timed alternately), others alone."""
    groups: list[list[str]] = []
    placed: set[str] = set()
    for name in names:
        if name in placed:
            continue
        group = [name] + [p for p, ours in PEERS.items() if ours == name and p in names]
        if name in PEERS and PEERS[name] in names:
            continue  # timed with its module
        groups.append(group)
        placed.update(group)
    return groups


# ------------------------------------------------------------------------------------------ results


@dataclass
class Row:
    """One (module, C, grid) configuration; cost fields are None when it was skipped."""

    module: str
    impl: str  # ours / timm / ultralytics
    peer_of: str
    channels: int
    heads: int
    grid: int
    tokens: int
    status: str = "ok"  # ok / skipped: reason
    params: int | None = None
    gflops_fwd: float | None = None
    gflops_fwdbwd: float | None = None
    saved_act_mb: float | None = None
    fwd_ms: float | None = None
    fwd_reps: int | None = None
    fwdbwd_ms: float | None = None
    fwdbwd_reps: int | None = None
    threads: int = 0
    torch: str = torch.__version__
    flop_counter: str = COUNTER


@dataclass
class Exponent:
    module: str
    channels: int
    grids: str  # the grids the fit used, e.g. "40-80-160"
    exp_flops: float | None
    exp_fwd: float | None
    exp_fwdbwd: float | None


@dataclass
class BenchResult:
    rows: list[Row]
    exponents: list[Exponent]
    ratios: list[dict[str, object]] = field(default_factory=list)  # peer comparisons
    csv_path: Path | None = None
    exponents_path: Path | None = None
    plot_path: Path | None = None


# --------------------------------------------------------------------------------------- measuring


def _saved_and_fwdbwd_flops(module: nn.Module, x: torch.Tensor) -> tuple[float, int]:
    """Activation MB saved for backward (parameters excluded, storages once) and fwd+bwd FLOPs."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
        return t

    xg = x.detach().requires_grad_(True)
    with flop_counter() as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = module(xg)
        y.sum().backward()
    module.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20, counter.get_total_flops()


def _fwd(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One forward under ``torch.inference_mode``."""

    def call() -> None:
        with torch.inference_mode():
            module(x)

    return call


def _fwdbwd(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """One forward + backward of ``sum(y)`` (input and parameters requiring grad; grads dropped first)."""
    xg = x.detach().requires_grad_(True)

    def call() -> None:
        module.zero_grad(set_to_none=True)
        module(xg).sum().backward()

    return call


def _time(
    members: dict[str, nn.Module],
    x: torch.Tensor,
    step: Callable[[nn.Module, torch.Tensor], Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    min_time_s: float,
    max_repeats: int,
) -> dict[str, list[float]]:
    """ms per pass of ``step`` per member, members interleaved pass by pass (A, B, B, A, …: the one timer,
    :func:`ablate.measure.latency.time_interleaved`, one pass per round) until every member has ``repeats``
    passes summing to ``min_time_s``, or ``max_repeats`` passes."""
    calls = {name: step(m, x) for name, m in members.items()}
    times = time_interleaved(
        calls, rounds=repeats, passes=1, warmup=warmup, min_time_s=min_time_s, max_rounds=max_repeats
    )
    return {name: [v for r in t for v in r] for name, t in times.items()}


def _growth(prev: tuple[int, float] | None, older: tuple[int, float] | None) -> float:
    """Growth exponent between two measured grids (tokens, cost); 1 when there are not two usable points."""
    if prev is None or older is None or prev[1] <= 0 or older[1] <= 0 or prev[0] == older[0]:
        return 1.0
    return math.log(prev[1] / older[1]) / math.log(prev[0] / older[0])


def _predict(history: list[tuple[int, float]], tokens: int, flops_exp: float) -> float | None:
    """Extrapolate the last (tokens, cost) to ``tokens`` with the larger of the two growth exponents."""
    if not history:
        return None
    exp = max(flops_exp, _growth(history[-1], history[-2] if len(history) > 1 else None))
    n0, c0 = history[-1]
    return c0 * (tokens / n0) ** exp


def _impl(name: str) -> str:
    return {TIMM_HALO: "timm", ULTRA_AATTN: "ultralytics"}.get(name, "ours")


def run_bench(
    channels: Sequence[int] = DEFAULT_CHANNELS,
    grids: Sequence[int] = DEFAULT_GRIDS,
    names: Sequence[str] | None = None,
    *,
    repeats: int = 3,
    warmup: int = 1,
    min_time_s: float = 1.0,
    max_repeats: int = 50,
    threads: int | None = None,
    out: str | Path | None = "results/bench",
    mem_budget_mb: float = 4096.0,
    max_call_s: float = 10.0,
    fit_from: int = 40,
    plot_channels: int | None = None,
) -> BenchResult:
    """Measure every (module, C, grid); write the CSVs and the plot under ``out`` (None: write nothing)."""
    if repeats < 1 or warmup < 0 or min_time_s < 0 or max_repeats < repeats:
        raise ValueError(f"bad repeats/warmup/min_time_s/max_repeats: {repeats}, {warmup}, {min_time_s}")
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    names = list(names) if names is not None else default_modules()
    build = builders(names)
    grids = sorted(set(grids))
    rows: list[Row] = []
    for c in channels:
        for group in _groups(names):
            rows += _bench_group(
                group,
                build,
                c,
                grids,
                threads,
                repeats,
                warmup,
                min_time_s,
                max_repeats,
                mem_budget_mb,
                max_call_s,
            )
    exponents = fit_exponents(rows, fit_from)
    result = BenchResult(rows, exponents, peer_ratios(rows))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        result.csv_path = write_rows(out / "modules.csv", rows)
        result.exponents_path = write_rows(out / "exponents.csv", exponents)
        pc = plot_channels if plot_channels is not None else _plot_channels(channels)
        result.plot_path = next(
            p for p in plot_bench(result.csv_path, out / "complexity", pc) if p.suffix == ".png"
        )
    return result


def _bench_group(
    group: list[str],
    build: dict[str, Callable[[int], nn.Module]],
    c: int,
    grids: list[int],
    threads: int,
    repeats: int,
    warmup: int,
    min_time_s: float,
    max_repeats: int,
    mem_budget_mb: float,
    max_call_s: float,
) -> list[Row]:
    """All grids of one timing group (a module and its peers) at C = ``c``."""
    torch.manual_seed(0)
    built = {name: build[name](c).eval() for name in group}
    heads = _heads(c)
    hist: dict[str, dict[str, list[tuple[int, float]]]] = {
        n: {"mem": [], "time": [], "flops": []} for n in group
    }
    rows: list[Row] = []
    for g in grids:
        n_tok = g * g
        x = torch.randn(1, c, g, g)
        live: dict[str, nn.Module] = {}
        by_name: dict[str, Row] = {}
        for name in group:
            row = Row(name, _impl(name), PEERS.get(name, ""), c, heads, g, n_tok, threads=threads)
            row.params = sum(p.numel() for p in built[name].parameters())
            by_name[name] = row
            reason = _skip_reason(hist[name], n_tok, mem_budget_mb, max_call_s)
            if reason is None and name == TIMM_HALO and g % HALO_BLOCK:
                reason = f"timm HaloAttn needs H and W divisible by block_size {HALO_BLOCK}"
            if reason is None:
                reason = _count(built[name], x, row)
            if reason is None:
                live[name] = built[name]
                h = hist[name]
                h["mem"].append((n_tok, row.saved_act_mb))
                h["flops"].append((n_tok, row.gflops_fwdbwd))
            else:
                row.status = f"skipped: {reason}"
                log.info("%s C=%d %d²: %s", name, c, g, row.status)
        if live:
            kw = dict(repeats=repeats, warmup=warmup, min_time_s=min_time_s, max_repeats=max_repeats)
            fwd = _time(live, x, _fwd, **kw)
            bwd = _time(live, x, _fwdbwd, **kw)
            for name in live:
                row = by_name[name]
                row.fwd_ms, row.fwd_reps = statistics.median(fwd[name]), len(fwd[name])
                row.fwdbwd_ms, row.fwdbwd_reps = statistics.median(bwd[name]), len(bwd[name])
                hist[name]["time"].append((n_tok, row.fwdbwd_ms / 1e3))
                log.info(
                    "%s C=%d %d²: fwd %.2f ms, fwd+bwd %.2f ms, %.3f GFLOPs, %.1f MB saved",
                    name,
                    c,
                    g,
                    row.fwd_ms,
                    row.fwdbwd_ms,
                    row.gflops_fwd,
                    row.saved_act_mb,
                )
        rows += [by_name[name] for name in group]
    return rows


def _skip_reason(
    hist: dict[str, list[tuple[int, float]]], tokens: int, mem_budget_mb: float, max_call_s: float
) -> str | None:
    """Why a configuration is not run, predicted from the smaller grids already measured (None: run)."""
    flops = hist["flops"]
    flops_exp = _growth(flops[-1], flops[-2]) if len(flops) > 1 else 1.0
    mem = _predict(hist["mem"], tokens, flops_exp)
    if mem is not None and mem > mem_budget_mb:
        return f"predicted activation memory {mem:.0f} MB > budget {mem_budget_mb:.0f} MB"
    seconds = _predict(hist["time"], tokens, flops_exp)
    if seconds is not None and seconds > max_call_s:
        return f"predicted fwd+bwd {seconds:.1f} s > limit {max_call_s:g} s per pass"
    return None


def _count(module: nn.Module, x: torch.Tensor, row: Row) -> str | None:
    """Fill FLOPs and saved activations of ``row``; the error as skip reason if the module cannot run."""
    try:
        row.gflops_fwd = count_module_flops(module, x).get_total_flops() / 1e9
        mem, flops = _saved_and_fwdbwd_flops(module, x)
    except Exception as e:  # a peer's own constraint (e.g. timm's block-size divisibility)
        msg = " ".join(str(e).split()) or type(e).__name__
        return f"cannot run: {type(e).__name__}: {msg[:120]}"
    row.saved_act_mb, row.gflops_fwdbwd = mem, flops / 1e9
    return None


# ----------------------------------------------------------------------------------------- analysis


def fit_exponent(tokens: Sequence[float], costs: Sequence[float]) -> float | None:
    """Least-squares slope of log(cost) against log(tokens); None with fewer than two points."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(tokens, costs, strict=True) if v is not None and v > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    return sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)


def fit_exponents(rows: list[Row], fit_from: int = 40) -> list[Exponent]:
    """Scaling exponents per (module, C) over the measured grids ≥ ``fit_from`` (all if < 2 qualify)."""
    out = []
    keys = dict.fromkeys((r.module, r.channels) for r in rows)
    for name, c in keys:
        ok = [r for r in rows if r.module == name and r.channels == c and r.status == "ok"]
        use = [r for r in ok if r.grid >= fit_from]
        use = use if len(use) >= 2 else ok
        n = [r.tokens for r in use]

        def fit(attr: str, use: list[Row] = use, n: list[int] = n) -> float | None:
            return fit_exponent(n, [getattr(r, attr) for r in use])

        grids = "-".join(str(r.grid) for r in use)
        out.append(Exponent(name, c, grids, fit("gflops_fwd"), fit("fwd_ms"), fit("fwdbwd_ms")))
    return out


def peer_ratios(rows: list[Row]) -> list[dict[str, object]]:
    """ours / peer time (forward and forward + backward) at every configuration both ran."""
    index = {(r.module, r.channels, r.grid): r for r in rows if r.status == "ok"}
    out = []
    for r in rows:
        ours = index.get((r.peer_of, r.channels, r.grid)) if r.peer_of else None
        if r.status != "ok" or ours is None:
            continue
        out.append(
            {
                "ours": ours.module,
                "peer": r.module,
                "channels": r.channels,
                "grid": r.grid,
                "fwd_ratio": ours.fwd_ms / r.fwd_ms,
                "fwdbwd_ratio": ours.fwdbwd_ms / r.fwdbwd_ms,
            }
        )
    return out


def write_rows(path: Path, rows: Sequence[Row] | Sequence[Exponent]) -> Path:
    """Write dataclass rows as CSV (header from the dataclass fields; None as empty)."""
    if not rows:
        raise ValueError(f"nothing to write to {path}")
    names = [f.name for f in fields(rows[0])]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    log.info("wrote %s (%d rows)", path, len(rows))
    return path


def _plot_channels(channels: Sequence[int]) -> int:
    return PLOT_CHANNELS if PLOT_CHANNELS in channels else list(channels)[len(channels) // 2]


# -------------------------------------------------------------------------------------------- report


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(result: BenchResult) -> str:
    """The printed summary: exponents and forward ms per grid, then the peer ratio lines."""
    rows, grids = result.rows, sorted({r.grid for r in result.rows})
    lines = [
        f"{'module':<12} {'C':>4} {'fit grids':>11} {'exp_flops':>9} {'exp_fwd':>8} {'exp_f+b':>8}"
        + "".join(f" {f'fwd@{g}²':>11}" for g in grids)
    ]
    index = {(r.module, r.channels, r.grid): r for r in rows}
    for e in result.exponents:
        cells = []
        for g in grids:
            r = index.get((e.module, e.channels, g))
            cells.append(f" {_fmt(r.fwd_ms, '.2f') if r and r.status == 'ok' else 'skip':>11}")
        lines.append(
            f"{e.module:<12} {e.channels:>4} {e.grids:>11} {_fmt(e.exp_flops, '.2f'):>9} "
            f"{_fmt(e.exp_fwd, '.2f'):>8} {_fmt(e.exp_fwdbwd, '.2f'):>8}" + "".join(cells)
        )
    for ratio in result.ratios:
        lines.append(
            f"{ratio['ours']} / {ratio['peer']} time at C={ratio['channels']} {ratio['grid']}²: "
            f"forward {ratio['fwd_ratio']:.2f}x, forward+backward {ratio['fwdbwd_ratio']:.2f}x"
        )
    skipped = [r for r in rows if r.status != "ok"]
    for r in skipped:
        lines.append(f"skipped {r.module} C={r.channels} {r.grid}²: {r.status.removeprefix('skipped: ')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, nargs="+", default=None)
    parser.add_argument("--grids", type=int, nargs="+", default=None)
    parser.add_argument("--modules", nargs="+", default=None, help=f"default: {' '.join(default_modules())}")
    parser.add_argument("--repeats", type=int, default=3, help="minimum timed passes (default 3)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--min-time", type=float, default=None, help="seconds of timed passes (default 1)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--mem-budget-mb", type=float, default=4096.0)
    parser.add_argument("--max-call-s", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="C 64 128, grids 20 40 80, 0.25 s per timing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    channels = args.channels or (QUICK_CHANNELS if args.quick else DEFAULT_CHANNELS)
    grids = args.grids or (QUICK_GRIDS if args.quick else DEFAULT_GRIDS)
    min_time = args.min_time if args.min_time is not None else (0.25 if args.quick else 1.0)
    try:
        builders(args.modules or [])
    except modules.UnknownModuleError as e:
        parser.exit(2, f"error: {e} (peers: {', '.join(PEERS)})\n")
    start = time.perf_counter()
    result = run_bench(
        channels,
        grids,
        args.modules,
        repeats=args.repeats,
        warmup=args.warmup,
        min_time_s=min_time,
        threads=args.threads,
        out=args.out,
        mem_budget_mb=args.mem_budget_mb,
        max_call_s=args.max_call_s,
    )
    print(
        f"module benchmark, cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, batch 1, "
        f"float32; exponents fit log(cost) vs log(N); fwd in ms (median); {time.perf_counter() - start:.0f} s"
    )
    print(format_table(result))
    print(f"wrote {result.csv_path}, {result.exponents_path}, {result.plot_path}")


if __name__ == "__main__":
    main()
