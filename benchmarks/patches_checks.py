"""Checks of natural/scientific-image priors that need no solver: denoising of held-out images and the
patch statistics of their samples.

    python benchmarks/patches_checks.py patches64 patches64_v2 [--samples 64]
        [--out benchmarks/results/patches_prior_checks.md]

1. **Denoising** (the prior's one job): for each σ (model units: images on [-1, 1]), the held-out
   views of ``camera`` and ``moon`` (the presets' test images, never trained on) and the patches
   data's validation images (:func:`invdiff.data.training_data.patch_validation_images`) plus
   Gaussian noise (seed 0), denoised by D(x + σz, σ); reported as MSE / σ² (1 = returning the noisy
   image; lower is better).
2. **Samples**: ``--samples`` unconditional samples (EDM Heun, 40 steps, seed 1) against the
   held-out views: the patch Fréchet distance (:func:`invdiff.evaluation.patch_frechet_distance`,
   8×8 patches; lower = closer local statistics), and the samples' mean intensity and mean
   gradient magnitude beside the views' (washed-out or grainy samples show there).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from patches64_eval import views  # noqa: E402  (the presets' held-out views)

from invdiff.data.training_data import patch_validation_images  # noqa: E402
from invdiff.evaluation import denoising_ratios, patch_frechet_distance  # noqa: E402
from invdiff.priors import load  # noqa: E402
from invdiff.priors.samplers import edm_heun  # noqa: E402

SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)


def _gradient(x: torch.Tensor) -> float:
    return float(((x[..., 1:, :-1] - x[..., :-1, :-1]).square() + (x[..., :-1, 1:] - x[..., :-1, :-1]).square())
                 .sqrt().mean())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("priors", nargs="+", help="shipped names or .safetensors files")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/patches_prior_checks.md")
    a = p.parse_args(argv)
    t0 = time.time()
    test = torch.cat([views("camera", 0), views("moon", 1)])
    val = patch_validation_images(64).double()
    lines = ["# Prior checks without a solver: denoising held-out images, sample statistics", "",
             f"Command: `python benchmarks/patches_checks.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
             "## Denoising: MSE / σ² (model units, images on [-1, 1]; 1 = the noisy image itself)", "",
             "| prior | images | " + " | ".join(f"σ {s:g}" for s in SIGMAS) + " | mean |",
             "|---|---|" + "---|" * (len(SIGMAS) + 1)]
    sample_rows = []
    for name in a.priors:
        prior = load(name)
        label = Path(name).stem if name.endswith(".safetensors") else name
        for what, x in (("camera + moon views (test)", test), ("validation images", val)):
            r = denoising_ratios(prior, x, SIGMAS, torch.Generator().manual_seed(0))
            lines.append(f"| {label} | {what} | " + " | ".join(f"{v:.4f}" for v in r) + f" | {sum(r) / len(r):.4f} |")
        s = edm_heun(prior, (a.samples, *prior.shape), steps=40, generator=torch.Generator().manual_seed(1))
        s = s.clamp(0, 1).double()
        sample_rows.append(f"| {label} | {patch_frechet_distance(s, test):.4f} | {float(s.mean()):.3f} | "
                           f"{_gradient(s):.4f} |")
    lines += ["", f"## {a.samples} samples (EDM Heun, 40 steps, seed 1) against the 8 held-out views", "",
              "| prior | patch Fréchet distance | mean intensity | mean gradient |", "|---|---|---|---|", *sample_rows,
              f"| (the held-out views themselves) | 0 | {float(test.mean()):.3f} | {_gradient(test):.4f} |",
              "", f"Wall time: {(time.time() - t0) / 60:.1f} min (CPU)."]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
