"""CM4IR (Garber & Tirer 2025) against exact answers: the back-projection reproduces noiseless data,
the exact consistency function of a Gaussian prior gives samples near the exact posterior at 4 NFE,
the paper's η = 0.1 collapses the spread, NFE and the σ points of every call, per-sample σ_y and
batch independence, the configs, and early refusals of bad parameters and missing capabilities.

Measured (seed 0, 1500 samples, 4 NFE; sw / sw_prior (ratio), variance ratio):
  toy config (η = 1, ζ = 3), exact CM:     inpaint 0.239/0.572 (0.42) 4.30, blur 0.089/0.408 (0.22) 0.97
  toy config, Tweedie (analytic) prior:    inpaint 0.210/0.572 (0.37) 3.15, blur 0.135/0.408 (0.33) 0.56,
                                           dense_gmm 0.230/1.672 (0.14) 0.71
  paper defaults (η = 0.1, ζ = 0), exact CM: inpaint 0.245/0.572 (0.43) 0.16, blur 0.411/0.408 (1.01) 0.025
  (a point estimator there: the re-injected noise is mostly the deterministic −ε̂). The inpaint
  over-dispersion (4.3) is on the observed pixels: with σ_y > 0 the last CM output is returned
  without its back-projection, so those keep the CM's share of σ_N = 0.32 instead of ≈ σ_y.
"""

from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import operators
from invdiff import exact_posterior as H
from invdiff.priors import ConsistencyPrior, CountingPrior
from invdiff.priors.analytic import ExactConsistencyNetwork as ExactF
from invdiff.priors.analytic import exact_consistency_prior
from invdiff.solvers.cm4ir import cm4ir, cm4ir_sigmas

EPS, T = 0.002, 80.0
N = 1500
CASES = {name: make() for name, make in H.CASES.items()}
GAUSSIAN = ["blur", "inpaint"]  # one-component priors: the consistency function is known in closed form


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_cm(prior) -> ConsistencyPrior:
    """A consistency prior whose f is the exact consistency function of the Gaussian ``prior``,
    with the prior's own affine map (model ↔ physical)."""
    return exact_consistency_prior(prior, (EPS, T))


def sample(case, prior, n, seed=0, sigma_y=None, **kw):
    y = case.y.expand(n, *case.y.shape[1:]).clone()
    return cm4ir(y, case.op, prior, sigma_y=case.sigma_y if sigma_y is None else sigma_y, generator=gen(seed), **kw)


def config_params(experiment: str | None = None) -> dict:
    overrides = ["solver=cm4ir"] + ([f"experiment={experiment}"] if experiment else [])
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=overrides)
    params = OmegaConf.to_container(cfg.solver)
    assert params.pop("_target_") == "invdiff.solvers.cm4ir" and params.pop("_partial_") is True
    return params


class Recording(CountingPrior):
    """Counts the denoiser calls and records the σ of each."""

    def __init__(self, inner):
        super().__init__(inner)
        self.sigmas = []

    def denoiser(self, x, sigma):
        self.sigmas.append(float(torch.as_tensor(sigma).reshape(-1)[0]))
        return super().denoiser(x, sigma)


class Without:
    """An operator with one capability hidden (everything else delegated)."""

    def __init__(self, op, hidden: str):
        self._op, self.capabilities = op, op.capabilities - {hidden}

    def __getattr__(self, name):
        return getattr(self._op, name)


# -- the time points -----------------------------------------------------------------------------------


def test_time_points_follow_the_ddpm_schedule_and_gamma():
    betas = np.linspace(1e-4, 0.02, 1000)
    for i_N, gamma in [(250, 0.2), (75, 0.01), (400, 0.7)]:
        alpha = np.prod(1 - betas[: i_N + 2])  # the authors' compute_alpha(betas, iN + 1)
        want = []
        for _ in range(4):
            want.append(math.sqrt(1 - alpha))
            alpha = min(alpha * (1 + gamma), 0.9999)
        np.testing.assert_allclose(cm4ir_sigmas(4, i_N, gamma), want, rtol=1e-12)
    assert cm4ir_sigmas(6, 400, 0.7)[-1] == pytest.approx(0.01)  # ᾱ capped at 0.9999


