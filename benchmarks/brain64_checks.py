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
from invdiff.evaluation import denoising_ratios
from invdiff.priors import load
from invdiff.priors.samplers import edm_heun

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def denoise_ratio(prior, x: torch.Tensor, sigma: float, seed: int = 0) -> float:
    """MSE / σ² of the prior's denoiser in its model units ([-1, 1] here), σ in those units; the same
    noise draw (``seed``) at every σ."""
    return denoising_ratios(prior, x, [sigma], torch.Generator().manual_seed(seed))[0]


def nearest(images: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the PSNR (peak 1) to its nearest training slice (or its mirror) and that slice's index."""
    bank = torch.cat([train, train.flip(-1), train.flip(-2), train.flip(-1, -2)])  # the trainer's flips
    mse = ((images[:, None] - bank[None]) ** 2).flatten(2).mean(-1)  # [n, 4N]
    best, idx = mse.min(1)
    return 10 * torch.log10(1 / best.clamp_min(1e-12)), idx % train.shape[0]


def slice_gap_psnr(train: torch.Tensor, ids: list[int], d: int) -> float:
    """Mean PSNR between training slices ``d`` slices (1 mm each) apart."""
    pairs = [(i, j) for i in range(len(ids)) for j in range(len(ids)) if ids[j] - ids[i] == d]
    return sum(float(10 * torch.log10(1 / ((train[i] - train[j]) ** 2).mean())) for i, j in pairs) / len(pairs)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", default="invdiff/weights/brain64.safetensors")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/brain64_prior_checks.md")
    p.add_argument("--also", action="append", default=[], metavar="LABEL=PATH",
                   help="another prior file of the same family to check beside it (e.g. a later checkpoint)")
    a = p.parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(2)
    _, test = brain_slices("axial", "test", 64)
    train_ids, train = brain_slices("axial", "train", 64)
    test, train = test.float(), train.float()  # (the networks' dtype)
    _, val = brain_slices("axial", "val", 64)
    val = val.float()
    main_name = Path(a.prior).stem
    brains = {main_name: load(a.prior)}
    for spec in a.also:
        label, _, path = spec.partition("=")
        brains[label] = load(path)
    priors = {**brains, "phantom64": load("phantom64")}
    also = "".join(f" --also {s}" for s in a.also)
    lines = [f"# {main_name}: prior checks on the held-out MNI152 slabs", "",
             f"Command: `python benchmarks/brain64_checks.py --prior {a.prior} --samples {a.samples}{also}`", ""]
    for split, images, what in (("validation", val, "slices 65–69"), ("test", test, "slices 80–89")):
        lines += [f"## Denoising the held-out axial {split} slab ({what}), MSE / σ² in model units (images on "
                  "[-1, 1]; lower is better, 1 = the noisy image itself)", "",
                  "| prior | " + " | ".join(f"σ {s}" for s in SIGMAS) + " |", "|---|" + "---|" * len(SIGMAS)]
        for name, prior in priors.items():
            cells = [f"{denoise_ratio(prior, images, s):.3f}" for s in SIGMAS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    pt, _ = nearest(test, train)
    q = lambda v: f"{float(v.median()):.2f} (min {float(v.min()):.2f}, max {float(v.max()):.2f})"  # noqa: E731
    lines += [f"## Memorisation: nearest training slice ({len(train_ids)} slices, flips included), PSNR in dB", "",
              "For scale: training slices d mm apart are, on average, "
              + ", ".join(f"{slice_gap_psnr(train, train_ids, d):.1f} dB (d = {d})" for d in (1, 2, 5))
              + " from each other.", "",
              "| images | n | PSNR to the nearest training slice: median (min, max) | nearer than any held-out slice | "
              "distinct nearest slices |", "|---|---|---|---|---|",
              f"| held-out test slices (unseen anatomy) | {test.shape[0]} | {q(pt)} | – | – |"]
    for name, brain in brains.items():
        with torch.no_grad():
            x = edm_heun(brain, (a.samples, 1, 64, 64), steps=40, generator=torch.Generator().manual_seed(1))
        ps, idx = nearest(x.clamp(0, 1).float(), train)
        copies = int((ps > float(pt.max())).sum())
        lines.append(f"| {name} samples (EDM Heun 40 steps, seed 1) | {a.samples} | {q(ps)} | {copies} of {a.samples} | "
                     f"{len(set(idx.tolist()))} |")
    lines += ["", f"Wall time: {(time.time() - t0) / 60:.1f} min (CPU, 2 threads)."]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
