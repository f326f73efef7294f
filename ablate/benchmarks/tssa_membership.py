"""How far TSSA's group membership Π is from uniform at initialisation, per token count and logit scale.

The measurement behind ``TSSA``'s default ``logit_scale="paper"``: the paper's regime (ImageNet, patch 16:
N = 196 tokens, d = 48 or 64, official ``s = 1``) against detection token counts (N = 9 … 6400, d = 32)
under each scale. Inputs are LayerNorm-ed Gaussian maps (what an inserted module sees after its
pre-norm) through the module's own freshly initialised projection.

    python -m ablate.benchmarks.tssa_membership
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from modules.tssa import LOGIT_SCALES, TSSA

PAPER = ((196, 48, 8), (196, 64, 8))  # (N, d, heads): ToST-S / ToST-M at 224 px, patch 16
DETECTION_N = (9, 36, 144, 400, 1600, 6400)  # P5 at 96 px … P3 at 640 px


def membership_deviation(
    n: int, d: int, heads: int, logit_scale: str, trials: int = 4, seed: int = 0
) -> float:
    """Mean over tokens and trials of ``h·|Π − 1/h|`` (0 = uniform) for a fresh TSSA on an N-token map."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(trials):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        m = TSSA(d * heads, num_heads=heads, logit_scale=logit_scale).eval()
        x = torch.randn(1, d * heads, n, 1, generator=gen)
        x = F.layer_norm(x.permute(0, 2, 3, 1), (d * heads,)).permute(0, 3, 1, 2)
        with torch.no_grad():
            pi = m.membership(x)
        total += ((pi - 1 / heads).abs().mean() * heads).item()
    return total / trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    print("TSSA membership at initialisation: mean h·|Π − 1/h| (0 = uniform)")
    for n, d, h in PAPER:
        dev = membership_deviation(n, d, h, "official", args.trials)
        print(f"paper regime  N={n:5d} d={d} heads={h}  s=1: {dev:.4f}")
    scales = list(LOGIT_SCALES)
    print(f"{'detection':<20}" + " ".join(f"{f'{s} (s={LOGIT_SCALES[s]})':>20}" for s in scales))
    for n in DETECTION_N:
        for h in (2, 4, 8):
            devs = [membership_deviation(n, 32, h, s, args.trials) for s in scales]
            print(f"N={n:5d} d=32 heads={h}" + " ".join(f"{v:20.4f}" for v in devs))


if __name__ == "__main__":
    main()
