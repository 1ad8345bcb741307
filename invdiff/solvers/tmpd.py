"""TMPD — Tweedie Moment Projected Diffusions.

Boys, Girolami, Pidstrigach, Reich, Mosca & Akyildiz, TMLR 2024, arXiv:2310.06721.

The denoising posterior p(x₀ | x_t) is projected onto a Gaussian with Tweedie's first two moments
(paper §3, eqs. 8–10; EDM form, Jacobian J = ∂D/∂x_t, symmetric for a denoiser that is a score):

    m = D(x_t, σ_t),   C = Cov[x₀ | x_t] = σ_t² J,
    p(y | x_t) ≈ N(y; A m, A C Aᵀ + σ_y² I),

so the posterior denoiser is the Gaussian update (exact for Gaussian priors)

    E[x₀ | x_t, y] ≈ m + σ_t² Jᵀ Aᵀ v,   (σ_t² A J Aᵀ + σ_y² I) v = y − A m,

equivalently ``m + σ_t² ∇_x log p(y | x_t)`` with C held fixed (the paper's eq. 12 guidance).
The sampler is DDIM(η) (η = 1: DDPM-like) on this posterior denoiser.

* ``covariance="full"``: matrix-free conjugate gradients on v with one vector–Jacobian product per
  iteration (J v ≈ Jᵀ v), warm-started from the previous step's v; then one more VJP. Backward
  passes per step ≤ ``cg_max_iter + 1``; the authors' code forms the dense Jacobian instead.
* ``covariance="diagonal"``: the paper's cheap variant, C ≈ diag(σ_t² Jᵀ1) clipped at 0 (one VJP), the solve
  with that diagonal (no network), then one VJP for the gradient: 2 backward passes per step.

NFE = ``steps`` forward passes (backward passes as above).

==========  ===============  ==================  =========
code        paper            code                paper
==========  ===============  ==================  =========
``x0_hat``  m_{0|t}          ``c_diag``          diag C_{0|t}
``v``       (ACAᵀ+σ_y²I)⁻¹r  ``x0_y``            E[x₀|x_t,y]
==========  ===============  ==================  =========

Defaults: 1000 steps, η = 1 (DDPM-like), full covariance with ≤ 20 CG iterations (tol 1e-5).

Deviations: J applied as a VJP (exact when the denoiser is a conservative field, as Tweedie's
formula implies; learned networks are only approximately so). The DDIM/DDPM step is ours around the
paper's moment projection.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: p(x₀ | x_t) projected on
a Gaussian with Tweedie's two moments (exact for Gaussian priors)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from operators.linalg import conjugate_gradient

from ._common import Callback, ddim_step, setup, vp_scale, vp_sigmas


def tmpd(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 1000, generator=None, callback: Callback = None,
         covariance: str = "full", cg_max_iter: int = 20, cg_tol: float = 1e-5, eta: float = 1.0, schedule=None) -> Tensor:
    """One TMPD posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: linear operator with an adjoint.
    :param prior: differentiable :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std in measurement units, float or ``[B]``.
    :param steps: DDIM steps (NFE).
    :param covariance: ``"full"`` (CG with Jacobian products) or ``"diagonal"`` (cheap variant).
    :param cg_max_iter, cg_tol: the inner solve of the full variant.
    :param eta: DDIM η (1: DDPM-like).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if covariance not in ("full", "diagonal") or not 0.0 <= eta <= 1.0 or cg_max_iter < 1:
        raise ValueError(f"tmpd: need covariance 'full'|'diagonal', 0 <= eta <= 1, cg_max_iter >= 1; "
                         f"got {covariance!r}, {eta}, {cg_max_iter}")
    pb = setup("tmpd", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["linear", "adjoint"], prior_grad=True)
    A, At = operator.A, operator.A_adjoint
    s2y = pb.sigma_y**2
    s2y = s2y.reshape(-1, *([1] * (pb.y.ndim - 1))) if s2y.ndim == 1 else s2y
    sigmas = vp_sigmas(prior, steps, schedule)
    x = pb.init_noise(1.0 / vp_scale(sigmas[0]))  # VP N(0, I)
    v = torch.zeros_like(pb.y)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # 1. Tweedie mean with the graph kept; J w by vector–Jacobian products.
        x_in = x.detach().requires_grad_(True)
        m_graph = pb.net.with_grad(x_in, sigma)
        x0_hat = m_graph.detach()
        pb.check(i, x0_hat, "the prior's denoiser returned NaN/Inf")

        def jac(w: Tensor) -> Tensor:
            (g,) = torch.autograd.grad(m_graph, x_in, grad_outputs=w.to(m_graph.dtype), retain_graph=True)
            return g.to(torch.float64)

        resid = pb.y - A(x0_hat)
        # 2. Solve (σ² A C̃ Aᵀ + σ_y² I) v = y − A m, C̃ = J (full) or diag(J 1) (diagonal).
        if covariance == "full":
            v = conjugate_gradient(lambda u: sigma**2 * A(jac(At(u))) + s2y * u, resid, v, tol=cg_tol, max_iter=cg_max_iter)
        else:
            c_diag = (sigma**2 * jac(torch.ones_like(x0_hat))).clamp_min(0.0)  # a variance is >= 0
            v = conjugate_gradient(lambda u: A(c_diag * At(u)) + s2y * u, resid, v, tol=cg_tol, max_iter=200)
        # 3. Posterior denoiser m + σ² Jᵀ Aᵀ v, then a DDIM(η) step with it.
        x0_y = x0_hat + sigma**2 * jac(At(v))
        x = ddim_step(pb, x, x0_y, sigma, sigma_next, eta)
        pb.check(i, x, "a diverging inner solve (raise cg_max_iter or σ_y)")
        pb.callback(i, x, x0_y)
    return pb.finish(x)
