"""FlowDPS and D-Flow: posterior statistics, flow-prior equivalence, exact NFE, batch
independence, determinism and early refusals (small problems: d ≤ 36, a few hundred samples).

FlowDPS is an approximate posterior sampler: it must meet the standard bound of
tests/test_solvers_posterior.py (sw ≤ 0.5·sw_prior) with its toy config. D-Flow is an optimiser
(mode-seeking; its spread comes from the random initialisation only, and its loss has no noise
model): it meets the sampler bound where the data pin the answer down (inpaint, dense_gmm) but not
on the blur toy, where it fits the noise in the blur's small singular directions (measured sw 0.23
against a bound of 0.21). There it must do what it is built for: reach the least-squares residual
on noisy data and reproduce noiseless data.
"""

from __future__ import annotations

import functools

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import operators
from invdiff import exact_posterior as H
from invdiff.priors import CountingPrior
from invdiff.priors.flow import FlowPrior, LinearPath
from invdiff.solvers.dflow import dflow
from invdiff.solvers.flowdps import flowdps

N = 400
CASES = {name: make() for name, make in H.CASES.items()}
FAST = {"flowdps": {"steps": 10}, "dflow": {"steps": 6, "ode_steps": 2}}
SOLVERS = {"flowdps": flowdps, "dflow": dflow}


def solver_from_config(name: str, experiment: str | None = None):
    """The config's parameters bound to the solver function (the ``_target_`` is checked by name:
    ``invdiff.solvers.<name>`` resolves to the function once it is registered in SOLVERS)."""
    overrides = [f"solver={name}"] + ([f"experiment={experiment}"] if experiment else [])
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=overrides)
    params = OmegaConf.to_container(cfg.solver)
    assert params.pop("_target_") == f"invdiff.solvers.{name}" and params.pop("_partial_") is True
    return functools.partial(SOLVERS[name], **params)


# measured, seed 0 (sw / sw_prior / sw_floor):
#   flowdps toy (N = 4000, diffusers grid): inpaint 0.158/0.578, blur 0.167/0.410, dense_gmm 0.124/1.689
#   flowdps paper defaults: blur 0.262/0.410 (fails the bound: hence configs/experiment/toy_flowdps.yaml)
#   dflow toy (N = 200): inpaint 0.092/0.591/0.025, dense_gmm 0.413/1.683/0.080, blur 0.230/0.421 (fails)
@pytest.mark.parametrize("case", sorted(CASES))
def test_flowdps_is_closer_to_the_posterior_than_half_the_prior(case):
    r = H.run(solver_from_config("flowdps", "toy_flowdps"), CASES[case], N, seed=0)
    assert r["sw"] <= 0.5 * r["sw_prior"], r


@pytest.mark.parametrize("case", ["inpaint", "dense_gmm"])
def test_dflow_meets_the_sampler_bound_where_the_data_decide(case):
    r = H.run(solver_from_config("dflow", "toy_dflow"), CASES[case], 200, seed=0)
    assert r["sw"] <= 0.5 * r["sw_prior"], r


def test_dflow_reaches_the_least_squares_residual_and_reproduces_noiseless_data():
    case = CASES["blur"]
    solver = solver_from_config("dflow", "toy_dflow")
    y = case.y.expand(4, *case.y.shape[1:]).clone()
    x = solver(y, case.op, case.prior, sigma_y=case.sigma_y, generator=torch.Generator().manual_seed(0))
    res = (case.op.A(x) - y).flatten(1).norm(dim=1)
    least = (y - case.op.A(case.op.A_dagger(y))).flatten(1).norm(dim=1)  # measured: 0.2133 both
    assert bool((res <= least * 1.01 + 1e-6).all()), (res, least)
    y0 = case.op.A(case.x).expand(2, *case.y.shape[1:]).clone()
    x0 = dflow(y0, case.op, case.prior, sigma_y=0.0, steps=60, ode_steps=3, generator=torch.Generator().manual_seed(1))
    rel = (case.op.A(x0) - y0).flatten(1).norm(dim=1) / y0.flatten(1).norm(dim=1)
    assert float(rel.max()) < 1e-5, rel  # measured 2e-9


