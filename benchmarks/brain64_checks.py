"""Checks of a brain prior that need no solver: denoising of the held-out axial slab, and whether its
samples copy training slices (94 slices seen ~2000 times each is a memorisation risk).

    python benchmarks/brain64_checks.py [--prior invdiff/weights/brain64.safetensors] [--samples 64]
        [--out benchmarks/results/brain64_prior_checks.md]

1. **Denoising** (the prior's one job): for each σ (model units: images on [-1, 1], so σ/2 on the
   [0, 1] scale), the held-out test slab (axial slices 80–89) plus Gaussian noise of std σ (seed 0),
   denoised by D(x + σz, σ);
   reported as MSE / σ² (1 = no better than returning the noisy image; lower is better), for the
   brain prior and the shipped phantom64 prior on the same images.
2. **Memorisation**: unconditional samples (EDM Heun, 40 steps, seed 1) and each sample's nearest
   training slice (PSNR in dB, and which slice; flips included since the trainer flips). The
   yardstick is the same distance for the held-out slices (real anatomy 5+ mm from any training
   slice): samples much nearer to a training slice than unseen anatomy is are copies.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from invdiff.data.brain import brain_slices
from invdiff.priors import load
from invdiff.priors.samplers import edm_heun

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def denoise_ratio(prior, x: torch.Tensor, sigma: float, seed: int = 0) -> float:
    """MSE / σ² of the prior's denoiser in its model units ([-1, 1] here), σ in those units."""
    g = torch.Generator().manual_seed(seed)
    xm = prior.to_model(x)
    z = torch.randn(x.shape, generator=g, dtype=x.dtype)
    with torch.no_grad():
        d = prior.denoiser(xm + sigma * z, sigma)
    return float(((d - xm) ** 2).mean() / sigma**2)


def nearest(images: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the PSNR (peak 1) to its nearest training slice (or its mirror) and that slice's index."""
    bank = torch.cat([train, train.flip(-1), train.flip(-2), train.flip(-1, -2)])  # the trainer's flips
    mse = ((images[:, None] - bank[None]) ** 2).flatten(2).mean(-1)  # [n, 4N]
    best, idx = mse.min(1)
    return 10 * torch.log10(1 / best.clamp_min(1e-12)), idx % train.shape[0]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", default="invdiff/weights/brain64.safetensors")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/brain64_prior_checks.md")
    a = p.parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(2)
    _, test = brain_slices("axial", "test", 64)
    train_ids, train = brain_slices("axial", "train", 64)
    test, train = test.float(), train.float()  # (the networks' dtype)
    priors = {Path(a.prior).stem: load(a.prior), "phantom64": load("phantom64")}
    lines = [f"# {Path(a.prior).stem}: prior checks on the held-out MNI152 slab", "",
             f"Command: `python benchmarks/brain64_checks.py --prior {a.prior} --samples {a.samples}`", "",
             "## Denoising the held-out axial test slab (slices 80–89), MSE / σ² in model units (images on "
             "[-1, 1]; lower is better, 1 = the noisy image itself)", "", "| prior | " + " | ".join(f"σ {s}" for s in SIGMAS) + " |",
             "|---|" + "---|" * len(SIGMAS)]
    for name, prior in priors.items():
        cells = [f"{denoise_ratio(prior, test, s):.3f}" for s in SIGMAS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    brain = priors[Path(a.prior).stem]
    with torch.no_grad():
        x = edm_heun(brain, (a.samples, 1, 64, 64), steps=40, generator=torch.Generator().manual_seed(1))
    x = x.clamp(0, 1).float()
    ps, idx = nearest(x, train)
    pt, _ = nearest(test, train)
    q = lambda v: f"{float(v.median()):.2f} (min {float(v.min()):.2f}, max {float(v.max()):.2f})"  # noqa: E731
    copies = int((ps > float(pt.max())).sum())
    lines += ["", f"## Memorisation: nearest training slice ({len(train_ids)} slices, flips included), PSNR in dB", "",
              "| images | n | PSNR to the nearest training slice: median (min, max) |", "|---|---|---|",
              f"| held-out test slices (unseen anatomy) | {test.shape[0]} | {q(pt)} |",
              f"| {Path(a.prior).stem} samples (EDM Heun 40 steps, seed 1) | {a.samples} | {q(ps)} |", "",
              f"{copies} of {a.samples} samples are nearer to a training slice than any held-out slice is "
              f"(> {float(pt.max()):.2f} dB); distinct nearest slices: {len(set(idx.tolist()))} of {a.samples} samples.",
              "", f"Wall time: {(time.time() - t0) / 60:.1f} min (CPU, 2 threads)."]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
