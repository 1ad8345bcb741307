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
from invdiff.checks import whole_number
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


def mcgdiff_gmm_means(d: int) -> torch.Tensor:
    """The 25 means ``[25, d]`` of the MCGdiff benchmark: ``(−8i, −8j)`` repeated d/2 times
    (``−8i, −8j, −8i, −8j, …``), i the outer and j the inner index over −2..2."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 2 or d % 2:
        raise ValueError(f"d must be a positive even integer, got {d!r}")
    grid = torch.arange(-2, 3, dtype=torch.float64)
    i, j = torch.meshgrid(grid, grid, indexing="ij")
    return torch.stack([-8.0 * i.reshape(-1), -8.0 * j.reshape(-1)], 1).repeat(1, d // 2)


def mcgdiff_gmm_case(d: int, dy: int, seed: int) -> Case:
    """One random problem of the MCGdiff Gaussian-mixture benchmark (Cardoso et al., ICLR 2024,
    §4.1; the authors' ``generate_measurement_equations``), float64, deterministic in ``seed``.

    Prior: 25 components N(μ_k, I) with the means of :func:`mcgdiff_gmm_means` and weights
    ∝ ε_k², ε ~ N(0, I₂₅). Operator: a ``dy × d`` matrix ``A = U diag(s) Vᵀ`` where U, V come from
    the SVD of a standard Gaussian ``dy × d`` matrix and s are dy U(0, 1) draws sorted in
    decreasing order. Noise: σ_y = u · max(s), u ~ U(0, 1). Measurement: y = A x + σ_y ε with x
    one prior draw. Draws, in the authors' order from one generator: weights, Gaussian matrix,
    s, x, u, ε. The exact posterior is ``prior.posterior(op, y, σ_y)``.
    """
    means = mcgdiff_gmm_means(d)
    if isinstance(dy, bool) or not isinstance(dy, int) or not 1 <= dy <= d:
        raise ValueError(f"dy must be an integer in [1, d = {d}], got {dy!r}")
    g = torch.Generator().manual_seed(int(seed))
    f64 = dict(generator=g, dtype=torch.float64)
    weights = torch.randn(25, **f64) ** 2
    prior = GaussianMixturePrior(means, weights, torch.tensor(1.0, dtype=torch.float64))
    U, _, Vh = torch.linalg.svd(torch.randn(dy, d, **f64), full_matrices=False)
    s = torch.rand(dy, **f64).sort(descending=True).values
    op = operators.MatrixOperator(U @ torch.diag(s) @ Vh)
    x = prior.sample(1, g)
    sigma_y = float(torch.rand((), **f64)) * float(s[0])
    y = op.A(x) + sigma_y * torch.randn(1, dy, **f64)
    return Case(f"mcgdiff_gmm_d{d}_dy{dy}_s{seed}", prior, op, x, y, sigma_y, prior.posterior(op, y, sigma_y),
                isotropic_var=None)


def mixture_case(d: int, modes: int, dy: int, seed: int, *, spread: float = 4.0, noise: float = 1 / 3) -> Case:
    """A random multimodal problem of the posterior-convergence study, float64, deterministic in ``seed``.

    Prior: ``modes`` components N(μ_k, I) with means ``spread · N(0, I_d)`` and weights
    ∝ U(0.2, 1.2). Operator: a ``dy × d`` Gaussian matrix ``G / √d`` (rank dy). Noise: σ_y =
    ``noise`` × the operator's largest singular value (a third by default: the data separate the
    modes seen through A without pinning them). Measurement: y = A x + σ_y ε with x one prior draw.
    Draws from one generator in this order: means, weights, matrix, x, ε.
    """
    for name, v in (("d", d), ("modes", modes), ("dy", dy)):
        if not whole_number(v):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if dy > d:
        raise ValueError(f"dy must be at most d = {d}, got {dy}")
    if not (spread > 0 and noise > 0):
        raise ValueError(f"spread and noise must be > 0, got {spread}, {noise}")
    g = torch.Generator().manual_seed(int(seed))
    f64 = dict(generator=g, dtype=torch.float64)
    means = spread * torch.randn(modes, d, **f64)
    weights = 0.2 + torch.rand(modes, **f64)
    prior = GaussianMixturePrior(means, weights, torch.tensor(1.0, dtype=torch.float64))
    A = torch.randn(dy, d, **f64) / math.sqrt(d)
    op = operators.MatrixOperator(A)
    x = prior.sample(1, g)
    sigma_y = noise * float(torch.linalg.matrix_norm(A, ord=2))
    y = op.A(x) + sigma_y * torch.randn(1, dy, **f64)
    return Case(f"mixture_d{d}_k{modes}_dy{dy}_s{seed}", prior, op, x, y, sigma_y, prior.posterior(op, y, sigma_y))


def normalised_distance(sw: float, floor: float, ceiling: float) -> float:
    """``(sw − floor) / (ceiling − floor)``: 0 at the Monte-Carlo floor (two exact sample sets),
    1 at the prior (a solver that ignores y); above 1 is farther from the posterior than the prior."""
    if not ceiling > floor:
        raise ValueError(f"the prior's distance ({ceiling}) must exceed the floor ({floor}) to normalise")
    return (sw - floor) / (ceiling - floor)


def rank_coverage(draws: torch.Tensor, truth: torch.Tensor, levels=(0.5, 0.9, 0.95)) -> dict[float, float]:
    """Coverage of central credible intervals built from posterior draws, by ranks (simulation-based
    calibration, Talts et al. 2018): ``draws [M, n, d]`` for M problems whose ground truths are
    ``truth [M, d]`` (each drawn from the prior, its y from it). Per problem and coordinate, the
    truth's rank r among the n draws gives u = (r + ½)/(n + 1); the central ``level`` interval
    holds it when |u − ½| ≤ level/2. For exact posterior draws u is uniform on the n + 1 grid
    points (whatever the posterior's shape: multimodal too), so the coverage is the level up to
    1/(n + 1) and the Monte-Carlo error; below: over-confident, above: under-confident."""
    if draws.ndim != 3 or truth.ndim != 2 or draws.shape[0] != truth.shape[0] or draws.shape[2] != truth.shape[1]:
        raise ValueError(f"rank_coverage needs draws [M, n, d] and truth [M, d], got {tuple(draws.shape)} and "
                         f"{tuple(truth.shape)}")
    n = draws.shape[1]
    r = (draws.to(torch.float64) < truth.to(torch.float64)[:, None, :]).sum(1).to(torch.float64)
    u = (r + 0.5) / (n + 1)
    return {float(lv): float(((u - 0.5).abs() <= lv / 2 + 1e-12).double().mean()) for lv in levels}


def sliced_w2(a: torch.Tensor, b: torch.Tensor, n_dirs: int = 128, seed: int = 0, p: int = 2) -> float:
    """Sliced Wasserstein-p distance between two equally sized sample sets ``[n, d]``:
    ``(mean over n_dirs uniform random directions of W_p^p of the 1-D projections)^(1/p)``.

    ``p=2`` (default): SW₂. ``p=1``: the mean 1-D W₁ over directions — the score of the MCGdiff
    Gaussian-mixture benchmark (the authors average ``scipy.stats.wasserstein_distance`` over slices).
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"sliced_w2 needs two [n, d] sets of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_dirs, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = (a.to(torch.float64) @ dirs).sort(0)
    pb, _ = (b.to(torch.float64) @ dirs).sort(0)
    if p == 1:
        return float((pa - pb).abs().mean())
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
