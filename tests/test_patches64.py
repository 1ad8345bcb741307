"""The shipped patches64 prior: loads by name and through its config, denoises the held-out
images (camera, moon) far better than the identity, and its unconditional samples look like images."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from invdiff.priors import NetworkPrior, edm_heun, load
from invdiff.priors.shipped import shipped_prior_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from shipped_checks import denoising_mse, held_out  # noqa: E402  (held-out images, denoising check)


def test_patches64_loads_by_name_and_by_config():
    prior = load("patches64")
    assert isinstance(prior, NetworkPrior) and prior.shape == (1, 64, 64) and prior.data_range == (0.0, 1.0)
    assert shipped_prior_path("patches64").stat().st_size < 8 * 2**20
    cfg_prior = instantiate(OmegaConf.load(ROOT / "configs" / "prior" / "patches64.yaml"))
    assert cfg_prior.checkpoint["sha256"] == prior.checkpoint["sha256"]


# measured at the committed weights: MSE/σ² = 0.178, 0.046, 0.0091 (model units); the identity
# scores 1 and the untrained network about 0.9 at σ = 0.1
BOUNDS = ((0.1, 0.3), (0.5, 0.08), (2.0, 0.02))


def test_patches64_denoises_the_held_out_images():
    prior = load("patches64")
    mses = denoising_mse(prior, held_out("patches64"), [s for s, _ in BOUNDS])
    for (sigma, bound), mse in zip(BOUNDS, mses):
        assert mse < bound * sigma**2, (sigma, mse / sigma**2)


def test_patches64_samples_are_images():
    prior = load("patches64")
    x = edm_heun(prior, (4, 1, 64, 64), steps=18, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    outside = ((x < -0.05) | (x > 1.05)).double().mean().item()
    assert outside < 0.01, outside  # in range, as the training images
    stds = x.flatten(1).std(1)
    assert bool((stds > 0.02).all()) and bool((stds < 0.45).all()), stds  # neither flat nor noise
