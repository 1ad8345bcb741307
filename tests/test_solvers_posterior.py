"""Posterior statistics of every solver against exact Gaussian / Gaussian-mixture posteriors.

Bounds and their reasons (REFERENCE.md, "What is exact"):

* Every solver, with its paper defaults or the toy-tuned ``configs/experiment/toy_<solver>.yaml``,
  must be at most half as far (sliced Wasserstein-2) from the exact posterior as the prior is —
  these solvers are approximate, so no tighter bound holds for all of them.
* ΠGDM with the posterior-denoiser step and r_t² matched to an isotropic Gaussian prior uses the
  exact likelihood p(y | x_t), so it must match the posterior up to the Monte-Carlo error and the
  DDIM discretisation (measured: mean error 0.02 posterior std, variance ratio 0.97 at 200 steps).
* DDNM+ with the authors' η-generalised λ is algebraically DDRM with η_b = 1 (same noise draws):
  equal up to rounding.
* DAPS's biases are its Gaussian p(x₀ | x_t) = N(x̂₀, r_t²), the ODE x̂₀ and the finite Langevin
  chain. With Tweedie's x̂₀, the exact r_t of an isotropic Gaussian prior and a converged chain it
  is exact: tested on the isotropic blur problem.
* PnP-DM at a fixed ρ samples exactly the posterior whose noise covariance is σ_y² I + ρ² AAᵀ
  (the x-marginal of its split target): for inpainting (AAᵀ = I) a known Gaussian posterior with
  σ_eff² = σ_y² + ρ², which the chain must match while staying visibly off the true posterior.
* MCGdiff is consistent as particles grow: its distance must shrink with N and reach the
  Monte-Carlo floor (its DDPM chain at 100 steps leaves a few per cent of variance).
"""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from invdiff import solvers

from invdiff import exact_posterior as H

N = 1500
CASES = {name: make() for name, make in H.CASES.items()}


def solver_from_config(name: str, experiment: str | None = None):
    overrides = [f"solver={name}"] + ([f"experiment={experiment}"] if experiment else [])
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=overrides)
    return instantiate(cfg.solver)


TOY = {  # solver -> experiment file with toy-tuned parameters, or None for the paper defaults
    "ddrm": None, "ddnm": None, "pigdm": None, "diffpir": None, "score_sde": "toy_score_sde",
    "dps": "toy_dps", "mcg": "toy_mcg", "reddiff": "toy_reddiff", "tmpd": "toy_tmpd",
    "daps": "toy_daps", "pnpdm": "toy_pnpdm", "mcgdiff": "toy_mcgdiff",
    "ot_ode": None, "pnp_flow": "toy_pnp_flow", "ictm": "toy_ictm", "flowdps": "toy_flowdps", "dflow": "toy_dflow",
    "cm4ir": "toy_cm4ir", "pnp_cm": "toy_pnp_cm",
    "dds": None, "fps_smc": "toy_fps_smc", "lgd": "toy_lgd", "sitcom": "toy_sitcom",
}
#: solvers whose exact-posterior check lives in their own test file (cost or problem shape)
CHECKED_ELSEWHERE = {
    "enkg": "tests/test_blackbox_enkg.py: the ensemble (64–256 members, w = 0.1) on the three cases through a "
            "BlackBoxOperator; the paper's 1024 members × 1588 network calls are too slow for this loop",
    "diffusionmbir": "tests/test_diffusionmbir.py: a volume solver (the cases here are 2-D images)",
}
#: (solver, case) pairs that the sampler bound does not apply to, with the test that covers them instead
NOT_A_SAMPLER_HERE = {
    ("dflow", "blur"): "D-Flow is an optimiser without a noise model: on the blur case it fits the noise in the "
                       "small singular directions (sw 0.23 vs the 0.21 bound); tests/test_flow_guided_solvers.py "
                       "checks that it reaches the least-squares residual there",
}


def test_every_solver_has_a_posterior_check():
    assert set(TOY) | set(CHECKED_ELSEWHERE) == set(solvers.SOLVERS) - solvers.BASELINES


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(TOY))
def test_solver_is_closer_to_the_posterior_than_half_the_prior(name, case):
    if (name, case) in NOT_A_SAMPLER_HERE:
        pytest.skip(NOT_A_SAMPLER_HERE[name, case])
    solver = solver_from_config(name, TOY[name])
    r = H.run(solver, CASES[case], N, seed=0)
    assert r["sw"] <= 0.5 * r["sw_prior"], r


