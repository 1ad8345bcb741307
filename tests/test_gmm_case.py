"""The MCGdiff Gaussian-mixture benchmark problem (invdiff.exact_posterior.mcgdiff_gmm_case).

Construction (Cardoso et al., ICLR 2024, §4.1, and the authors' ``generate_measurement_equations``):
25 components N(μ_k, I), μ = (−8i, −8j) repeated d/2 times, weights ∝ ε², A = U diag(s) Vᵀ with s
sorted U(0, 1) draws, σ_y = u · max(s), y = A x + σ_y ε with x a prior draw. The exact posterior is
checked against closed forms (shared covariance I − Aᵀ(AAᵀ + σ_y² I)⁻¹A) and against a
self-normalised importance-sampling estimate from prior draws weighted by the likelihood.
"""

from __future__ import annotations

import time

import pytest
import torch

from invdiff import exact_posterior as H
from invdiff.priors import GaussianMixturePrior

F64 = torch.float64


def test_means_are_the_paper_grid():
    m = H.mcgdiff_gmm_means(8)
    assert m.shape == (25, 8) and m.dtype == F64
    expected = [[-8.0 * i, -8.0 * j] * 4 for i in range(-2, 3) for j in range(-2, 3)]  # i outer, j inner
    assert torch.equal(m, torch.tensor(expected, dtype=F64))
    with pytest.raises(ValueError):
        H.mcgdiff_gmm_means(7)


def _same_case(a: H.Case, b: H.Case) -> bool:
    return (torch.equal(a.prior.weights, b.prior.weights) and torch.equal(a.op.matrix, b.op.matrix)
            and torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.sigma_y == b.sigma_y
            and torch.equal(a.post.means, b.post.means) and torch.equal(a.post.weights, b.post.weights))


def test_case_is_deterministic_in_seed():
    a, b, c = H.mcgdiff_gmm_case(8, 2, 3), H.mcgdiff_gmm_case(8, 2, 3), H.mcgdiff_gmm_case(8, 2, 4)
    assert _same_case(a, b)
    assert not torch.equal(a.prior.weights, c.prior.weights) and not torch.equal(a.y, c.y)


def test_case_follows_the_paper_construction():
    d, dy, seed = 8, 2, 3
    case = H.mcgdiff_gmm_case(d, dy, seed)
    prior, op = case.prior, case.op
    assert isinstance(prior, GaussianMixturePrior) and isinstance(case.post, GaussianMixturePrior)
    assert prior.shape == (d,) and case.x.shape == (1, d) and case.y.shape == (1, dy)
    assert case.x.dtype == case.y.dtype == op.matrix.dtype == F64
    assert torch.equal(prior.means, H.mcgdiff_gmm_means(d))
    assert prior.Q is None and torch.equal(prior.lam, torch.ones(25, d, dtype=F64))  # identity covariances
    # the authors' draws, in their order, from one generator
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(25, generator=g, dtype=F64)
    assert torch.allclose(prior.weights, eps**2 / (eps**2).sum(), rtol=1e-14, atol=0)
    G = torch.randn(dy, d, generator=g, dtype=F64)
    u_s = torch.rand(dy, generator=g, dtype=F64)
    s = u_s.sort(descending=True).values
    # A = U diag(s) Vᵀ with U, V the singular vectors of G: same singular subspaces, singular values s
    assert op.matrix.shape == (dy, d)
    assert torch.allclose(op.singular_values[:dy], s, rtol=0, atol=1e-13)
    assert torch.equal(op.singular_values[dy:], torch.zeros(d - dy, dtype=F64))
    _, _, Vh_G = torch.linalg.svd(G, full_matrices=False)
    _, _, Vh_A = torch.linalg.svd(op.matrix, full_matrices=False)
    assert torch.allclose(Vh_G.T @ Vh_G, Vh_A.T @ Vh_A, atol=1e-12)  # same row space
    x = prior.sample(1, g)
    assert torch.equal(x, case.x)
    sigma_y = float(torch.rand((), generator=g, dtype=F64)) * float(s[0])
    assert case.sigma_y == sigma_y and 0 < sigma_y < float(s[0])
    y = op.A(x) + sigma_y * torch.randn(1, dy, generator=g, dtype=F64)
    assert torch.allclose(case.y, y, rtol=0, atol=1e-14)
    # the exact SVD the SVD-based solvers need
    assert "svd" in op.capabilities
    for bad in [(7, 2), (8, 0), (8, 9)]:
        with pytest.raises(ValueError):
            H.mcgdiff_gmm_case(*bad, 0)


