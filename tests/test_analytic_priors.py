"""Analytic priors: exact denoisers and posteriors against brute-force numerics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import operators as O
from invdiff.priors import GaussianMixturePrior, GaussianPrior


def gmm_2d():
    covs = torch.tensor([[[1.0, 0.6], [0.6, 0.8]], [[0.3, 0.0], [0.0, 1.5]], [[0.5, -0.2], [-0.2, 0.4]]],
                        dtype=torch.float64)
    return GaussianMixturePrior([[-2.0, 0.0], [2.5, 1.0], [0.0, -3.0]], [0.5, 0.3, 0.2], covs)


def grid_2d(lo=-9.0, hi=9.0, n=721):
    u = torch.linspace(lo, hi, n, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="ij")
    return torch.stack([X.flatten(), Y.flatten()], 1), (u[1] - u[0]) ** 2


def test_log_prob_integrates_to_one_and_matches_moments():
    p = gmm_2d()
    pts, area = grid_2d()
    dens = p.log_prob(pts).exp()
    assert abs(float(dens.sum() * area) - 1) < 1e-6
    mean = (dens[:, None] * pts).sum(0) * area
    assert torch.allclose(mean, p.mean(), atol=1e-6)
    dev = pts - mean
    cov = (dens[:, None, None] * dev[:, :, None] * dev[:, None, :]).sum(0) * area
    assert torch.allclose(cov, p.covariance(), atol=1e-5)


@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_gmm_denoiser_matches_quadrature(sigma):
    """E[x₀ | x] = ∫ x₀ p(x₀) N(x; x₀, σ²) dx₀ / ∫ p(x₀) N(x; x₀, σ²) dx₀ on a fine grid."""
    p = gmm_2d()
    pts, _ = grid_2d()
    log_prior = p.log_prob(pts)
    x = torch.tensor([[0.0, 0.0], [-2.0, 1.0], [3.0, -2.5], [1.0, 4.0]], dtype=torch.float64)
    log_w = log_prior[None] - ((x[:, None, :] - pts[None]) ** 2).sum(-1) / (2 * sigma**2)
    w = torch.softmax(log_w, 1)
    expected = w @ pts
    assert torch.allclose(p.denoiser(x, sigma), expected, atol=1e-6)
    # per-sample σ gives the same as one σ at a time
    sig = torch.tensor([0.3, 1.0, 3.0, 1.0], dtype=torch.float64)
    per = p.denoiser(x, sig)
    for i in range(4):
        assert torch.allclose(per[i], p.denoiser(x[i : i + 1], float(sig[i]))[0])


def test_gaussian_denoiser_is_linear_shrinkage_and_image_shaped():
    d = 16
    A = torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cov = A @ A.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    mean = torch.linspace(-1, 1, d, dtype=torch.float64)
    p = GaussianPrior(mean, cov, shape=(1, 4, 4))
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = 0.7
    expected = mean + (cov @ torch.linalg.solve(cov + sigma**2 * torch.eye(d), (x.reshape(5, d) - mean).T)).T
    assert torch.allclose(p.denoiser(x, sigma).reshape(5, d), expected, atol=1e-12)
    assert p.denoiser(x.float(), sigma).dtype == torch.float32
    diag = GaussianPrior(mean, torch.diagonal(cov))
    assert torch.allclose(diag.denoiser(x.reshape(5, d), sigma),
                          mean + torch.diagonal(cov) / (torch.diagonal(cov) + sigma**2) * (x.reshape(5, d) - mean))


def test_sampling_moments_and_weights():
    p = gmm_2d()
    n = 40000
    s = p.sample(n, torch.Generator().manual_seed(0))
    assert s.shape == (n, 2)
    # statistical tolerance: 5 standard errors
    se_mean = (torch.diagonal(p.covariance()) / n).sqrt()
    assert bool(((s.mean(0) - p.mean()).abs() < 5 * se_mean).all())
    assert torch.allclose(torch.cov(s.T), p.covariance(), rtol=0.05, atol=0.05)
    assert torch.equal(s, p.sample(n, torch.Generator().manual_seed(0)))


def test_gmm_posterior_matches_quadrature():
    p = gmm_2d()
    op = O.MatrixOperator(torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    y, sigma_y = torch.tensor([[0.7]], dtype=torch.float64), 0.4
    post = p.posterior(op, y, sigma_y)
    pts, area = grid_2d()
    log_post = p.log_prob(pts) - ((pts @ op.matrix.T - y) ** 2).sum(1) / (2 * sigma_y**2)
    w = torch.softmax(log_post, 0)
    mean = w @ pts
    cov = (w[:, None, None] * (pts - mean)[:, :, None] * (pts - mean)[:, None, :]).sum(0)
    assert torch.allclose(post.mean(), mean, atol=1e-6)
    assert torch.allclose(post.covariance(), cov, atol=1e-6)
    # and its density is the normalised product
    ref = log_post - torch.logsumexp(log_post, 0) - math.log(area)
    sel = w > 1e-6
    assert torch.allclose(post.log_prob(pts[sel]), ref[sel], atol=1e-5)


def test_gaussian_posterior_matches_information_form_and_denoiser():
    d = 6
    g = torch.Generator().manual_seed(3)
    L = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = L @ L.T + 0.5 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    A = torch.randn(3, d, generator=g, dtype=torch.float64)
    y = torch.randn(3, generator=g, dtype=torch.float64)
    sigma_y = 0.3
    prior = GaussianPrior(mean, cov)
    post = prior.posterior(O.MatrixOperator(A), y, sigma_y)
    P = torch.linalg.inv(cov) + A.T @ A / sigma_y**2
    cov_ref = torch.linalg.inv(P)
    mean_ref = cov_ref @ (torch.linalg.solve(cov, mean) + A.T @ y / sigma_y**2)
    assert torch.allclose(post.mean(), mean_ref, atol=1e-10)
    assert torch.allclose(post.covariance(), cov_ref, atol=1e-10)
    # the denoiser is the posterior mean for A = I, σ_y = σ
    x = torch.randn(1, d, generator=g, dtype=torch.float64)
    post_id = prior.posterior(O.MatrixOperator(torch.eye(d, dtype=torch.float64)), x, 0.8)
    assert torch.allclose(prior.denoiser(x, 0.8)[0], post_id.mean(), atol=1e-12)


def test_posterior_with_an_image_operator_and_degenerate_prior():
    """Inpainting on a 3×3 image: observed pixels pinned (σ_y → tiny), missing ones conditional."""
    d = 9
    u = torch.arange(d, dtype=torch.float64)
    cov = torch.exp(-((u[:, None] - u[None]) ** 2) / 8.0) + 1e-6 * torch.eye(d)
    prior = GaussianPrior(torch.zeros(d), cov, shape=(1, 3, 3))
    mask = torch.ones(1, 3, 3, dtype=torch.float64)
    mask[0, 1, 1] = 0
    op = O.Inpainting(mask, (1, 3, 3))
    x = prior.sample(1, torch.Generator().manual_seed(0))
    post = prior.posterior(op, op.A(x), 1e-4)
    obs = mask.flatten().bool()
    assert torch.allclose(post.mean().flatten()[obs], x.flatten()[obs], atol=1e-5)
    c = cov
    cond_mean = c[~obs][:, obs] @ torch.linalg.solve(c[obs][:, obs], x.flatten()[obs])
    assert torch.allclose(post.mean().flatten()[~obs], cond_mean, atol=1e-4)


def test_affine_map_is_respected():
    p = GaussianPrior(torch.zeros(2), torch.ones(2), data_range=(0.0, 1.0), model_range=(-1.0, 1.0))
    s = p.sample(20000, torch.Generator().manual_seed(0))
    assert torch.allclose(s.mean(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.01)
    assert torch.allclose(s.std(0), torch.full((2,), 0.5, dtype=torch.float64), atol=0.01)
    assert torch.allclose(p.covariance(), 0.25 * torch.eye(2, dtype=torch.float64))
    post = p.posterior(O.MatrixOperator(torch.eye(2, dtype=torch.float64)), torch.tensor([[0.8, 0.2]]), 0.5)
    # physical prior N(0.5, 0.25 I), y = x + 0.5 n: posterior mean 0.5 + 0.5 (y − 0.5)
    assert torch.allclose(post.mean(), torch.tensor([0.65, 0.35], dtype=torch.float64))


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        GaussianMixturePrior([[0.0], [1.0]], [0.5, -0.5], 1.0)
    with pytest.raises(ValueError, match="covs must be"):
        GaussianMixturePrior([[0.0, 0.0]], [1.0], torch.ones(3, 3))
    with pytest.raises(ValueError, match="semi-definite"):
        GaussianPrior(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    p = GaussianPrior(torch.zeros(2), 1.0)
    with pytest.raises(ValueError, match="expected x of shape"):
        p.denoiser(torch.zeros(3, 3), 1.0)
    with pytest.raises(ValueError, match="> 0"):
        p.denoiser(torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match="one measurement"):
        p.posterior(O.MatrixOperator(torch.eye(2)), torch.zeros(2, 2), 0.1)
    np.testing.assert_equal(p.shape, (2,))


def test_per_item_generators_and_stable_posteriors():
    p = GaussianMixturePrior([[0.0], [100.0]], [0.5, 0.5], 1.0)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    for seed in range(6):
        alone = p.sample(1, [g(seed)])
        assert torch.equal(p.sample(2, [g(99), g(seed)])[1], alone[0])
    # an ill-conditioned blur with a tiny σ_y: the posterior covariance stays PSD (Joseph form)
    prior = GaussianPrior(torch.zeros(64), 1.0, shape=(1, 8, 8))
    op = O.Blur(O.GaussianKernel(7, 2.0), (1, 8, 8), "reflect")
    post = prior.posterior(op, op.A(prior.sample(1, g(0))), 1e-8)
    assert bool((torch.linalg.eigvalsh(post.cov_matrices()[0]) > -1e-9).all())
    with pytest.raises(ValueError, match="sigma_y must be > 0"):
        prior.posterior(op, torch.zeros(1, 1, 8, 8), 0.0)
