"""Forward latency of every registered attention module alone, next to the ``mhsa`` control.

    python -m ablate.module_latency [--channels 128] [--size 80 80] [--batch 1] [--repeats 20]

Eval mode, ``torch.inference_mode``, a few warm-up passes, then the median (and p10/p90) over
``--repeats`` timed forwards. Prints one row per module with its ratio to ``mhsa``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import modules

from .measure import quantile, time_forward


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
    rows = {}
    for name in modules.available():
        torch.manual_seed(0)
        m = modules.build(name, args.channels).to(args.device).eval()
        rows[name] = time_forward(m, x, args.repeats, args.warmup)

    ref = statistics.median(rows["mhsa"])
    print(
        f"forward latency, {args.device}, {args.threads} threads, torch {torch.__version__}, "
        f"B={args.batch} C={args.channels} {h}x{w} (N={h * w}), median of {args.repeats}"
    )
    print(f"{'module':<8} {'median ms':>10} {'p10':>8} {'p90':>8} {'vs mhsa':>8}")
    for name, times in rows.items():
        med = statistics.median(times)
        print(
            f"{name:<8} {med:>10.2f} {quantile(times, 0.1):>8.2f} {quantile(times, 0.9):>8.2f} "
            f"{med / ref:>7.2f}x"
        )


if __name__ == "__main__":
    main()