def _flow_twin(gmm):
    """A flow prior whose network is the mixture's exact velocity on the linear path."""
    return FlowPrior(lambda x, t: gmm.velocity(x, t, LinearPath()), LinearPath(), shape=gmm.shape,
                     data_range=gmm.data_range, model_range=gmm.model_range)


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("case", ["inpaint", "dense_gmm"])
def test_a_flow_prior_with_the_exact_velocity_gives_the_mixture_prior_samples(name, case):
    c = CASES[case]
    y = c.y.expand(3, *c.y.shape[1:]).clone()
    kw = dict(sigma_y=c.sigma_y, **FAST[name])
    a = SOLVERS[name](y, c.op, c.prior, generator=torch.Generator().manual_seed(4), **kw)
    b = SOLVERS[name](y, c.op, _flow_twin(c.prior), generator=torch.Generator().manual_seed(4), **kw)
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("ode,k", [("euler", 1), ("midpoint", 2)])
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
@pytest.mark.parametrize("init", ["blend", "noise"])
def test_dflow_nfe_is_exact(ode, k, optimizer, init):
    c = CASES["dense_gmm"]
    prior = CountingPrior(c.prior)
    steps, n = 4, 3
    dflow(c.y.expand(2, -1).clone(), c.op, prior, sigma_y=c.sigma_y, steps=steps, ode_steps=n, ode=ode,
          optimizer=optimizer, init=init, lr=0.1 if optimizer == "adam" else 1.0,
          generator=torch.Generator().manual_seed(0))
    # forward passes: (steps + 1) ODE solves of k·n calls, + n for the inversion of the blend
    assert prior.calls == (steps + 1) * k * n + (n if init == "blend" else 0)


def test_flowdps_nfe_is_exact_and_needs_no_gradients_through_the_prior():
    c = CASES["dense_gmm"]
    prior = CountingPrior(c.prior)
    prior.differentiable = False  # FlowDPS takes its gradient with respect to x̂₀, not through D
    out = flowdps(c.y.expand(2, -1).clone(), c.op, prior, sigma_y=c.sigma_y, steps=7,
                  generator=torch.Generator().manual_seed(0))
    assert prior.calls == 7 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_batch_independence_and_determinism(name):
    c = CASES["dense_gmm"]
    f, kw = SOLVERS[name], dict(sigma_y=c.sigma_y, **FAST[name])
    y = torch.cat([c.y, c.y + 0.3, c.y - 0.2])
    gens = lambda: [torch.Generator().manual_seed(s) for s in (11, 12, 13)]
    full = f(y, c.op, c.prior, generator=gens(), **kw)
    again = f(y, c.op, c.prior, generator=gens(), **kw)
    assert torch.equal(full, again)
    alone = f(y[1:2], c.op, c.prior, generator=[torch.Generator().manual_seed(12)], **kw)
    torch.testing.assert_close(full[1:2], alone, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(full[0], full[2])


class _ForwardOnly:
    """An operator that declares no capability (a black box)."""
    capabilities = frozenset()
    img_size = meas_size = (6,)

    def describe(self):
        return "ForwardOnly()"


def test_refusals_come_before_any_network_call():
    c = CASES["dense_gmm"]
    y = c.y.expand(2, -1).clone()
    prior = CountingPrior(c.prior)
    for f in (flowdps, dflow):
        with pytest.raises(operators.CapabilityError, match="differentiable"):
            f(y, _ForwardOnly(), prior, sigma_y=0.1, steps=2)
    # the blended initialisation needs A⁺; a nonlinear operator is refused for it
    hdr = operators.HDR((1, 3, 3))
    with pytest.raises(operators.CapabilityError, match="dflow"):
        dflow(torch.zeros(2, 1, 3, 3, dtype=torch.float64), hdr, CASES["inpaint"].prior.__class__(
            torch.zeros(9), torch.eye(9, dtype=torch.float64), shape=(1, 3, 3)), sigma_y=0.1, steps=2)
    flat = CountingPrior(c.prior)
    flat.differentiable = False
    with pytest.raises(ValueError, match="dflow.*not differentiable"):
        dflow(y, c.op, flat, sigma_y=0.1, steps=2)
    with pytest.raises(ValueError, match="flowdps"):
        flowdps(y, c.op, prior, sigma_y=0.1, steps=2, zeta=-1.0)
    with pytest.raises(ValueError, match="dflow"):
        dflow(y, c.op, prior, sigma_y=0.1, steps=2, ode="rk4")
    assert prior.calls == 0 and flat.calls == 0


def test_flowdps_grid_is_diffusers_flow_matching_grid():
    # diffusers' FlowMatchEulerDiscreteScheduler(shift=k).set_timesteps(N), written out independently:
    # σ_min = shift(1/1000) at construction; timesteps linspace(1000·1, 1000·σ_min, N); σ = shift(t/1000); then 0
    from invdiff.solvers.flowdps import scheduler_times

    for k, n in ((4.0, 28), (3.0, 10), (1.0, 5)):
        def sh(s):
            return k * s / (1 + (k - 1) * s)
        sigma_min = sh(1.0 / 1000)
        want = [sh(t / 1000) for t in torch.linspace(1000.0, 1000.0 * sigma_min, n, dtype=torch.float64).tolist()]
        got = scheduler_times(1.0, n, "shift", k)
        assert len(got) == n + 1 and got[-1] == 0.0
        assert max(abs(a - b) for a, b in zip(got[:-1], want)) < 1e-9
