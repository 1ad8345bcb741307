"""The shipped phantom64 prior: loads by name and through its config, and denoises held-out
phantoms far better than the identity (a random or untrained network would not)."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from invdiff.priors import NetworkPrior, load
from invdiff.priors.shipped import shipped_prior_path
from shipped_checks import denoising_mse, held_out

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_phantom64_loads_by_name_and_by_config():
    prior = load("phantom64")
    assert isinstance(prior, NetworkPrior) and prior.shape == (1, 64, 64)
    assert prior.data_range == (0.0, 1.0) and prior.checkpoint["format"] == "invdiff"
    assert shipped_prior_path("phantom64").stat().st_size < 8 * 2**20  # a few MB
    cfg_prior = instantiate(OmegaConf.load(CONFIGS / "prior" / "phantom64.yaml"))
    assert cfg_prior.checkpoint["sha256"] == prior.checkpoint["sha256"]


def test_phantom64_denoises_held_out_phantoms():
    prior = load("phantom64")
    # measured at the committed weights: MSE/σ² = 0.117, 0.041, 0.012; the identity scores 1 and
    # the untrained network (zero-initialised output layer, D ≈ c_skip·x) about 0.9 at σ = 0.1
    bounds = ((0.1, 0.2), (0.5, 0.08), (2.0, 0.03))
    for (sigma, bound), mse in zip(bounds, denoising_mse(prior, held_out("phantom64"), [s for s, _ in bounds])):
        assert mse < bound * sigma**2, (sigma, mse / sigma**2)
