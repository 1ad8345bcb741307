"""The package's solvers on a consistency prior (README, "Consistency priors").

A :class:`~invdiff.priors.consistency.ConsistencyPrior` answers every solver's denoiser call with
the consistency function f(x, σ), the end point of x's probability-flow ODE trajectory — not
Tweedie's E[x₀ | x]. With the exact f* of a Gaussian prior (``tests/test_consistency.py``) this
pins down what each way of running a solver on a consistency prior computes:

* DAPS (``ode_steps=1, ode_sigma_min=0``: one Euler step to σ = 0 returns the call's output): its x̂₀(x_σ) *is* the PF-ODE solution from σ (paper Alg. 1, the authors'
  ``DiffusionPFODE``), which a consistency model gives in one call — so DAPS on a consistency prior
  with one ODE call per level equals DAPS on the diffusion prior with a converged ODE.
* DDNM / ΠGDM / DPS: x̂₀ = f(x_t, σ) replaces Tweedie's mean in their steps (CM4IR's and PnP-CM's
  papers compare against exactly this); projections stay exact (a noiseless y is reproduced).
"""

from __future__ import annotations

import pytest
import torch

from invdiff import exact_posterior as H
from invdiff import solvers
from invdiff.priors import GaussianPrior
from invdiff.priors.analytic import exact_consistency_prior

EPS, T = 0.002, 80.0

CASES = {name: H.CASES[name]() for name in ("inpaint", "blur")}
FEW = {"mcgdiff": dict(particles=4), "daps": dict(langevin_steps=3, ode_steps=1, ode_sigma_min=0.0), "pnpdm": dict(prior_steps=4),
       "dflow": dict(ode_steps=2, init="noise")}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cm_and_twin(case):
    """The exact consistency prior of the case's Gaussian, and the Gaussian with the same σ range."""
    p = case.prior
    cm = exact_consistency_prior(p, (EPS, T))
    twin = GaussianPrior(p.means[0], p.cov_matrices()[0], shape=p.shape, data_range=p.data_range,
                         model_range=p.model_range)
    twin.sigma_min, twin.sigma_max = cm.sigma_min, cm.sigma_max
    return cm, twin


@pytest.mark.parametrize("name", sorted(set(solvers.SOLVERS) - solvers.VOLUME_SOLVERS))
def test_every_solver_runs_on_a_consistency_prior_at_few_steps(name):
    case = CASES["blur"]
    cm, _ = cm_and_twin(case)
    y = case.y.expand(3, *case.y.shape[1:]).contiguous()
    kw = dict(FEW.get(name, {}))
    if name not in ("tv", "pinv"):
        kw["steps"] = 4
    out = solvers.SOLVERS[name](y, case.op, cm, sigma_y=case.sigma_y, generator=gen(0), **kw)
    assert out.shape == (3, *cm.shape) and torch.isfinite(out).all()


@pytest.mark.parametrize("case", sorted(CASES))
def test_daps_with_one_call_on_a_consistency_prior_is_daps_with_the_exact_ode(case):
    c = CASES[case]
    cm, twin = cm_and_twin(c)
    y = c.y.expand(4, *c.y.shape[1:]).contiguous()
    kw = dict(sigma_y=c.sigma_y, steps=5, langevin_steps=10)
    one_call = solvers.daps(y, c.op, cm, ode_steps=1, ode_sigma_min=0.0, generator=gen(3), **kw)
    converged = solvers.daps(y, c.op, twin, ode_steps=400, ode_sigma_min=EPS, generator=gen(3), **kw)
    tweedie = solvers.daps(y, c.op, twin, ode_steps=1, generator=gen(3), **kw)
    err, gap = (one_call - converged).abs().max(), (tweedie - converged).abs().max()
    # the same noise draws: what is left is the 400-step Euler error of the twin's ODE, O(1/K) (measured
    # 6.2e-3 blur, 4.4e-3 inpaint; 3.1e-3, 2.2e-3 at 800 steps) against 0.67 for Tweedie's x̂₀
    assert err < 0.01 and err < 0.02 * gap, (err, gap)


@pytest.mark.parametrize("name", ["ddnm", "pigdm", "cm4ir"])
def test_projection_solvers_on_a_consistency_prior_reproduce_a_noiseless_measurement(name):
    c = CASES["blur"]
    cm, _ = cm_and_twin(c)
    y = c.op.A(c.x).expand(3, *c.y.shape[1:]).contiguous()
    if name == "pigdm":  # ΠGDM's guidance is a soft pull: its last step is not a projection
        x = solvers.pigdm(y, c.op, cm, sigma_y=0.0, steps=8, generator=gen(1))
        assert float((c.op.A(x) - y).norm() / y.norm()) < 0.05
        return
    x = solvers.SOLVERS[name](y, c.op, cm, sigma_y=0.0, steps=4, generator=gen(1))
    torch.testing.assert_close(c.op.A(x), y, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_stated_recipes_approach_the_posterior(case):
    """Measured sliced-W2 distances / the prior's (1000 draws; README's recipes): DAPS (5 levels × 1
    call) 0.14–0.53, DDNM (8 steps) 0.36–0.52, CM4IR/PnP-CM (4 calls) 0.37–0.45 on these cases."""
    c = CASES[case]
    cm, _ = cm_and_twin(c)
    runs = {"daps": dict(steps=4, ode_steps=1, ode_sigma_min=0.0), "ddnm": dict(steps=8), "pnp_cm": dict(steps=4)}
    y = c.y.expand(1000, *c.y.shape[1:]).contiguous()
    for name, kw in runs.items():
        r = H.evaluate(c, solvers.SOLVERS[name](y, c.op, cm, sigma_y=c.sigma_y, generator=gen(0), **kw))
        assert r["sw"] <= 0.6 * r["sw_prior"], (name, r)
