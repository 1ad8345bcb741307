"""The shipped ``phantom64`` prior on held-out phantoms: single-coil MRI against zero-filled and TV.

    python benchmarks/phantom64_mri.py [--accel 4] [--n 8] [--prior PATH] [--fast]

Held-out images (never trained on): the scikit-image Shepp–Logan phantom and phantoms of
``invdiff.phantoms.EVAL_SEEDS``; the TV weight is tuned on 4 *other* evaluation seeds
(validation). Real 64×64 images, fastMRI random Cartesian mask (centre fraction 0.08 at 4×,
0.04 at 8×, mask seed 0), σ_y = 0.01 complex Gaussian k-space noise (orthonormal FFT, images on
[0, 1]). PSNR/SSIM by scikit-image with data_range = 1; one posterior sample per image (not
best-of-N). The most expensive samplers run at reduced budgets on this 2-core CPU (DPS 500 steps,
DAPS 100 levels with 50 Langevin steps, PnP-DM 40 iterations on a 50-level grid; the NFE column
says what each used). Writes benchmarks/results/phantom64_mri_<accel>x.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import operators as O
from _shipped_eval import Rows, metrics
from invdiff import phantoms as P
from invdiff.priors import load
from invdiff.solvers.baselines import tv

SIGMA_Y = 0.01


def problem(images: torch.Tensor, accel: int, seed: int = 1):
    cf = 0.08 if accel <= 4 else 0.04
    op = O.SingleCoilMRI(O.FastMRIMask("random", [cf], [accel]), (1, 64, 64), seed=0)
    y = op.measure(images.double(), O.GaussianNoise(SIGMA_Y), generator=torch.Generator().manual_seed(seed))
    return op, y


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accel", type=int, default=4)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--prior", default=None, help="prior file (default: the shipped phantom64)")
    p.add_argument("--fast", action="store_true", help="fewer steps for every solver (a quick check)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from invdiff.priors.shipped import shipped_prior_path

    prior_path = Path(args.prior) if args.prior else shipped_prior_path("phantom64")
    prior = load(prior_path)
    test = P.held_out(64, args.n)
    val = P.phantoms(P.EVAL_SEEDS[32:36], 64)
    op, y = problem(test, args.accel)
    vop, vy = problem(val, args.accel, seed=2)
    table = Rows(test)
    table.record("zero-filled (A⁺y)", lambda: op.A_dagger(y))
    lams = [3e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2]
    scores = {lam: metrics(tv(vy, vop, steps=300, lam=lam), val)[0] for lam in lams}
    best = max(scores, key=scores.get)
    print("TV validation PSNR:", {k: round(v, 2) for k, v in scores.items()}, "→ λ =", best, flush=True)
    table.record(f"TV (Chambolle–Pock 300 it., λ = {best:g} tuned on validation)", lambda: tv(y, op, steps=300, lam=best))

    s = 0.25 if args.fast else 1.0
    table.solvers([
        ("ddnm+ (100 steps, η 0.85)", "ddnm", dict(steps=int(100 * s))),
        ("ddrm (20 steps, η 0.85)", "ddrm", dict(steps=20)),
        ("pigdm (100 steps)", "pigdm", dict(steps=int(100 * s))),
        ("diffpir (100 steps, λ 7, ζ 0.3)", "diffpir", dict(steps=int(100 * s))),
        ("dps (500 steps, ζ 1)", "dps", dict(steps=int(500 * s), zeta=1.0)),
        ("daps (100 × 5 ODE, 50 Langevin, τ √2σ_y, lr 1e-4)", "daps",
         dict(steps=int(100 * s), langevin_steps=50, tau=None, lr=1e-4, lr_min_ratio=0.01)),
        ("pnpdm (40 it., ρ 10 → 0.05 decay 0.85, 50-level SDE)", "pnpdm",
         dict(steps=int(40 * s), rho_min=0.05, rho_decay=0.85, prior_steps=50)),
        ("mcgdiff (100 steps, 16 particles)", "mcgdiff", dict(steps=int(100 * s), particles=16)),
    ], prior, y, op, SIGMA_Y)
    out = Path(args.out or Path(__file__).parent / "results" / f"phantom64_mri_{args.accel}x.md")
    cmd = f"python benchmarks/phantom64_mri.py --accel {args.accel} --n {args.n}" + (" --fast" if args.fast else "")
    table.write(out, f"phantom64: single-coil MRI {args.accel}× on held-out phantoms", cmd, prior_path, prior, [
        f"{len(y)} held-out images (Shepp–Logan + {len(y) - 1} phantoms of EVAL_SEEDS), real 64×64 on [0, 1];",
        f"fastMRI random mask (R = {op.acceleration:.2f} realised, mask seed 0); σ_y = {SIGMA_Y} k-space noise.",
    ])


if __name__ == "__main__":
    sys.exit(main())