def test_exact_posterior_closed_form_and_importance_sampling():
    case = H.mcgdiff_gmm_case(8, 2, 6)  # a multimodal posterior: 7 components above 1e-3
    prior, post, A, sy = case.prior, case.post, case.op.matrix, case.sigma_y
    # closed form: every component has covariance I − Aᵀ(AAᵀ + σ²I)⁻¹A and mean μ_k + Aᵀ(AAᵀ + σ²I)⁻¹(y − Aμ_k)
    S = A @ A.T + sy**2 * torch.eye(2, dtype=F64)
    C = torch.eye(8, dtype=F64) - A.T @ torch.linalg.solve(S, A)
    assert post.K == 25
    assert torch.allclose(post.cov_matrices(), C.expand(25, 8, 8), atol=1e-10)
    resid = case.y - prior.means @ A.T  # [25, 2]
    assert torch.allclose(post.means, prior.means + torch.linalg.solve(S, resid.T).T @ A, atol=1e-10)
    # self-normalised importance sampling from prior draws with known components
    g = torch.Generator().manual_seed(100)
    M = 200_000
    k = torch.multinomial(prior.weights, M, replacement=True, generator=g)
    x = prior.means[k] + torch.randn(M, 8, generator=g, dtype=F64)
    w = torch.softmax(-((case.y - x @ A.T) ** 2).sum(1) / (2 * sy**2), 0)
    ess = float(1 / (w**2).sum())
    assert ess > 2000
    mean_is = (w[:, None] * x).sum(0)
    var = torch.diagonal(post.covariance())
    z = (mean_is - post.mean()) / (var / ess).sqrt()
    assert float(z.abs().max()) < 5, (z, ess)
    p_is = torch.zeros(25, dtype=F64).index_add_(0, k, w)
    se = (post.weights * (1 - post.weights) / ess).sqrt()
    assert bool(((p_is - post.weights).abs() <= 5 * se + 2e-3).all()), (p_is, post.weights)
    var_is = (w[:, None] * (x - mean_is) ** 2).sum(0)
    assert torch.allclose(var_is, var, rtol=0.1), (var_is, var)


def test_sliced_w2_p1_and_p2():
    a = torch.randn(500, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert H.sliced_w2(a, a + 0.3, p=1) == pytest.approx(0.3, abs=1e-12)
    assert H.sliced_w2(a, a + 0.3, p=2) == pytest.approx(0.3, abs=1e-12)
    b = torch.randn(500, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert H.sliced_w2(b, b + 1.0, p=1) <= H.sliced_w2(b, b + 1.0, p=2)  # Jensen
    with pytest.raises(ValueError):
        H.sliced_w2(b, b[:10])


def test_d800_case_and_posterior_sampling_are_fast():
    # the posterior's 25 components share one covariance: decomposed once, draws grouped by
    # component (measured 0.5 s + 0.2 s on one thread; a [n, d, d] gather would take 5 GB)
    t0 = time.perf_counter()
    case = H.mcgdiff_gmm_case(800, 1, 0)
    xs = case.post.sample(1000, torch.Generator().manual_seed(0))
    assert xs.shape == (1000, 800) and bool(torch.isfinite(xs).all())
    assert time.perf_counter() - t0 < 5.0
