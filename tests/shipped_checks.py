"""What the shipped-prior tests share: the held-out images of a prior's family and the denoising
check against them (MSE in model units at each σ, one noise draw per σ from a seed-0 generator)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from invdiff import phantoms as P
from invdiff.evaluation import denoising_ratios

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from patches64_eval import views  # noqa: E402  (the evaluation's held-out images)


def held_out(name: str) -> torch.Tensor:
    """The held-out images of a ``phantom64*`` prior (Shepp–Logan + 7 evaluation seeds), a
    ``patches64*`` prior (camera and moon views) or a ``brain*`` prior (the MNI152 template's axial
    test slab), float64 in [0, 1]."""
    if name.startswith("phantom"):
        return P.held_out(64, 8).double()
    if name.startswith("brain"):
        from invdiff.data.brain import brain_slices

        return brain_slices("axial", "test", 64)[1].double()
    return torch.cat([views("camera", 0), views("moon", 1)])


def denoising_mse(prior, x_phys: torch.Tensor, sigmas) -> list[float]:
    """MSE of ``prior.denoiser`` on ``x_phys + σ n`` in model units, for each σ in order
    (:func:`invdiff.evaluation.denoising_ratios` times σ²)."""
    ratios = denoising_ratios(prior, x_phys, sigmas, torch.Generator().manual_seed(0))
    return [r * s**2 for r, s in zip(ratios, sigmas)]
