"""Every diffusion solver runs on a flow prior, and exactly as on the prior the flow came from.

A :class:`~invdiff.priors.flow.FlowPrior` whose network is a Gaussian mixture's exact velocity (on
the linear or the trigonometric path) has, through the conversion x₀ = (σ v − σ' x_t)/(σ α' − σ' α),
the mixture's exact denoiser. So every solver of the registry, run with the same settings and the
same generator on the flow prior and on the mixture itself (given the flow prior's σ range), must
return the same samples up to float64 rounding: this proves both that the solvers accept a flow
prior and that the flow prior *is* the same prior seen through its velocity. (Flow solvers run on the flow prior's own path
by default and on the linear path for other priors: the test gives both the same path.)
"""

from __future__ import annotations

import inspect

import pytest
import torch

from invdiff import solvers
from invdiff import exact_posterior as H
from invdiff.priors import GaussianMixturePrior
from invdiff.priors.flow import FlowPrior, LinearPath, TrigPath

CASE = H.CASES["dense_gmm"]()
STEPS = {"mcgdiff": dict(particles=4), "daps": dict(langevin_steps=3), "pnpdm": dict(prior_steps=4),
         "dpir": {}, "tv": {}, "pinv": {}}


def _pair(path):
    gmm = CASE.prior
    flow = FlowPrior(lambda x, t: gmm.velocity(x, t, path), path, shape=gmm.shape, data_range=gmm.data_range,
                     model_range=gmm.model_range)
    twin = GaussianMixturePrior(gmm.means, gmm.weights, gmm.cov_matrices(), shape=gmm.shape,
                                data_range=gmm.data_range, model_range=gmm.model_range)
    twin.sigma_min, twin.sigma_max = flow.sigma_min, flow.sigma_max  # the same σ range for the solvers' grids
    return twin, flow


@pytest.mark.parametrize("path", [LinearPath(), TrigPath()], ids=["linear", "trig"])
@pytest.mark.parametrize("name", sorted(set(solvers.SOLVERS) - solvers.VOLUME_SOLVERS))
def test_solver_on_flow_prior_equals_solver_on_its_mixture(name, path):
    twin, flow = _pair(path)
    y = CASE.y.expand(6, *CASE.y.shape[1:]).contiguous()
    kw = dict(sigma_y=CASE.sigma_y, **STEPS.get(name, {}))
    if name not in ("tv", "pinv"):
        kw["steps"] = 4
    if "path" in inspect.signature(solvers.SOLVERS[name]).parameters:
        kw["path"] = path  # flow solvers default to a flow prior's own path, to the linear one otherwise
    a = solvers.SOLVERS[name](y, CASE.op, twin, generator=torch.Generator().manual_seed(3), **kw)
    b = solvers.SOLVERS[name](y, CASE.op, flow, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.isfinite(b).all()
    scale = a.abs().max().clamp_min(1.0)
    assert torch.allclose(a, b, rtol=0, atol=1e-8 * float(scale)), (name, (a - b).abs().max())
