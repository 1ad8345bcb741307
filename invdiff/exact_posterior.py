"""Exact-posterior harness: analytic priors, linear operators, Gaussian noise, known posteriors.

Each problem fixes a prior, an operator, a ground truth x and one measurement y; the exact posterior
(a Gaussian mixture) comes from ``prior.posterior``. A solver is run on ``n`` copies of y with one
generator and its samples are compared with exact posterior samples:

* ``mean_err``   RMS over coordinates of (sample mean − exact mean) / exact posterior std;
* ``var_ratio``  per-coordinate sample variance / exact variance: its mean and worst log-deviation;
* ``sw``         sliced Wasserstein-2 distance to exact posterior samples (``n_dirs`` random
  directions, sorted 1-D samples), beside ``sw_prior``, the same distance for exact *prior* samples
  (a solver that ignored y). Monte-Carlo floor: ``sw_floor`` between two independent exact sets.

Used by tests/test_solvers_posterior.py and benchmarks/solvers_posterior.py; usable on any solver
with the common call shape: ``run(solver, CASES["blur"](), n=2000, steps=100)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

import operators
from invdiff.priors import GaussianMixturePrior, GaussianPrior
from invdiff.priors.analytic import smooth_cov


@dataclass
class Case:
    name: str
    prior: GaussianMixturePrior
    op: object
    x: torch.Tensor        # [1, *shape] ground truth (physical)
    y: torch.Tensor        # [1, *meas]
    sigma_y: float
    post: GaussianMixturePrior
    isotropic_var: float | None = None  # prior variance when the prior is N(μ, v I) in model space


def _finish(name, prior, op, sigma_y, seed, isotropic_var=None):
    g = torch.Generator().manual_seed(seed)
    x = prior.sample(1, g)
    y = op.A(x) + sigma_y * torch.randn(op.A(x).shape, generator=g, dtype=torch.float64)
    y = op.restrict_to_range(y) if hasattr(op, "restrict_to_range") else y
    return Case(name, prior, op, x, y, sigma_y, prior.posterior(op, y, sigma_y), isotropic_var)


def inpaint_case() -> Case:
    """Correlated Gaussian on a 1×5×5 image, 50 % random pixels observed, σ_y = 0.05; the prior
    lives on [-1, 1] (model) for data on [0, 1] (physical), so the affine map is exercised."""
    shape = (1, 5, 5)
    prior = GaussianPrior(torch.zeros(25), smooth_cov(5, 5, var=1.0, nugget=0.05), shape=shape,
                          data_range=(0.0, 1.0), model_range=(-1.0, 1.0))
    op = operators.Inpainting(operators.masks.RandomPixelMask(0.5), shape, seed=3)
    return _finish("inpaint", prior, op, 0.05, 0)


def blur_case() -> Case:
    """Isotropic Gaussian N(μ, 0.5 I) on 1×6×6 with a circular 3×3 blur (exact SVD), σ_y = 0.05."""
    shape = (1, 6, 6)
    mean = torch.linspace(-0.5, 0.8, 36, dtype=torch.float64)
    prior = GaussianPrior(mean, torch.tensor(0.5, dtype=torch.float64), shape=shape)
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64) / 16
    op = operators.Blur(kernel, shape, padding="circular")
    return _finish("blur", prior, op, 0.05, 1, isotropic_var=0.5)


def dense_gmm_case() -> Case:
    """Gaussian mixture (4 components, d = 6) observed through a random 3×6 matrix, σ_y = 0.2."""
    g = torch.Generator().manual_seed(5)
    d = 6
    means = 3.0 * torch.randn(4, d, generator=g, dtype=torch.float64)
    prior = GaussianMixturePrior(means, [0.4, 0.3, 0.2, 0.1], torch.tensor(0.3, dtype=torch.float64))
    A = torch.randn(3, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    return _finish("dense_gmm", prior, operators.MatrixOperator(A), 0.2, 2)


CASES = {"inpaint": inpaint_case, "blur": blur_case, "dense_gmm": dense_gmm_case}


def sliced_w2(a: torch.Tensor, b: torch.Tensor, n_dirs: int = 128, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two equally sized sample sets ``[n, d]``."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_dirs, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a @ dirs).sort(0)
    pb, _ = (b @ dirs).sort(0)
    return float(((pa - pb) ** 2).mean().sqrt())


def evaluate(case: Case, samples: torch.Tensor, seed: int = 123) -> dict:
    """Distances of solver ``samples`` ``[n, *shape]`` (physical) to the exact posterior."""
    n = samples.shape[0]
    s = samples.reshape(n, -1).to(torch.float64)
    g = torch.Generator().manual_seed(seed)
    exact = case.post.sample(n, g).reshape(n, -1)
    exact2 = case.post.sample(n, g).reshape(n, -1)
    prior = case.prior.sample(n, g).reshape(n, -1)
    mu = case.post.mean().reshape(-1)
    var = torch.diagonal(case.post.covariance())
    ratio = s.var(0) / var
    return {
        "mean_err": float((((s.mean(0) - mu) / var.sqrt()) ** 2).mean().sqrt()),
        "var_ratio": float(ratio.mean()),
        "var_logdev": float(ratio.log().abs().max()),
        "sw": sliced_w2(s, exact),
        "sw_prior": sliced_w2(prior, exact),
        "sw_floor": sliced_w2(exact2, exact),
    }


def run(solver, case: Case, n: int, seed: int = 0, **kwargs) -> dict:
    y = case.y.expand(n, *case.y.shape[1:]).clone()
    out = solver(y, case.op, case.prior, sigma_y=case.sigma_y, generator=torch.Generator().manual_seed(seed), **kwargs)
    return evaluate(case, out)
