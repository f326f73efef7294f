"""Forward latency of every registered attention module alone, next to the ``mhsa`` control.

    python -m ablate.benchmarks.module_latency [--channels 128] [--size 80 80] [--batch 1] [--repeats 20]

Eval mode, ``torch.inference_mode``; all modules timed side by side by the one timer
(:func:`ablate.measure.latency.time_interleaved`: warm-up passes, then ``--repeats`` rounds of one pass
each, the order rotated every round). Prints one row per module, median (p10/p90), with its ratio to
``mhsa``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

import modules

from ..measure.latency import flat, time_interleaved, timing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, nargs=2, default=(80, 80), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    h, w = args.size
    x = torch.randn(args.batch, args.channels, h, w, device=args.device)
    calls = {}
    for name in modules.attentions():
        torch.manual_seed(0)
        m = modules.build(name, args.channels).to(args.device).eval()
        calls[name] = _forward(m, x)
    times = time_interleaved(calls, rounds=args.repeats, warmup=args.warmup)
    rows = {name: timing(flat(t)) for name, t in times.items()}

    ref = rows["mhsa"].median_ms
    print(
        f"forward latency, {args.device}, {args.threads} threads, torch {torch.__version__}, "
        f"B={args.batch} C={args.channels} {h}x{w} (N={h * w}), median of {args.repeats}"
    )
    print(f"{'module':<8} {'median ms':>10} {'p10':>8} {'p90':>8} {'vs mhsa':>8}")
    for name, t in rows.items():
        print(f"{name:<8} {t.median_ms:>10.2f} {t.p10_ms:>8.2f} {t.p90_ms:>8.2f} {t.median_ms / ref:>7.2f}x")


def _forward(module: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def call() -> None:
        with torch.inference_mode():
            module(x)
        if x.is_cuda:
            torch.cuda.synchronize()

    return call


if __name__ == "__main__":
    main()
