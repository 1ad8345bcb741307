"""Unconditional samplers recover analytic priors (statistical + stated discretisation tolerance),
with exact NFE, determinism and batch independence."""

from __future__ import annotations

import math

import pytest
import torch

from invdiff.priors import (CountingPrior, GaussianMixturePrior, GaussianPrior, Prior, annealed_langevin, ddim, ddpm,
                            edm_heun, pf_ode, reverse_sde)

GAUSS = GaussianPrior(torch.tensor([1.0, -2.0]), torch.tensor([[2.0, 0.8], [0.8, 0.5]]))
GMM = GaussianMixturePrior([[-4.0, 0.0], [4.0, 1.0], [0.0, -5.0]], [0.5, 0.3, 0.2],
                           torch.tensor([[[1.0, 0.3], [0.3, 0.6]], [[0.4, 0.0], [0.0, 1.2]],
                                         [[0.8, -0.2], [-0.2, 0.5]]]))
TOY_ALD = dict(steps=30, n_steps_each=50, step_lr=6.25e-4, sigma_min=0.05, sigma_max=10.0)  # toy-tuned

# (sampler, kwargs, n, discretisation tolerances: mean (abs), covariance (rel. Frobenius), weights)
# Errors measured at n = 20000 (seed 0) sit below these; the comments give the reasons for the larger ones.
CASES = {
    "ddpm-1000": (ddpm, dict(steps=1000), 20000, 0.02, 0.02, 0.01),
    "ddim-100": (ddim, dict(steps=100), 20000, 0.03, 0.03, 0.01),
    "ddim-eta1-250": (ddim, dict(steps=250, eta=1.0), 20000, 0.04, 0.04, 0.01),
    # first-order Euler in σ² on a geometric grid: the many high-σ steps each add O(δ²)
    "reverse_sde-1000": (reverse_sde, dict(steps=1000), 20000, 0.04, 0.03, 0.01),
    "pf_ode-1000": (pf_ode, dict(steps=1000), 20000, 0.06, 0.08, 0.015),
    # 18 Heun steps over σ ∈ [0.002, 80] leave ~10 % excess variance on this 2-D problem (it falls to
    # the statistical floor at 100 steps); the starting N(0, σ_max²) ignores the data mean: ~|μ|·√Σ/σ_max
    "edm_heun-18": (edm_heun, dict(steps=18), 20000, 0.04, 0.13, 0.015),
    "edm_heun-churn-40": (edm_heun, dict(steps=40, S_churn=40.0), 20000, 0.04, 0.06, 0.01),
    # Langevin: O(α) bias and slow inter-mode mixing at low σ (toy-tuned schedule)
    "annealed_langevin": (annealed_langevin, TOY_ALD, 5000, 0.08, 0.05, 0.02),
}


def check(prior, s, n, mean_tol, cov_tol, w_tol):
    cov = prior.covariance()
    se_mean = math.sqrt(float(torch.diagonal(cov).sum()) / n)
    assert (s.mean(0) - prior.mean()).norm() <= 4 * se_mean + mean_tol
    rel = (torch.cov(s.T) - cov).norm() / cov.norm()
    assert rel <= 4 * math.sqrt(2.0 / n) + cov_tol, f"covariance error {float(rel):.3f}"
    if prior.K > 1:
        k = ((s[:, None, :] - prior.means[None]) ** 2).sum(-1).argmin(1)
        frac = torch.bincount(k, minlength=prior.K).double() / n
        assert (frac - prior.weights).abs().max() <= 4 * math.sqrt(0.25 / n) + w_tol


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("prior_name", ["gauss", "gmm"])
def test_sampler_recovers_the_prior(case, prior_name):
    sampler, kw, n, mean_tol, cov_tol, w_tol = CASES[case]
    prior = GAUSS if prior_name == "gauss" else GMM
    s = sampler(prior, (n, 2), generator=torch.Generator().manual_seed(0), **kw)
    assert s.shape == (n, 2) and s.dtype == torch.float64
    check(prior, s, n, mean_tol, cov_tol, w_tol)