def test_pigdm_with_matched_r_is_exact():
    case = CASES["blur"]
    n = 4000
    r = H.run(solvers.pigdm, case, n, steps=200, eta=0.0, guidance="posterior", prior_variance=case.isotropic_var)
    # statistical: RMS of a standardised mean over 36 coordinates ~ 1/√n = 0.016; +0.02 discretisation
    assert r["mean_err"] <= 2 / math.sqrt(n) + 0.02, r
    # variance ratio: ±√(2/n) per coordinate; the DDIM ODE at 200 steps leaves ~3 % (measured)
    assert abs(r["var_ratio"] - 1) <= 0.05, r
    assert r["var_logdev"] <= 6 * math.sqrt(2 / n) + 0.06, r
    assert r["sw"] <= r["sw_floor"] + 0.015, r


def test_pigdm_paper_guidance_is_not_exact_but_close():
    # the paper's step uses the unguided ε̂: a stronger pull towards y than Bayes' rule
    case = CASES["blur"]
    exact = H.run(solvers.pigdm, case, 2000, steps=100, guidance="posterior", prior_variance=case.isotropic_var)
    paper = H.run(solvers.pigdm, case, 2000, steps=100, prior_variance=case.isotropic_var)
    assert exact["sw"] < paper["sw"] <= 0.5 * paper["sw_prior"]


