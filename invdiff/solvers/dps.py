"""DPS — Diffusion Posterior Sampling for general noisy inverse problems.

Chung, Kim, Mccann, Klasky & Ye, ICLR 2023, arXiv:2209.14687.

DDPM ancestral sampling (VP, respaced) with a gradient step on the measurement residual of the
Tweedie estimate x̂₀ = D(x_t, σ_t) after each step (paper Alg. 1, Gaussian; Alg. 2, Poisson):

    x'_{t−1} = √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) x_t + √ᾱ_{t−1} β_t/(1−ᾱ_t) x̂₀ + σ̃_t z       (DDPM, eq. 7 of Ho et al.)
    x_{t−1}  = x'_{t−1} − ζ ∇_{x_t} ‖y − A(x̂₀)‖                                    (Alg. 1, lines 7–8)

with the authors' code's step: ζ times the gradient of the (unsquared) residual norm, i.e. the
paper's ζ_i = ζ/‖y − A(x̂₀)‖ on the squared norm, up to its factor ½. Poisson (Alg. 2) weights the
residual by Λ = diag(1/(2 y_j)) (here ``1/(2 max(y_j, gain))``, y in measurement units).
Student-t (``likelihood="student_t"``, not in the paper; for measurements with outliers) steps on
the robust norm ``‖r̃‖ = √(Σ_j ν s² log(1 + r_j²/(ν s²)))`` (:func:`~._common.student_t_residual`:
½‖r̃‖² = ν s²/(ν+1) × the Student-t negative log-likelihood), which is ‖r‖ for residuals small
against s and as ν → ∞, with s = σ_y in the residual's units (floored at
:data:`~._common.STUDENT_T_SCALE_FLOOR` model units where σ_y = 0).
The gradient is a vector–Jacobian product through the denoiser and the operator, so A may be any
differentiable operator (phase retrieval, HDR, nonlinear blur, transmission CT).

NFE = ``steps`` forward and ``steps`` backward passes.

==========  ======================  ==============  ==================
code        paper                   code            paper
==========  ======================  ==============  ==================
``x``       x_t / √ᾱ_t (EDM form)   ``zeta``        ζ (step size)
``x0_hat``  x̂₀                      ``norm``        ‖y − A(x̂₀)‖(_Λ)
==========  ======================  ==============  ==================

Defaults: 1000 steps; ζ = 1.0 (phase retrieval; the paper uses 0.3 for SR/deblur, 0.5 for
inpainting — experiment configs). Residual units: with ``residual="model"`` (default) the
residual is multiplied by the prior's scale, so for a linear operator it equals the residual of the
paper's [−1, 1] images and the paper's ζ carries over; ``"physical"`` uses measurement units.

Deviations:

* The residual norm is per sample (the authors' code takes one norm over the whole batch, so a
  sample's step depends on its batch).
* σ_y is not used by the Gaussian step (as in the paper; ζ absorbs it); it is checked like every
  solver's. The Student-t step uses it as its scale s.
* ``likelihood="student_t"`` (ν = ``nu``, default 3) is ours, not the paper's.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: p(y | x_t) ≈ p(y |
x̂₀(x_t)) (Tweedie plug-in) with a step size ζ in place of the likelihood's scale).
"""

from __future__ import annotations

import math

from torch import Tensor

from ._common import (Callback, check_likelihood, ddpm_step_vp, setup, student_t_residual, student_t_scale, vp_scale,
                      vp_sigmas)


def dps(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 1000, generator=None, callback: Callback = None,
        zeta: float = 1.0, likelihood: str = "gaussian", poisson_gain: float = 1.0 / 255.0, residual: str = "model",
        nu: float = 3.0, schedule=None) -> Tensor:
    """One DPS posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: any operator with a differentiable forward map (linear or not).
    :param prior: differentiable :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std (float or ``[B]``); not used by the Gaussian step (ζ absorbs it), the
        scale s of the Student-t one.
    :param steps: DDPM steps (NFE = steps forward + steps backward).
    :param zeta: step size ζ.
    :param likelihood: ``"gaussian"`` (Alg. 1), ``"poisson"`` (Alg. 2) or ``"student_t"`` (robust to outliers).
    :param poisson_gain: measurement units per count, the floor of y in the Poisson weights.
    :param residual: ``"model"`` (residual × prior scale, the paper's [−1, 1] units) or ``"physical"``.
    :param nu: Student-t degrees of freedom ν (``likelihood="student_t"``; ``inf`` is the Gaussian step).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if zeta < 0 or residual not in ("model", "physical"):
        raise ValueError(f"dps: need zeta >= 0, residual 'model'|'physical'; got {zeta}, {residual!r}")
    check_likelihood("dps", likelihood, nu, ("gaussian", "poisson", "student_t"))
    pb = setup("dps", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["differentiable"], prior_grad=True)
    unit = prior.scale if residual == "model" else 1.0  # × the residual in measurement units
    if likelihood == "poisson":  # ‖r‖_Λ = ‖√Λ r‖, Λ = diag(1/(2y)), y in measurement units
        unit = unit / (2 * pb.y_phys.clamp_min(poisson_gain)).sqrt()
    if likelihood == "student_t":  # ‖r̃‖, s = max(a σ_y, floor) model units, here in the residual's units
        s = pb.per_meas(student_t_scale(pb) * (unit / prior.scale))

        def misfit(x0):
            return student_t_residual(unit * pb.residual(x0, physical=True), s, nu)
    else:
        def misfit(x0):
            return unit * pb.residual(x0, physical=True)
    sigmas = vp_sigmas(prior, steps, schedule)
    x = pb.init_noise(1.0 / vp_scale(sigmas[0]))  # VP N(0, I)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        a_t, a_s = vp_scale(sigma) ** 2, vp_scale(sigma_next) ** 2
        # 1. Tweedie estimate with the graph kept, and the per-sample residual norm.
        x0_hat, grad = pb.norm_grad(x, sigma, misfit)
        pb.check(i, x0_hat, "the prior's denoiser returned NaN/Inf")
        # 2. DDPM ancestral step (VP coordinates), 3. measurement step ζ ∇_{x_vp}‖·‖ = ζ ∇_x‖·‖ / √ᾱ_t.
        x_vp = ddpm_step_vp(pb, x, x0_hat, sigma, sigma_next) - zeta * grad / math.sqrt(a_t)
        x = x_vp / math.sqrt(a_s)
        pb.check(i, x, f"ζ = {zeta} too large for this problem (DPS diverges when the step overshoots)")
        pb.callback(i, x, x0_hat)
    return pb.finish(x)
