"""The shipped consistency priors (``phantom64_cm``, ``patches64_cm``): load by name and through their
configs as consistency priors, keep the boundary condition exactly, sample images in one or two
calls that are closer to held-out images than their teacher's at the same budget, and restore
measurements with CM4IR in four calls."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from invdiff import phantoms as P
from invdiff import solvers
from invdiff.exact_posterior import sliced_w2
from invdiff.priors import ConsistencyPrior, consistency_sampling, edm_heun, load
from invdiff.priors.shipped import shipped_prior_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from patches64_eval import views  # noqa: E402  (the evaluation's held-out images)

CM_PRIORS = ("phantom64_cm", "patches64_cm")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", CM_PRIORS)
def test_consistency_prior_loads_by_name_and_by_config(name):
    prior = load(name)
    assert isinstance(prior, ConsistencyPrior) and prior.shape == (1, 64, 64)
    assert (prior.sigma_min, prior.sigma_max) == (0.002, 80.0)
    assert prior.data_range == (0.0, 1.0) and prior.model_range == (-1.0, 1.0) and prior.checkpoint["format"] == "invdiff"
    assert shipped_prior_path(name).stat().st_size < 8 * 2**20
    cfg_prior = instantiate(OmegaConf.load(ROOT / "configs" / "prior" / f"{name}.yaml"))
    assert cfg_prior.checkpoint["sha256"] == prior.checkpoint["sha256"]
    x = torch.randn(2, 1, 64, 64, generator=gen(0), dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(prior.denoiser(x, prior.sigma_min), x)  # f(x, σ_min) = x, bit for bit


def held_out(name: str, n: int) -> torch.Tensor:
    if name.startswith("phantom"):
        ref = P.phantoms(P.EVAL_SEEDS[:n], 64)
        return ref.double()
    return torch.cat([views(v, seed=1000 + s) for s in range(n) for v in ("camera", "moon")])[:n].double()


# SW-pix (sliced W2 of pixel vectors, 64 samples against 64 held-out images), measured at the committed
# weights: phantom64_cm one call 0.064, two calls 0.063; its teacher phantom64 with EDM Heun at 2 steps
# (3 calls) 0.488; patches64_cm one call 0.102, two calls 0.105; patches64 Heun 2 steps 0.351.
@pytest.mark.parametrize("name", CM_PRIORS)
def test_one_and_two_call_samples_beat_the_teacher_at_the_same_budget(name):
    cm, teacher = load(name), load(name.removesuffix("_cm"))
    ref = held_out(name, 64).flatten(1)
    dist = {}
    for steps in (1, 2):
        x = consistency_sampling(cm, (64, 1, 64, 64), steps=steps, generator=gen(7))
        assert torch.isfinite(x).all() and ((x < -0.1) | (x > 1.1)).double().mean() < 0.02
        assert bool((x.flatten(1).std(1) > 0.02).all())  # not flat
        dist[steps] = sliced_w2(x.flatten(1).clamp(0, 1), ref, n_dirs=64, seed=0)
    t = edm_heun(teacher, (64, 1, 64, 64), steps=2, generator=gen(7))
    dist["teacher"] = sliced_w2(t.flatten(1).clamp(0, 1), ref, n_dirs=64, seed=0)
    assert max(dist[1], dist[2]) < 0.5 * dist["teacher"], dist


def test_cm4ir_restores_phantom_mri_in_four_calls():
    from phantom64_mri import problem

    test = P.held_out(64, 2).double()
    op, y = problem(test, 4)
    zero_filled = op.A_dagger(y).real if torch.is_complex(op.A_dagger(y)) else op.A_dagger(y)
    cm = load("phantom64_cm")
    x = solvers.cm4ir(y, op, cm, sigma_y=0.01, steps=4, generator=[gen(100), gen(101)])

    def psnr(a):
        return float(-10 * torch.log10((a.clamp(0, 1) - test).square().mean()))

    # measured: 20.7 dB against 16.4 dB zero-filled on these two phantoms (paper-default time points)
    assert psnr(x) > psnr(zero_filled) + 3.0, (psnr(x), psnr(zero_filled))
