"""ΠGDM — Pseudoinverse-Guided Diffusion Models (noisy version).

Song, Vahdat, Mardani & Kautz, ICLR 2023, https://openreview.net/forum?id=9_gsMA8MRKQ.

The intractable likelihood of the noisy state is approximated by a Gaussian around the denoiser
(paper eqs. 5–7 and §3.3, noisy measurements):

    p(y | x_t) ≈ N(y; A x̂₀, r_t² A Aᵀ + σ_y² I),   x̂₀ = D(x_t, σ_t),
    r_t² = v σ_t² / (v + σ_t²)   (v = 1 in the paper: a unit-variance prior, i.e. r_t² = 1 − ᾱ_t),

whose score is a vector–Jacobian product through the denoiser:

    g = ∂x̂₀/∂x_tᵀ · Aᵀ (r_t² A Aᵀ + σ_y² I)⁻¹ (y − A x̂₀).

Matrix-free: ``Aᵀ(r²AAᵀ + σ_y²I)⁻¹ = (r²AᵀA + σ_y²I)⁻¹Aᵀ`` (push-through identity), i.e.
``prox_l2(0, y − A x̂₀, γ = r²/σ_y²) / r²`` — closed form through the SVD when the operator has one,
conjugate gradients otherwise; ``A⁺(y − A x̂₀)/r²`` when σ_y = 0. No dense AAᵀ is ever built.

The guidance enters a DDIM(η) step (paper Alg. 1) in one of two ways (``guidance``):

* ``"paper"`` (default): ``x_{t−1} = √ᾱ_{t−1} x̂₀ + c₁ z + c₂ ε̂ + √ᾱ_t g_vp`` with the unguided x̂₀
  and ε̂, ``c₁ = η √((1−ᾱ_t/ᾱ_{t−1})(1−ᾱ_{t−1})/(1−ᾱ_t))``, ``c₂ = √(1−ᾱ_{t−1}−c₁²)`` (Alg. 1), and
  ``g_vp = r_t² ∂x̂₀/∂x_vpᵀ Aᵀ(r_t²AAᵀ + σ_y²I)⁻¹(y − Ax̂₀)`` taken with respect to the VP state. The
  factor r_t² makes σ_y → 0 recover the paper's noiseless guidance ``∂x̂₀/∂x_vpᵀ A⁺(y − Ax̂₀)``
  (as NVlabs/RED-diff's pgdm and InverseBench's noisy ΠGDM do); without it the step diverges.
* ``"posterior"``: the DDIM step of the *posterior* denoiser ``x̂₀ʸ = x̂₀ + σ_t² g`` (EDM form;
  Tweedie's formula for p(x_t | y)), i.e. x̂₀ and ε̂ both replaced by their y-conditioned values.
  With r_t² matched to the prior (``prior_variance`` = the prior's variance, for an isotropic
  Gaussian prior) the approximation is exact and so is this sampler, up to the DDIM
  discretisation: the exact-posterior tests use this mode.

NFE = ``steps`` forward + ``steps`` backward passes (one vector–Jacobian product per step).

==========  ===========================  ==================  ========================
code        paper                        code                paper
==========  ===========================  ==================  ========================
``x``       x_t / √ᾱ_t (EDM form)        ``r2``              r_t²
``x0_hat``  x̂_t = D(x_t)                 ``sigma_y``         σ_y (model space)
``grad``    g (∂/∂x of the EDM state)    ``eta``             η
==========  ===========================  ==================  ========================

Defaults: 100 steps, η = 1.0 (the c-pigdm configuration of the authors' group; RED-diff's pgdm
defaults to η = 0, InverseBench to 0.2). Deviations: the start is VP noise N(0, I) (RED-diff
starts from √ᾱ_T A⁺y + √(1−ᾱ_T) z; the difference vanishes as ᾱ_T → 0); timesteps respaced evenly
over the prior's VP schedule; ``prior_variance`` generalises the paper's unit-variance assumption.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: p(x₀ | x_t) ≈ N(x̂₀,
r_t²) with a scalar r_t (exact for isotropic Gaussian priors with prior_variance matched and the
posterior guidance step)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import Callback, ddim_step, pigdm_vector, setup, vp_scale, vp_sigmas


def pigdm(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 100, generator=None,
          callback: Callback = None, eta: float = 1.0, prior_variance: float = 1.0, guidance: str = "paper",
          schedule=None) -> Tensor:
    """One ΠGDM posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, physical units.
    :param operator: linear operator with ``prox_l2`` and ``pinv`` (closed form or CG).
    :param prior: differentiable :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std in measurement units, float or ``[B]``.
    :param steps: DDIM steps; NFE = steps forward + steps backward passes.
    :param eta: DDIM η.
    :param prior_variance: v in r_t² = v σ_t²/(v + σ_t²), model space (paper: 1).
    :param guidance: ``"paper"`` (Alg. 1) or ``"posterior"`` (posterior-denoiser DDIM step).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if not 0.0 <= eta <= 1.0 or prior_variance <= 0:
        raise ValueError(f"pigdm: need 0 <= eta <= 1 and prior_variance > 0, got {eta}, {prior_variance}")
    if guidance not in ("paper", "posterior"):
        raise ValueError(f"pigdm: guidance must be 'paper' or 'posterior', got {guidance!r}")
    pb = setup("pigdm", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["linear", "prox_l2", "pinv"], prior_grad=True)
    sigmas = vp_sigmas(prior, steps, schedule)
    x = pb.init_noise(1.0 / vp_scale(sigmas[0]))  # VP N(0, I)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        a_s = vp_scale(sigma_next) ** 2  # ᾱ_{t−1}
        # 1. Denoise with the graph kept.
        x_in = x.detach().requires_grad_(True)
        x0_graph = pb.net.with_grad(x_in, sigma)
        x0_hat = x0_graph.detach()
        pb.check(i, x0_hat, "the prior's denoiser returned NaN/Inf")
        # 2. Pseudo-inverse guidance: g = Jᵀ Aᵀ (r² AAᵀ + σ_y² I)⁻¹ (y − A x̂₀)   (EDM-state gradient).
        r2 = prior_variance * sigma**2 / (prior_variance + sigma**2)
        w = pigdm_vector(pb, pb.y - operator.A(x0_hat), r2)
        (grad,) = torch.autograd.grad(x0_graph, x_in, grad_outputs=w.to(x0_graph.dtype))
        grad = grad.to(torch.float64)
        # 3. DDIM(η) step (Alg. 1): with the posterior denoiser, or the unguided one plus √ᾱ_t g_vp
        #    (g_vp = r_t² g/√ᾱ_t w.r.t. the VP state; divided by √ᾱ_{t−1} back to EDM form).
        if guidance == "posterior":
            x0_hat = x0_hat + sigma**2 * grad
        x_next = ddim_step(pb, x, x0_hat, sigma, sigma_next, eta)
        if guidance == "paper":
            x_next = x_next + r2 * grad / math.sqrt(a_s)
        x = x_next
        pb.check(i, x, "guidance too strong for this problem (try guidance='posterior' or more steps)")
        pb.callback(i, x, x0_hat)
    return pb.finish(x)