def test_predictor_corrector_in_higher_dimension():
    """The snr-based corrector step assumes ‖z‖ and ‖∇log p‖ concentrate (high dimension)."""
    u = torch.arange(64, dtype=torch.float64)
    yy, xx = u // 8, u % 8
    cov = 0.5 * torch.exp(-((yy[:, None] - yy[None]) ** 2 + (xx[:, None] - xx[None]) ** 2) / 4.0) + 0.05 * torch.eye(64)
    prior = GaussianPrior(torch.linspace(-0.5, 0.5, 64), cov, shape=(1, 8, 8))
    n = 2000
    s = reverse_sde(prior, (n, 1, 8, 8), steps=100, corrector_steps=2,
                    generator=torch.Generator().manual_seed(0)).reshape(n, 64)
    se = (torch.diagonal(cov) / n).sqrt()
    assert bool(((s.mean(0) - prior.mean().flatten()).abs() <= 4.5 * se + 0.02).all())
    ratio = float((s.var(0) / torch.diagonal(cov)).mean())
    assert abs(ratio - 1) < 0.08  # measured 1.05: Langevin's O(step) over-dispersion


Counting = CountingPrior


NFE = {
    "ddpm": (ddpm, dict(steps=37), 37),
    "ddim": (ddim, dict(steps=23, eta=0.5), 23),
    "annealed_langevin": (annealed_langevin, dict(steps=4, n_steps_each=6), 25),
    "annealed_langevin-nodenoise": (annealed_langevin, dict(steps=4, n_steps_each=6, denoise=False), 24),
    "reverse_sde": (reverse_sde, dict(steps=20), 20),
    "reverse_sde-pc": (reverse_sde, dict(steps=20, corrector_steps=2), 20 + 2 * 19),
    "pf_ode": (pf_ode, dict(steps=15), 15),
    "edm_heun": (edm_heun, dict(steps=18), 35),
    "edm_heun-churn": (edm_heun, dict(steps=10, S_churn=5.0), 19),
}


@pytest.mark.parametrize("name", sorted(NFE))
def test_nfe_is_exactly_documented(name):
    sampler, kw, expected = NFE[name]
    prior = Counting(GMM)
    sampler(prior, (3, 2), generator=torch.Generator().manual_seed(0), **kw)
    assert prior.calls == expected


STOCHASTIC = {
    "ddpm": (ddpm, dict(steps=20)),
    "ddim-eta": (ddim, dict(steps=20, eta=1.0)),
    "annealed_langevin": (annealed_langevin, dict(steps=3, n_steps_each=4)),
    "reverse_sde-pc": (reverse_sde, dict(steps=10, corrector_steps=1)),
    "edm_heun-churn": (edm_heun, dict(steps=8, S_churn=10.0)),
    "pf_ode": (pf_ode, dict(steps=10)),
}


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_determinism_and_batch_independence(name):
    sampler, kw = STOCHASTIC[name]
    torch_state = torch.get_rng_state()
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    a = sampler(GMM, (4, 2), generator=torch.Generator().manual_seed(5), **kw)
    b = sampler(GMM, (4, 2), generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b)
    batch = sampler(GMM, (3, 2), generator=gens([10, 11, 12]), **kw)
    for i, seed in enumerate([10, 11, 12]):
        alone = sampler(GMM, (1, 2), generator=gens([seed]), **kw)
        assert torch.allclose(batch[i], alone[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_vp_samplers_start_inside_the_priors_sigma_range():
    class Recording(Counting):
        def denoiser(self, x, sigma):
            self.sigmas = getattr(self, "sigmas", []) + [float(sigma)]
            return super().denoiser(x, sigma)

    prior = Recording(GAUSS)
    prior.sigma_max = 80.0  # e.g. an EDM network: the linear-β VP grid reaches σ ≈ 157
    for sampler in (ddpm, ddim):
        prior.sigmas = []
        sampler(prior, (2, 2), steps=10, generator=torch.Generator().manual_seed(0))
        assert len(prior.sigmas) == 10 and max(prior.sigmas) <= 80.0 and max(prior.sigmas) > 70.0


def test_callback_and_bad_shapes():
    seen = []
    edm_heun(GAUSS, (2, 2), steps=5, generator=torch.Generator().manual_seed(0),
             callback=lambda i, x, x0: seen.append((i, x.shape, x0.shape)))
    assert [s[0] for s in seen] == list(range(5)) and seen[0][1] == (2, 2)
    with pytest.raises(ValueError, match="shape must be"):
        ddpm(GAUSS, (2, 3), steps=3)
    with pytest.raises(ValueError, match="generators for a batch"):
        ddpm(GAUSS, (2, 2), steps=3, generator=[torch.Generator()])
