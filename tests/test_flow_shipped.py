"""The shipped flow priors (``phantom64_flow``, ``patches64_flow``, ``phantom64_reflow``): load by
name and through their configs as flow priors on the linear path, denoise held-out images as well
as their diffusion siblings (same data, network and budget), and sample images in few steps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from invdiff.priors import FlowPrior, LinearPath, flow_euler, load
from invdiff.priors.shipped import shipped_prior_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from shipped_checks import denoising_mse, held_out  # noqa: E402  (held-out images, denoising check)

FLOW_PRIORS = ("phantom64_flow", "patches64_flow", "phantom64_reflow")


@pytest.mark.parametrize("name", FLOW_PRIORS)
def test_flow_prior_loads_by_name_and_by_config(name):
    prior = load(name)
    assert isinstance(prior, FlowPrior) and prior.path == LinearPath() and prior.shape == (1, 64, 64)
    assert prior.data_range == (0.0, 1.0) and prior.model_range == (-1.0, 1.0) and prior.checkpoint["format"] == "invdiff"
    assert shipped_prior_path(name).stat().st_size < 8 * 2**20
    cfg_prior = instantiate(OmegaConf.load(ROOT / "configs" / "prior" / f"{name}.yaml"))
    assert cfg_prior.checkpoint["sha256"] == prior.checkpoint["sha256"]


# MSE/σ² in model units through the flow prior's denoiser (its velocity converted), measured at the
# committed weights: phantom64_flow 0.120, 0.041, 0.012 (the diffusion phantom64: 0.117, 0.042, 0.012);
# patches64_flow 0.183, 0.051, 0.009 (patches64: 0.178, 0.046, 0.009); phantom64_reflow 0.144, 0.046,
# 0.013 (its x̂₀ is the coupling's, no longer E[x₀ | x_t]). The identity scores 1 and an
# untrained flow network (zero output: v = 0, D = x_t) about 1 at σ = 0.1.
BOUNDS = {"phantom64_flow": ((0.1, 0.2), (0.5, 0.08), (2.0, 0.03)),
          "patches64_flow": ((0.1, 0.3), (0.5, 0.09), (2.0, 0.02)),
          "phantom64_reflow": ((0.1, 0.2), (0.5, 0.08), (2.0, 0.03))}


@pytest.mark.parametrize("name", FLOW_PRIORS)
def test_flow_prior_denoises_held_out_images(name):
    prior = load(name)
    mses = denoising_mse(prior, held_out(name), [s for s, _ in BOUNDS[name]])
    for (sigma, bound), mse in zip(BOUNDS[name], mses):
        assert mse < bound * sigma**2, (name, sigma, mse / sigma**2)


@pytest.mark.parametrize("name", FLOW_PRIORS)
def test_flow_prior_samples_images_in_ten_steps(name):
    prior = load(name)
    x = flow_euler(prior, (4, 1, 64, 64), steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all()
    outside = ((x < -0.1) | (x > 1.1)).double().mean().item()
    assert outside < 0.02, outside  # in range, as the training images
    stds = x.flatten(1).std(1)
    assert bool((stds > 0.02).all()) and bool((stds < 0.45).all()), stds  # neither flat nor noise
