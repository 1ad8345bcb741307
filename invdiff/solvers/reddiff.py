"""RED-diff — a variational perspective on solving inverse problems with diffusion models.

Mardani, Song, Kautz & Vahdat, ICLR 2024, arXiv:2305.04391.

A Gaussian variational posterior q(x₀ | y) = N(μ, s²I) with s → 0 is fitted by stochastic
optimisation of μ (paper eqs. 9–11). At each time t, from high to low noise, with
``x_t = √ᾱ_t μ + √(1−ᾱ_t) ε``, ``ε ~ N(0, I)``:

    loss(μ) = ‖y − A(μ)‖² / (2σ_v²) + λ_t · (sg[ε̂(x_t, t) − ε])ᵀ μ,       (eq. 11; sg = stop-gradient)

one Adam step on μ per t. The weight is SNR-based: ``λ_t = λ · √((1−ᾱ_t)/ᾱ_t) = λ σ_t`` (the
authors' "linear" denoising-term weight, 1/√SNR). The noise residual is the score-matching
regulariser; its gradient needs no backward pass through the network. In EDM form
``ε̂ − ε = (x_t − D(x_t, σ_t))/σ_t − ε`` with ``x_t = μ + σ_t ε``.

NFE = ``steps`` forward passes and no backward pass through the network (the data term's gradient
goes through A only).

==========  ============================  ==================  ===============
code        paper                         code                paper
==========  ============================  ==================  ===============
``mu``      μ (model space)               ``lam``             λ
``eps``     ε                             ``lr``              Adam step size
``eps_hat`` ε_θ(x_t, t)                   ``obs_weight``      1/σ_v² (v_t)
==========  ============================  ==================  ===============

Defaults (the authors' configs): 1000 steps, λ = 0.25, Adam lr = 0.1 (β = (0.9, 0.99)),
obs_weight = 1; μ starts at A⁺y when the operator has one, else at the middle of the model range.
Losses are per-sample means, as the authors' ``.mean()`` but over each sample's own elements; the
residual is in the prior's units (× scale: for a linear operator, the paper's [−1, 1] residual).
``likelihood="student_t"`` (ours, for outliers) replaces ½‖r‖² by ½‖r̃‖² = ½ Σ ν s² log(1 +
r²/(ν s²)) (:func:`~._common.student_t_residual`: ν s²/(ν+1) × the Student-t negative
log-likelihood, ½‖r‖² for |r| ≪ s and as ν → ∞), s = max(a σ_y,
:data:`~._common.STUDENT_T_SCALE_FLOOR`); ``obs_weight`` keeps its meaning.

Deviations: per-sample loss normalisation (batch independence); Adam is ours (elementwise, so
each sample's μ evolves independently of the batch). The output is μ, a point estimate with
posterior-sample randomness only from ε (the paper's s → 0 limit).

Class (:mod:`invdiff.solvers.classes`): Point estimator (estimates a variational (mode-seeking) fit
of a Gaussian with vanishing variance: MAP-like).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import Callback, check_likelihood, setup, student_t_residual, student_t_scale, vp_sigmas


def reddiff(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 1000, generator=None, callback: Callback = None,
            lam: float = 0.25, lr: float = 0.1, obs_weight: float = 1.0, betas=(0.9, 0.99),
            likelihood: str = "gaussian", nu: float = 3.0, schedule=None) -> Tensor:
    """RED-diff's μ for each item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: any operator with a differentiable forward map.
    :param prior: :class:`invdiff.priors.Prior` of shape ``operator.img_size`` (no backward pass).
    :param sigma_y: noise std (float or ``[B]``); checked, σ_v is set by ``obs_weight`` (σ_y is the
        scale s of the Student-t term).
    :param steps: number of times t (one network call and one Adam step each).
    :param lam, lr, obs_weight, betas: λ, Adam's step size, the data-term weight, Adam's betas.
    :param likelihood: ``"gaussian"`` (½‖r‖², the paper) or ``"student_t"`` (½‖r̃‖², robust to outliers).
    :param nu: Student-t degrees of freedom ν (``inf``: the Gaussian term).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if lam < 0 or lr <= 0 or obs_weight < 0:
        raise ValueError(f"reddiff: need lam >= 0, lr > 0, obs_weight >= 0; got {lam}, {lr}, {obs_weight}")
    check_likelihood("reddiff", likelihood, nu)
    pb = setup("reddiff", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["differentiable"])
    if pb.linear and "pinv" in operator.capabilities:
        mu = operator.A_dagger(pb.y)
    else:
        mu = torch.full(pb.shape, 0.5 * sum(prior.model_range), dtype=torch.float64, device=pb.device)
    dims = tuple(range(1, pb.y.ndim))
    n_meas = math.prod(pb.y.shape[1:])
    n_img = math.prod(prior.shape)
    s = pb.per_meas(student_t_scale(pb)) if likelihood == "student_t" else None
    # Adam state (elementwise)
    m, v = torch.zeros_like(mu), torch.zeros_like(mu)
    b1, b2 = betas
    sigmas = vp_sigmas(prior, steps, schedule)[:-1]
    for i, sigma in enumerate(sigmas):
        # 1. Noise μ to level t and denoise (no graph).
        eps = pb.randn()
        x_t = mu + sigma * eps
        x0_hat = pb.denoise(x_t, sigma, i)
        eps_hat = (x_t - x0_hat) / sigma
        # 2. Gradient of eq. 11: data term through A, the regulariser in closed form (sg[ε̂ − ε]).
        mu_in = mu.detach().requires_grad_(True)
        resid = pb.residual(mu_in)  # model units, as the paper's [-1, 1]
        if s is not None:
            resid = student_t_residual(resid, s, nu)  # ½‖r̃‖²: the robust data term
        loss_obs = 0.5 * resid.square().sum(dims) / n_meas
        (g_obs,) = torch.autograd.grad(loss_obs.sum(), mu_in)
        grad = obs_weight * g_obs.to(torch.float64) + lam * sigma * (eps_hat - eps) / n_img
        # 3. Adam step on μ.
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad.square()
        m_hat, v_hat = m / (1 - b1 ** (i + 1)), v / (1 - b2 ** (i + 1))
        mu = mu - lr * m_hat / (v_hat.sqrt() + 1e-8)
        pb.check(i, mu, f"lr = {lr} too large for this problem")
        pb.callback(i, mu, x0_hat)
    return pb.finish(mu)
