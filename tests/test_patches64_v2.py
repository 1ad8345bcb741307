"""The shipped patches64_v2 prior (patches64 trained on with rotations and gain, validation-selected):
loads by name and through its config with its record, and denoises the held-out camera/moon views
better than patches64 at every tested noise level."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from invdiff.priors import NetworkPrior, load
from invdiff.priors.shipped import shipped_prior_path
from shipped_checks import denoising_mse, held_out

ROOT = Path(__file__).resolve().parents[1]


def test_patches64_v2_loads_by_name_and_by_config_with_its_record():
    prior = load("patches64_v2")
    assert isinstance(prior, NetworkPrior) and prior.shape == (1, 64, 64) and prior.data_range == (0.0, 1.0)
    assert shipped_prior_path("patches64_v2").stat().st_size < 8 * 2**20  # (the ≤ 50 MB budget, by far)
    cfg_prior = instantiate(OmegaConf.load(ROOT / "configs" / "prior" / "patches64_v2.yaml"))
    assert cfg_prior.checkpoint["sha256"] == prior.checkpoint["sha256"]
    weights = ROOT / "invdiff" / "weights"
    for name in ("patches64_v2.md", "patches64_v2_log.csv", "patches64_v2_val.csv", "patches64_v2_loss.png",
                 "patches64_v2_samples.png"):
        assert (weights / name).is_file(), name
    rows = [r.split(",") for r in (weights / "patches64_v2_val.csv").read_text().splitlines()[1:]]
    assert min(rows, key=lambda r: float(r[-1]))[0] == "16000"  # the shipped step: the best validation score
    assert load("patches64").checkpoint["sha256"] != prior.checkpoint["sha256"]  # the old one stays loadable


def test_patches64_v2_denoises_the_held_out_views_better_than_patches64():
    # measured (benchmarks/results/patches_prior_checks.md), MSE/σ² at σ = 0.1, 0.5, 1 in model units:
    # patches64 0.1788, 0.0461, 0.0231; patches64_v2 0.1725, 0.0451, 0.0222
    sigmas = (0.1, 0.5, 1.0)
    x = held_out("patches64_v2")
    old, new = denoising_mse(load("patches64"), x, sigmas), denoising_mse(load("patches64_v2"), x, sigmas)
    for s, a, b in zip(sigmas, old, new):
        assert b < 0.99 * a and b < 0.19 * s**2, (s, a / s**2, b / s**2)
