"""LGD-MC (invdiff/solvers/lgd.py) and the Student-t likelihood of the gradient-guided solvers.

LGD-MC: n = 1 draw with r_t = 0 is DPS's update (same generator, to rounding); the Monte-Carlo
guidance is per sample (batch independence, determinism under a generator); on the exact-posterior
toys it is closer to the posterior than half the prior (configs/experiment/toy_lgd.yaml).

Student-t (``likelihood="student_t"``, ``_common.student_t_residual``): the robust residual's
algebra and its ν → ∞ limit; on inpainting and denoising with 10 % of the measurements hit by
outliers of size 1–2 (on [0, 1] images, σ_y = 0.05) DPS, LGD and RED-diff reconstruct far better
with it than with the Gaussian term, and cost little on clean data.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import operators
from invdiff import exact_posterior as H
from invdiff.metrics import psnr
from invdiff.priors import CountingPrior, GaussianPrior
from invdiff.priors.analytic import smooth_cov
from invdiff.solvers._common import STUDENT_T_SCALE_FLOOR, student_t_residual
from invdiff.solvers.dps import dps
from invdiff.solvers.lgd import lgd
from invdiff.solvers.mcg import mcg
from invdiff.solvers.reddiff import reddiff

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 8, 8)
# a smooth Gaussian field around 0.5 on [0, 1] images (model space [-1, 1])
PRIOR = GaussianPrior(torch.full((64,), 0.5), smooth_cov(8, 8, length=2.0, var=0.04, nugget=0.002), shape=SHAPE,
                      data_range=(0.0, 1.0), model_range=(-1.0, 1.0))
INPAINT = operators.Inpainting(operators.masks.RandomPixelMask(0.5), SHAPE, seed=1)
DENOISE = operators.Inpainting(torch.ones(SHAPE), SHAPE)  # every pixel observed
SIGMA_Y = 0.05


def measurement(op, n=3, seed=0, outliers=0.0):
    """Ground truths from the prior, y with σ_y = 0.05 and, with ``outliers`` > 0, 10 % of the
    observed entries shifted by ±outliers·U(1, 2) (seeded)."""
    g = torch.Generator().manual_seed(seed)
    x = PRIOR.sample(n, g)
    y = op.measure(x, operators.GaussianNoise(SIGMA_Y), generator=g)
    hit = (torch.rand(y.shape, generator=g, dtype=torch.float64) < 0.1) & op.mask.expand_as(y).bool()
    sign = torch.sign(torch.randn(y.shape, generator=g, dtype=torch.float64))
    size = 1 + torch.rand(y.shape, generator=g, dtype=torch.float64)
    return x, y + outliers * hit * sign * size


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# LGD-MC
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(), dict(likelihood="student_t"), dict(likelihood="poisson", residual="physical"),
                                dict(residual="physical")])
def test_one_draw_at_r_zero_is_dps(kw):
    case = H.CASES["blur"]()
    y = case.y.expand(4, *case.y.shape[1:]).clone().abs()  # |y| > 0 for the Poisson weights
    a = lgd(y, case.op, case.prior, sigma_y=0.05, steps=20, zeta=0.7, mc_samples=1, r_scale=0.0, generator=gen(2), **kw)
    b = dps(y, case.op, case.prior, sigma_y=0.05, steps=20, zeta=0.7, generator=gen(2), **kw)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)  # measured: 4e-16


def test_r_zero_ignores_the_number_of_draws():
    # r_t = 0: the n draws all equal x̂₀, so H = h whatever n (no draws taken)
    _, y = measurement(INPAINT, n=2)
    a = lgd(y, INPAINT, PRIOR, sigma_y=SIGMA_Y, steps=10, mc_samples=1, r_scale=0.0, generator=gen(0))
    b = lgd(y, INPAINT, PRIOR, sigma_y=SIGMA_Y, steps=10, mc_samples=7, r_scale=0.0, generator=gen(0))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_deterministic_under_a_generator_and_the_draws_matter():
    _, y = measurement(INPAINT)
    a = lgd(y, INPAINT, PRIOR, sigma_y=SIGMA_Y, steps=10, mc_samples=5, generator=gen(7))
    b = lgd(y, INPAINT, PRIOR, sigma_y=SIGMA_Y, steps=10, mc_samples=5, generator=gen(7))
    c = lgd(y, INPAINT, PRIOR, sigma_y=SIGMA_Y, steps=10, mc_samples=5, generator=gen(8))
    d = lgd(y, INPAINT, PRIOR, sigma_y=SIGMA_Y, steps=10, mc_samples=2, generator=gen(7))
    assert a.shape == (3, *SHAPE) and a.dtype == y.dtype
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


@pytest.mark.parametrize("kw", [dict(), dict(likelihood="student_t", eta=0.5)])
def test_the_monte_carlo_guidance_is_per_sample(kw):
    # per-sample draws, weights and step normalisation: an item's result does not depend on its batch
    _, y = measurement(INPAINT, n=3)
    batch = lgd(y, INPAINT, PRIOR, sigma_y=torch.tensor([0.05, 0.1, 0.02]), steps=8, mc_samples=4,
                generator=[gen(s) for s in (11, 12, 13)], **kw)
    alone = lgd(y[1:2], INPAINT, PRIOR, sigma_y=0.1, steps=8, mc_samples=4, generator=[gen(12)], **kw)
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-7, atol=1e-8)


def test_one_network_call_per_step_whatever_the_draws():
    prior = CountingPrior(PRIOR)
    _, y = measurement(INPAINT, n=2)
    seen = []
    lgd(y, INPAINT, prior, sigma_y=SIGMA_Y, steps=6, mc_samples=5, generator=gen(0),
        callback=lambda i, x, x0: seen.append(i))
    assert prior.calls == 6 and seen == list(range(6))


@pytest.mark.parametrize("bad", [dict(mc_samples=0), dict(mc_samples=2.0), dict(r_scale=-1.0), dict(zeta=-1.0),
                                 dict(likelihood="cauchy"), dict(likelihood="student_t", nu=0.0),
                                 dict(residual="pixels"), dict(eta=-0.1)])
def test_bad_parameters_are_refused_before_any_work(bad):
    prior = CountingPrior(PRIOR)
    _, y = measurement(INPAINT, n=1)
    with pytest.raises(ValueError, match="lgd"):
        lgd(y, INPAINT, prior, sigma_y=SIGMA_Y, steps=3, **bad)
    assert prior.calls == 0


def toy_settings() -> dict:
    cfg = OmegaConf.load(ROOT / "configs" / "experiment" / "toy_lgd.yaml")
    return dict(OmegaConf.to_container(cfg.solver))


@pytest.mark.parametrize("case", ["inpaint", "dense_gmm"])
def test_closer_to_the_posterior_than_half_the_prior(case):
    # the paper's defaults (n = 10, r_t = σ/√(1+σ²), ζ = 1) at 200 steps (toy_lgd.yaml); measured
    # sw/sw_prior 0.07 (inpaint), 0.09 (dense_gmm), 0.21 (blur: in tests/test_solvers_posterior.py
    # once lgd is registered). The draws help here: r_t = 0 (DPS) gives 0.20 and 0.14.
    r = H.run(lgd, H.CASES[case](), 1500, seed=0, **toy_settings())
    assert r["sw"] <= 0.5 * r["sw_prior"], r
    assert r["sw"] <= 0.15 * r["sw_prior"], r


def test_solver_config_holds_the_defaults_and_runs_two_steps():
    path = ROOT / "configs" / "solver" / "lgd.yaml"
    assert path.read_text().lstrip().startswith("#"), "solver configs start with their source comment"
    cfg = OmegaConf.load(path)
    assert cfg._target_ == "invdiff.solvers.lgd" and cfg._partial_
    assert toy_settings() == {"steps": 200}
    cfg.pop("steps")
    _, y = measurement(INPAINT, n=2)
    out = instantiate(cfg)(y, INPAINT, PRIOR, sigma_y=SIGMA_Y, steps=2, generator=gen(0))
    assert out.shape == (2, *SHAPE) and torch.isfinite(out).all()


# --------------------------------------------------------------------------------------------
# Student-t likelihood
# --------------------------------------------------------------------------------------------
def test_student_t_residual_is_the_scaled_negative_log_likelihood():
    g = gen(0)
    r = 3 * torch.randn(4, 50, generator=g, dtype=torch.float64)
    r[0, 0] = 0.0
    s, nu = torch.tensor([[0.1], [0.5], [1.0], [2.0]], dtype=torch.float64), 3.0
    rt = student_t_residual(r, s, nu)
    rho = (nu + 1) / 2 * torch.log1p(r.square() / (nu * s.square())).sum(1)  # Student-t NLL (up to a constant)
    torch.testing.assert_close(0.5 * rt.square().sum(1), nu * s[:, 0] ** 2 / (nu + 1) * rho, rtol=1e-12, atol=0)
    torch.testing.assert_close(student_t_residual(-r, s, nu), -rt, rtol=0, atol=0)  # odd
    # its pull on r: ∂(½ r̃²)/∂r = r / (1 + r²/(ν s²)), also at r = 0 and in the series branch (u < 1e-6)
    r_in = torch.cat([r, torch.tensor([[1e-4, -3e-5]] * 4, dtype=torch.float64)], 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(0.5 * student_t_residual(r_in, s, nu).square().sum(), r_in)
    torch.testing.assert_close(grad, r_in.detach() / (1 + r_in.detach().square() / (nu * s.square())),
                               rtol=1e-10, atol=1e-14)


def test_student_t_residual_tends_to_the_residual_as_nu_grows():
    r = 2 * torch.randn(200, generator=gen(1), dtype=torch.float64)
    assert torch.equal(student_t_residual(r, 0.1, math.inf), r)
    errs = [float((student_t_residual(r, 0.1, nu) - r).abs().max()) for nu in (1e4, 1e6, 1e8)]
    assert all(b < a / 50 for a, b in zip(errs, errs[1:])) and errs[-1] < 1e-3, errs  # O(1/ν) once r² ≪ ν s²
    # the robust norm √(Σ ν s² log(1 + r²/(ν s²))) → ‖r‖
    assert abs(float(student_t_residual(r, 0.1, 1e8).norm() / r.norm()) - 1) < 1e-5  # measured 3.8e-6 (ν = 1e8)


@pytest.mark.parametrize("solver", [dps, lgd, reddiff, mcg])
def test_student_t_at_infinite_nu_is_the_gaussian_solver(solver):
    _, y = measurement(INPAINT, n=2, outliers=1.0)
    run = lambda **k: solver(y, INPAINT, PRIOR, sigma_y=SIGMA_Y, steps=10, generator=gen(3), **k)  # noqa: E731
    gauss = run()
    torch.testing.assert_close(run(likelihood="student_t", nu=math.inf), gauss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run(likelihood="student_t", nu=1e9), gauss, rtol=1e-6, atol=1e-6)
    assert (run(likelihood="student_t", nu=3.0) - gauss).abs().max() > 1e-2  # the outliers are down-weighted


def test_mcg_without_projection_is_dps_with_student_t():
    _, y = measurement(INPAINT, n=3, outliers=1.0)
    a = mcg(y, INPAINT, PRIOR, sigma_y=SIGMA_Y, steps=15, alpha=0.7, project=False, likelihood="student_t", nu=4.0,
            generator=gen(2))
    b = dps(y, INPAINT, PRIOR, sigma_y=SIGMA_Y, steps=15, zeta=0.7, likelihood="student_t", nu=4.0, generator=gen(2))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_student_t_scale_is_floored_where_sigma_y_is_zero():
    # σ_y = 0: s = the floor (model units), i.e. σ_y = floor / prior.scale in measurement units
    _, y = measurement(INPAINT, n=2, outliers=1.0)
    a = dps(y, INPAINT, PRIOR, sigma_y=0.0, steps=10, likelihood="student_t", generator=gen(0))
    b = dps(y, INPAINT, PRIOR, sigma_y=STUDENT_T_SCALE_FLOOR / PRIOR.scale, steps=10, likelihood="student_t",
            generator=gen(0))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def mean_psnr(solver, op, y, x, **kw):
    out = solver(y, op, PRIOR, sigma_y=SIGMA_Y, generator=gen(1), **kw)
    return sum(psnr(out, x, 1.0)) / x.shape[0]


ROBUST = {  # solver -> settings for the outlier tests
    "dps": (dps, dict(steps=100)),
    "lgd": (lgd, dict(steps=100, mc_samples=4)),
    "reddiff": (reddiff, dict(steps=100, lr=0.5)),
}


@pytest.mark.parametrize("op", ["inpaint", "denoise"])
@pytest.mark.parametrize("name", sorted(ROBUST))
def test_student_t_resists_outliers(name, op):
    # measured mean PSNR over 16 images (dB), Gaussian → Student-t (ν = 3), 100 steps:
    #   inpainting (50 % observed): dps 14.2 → 23.9, lgd 14.6 → 22.8, reddiff 9.2 → 20.6
    #   denoising:                  dps 14.7 → 27.4, lgd 14.9 → 26.3, reddiff 7.7 → 24.8
    # (on the same data without outliers the Gaussian terms reach 20.7–25.9)
    solver, kw = ROBUST[name]
    A = INPAINT if op == "inpaint" else DENOISE
    x, y = measurement(A, n=16, outliers=1.0)
    gauss = mean_psnr(solver, A, y, x, **kw)
    robust = mean_psnr(solver, A, y, x, likelihood="student_t", **kw)
    assert robust >= gauss + 6.0, (gauss, robust)
    assert robust >= 20.0, (gauss, robust)


@pytest.mark.parametrize("name", ["dps", "lgd"])
def test_student_t_costs_little_on_clean_data(name):
    # measured (inpainting, 16 images), Gaussian → Student-t: dps 23.9 → 23.3 dB, lgd 22.9 → 22.9 dB
    # (denoising: dps 21.9 → 23.6, lgd 22.7 → 25.3; reddiff 20.7 → 20.5 and 25.9 → 25.2)
    solver, kw = ROBUST[name]
    x, y = measurement(INPAINT, n=16)
    gauss = mean_psnr(solver, INPAINT, y, x, **kw)
    robust = mean_psnr(solver, INPAINT, y, x, likelihood="student_t", **kw)
    assert robust >= gauss - 1.5, (gauss, robust)
