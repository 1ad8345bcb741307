"""MCG — Manifold Constrained Gradient.

Chung, Sim, Ryu & Ye, "Improving Diffusion Models for Inverse Problems using Manifold
Constraints", NeurIPS 2022, arXiv:2206.00941.

Each step (paper Alg. 1 / eqs. 14–16, VP, respaced DDPM):

1. ``x̂₀ = D(x_t, σ_t)``; the unconditional ancestral step ``x'_{t−1}`` (Ho et al. eq. 7);
2. manifold-constrained gradient: ``x''_{t−1} = x'_{t−1} − α ∂/∂x_t ‖y − A x̂₀‖`` (eq. 14; the
   authors' code steps on the unsquared norm, as DPS);
3. projection onto the noisy measurement set (eq. 15–16): ``x_{t−1} = x'' + A⁺(y_{t−1} − A x'')``
   with ``y_{t−1} = √ᾱ_{t−1} y + √(1−ᾱ_{t−1}) A z`` — in EDM form ``y + σ_{t−1} A z`` — which for
   inpainting is the paper's ``(I − P)x'' + P y_{t−1}``.

The last step (to σ = 0) projects onto y itself. NFE = ``steps`` forward + ``steps`` backward.

==========  ==========================  ==========  ==========
code        paper                       code        paper
==========  ==========================  ==========  ==========
``x``       x_t / √ᾱ_t (EDM form)       ``alpha``   α
``x0_hat``  x̂₀                          ``y_s``     y_{t−1}
==========  ==========================  ==========  ==========

Defaults: 1000 steps, α = 1.0 (the DPS repository's MCG configs; tune per task). The residual is
in the prior's units (× scale), as in :func:`invdiff.solvers.dps`. ``likelihood="student_t"``
(ours, for outliers) steps on DPS's robust norm ‖r̃‖ (:func:`~._common.student_t_residual`, ν =
``nu``, scale s = max(a σ_y, :data:`~._common.STUDENT_T_SCALE_FLOOR`)) in step 2; step 3 still
projects onto y, outliers included (use ``project=False`` for data with outliers).

Deviations: per-sample residual norms (the authors' code normalises over the batch). The
projection ignores σ_y beyond the forward-diffused y (as the paper): with noisy data it puts
A⁺(noise) into the sample — σ_y/s_i in weakly observed directions, the DPS paper's criticism of
MCG. ``project=False`` drops step 3 for such data.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: DPS's Tweedie plug-in
plus a projection onto the measurement).
"""

from __future__ import annotations

import math

from torch import Tensor

from ._common import (Callback, check_likelihood, ddpm_step_vp, setup, student_t_residual, student_t_scale, vp_scale,
                      vp_sigmas)


def mcg(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 1000, generator=None, callback: Callback = None,
        alpha: float = 1.0, project: bool = True, likelihood: str = "gaussian", nu: float = 3.0,
        schedule=None) -> Tensor:
    """One MCG posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: linear operator with a pseudo-inverse (closed form or CG).
    :param prior: differentiable :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std (float or ``[B]``); checked, not used by the Gaussian step (the scale s
        of the Student-t one).
    :param steps: DDPM steps (NFE = steps forward + steps backward).
    :param alpha: the gradient step α.
    :param project: apply step 3 (the paper); ``False`` keeps only the manifold-constrained gradient.
    :param likelihood: ``"gaussian"`` (the paper's ‖r‖) or ``"student_t"`` (DPS's robust norm ‖r̃‖).
    :param nu: Student-t degrees of freedom ν (``inf``: the Gaussian step).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if alpha < 0:
        raise ValueError(f"mcg: alpha must be >= 0, got {alpha}")
    check_likelihood("mcg", likelihood, nu)
    pb = setup("mcg", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["linear", "pinv"], prior_grad=True)
    if likelihood == "student_t":
        s = pb.per_meas(student_t_scale(pb))

        def misfit(x0):  # model-space residual, robust
            return student_t_residual(pb.y - operator.A(x0), s, nu)
    else:
        def misfit(x0):  # model-space residual
            return pb.y - operator.A(x0)
    sigmas = vp_sigmas(prior, steps, schedule)
    x = pb.init_noise(1.0 / vp_scale(sigmas[0]))  # VP N(0, I)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        a_t, a_s = vp_scale(sigma) ** 2, vp_scale(sigma_next) ** 2
        # 1. Tweedie estimate (graph kept) and the residual's gradient.
        x0_hat, grad = pb.norm_grad(x, sigma, misfit)
        pb.check(i, x0_hat, "the prior's denoiser returned NaN/Inf")
        # 2. Manifold-constrained gradient step (eq. 14), ∇_{x_vp} = ∇_x / √ᾱ_t.
        x_vp = ddpm_step_vp(pb, x, x0_hat, sigma, sigma_next) - alpha * grad / math.sqrt(a_t)
        x = x_vp / math.sqrt(a_s)
        # 3. Projection onto {A x = y_{t−1}}, y_{t−1} the forward-diffused measurement (eq. 15–16).
        if project:
            y_s = pb.y + sigma_next * operator.A(pb.randn()) if sigma_next > 0 else pb.y
            x = x + operator.A_dagger(y_s - operator.A(x))
        pb.check(i, x, f"α = {alpha} too large for this problem")
        pb.callback(i, x, x0_hat)
    return pb.finish(x)