def test_ddnm_plus_equals_ddrm_with_eta_b_one():
    case = CASES["dense_gmm"]
    y = case.y.expand(8, -1).clone()
    for sigma_y in (0.0, case.sigma_y):
        a = solvers.ddnm(y, case.op, case.prior, sigma_y=sigma_y, steps=30, eta=0.6, generator=torch.Generator().manual_seed(3))
        b = solvers.ddrm(y, case.op, case.prior, sigma_y=sigma_y, steps=30, eta=0.6, eta_b=1.0,
                         generator=torch.Generator().manual_seed(3))
        # the same formulas in a different order of operations: rounding (1e-16) grows over 30 steps
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["ddrm", "ddnm"])
def test_simplified_mode_equals_the_svd_on_inpainting(name):
    case = CASES["inpaint"]  # inpainting: singular values are 0 or 1, so A⁺A is the SVD's split
    y = case.y.expand(6, *case.y.shape[1:]).clone()
    f = getattr(solvers, name)
    a = f(y, case.op, case.prior, sigma_y=case.sigma_y, steps=15, generator=torch.Generator().manual_seed(1), mode="svd")
    b = f(y, case.op, case.prior, sigma_y=case.sigma_y, steps=15, generator=torch.Generator().manual_seed(1),
          mode="simplified")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_noiseless_ddrm_and_ddnm_reproduce_the_measurement():
    case = CASES["blur"]
    y = case.op.A(case.x).expand(3, *case.y.shape[1:]).clone()
    for f in (solvers.ddrm, solvers.ddnm):
        x = f(y, case.op, case.prior, sigma_y=0.0, steps=10, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(case.op.A(x), y, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("case", ["inpaint", "dense_gmm"])
def test_tmpd_full_covariance_is_exact(case):
    # exact for Gaussian priors (inpaint: correlated Gaussian); for the mixture the Gaussian
    # projection of p(x₀ | x_t) is an approximation, but a close one (measured: sw ≈ 0.07 × prior's)
    n = 2000
    r = H.run(solvers.tmpd, CASES[case], n, steps=200, eta=0.0)
    if case == "inpaint":
        assert r["mean_err"] <= 2 / math.sqrt(n) + 0.03, r
        assert abs(r["var_ratio"] - 1) <= 0.1, r
        assert r["sw"] <= r["sw_floor"] + 0.01, r
    else:
        assert r["sw"] <= 0.1 * r["sw_prior"], r


def test_tmpd_diagonal_is_cheaper_and_less_exact_on_correlated_priors():
    full = H.run(solvers.tmpd, CASES["inpaint"], 1500, steps=100)
    diag = H.run(solvers.tmpd, CASES["inpaint"], 1500, steps=100, covariance="diagonal")
    assert full["sw"] < diag["sw"] <= 0.5 * diag["sw_prior"]


def test_mcg_without_projection_is_dps():
    # eq. 14 alone is DPS's step (same residual units, same noise draws): a consistency check of both
    case = CASES["blur"]
    y = case.y.expand(4, *case.y.shape[1:]).clone()
    a = solvers.mcg(y, case.op, case.prior, sigma_y=0.05, steps=20, alpha=0.7, project=False,
                    generator=torch.Generator().manual_seed(2))
    b = solvers.dps(y, case.op, case.prior, sigma_y=0.05, steps=20, zeta=0.7, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_daps_with_tweedie_exact_r_and_a_converged_chain_is_exact():
    case = CASES["blur"]  # isotropic prior N(μ, 0.5 I): p(x₀ | x_σ) = N(D(x_σ), 0.5σ²/(0.5 + σ²) I)
    n = 1000
    r = H.run(solvers.daps, case, n, steps=2, ode_steps=1, ode_sigma_min=0.0, langevin_steps=1500, lr=1e-3,
              lr_min_ratio=1.0, tau=None, r_data_std=math.sqrt(case.isotropic_var))
    # measured: mean_err 0.023, variance ratio 1.01 (ULA at lr·λ_max ≈ 0.4 inflates the sharpest
    # directions by a few per cent), sw at the floor
    assert r["mean_err"] <= 2 / math.sqrt(n) + 0.03, r
    assert abs(r["var_ratio"] - 1) <= 0.08, r
    assert r["sw"] <= r["sw_floor"] + 0.012, r


def test_daps_paper_prior_term_over_disperses():
    # r_t = σ_t with the ODE x̂₀ (which already carries the prior's spread): more variance than the
    # posterior — the bias the paper's approximation accepts
    r = H.run(solvers.daps, CASES["dense_gmm"], 1000, steps=30, langevin_steps=100, lr=1e-3, lr_min_ratio=1.0, tau=None)
    assert r["var_ratio"] > 1.3, r


@pytest.mark.parametrize("likelihood", ["svd", "prox"])
def test_pnpdm_at_fixed_rho_samples_the_rho_smoothed_posterior(likelihood):
    case = CASES["inpaint"]
    rho = 0.3  # model units; the prior maps [0, 1] onto [-1, 1], so ρ/2 in y's units
    sigma_eff = math.sqrt(case.sigma_y**2 + (rho / case.prior.scale) ** 2)
    smoothed = H.Case(case.name, case.prior, case.op, case.x, case.y, case.sigma_y,
                      case.prior.posterior(case.op, case.y, sigma_eff))
    n = 1000
    y = case.y.expand(n, *case.y.shape[1:]).clone()
    out = solvers.pnpdm(y, case.op, case.prior, sigma_y=case.sigma_y, steps=40, rho=rho, rho_min=rho,
                        likelihood=likelihood, generator=torch.Generator().manual_seed(0))
    r, true = H.evaluate(smoothed, out), H.evaluate(case, out)
    # measured (svd): sw 0.016 at a floor of 0.017; against the true posterior 0.059
    assert r["mean_err"] <= 2 / math.sqrt(n) + 0.04, r
    assert abs(r["var_ratio"] - 1) <= 0.1, r
    assert r["sw"] <= r["sw_floor"] + 0.01, r
    assert true["sw"] > 2 * r["sw"], true


def test_mcgdiff_approaches_the_posterior_as_particles_grow():
    case = CASES["dense_gmm"]  # 4 well-separated modes: one particle cannot weigh them
    sw = {p: H.run(solvers.mcgdiff, case, 1000, steps=100, particles=p)["sw"] for p in (1, 8, 64)}
    floor = H.run(solvers.mcgdiff, case, 1000, steps=1, particles=1)["sw_floor"]
    # measured: 0.72, ~0.3, 0.041 with a floor of 0.039
    assert sw[1] > sw[8] > sw[64], sw
    assert sw[64] <= floor + 0.03, (sw, floor)


def test_mcgdiff_returns_weighted_particles_and_reports_the_ess():
    case = CASES["dense_gmm"]
    y = case.y.expand(3, -1).clone()
    seen = []
    x, parts, lw = solvers.mcgdiff(y, case.op, case.prior, sigma_y=case.sigma_y, steps=20, particles=8,
                                   generator=torch.Generator().manual_seed(0), return_particles=True,
                                   callback=lambda i, xt, x0, ess: seen.append(ess))
    assert x.shape == (3, 6) and parts.shape == (3, 8, 6) and lw.shape == (3, 8)
    torch.testing.assert_close(torch.logsumexp(lw, 1), torch.zeros(3, dtype=lw.dtype))
    assert len(seen) == 20 and all(e.shape == (3,) and bool(((e >= 1 - 1e-9) & (e <= 8 + 1e-9)).all()) for e in seen)
    assert any(bool((e < 7.9).any()) for e in seen)  # the weights do vary
    # the sample is one of the particles
    assert bool((parts - x[:, None]).abs().amax(-1).min(1).values.max() < 1e-12)


def test_noiseless_mcgdiff_reproduces_the_measurement():
    case = CASES["blur"]
    y = case.op.A(case.x).expand(2, *case.y.shape[1:]).clone()
    x = solvers.mcgdiff(y, case.op, case.prior, sigma_y=0.0, steps=10, particles=4,
                        generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(case.op.A(x), y, rtol=1e-8, atol=1e-8)
