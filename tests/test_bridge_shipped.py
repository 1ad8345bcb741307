"""The shipped bridges (``phantom64_bridge_mri4x``, ``patches64_bridge_sr2``): load by name and through
their configs as bridge priors of their operator family, restore held-out images of their task far
above the bridge's start A⁺y, and refuse another task."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from invdiff import phantoms as P
from invdiff import solvers
from invdiff.priors import load
from invdiff.priors.bridge import BridgePrior
from invdiff.priors.shipped import shipped_prior_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bridges import problem  # noqa: E402  (the benchmark's held-out problems)

BRIDGES = {"phantom64_bridge_mri4x": ("mri4x", "mri"), "patches64_bridge_sr2": ("sr2", "sr")}


def psnr(a, x):
    return (-10 * torch.log10((a.clamp(0, 1).double() - x.double()).square().flatten(1).mean(1))).mean().item()


@pytest.mark.parametrize("name", sorted(BRIDGES))
def test_shipped_bridge_loads_by_name_and_config(name):
    br = load(name)
    assert isinstance(br, BridgePrior) and br.shape == (1, 64, 64) and br.spec["family"] == BRIDGES[name][1]
    assert shipped_prior_path(name).stat().st_size < 8 * 2**20
    cfg = instantiate(OmegaConf.load(ROOT / "configs" / "prior" / f"{name}.yaml"))
    assert isinstance(cfg, BridgePrior) and cfg.spec == br.spec


# one-NFE PSNR (E[x₀ | x₁]) on the benchmark's held-out images, measured at the committed weights:
# MRI 4× (8 phantoms) 27.27 dB vs A⁺y 16.29; SR ×2 (8 camera/moon views) 32.28 dB SR ×2 (8 camera/moon views) vs A⁺y 27.43 dB (tables: bridge_*.md)
@pytest.mark.parametrize("name", sorted(BRIDGES))
def test_shipped_bridge_restores_its_task_far_above_its_start(name):
    task = BRIDGES[name][0]
    test, op, y, *_ = problem(task)
    br = load(name)
    sy = br.spec["sigma_y"]
    one = solvers.indi(y, op, br, sigma_y=sy, steps=1)
    cd = solvers.cddb(y, op, br, sigma_y=sy, steps=5, generator=[torch.Generator().manual_seed(i) for i in range(len(y))])
    start = psnr(op.A_dagger(y), test)
    assert psnr(one, test) > start + (6 if task == "mri4x" else 2), (psnr(one, test), start)
    assert psnr(cd, test) > start + (6 if task == "mri4x" else 1), (psnr(cd, test), start)
    with pytest.raises(ValueError, match="this bridge was trained for"):
        solvers.i2sb(y, op, br, sigma_y=3 * sy, steps=2)