def test_nfe_and_the_sigma_of_every_call():
    case = CASES["blur"]
    deltas = [0.1, 0.0, 0.5, 0.05]
    for sigma_y, steps in [(case.sigma_y, 4), (0.0, 3)]:
        prior = Recording(exact_cm(case.prior))
        sample(case, prior, 2, sigma_y=sigma_y, steps=steps, deltas=deltas[:steps], i_N=400, gamma=0.7)
        assert prior.calls == steps  # NFE = steps, noisy (last call without its BP) or not
        want = [(1 + d) * s for d, s in zip(deltas, cm4ir_sigmas(steps, 400, 0.7))]
        np.testing.assert_allclose(prior.sigmas, want, rtol=1e-6)  # the network call takes σ in float32
    # levels outside the prior's σ range are clipped to it
    narrow = Recording(ConsistencyPrior(ExactF(case.prior), shape=case.prior.shape, sigma_range=(EPS, 0.5)))
    sample(case, narrow, 2, deltas=[1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(narrow.sigmas, [0.5, 0.5, 0.5, cm4ir_sigmas(4)[3]], rtol=1e-6)  # 1.39, 0.61, 0.50 clipped


# -- the back-projection ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_noiseless_output_satisfies_the_measurement(name):
    case = CASES[name]
    prior = exact_cm(case.prior) if name in GAUSSIAN else case.prior  # any prior: Tweedie for the mixture
    y0 = case.op.A(case.x)
    y = y0.expand(3, *y0.shape[1:]).clone()

    def rel(**kw):
        x = cm4ir(y, case.op, prior, sigma_y=0.0, generator=gen(1), **kw)
        return float(((case.op.A(x) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)).max())

    assert rel() < 1e-10  # μ = 1, ζσ_y² = 0: x̂₀ = x₀ − A⁺(A x₀ − y) is a projection onto {A x = y}
    assert rel(zeta=3.0) < 1e-10  # ζ multiplies σ_y² = 0: still the exact projection
    assert rel(mu=0.5) > 1e-3  # half a step leaves half the residual


def test_noisy_items_return_the_last_cm_output_and_noiseless_ones_its_projection():
    case = CASES["inpaint"]
    prior = exact_cm(case.prior)
    y = case.y.expand(2, *case.y.shape[1:]).clone()
    sig = torch.tensor([0.0, case.sigma_y], dtype=torch.float64)
    both = cm4ir(y, case.op, prior, sigma_y=sig, generator=[gen(3), gen(4)])
    clean = cm4ir(y[:1], case.op, prior, sigma_y=0.0, generator=[gen(3)])
    noisy = cm4ir(y[1:], case.op, prior, sigma_y=case.sigma_y, generator=[gen(4)])
    torch.testing.assert_close(both, torch.cat([clean, noisy]), rtol=1e-12, atol=1e-12)
    assert float((case.op.A(clean) - y[:1]).abs().max()) < 1e-12  # observed pixels are y exactly
    assert float((case.op.A(noisy) - y[1:]).abs().max()) > 1e-3  # the last CM output is not projected


# -- posterior statistics on the exact-CM oracle --------------------------------------------------------------


@pytest.mark.parametrize("name", GAUSSIAN)
def test_toy_config_at_four_nfe_is_closer_to_the_posterior_than_half_the_prior(name):
    case = CASES[name]
    r = H.evaluate(case, sample(case, exact_cm(case.prior), N, **config_params("toy_cm4ir")))
    assert r["sw"] <= 0.5 * r["sw_prior"], r


def test_the_papers_eta_is_a_point_estimator_and_eta_one_restores_the_spread():
    case = CASES["blur"]
    prior = exact_cm(case.prior)
    paper = H.evaluate(case, sample(case, prior, N, **config_params()))
    fresh = H.evaluate(case, sample(case, prior, N, **{**config_params(), "eta": 1.0}))
    # η = 0.1: the injected noise is mostly the deterministic −ε̂ (measured variance ratio 0.025)
    assert paper["var_ratio"] < 0.1, paper
    assert 0.7 < fresh["var_ratio"] < 1.3 and fresh["sw"] < 0.6 * paper["sw"], (fresh, paper)


# -- configs, determinism, batches --------------------------------------------------------------------------------


def test_configs_hold_the_paper_defaults_and_the_toy_overrides():
    params = config_params()
    defaults = {k: v.default for k, v in inspect.signature(cm4ir).parameters.items() if k in params}
    assert params == defaults and params["steps"] == 4
    assert config_params("toy_cm4ir") == {**params, "eta": 1.0, "zeta": 3.0}
    case = CASES["blur"]  # the config runs as a partial for two steps
    out = functools.partial(cm4ir, **{**params, "steps": 2})(case.y, case.op, case.prior, sigma_y=case.sigma_y)
    assert out.shape == (1, *case.prior.shape) and torch.isfinite(out).all()


def test_deterministic_and_batch_independent():
    case = CASES["blur"]
    prior = exact_cm(case.prior)
    y = case.y.expand(3, *case.y.shape[1:]).clone()
    kw = {"sigma_y": case.sigma_y, "zeta": 3.0, "deltas": [0.1, 0.0, 0.2, 0.0]}
    a = cm4ir(y, case.op, prior, generator=[gen(11), gen(12), gen(13)], **kw)
    b = cm4ir(y, case.op, prior, generator=[gen(11), gen(12), gen(13)], **kw)
    alone = cm4ir(y[1:2], case.op, prior, generator=[gen(12)], **kw)
    assert torch.equal(a, b) and not torch.equal(a[0], a[1])
    torch.testing.assert_close(a[1:2], alone, rtol=1e-10, atol=1e-12)


# -- refusals before any work ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, match", [
    ({"eta": 1.5}, r"eta must be .* in \[0, 1\], got 1.5"), ({"eta": -0.1}, "eta must"),
    ({"i_N": 999}, r"i_N must be a whole number in \[0, 998\]"), ({"i_N": 2.5}, "i_N must"), ({"i_N": True}, "i_N must"),
    ({"gamma": -0.1}, "gamma must"), ({"gamma": float("nan")}, "gamma must"), ({"zeta": -1.0}, "zeta must"),
    ({"mu": 0.0}, "mu must"), ({"clip": "yes"}, "clip must"), ({"deltas": [0.1, 0.2]}, "one δ_k per step"),
    ({"deltas": -0.5}, "deltas boost"), ({"deltas": "big"}, "deltas must"), ({"steps": 0}, "steps must"),
])
def test_bad_parameters_are_refused_before_any_work(bad, match):
    case = CASES["blur"]
    prior = CountingPrior(exact_cm(case.prior))
    with pytest.raises(ValueError, match=match):
        cm4ir(case.y, case.op, prior, sigma_y=case.sigma_y, **bad)
    assert prior.calls == 0


def test_missing_capabilities_are_refused_before_any_work():
    case = CASES["blur"]
    prior = CountingPrior(exact_cm(case.prior))
    hdr = operators.HDR(case.prior.shape)
    with pytest.raises(operators.CapabilityError, match="cm4ir.*linear"):
        cm4ir(hdr.A(case.x), hdr, prior, sigma_y=0.05)
    with pytest.raises(operators.CapabilityError, match="cm4ir.*pinv"):
        cm4ir(case.y, Without(case.op, "pinv"), prior, sigma_y=case.sigma_y)
    no_prox = Without(case.op, "prox_l2")
    with pytest.raises(operators.CapabilityError, match=r"cm4ir \(zeta > 0.*prox_l2"):
        cm4ir(case.y, no_prox, prior, sigma_y=case.sigma_y, zeta=3.0)
    assert prior.calls == 0
    # ζ σ_y² = 0 needs no prox: ζ = 0, or noiseless data
    for kw in ({"sigma_y": case.sigma_y}, {"sigma_y": 0.0, "zeta": 3.0}):
        assert torch.isfinite(cm4ir(case.y, no_prox, prior, steps=2, **kw)).all()
