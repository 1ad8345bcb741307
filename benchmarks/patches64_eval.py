"""The shipped ``patches64`` prior on held-out images: random inpainting, Gaussian deblurring and
SR×2 against the pseudo-inverse / measurement and a TV reconstruction tuned on validation images.

    python benchmarks/patches64_eval.py --task inpaint|deblur|sr2 [--prior PATH] [--fast]

Test images (never trained on): scikit-image's ``camera`` and ``moon``, each as the whole image
downscaled to 64×64 and as three 64×64 views of seeded random crops (side 128, 256, 384 pixels,
downscaled), 8 images in all. Validation images for the TV weight: the same views of ``coins`` and
``cell`` (training images of the prior, but never test images; TV itself learns nothing else).
Gray images on [0, 1]; σ_y = 0.025 white Gaussian noise (DPS/DAPS's 0.05 on [-1, 1]).

Tasks: random inpainting (70 % of pixels missing, one fixed mask, DAPS's convention), Gaussian
deblurring (kernel 9×9, σ 1.5 pixels — DPS's σ = 3 on 256² scaled to 64², reflect padding;
separable, so an exact SVD), ×2 super-resolution (MATLAB bicubic, DPS's operator).
Solvers at their papers' per-task settings (REFERENCE.md: DPS ζ 0.5 inpainting / 0.3 deblur and
SR, DiffPIR ζ 1.0 / 0.1 / 0.25 with λ 7 and 20 steps for inpainting) within a CPU budget (DPS 500
steps, DAPS 100 levels × 5 ODE steps with 50 Langevin steps); one posterior sample per image (never
best-of-N). PSNR/SSIM: scikit-image, data_range = 1, reconstructions clipped to [0, 1].
Writes benchmarks/results/patches64_<task>.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import operators as O
from _shipped_eval import Rows, metrics
from invdiff import solvers
from invdiff.priors import CountingPrior, load
from invdiff.solvers.baselines import tv

SIGMA_Y = 0.025
TEST, VAL = ("camera", "moon"), ("coins", "cell")


def views(name: str, seed: int = 0) -> torch.Tensor:
    """The whole image and 3 random crops (side 128, 256, 384), each downscaled to 64×64: ``[4, 1, 64, 64]``."""
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    img = np.asarray(getattr(data, name)())
    img = rgb2gray(img[..., :3]) if img.ndim == 3 else img.astype(np.float64) / 255.0
    rng = np.random.default_rng(seed)
    out = [resize(img, (64, 64), anti_aliasing=True)]
    for side in (128, 256, 384):
        side = min(side, *img.shape)
        top, left = rng.integers(0, img.shape[0] - side + 1), rng.integers(0, img.shape[1] - side + 1)
        out.append(resize(img[top : top + side, left : left + side], (64, 64), anti_aliasing=True))
    return torch.from_numpy(np.clip(np.stack(out), 0, 1))[:, None]


def operator(task: str):
    shape = (1, 64, 64)
    if task == "inpaint":
        return O.Inpainting(O.RandomPixelMask(0.7), shape, seed=0)
    if task == "deblur":
        return O.Blur(O.GaussianKernel(9, 1.5), img_size=shape, padding="reflect")
    if task == "sr2":
        return O.Downsampling(2, img_size=shape, filter="bicubic")
    raise ValueError(task)


SETTINGS = {  # per task: DPS ζ, DiffPIR (steps, ζ)
    "inpaint": dict(dps_zeta=0.5, diffpir=(20, 1.0)),
    "deblur": dict(dps_zeta=0.3, diffpir=(100, 0.1)),
    "sr2": dict(dps_zeta=0.3, diffpir=(100, 0.25)),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(SETTINGS), required=True)
    p.add_argument("--prior", default=None, help="prior file (default: the shipped patches64)")
    p.add_argument("--fast", action="store_true", help="fewer steps for every solver (a quick check)")
    p.add_argument("--out", default=None)
    p.add_argument("--append-mean", type=int, default=0, metavar="N",
                   help="only append a row to an existing table: ΠGDM's posterior mean of N draws per image")
    args = p.parse_args(argv)
    from invdiff.priors.shipped import shipped_prior_path

    prior_path = Path(args.prior) if args.prior else shipped_prior_path("patches64")
    prior = load(prior_path)
    test = torch.cat([views(n, seed=i) for i, n in enumerate(TEST)])
    val = torch.cat([views(n, seed=10 + i) for i, n in enumerate(VAL)])
    op = operator(args.task)
    y = op.measure(test, O.GaussianNoise(SIGMA_Y), generator=torch.Generator().manual_seed(1))
    vy = op.measure(val, O.GaussianNoise(SIGMA_Y), generator=torch.Generator().manual_seed(2))
    if args.append_mean:
        return append_mean(args, prior, op, y, test)
    table = Rows(test)
    if args.task == "inpaint":
        table.record("measurement (missing pixels 0)", lambda: y)
    else:
        table.record("pseudo-inverse A⁺y" if args.task == "sr2" else "measurement y (blurred)",
                     lambda: op.A_dagger(y) if args.task == "sr2" else y)
    lams = [1e-3, 3e-3, 1e-2, 2e-2, 4e-2, 8e-2, 0.16]
    scores = {lam: metrics(tv(vy, op, steps=300, lam=lam), val)[0] for lam in lams}
    best = max(scores, key=scores.get)
    print("TV validation PSNR:", {k: round(v, 2) for k, v in scores.items()}, "→ λ =", best, flush=True)
    table.record(f"TV (Chambolle–Pock 300 it., λ = {best:g} tuned on validation)", lambda: tv(y, op, steps=300, lam=best))

    s = 0.2 if args.fast else 1.0
    st = SETTINGS[args.task]
    dsteps, dzeta = st["diffpir"]
    table.solvers([
        ("ddrm (20 steps, η 0.85)", "ddrm", dict(steps=20)),
        ("ddnm+ (100 steps, η 0.85)", "ddnm", dict(steps=int(100 * s))),
        ("pigdm (100 steps)", "pigdm", dict(steps=int(100 * s))),
        (f"diffpir ({dsteps} steps, λ 7, ζ {dzeta})", "diffpir", dict(steps=max(2, int(dsteps * s)), lam=7.0, zeta=dzeta)),
        (f"dps (500 steps, ζ {st['dps_zeta']})", "dps", dict(steps=int(500 * s), zeta=st["dps_zeta"])),
        ("daps (100 × 5 ODE, 50 Langevin, τ √2σ_y, lr 1e-4)", "daps",
         dict(steps=int(100 * s), langevin_steps=50, tau=None, lr=1e-4, lr_min_ratio=0.01)),
    ], prior, y, op, SIGMA_Y)
    out = Path(args.out or Path(__file__).parent / "results" / f"patches64_{args.task}.md")
    cmd = f"python benchmarks/patches64_eval.py --task {args.task}" + (" --fast" if args.fast else "")
    title = {"inpaint": "random inpainting (70 % missing)", "deblur": "Gaussian deblurring (9×9, σ 1.5)",
             "sr2": "×2 super-resolution (bicubic)"}[args.task]
    table.write(out, f"patches64: {title} on held-out images", cmd, prior_path, prior, [
        f"{len(y)} held-out 64×64 gray images on [0, 1] (camera and moon: whole image and 3 seeded crops each);",
        f"{op.describe()}; σ_y = {SIGMA_Y}. TV weight chosen among {lams} on 8 validation views of coins and cell.",
    ])


def append_mean(args, prior, op, y, test):
    """Append ``pigdm (100 steps), mean of N draws`` to the task's table: the MMSE estimate a
    posterior sampler gives at N× the cost of one draw (draw k of image i: seed 1000·k + 100 + i)."""
    out = Path(args.out or Path(__file__).parent / "results" / f"patches64_{args.task}.md")
    if not out.is_file():
        raise SystemExit(f"{out} does not exist: run the task first")
    n = args.append_mean
    counting = CountingPrior(prior)
    t0 = time.perf_counter()
    draws = []
    for k in range(n):
        gens = [torch.Generator().manual_seed(1000 * k + 100 + i) for i in range(len(y))]
        draws.append(solvers.pigdm(y, op, counting, sigma_y=SIGMA_Y, steps=100, generator=gens))
    secs = (time.perf_counter() - t0) / len(y)
    ps, ss = metrics(torch.stack(draws).mean(0), test)
    row = f"| pigdm (100 steps), mean of {n} draws | {ps:.2f} | {ss:.3f} | {counting.calls} | {secs:.2f} |"
    print(row)
    text = out.read_text().rstrip("\n").split("\n")
    last = max(i for i, line in enumerate(text) if line.startswith("|"))
    text.insert(last + 1, row)
    text.insert(3, f"Last row appended by `python benchmarks/patches64_eval.py --task {args.task} --append-mean {n}`.")
    out.write_text("\n".join(text) + "\n")


if __name__ == "__main__":
    sys.exit(main())
