"""The shipped brain64 prior (real anatomy: MNI152 T1 axial training slab): loads by name and
through its config, and denoises the held-out axial test slab far better than the identity."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from invdiff.priors import NetworkPrior, load
from invdiff.priors.shipped import shipped_prior_path
from shipped_checks import denoising_mse, held_out

ROOT = Path(__file__).resolve().parents[1]


def test_brain64_loads_by_name_and_by_config_with_its_record():
    prior = load("brain64")
    assert isinstance(prior, NetworkPrior) and prior.shape == (1, 64, 64) and prior.data_range == (0.0, 1.0)
    assert shipped_prior_path("brain64").stat().st_size < 8 * 2**20
    cfg_prior = instantiate(OmegaConf.load(ROOT / "configs" / "prior" / "brain64.yaml"))
    assert cfg_prior.checkpoint["sha256"] == prior.checkpoint["sha256"]
    weights = ROOT / "invdiff" / "weights"
    for name in ("brain64.md", "brain64_log.csv", "brain64_val.csv", "brain64_loss.png", "brain64_samples.png"):
        assert (weights / name).is_file(), name
    rows = [r.split(",") for r in (weights / "brain64_val.csv").read_text().splitlines()[1:]]
    assert min(rows, key=lambda r: float(r[-1]))[0] == "3750"  # the shipped step: the best validation score


def test_brain64_denoises_the_held_out_slab():
    prior = load("brain64")
    # measured at the committed weights (benchmarks/results/brain64_prior_checks.md): MSE/σ² = 0.280,
    # 0.062, 0.025 at σ = 0.1, 0.5, 1 in model units; the identity scores 1, the untrained network ≈ 0.9,
    # the first brain64 (no augmentation, training/brain64_noaug/) 0.62, 0.092, 0.030
    bounds = ((0.1, 0.4), (0.5, 0.08), (1.0, 0.04))
    for (sigma, bound), mse in zip(bounds, denoising_mse(prior, held_out("brain64"), [s for s, _ in bounds])):
        assert mse < bound * sigma**2, (sigma, mse / sigma**2)
