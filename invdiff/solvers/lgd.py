"""LGD-MC — Loss-Guided Diffusion with Monte-Carlo guidance.

Song, Zhang, Yin, Mardani, Liu, Kautz, Chen & Vahdat, "Loss-Guided Diffusion Models for
Plug-and-Play Controllable Generation", ICML 2023 (PMLR 202).

The guidance term ∇_{x_t} log p(y | x_t), with p(y | x_t) = E_{p(x₀|x_t)}[exp(−ℓ_y(x₀))] for a
differentiable loss ℓ_y (here the measurement's negative log-likelihood), replaces p(x₀ | x_t) by
the Gaussian q = N(x̂₀, r_t² I) around the Tweedie estimate x̂₀ = D(x_t, σ_t) and estimates the
expectation with n reparameterised draws (paper §3, the "LGD-MC" estimator; equation and
algorithm numbers are not cited here because they were not checked against the paper's PDF):

    x₀⁽ⁱ⁾ = x̂₀(x_t) + r_t z_i,  z_i ~ N(0, I),  r_t = σ_t/√(1 + σ_t²) = √(1 − ᾱ_t)     (VP form)
    L(x_t) = −log (1/n) Σ_i exp(−ℓ(x₀⁽ⁱ⁾))                 (Monte-Carlo −log p(y | x_t))
    ∇_{x_t} L = Σ_i w_i ∇_{x_t} ℓ(x₀⁽ⁱ⁾),  w = softmax(−ℓ(x₀⁽ⁱ⁾))   (one backward pass through D)

on DPS's sampler (respaced DDPM, or DDIM(η) with ``eta``) with DPS's step normalisation: write
ℓ = c·h with h the "half-square" of the residual r = y − A(x₀) (½‖r‖² for Gaussian noise, c =
1/s²), so that L = c·H with H = −(1/c) log (1/n) Σ_i exp(−c h_i) a soft minimum of the h_i, and step

    x_{t−1} = x'_{t−1} − ζ ∇_{x_t} √(2H)                    (x'_{t−1}: the unguided DDPM/DDIM step)

— per sample, as DPS's ζ∇‖r‖ is (InverseBench's ``ll_grad · 0.5/√loss``). With n = 1 and
r_t = 0 (``r_scale=0``) H = ½‖r(x̂₀)‖² and this is DPS's update (Chung et al. 2023, Alg. 1).
Likelihoods (h and c, residual r in the units of ``residual``, s its scale):

===============  ==================================================  ==================
``likelihood``   h(x₀)                                               c  (ℓ = c·h)
===============  ==================================================  ==================
``gaussian``     ½‖r‖²                                               1/s²
``poisson``      ½‖√Λ r‖², Λ = 1/(2 max(y, gain)) (DPS's Alg. 2)     2/(u² gain)
``student_t``    ½‖r̃‖² = ½ Σ ν s² log(1 + r²/(ν s²))                 (ν + 1)/(ν s²)
===============  ==================================================  ==================

(u = prior scale for ``residual="model"``, 1 for ``"physical"``; c·h is then Poisson's Gaussian
approximation Σ r²/(2 gain y) with r in measurement units.) The scale s is σ_y in the residual's
units, floored at :data:`~._common.STUDENT_T_SCALE_FLOOR` model units where σ_y = 0; it sets how
sharply the weights w pick among the draws (at n = 1, H = h and c cancels).

NFE = ``steps`` forward and ``steps`` backward passes (one vector–Jacobian product through D per
step, whatever n); the operator and its gradient are applied n times per step.

==============  ======================  ==============  ======================
code            paper                   code            paper
==============  ======================  ==============  ======================
``x``           x_t / √ᾱ_t (EDM form)   ``r_t``         r_t
``x0_hat``      x̂₀ (Tweedie)            ``mc_samples``  n
``zeta``        guidance scale          ``h``, ``c``    ℓ_y = c·h
``H``           L/c (soft min of h_i)   ``draws``       x₀⁽ⁱ⁾
==============  ======================  ==============  ======================

Defaults: 1000 DDPM steps (InverseBench's ``configs/algorithm/lgd.yaml``: 1000 VP steps); n = 10
draws (InverseBench's ``LGD`` default ``num_samples=10``; its config uses 3); ζ = 1.0 (DPS's: the
step is normalised as DPS's, in the prior's [−1, 1] residual units); r_t = σ_t/√(1 + σ_t²) (the
paper's choice, data of unit variance; ``r_scale`` multiplies it); Gaussian likelihood. Sources:
the paper, and devzhk/InverseBench ``algo/lgd.py`` and ``configs/algorithm/lgd.yaml`` at commit
b113d67b62ce8db811dc033c8fa12dfdfdfa93f0 (written from the paper: its header notes that there is no
official implementation).

Deviations:

* The step is normalised per sample as DPS's (ζ∇√(2H), not a fixed scale times ∇L): ζ carries
  over from DPS, and n = 1, r_t = 0 is DPS exactly. InverseBench normalises the same way but by
  the loss summed (not averaged) over the n draws, so its step shrinks as 1/√n.
* The draws are weighted by w = softmax(−ℓ) (the paper's log-mean-exp). InverseBench averages the
  draws' gradients with equal weights (the gradient of the mean loss, not of the log-mean-exp).
* ``likelihood="student_t"`` (ν = ``nu``, default 3) is ours, for measurements with outliers.
* Draws are skipped where r_t = 0 (they would all equal x̂₀), so ``r_scale=0`` uses DPS's noise.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: p(x₀ | x_t) ≈
N(x̂₀(x_t), r_t² I) with a fixed r_t, estimated by n Monte-Carlo draws, and a step size ζ in place
of the likelihood's scale).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import (Callback, check_likelihood, ddim_step, ddpm_step_vp, setup, student_t_residual,
                      student_t_scale, vp_scale, vp_sigmas)


def lgd(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 1000, generator=None, callback: Callback = None,
        zeta: float = 1.0, mc_samples: int = 10, r_scale: float = 1.0, likelihood: str = "gaussian",
        nu: float = 3.0, poisson_gain: float = 1.0 / 255.0, residual: str = "model", eta: float | None = None,
        schedule=None) -> Tensor:
    """One LGD-MC posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: any operator with a differentiable forward map (linear or not).
    :param prior: differentiable :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std (float or ``[B]``): the likelihood's scale s (floored where 0).
    :param steps: DDPM/DDIM steps (NFE = steps forward + steps backward).
    :param zeta: step size ζ (DPS's).
    :param mc_samples: Monte-Carlo draws n per step and sample.
    :param r_scale: multiplies the paper's r_t = σ_t/√(1 + σ_t²); 0 gives DPS's Tweedie plug-in.
    :param likelihood: ``"gaussian"``, ``"poisson"`` (DPS's weights) or ``"student_t"`` (robust).
    :param nu: Student-t degrees of freedom ν (``inf``: the Gaussian term).
    :param poisson_gain: measurement units per count, the floor of y in the Poisson weights.
    :param residual: ``"model"`` (residual × prior scale, the [−1, 1] units of ζ) or ``"physical"``.
    :param eta: ``None``: DDPM ancestral steps (as DPS); a float: DDIM(η) steps.
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if zeta < 0 or not r_scale >= 0 or residual not in ("model", "physical") or (eta is not None and not eta >= 0):
        raise ValueError(f"lgd: need zeta >= 0, r_scale >= 0, residual 'model'|'physical', eta None or >= 0; "
                         f"got {zeta}, {r_scale}, {residual!r}, {eta}")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"lgd: mc_samples must be a positive integer, got {mc_samples!r}")
    check_likelihood("lgd", likelihood, nu, ("gaussian", "poisson", "student_t"))
    pb = setup("lgd", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["differentiable"], prior_grad=True)
    unit = prior.scale if residual == "model" else 1.0  # × the residual in measurement units
    s = student_t_scale(pb) * (unit / prior.scale)  # [B], the residual's units
    weight = unit
    if likelihood == "poisson":  # DPS's Λ weights; ℓ = Σ r²/(2 gain y), r in measurement units
        weight = unit / (2 * pb.y_phys.clamp_min(poisson_gain)).sqrt()
        c = torch.full_like(s, 2.0 / (unit**2 * poisson_gain))
    elif likelihood == "student_t":
        c = (1 + 1 / nu) / s.square()
    else:
        c = 1 / s.square()
    s_meas = pb.per_meas(s)
    dims = tuple(range(1, pb.y.ndim))

    def half_square(x0: Tensor) -> Tensor:  # h(x₀) per sample [B]
        r = weight * pb.residual(x0, physical=True)
        if likelihood == "student_t":
            r = student_t_residual(r, s_meas, nu)
        return 0.5 * r.square().sum(dims)

    sigmas = vp_sigmas(prior, steps, schedule)
    x = pb.init_noise(1.0 / vp_scale(sigmas[0]))  # VP N(0, I)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        a_t, a_s = vp_scale(sigma) ** 2, vp_scale(sigma_next) ** 2
        r_t = r_scale * sigma / math.sqrt(1 + sigma * sigma)  # = r_scale · √(1 − ᾱ_t)
        # 1. Tweedie estimate with the graph kept.
        x_in = x.detach().requires_grad_(True)
        x0_graph = pb.net.with_grad(x_in, sigma)
        pb.check(i, x0_graph.detach(), "the prior's denoiser returned NaN/Inf")
        with torch.enable_grad():
            # 2. n draws x₀⁽ⁱ⁾ = x̂₀ + r_t z_i and their half-squares h_i (one draw where r_t = 0).
            draws = [x0_graph + r_t * pb.randn() for _ in range(mc_samples)] if r_t > 0 else [x0_graph]
            h = torch.stack([half_square(d) for d in draws], 1)  # [B, n]
            # 3. H = −(1/c) log (1/n) Σ exp(−c h_i) (soft minimum), per-sample norm √(2H), one VJP through D.
            H = -(torch.logsumexp(-c[:, None] * h, 1) - math.log(h.shape[1])) / c
            sq = (2 * H).clamp_min(torch.finfo(H.dtype).tiny)  # H = 0 gives a zero gradient, not NaN
            (grad,) = torch.autograd.grad(sq.sqrt().sum(), x_in)
        x0_hat, grad = x0_graph.detach(), grad.to(torch.float64)
        # 4. Unguided DDPM (or DDIM) step in VP coordinates, 5. guidance ζ ∇_{x_vp}√(2H) = ζ ∇_x√(2H) / √ᾱ_t.
        if eta is None:
            x_vp = ddpm_step_vp(pb, x, x0_hat, sigma, sigma_next)
        else:
            x_vp = math.sqrt(a_s) * ddim_step(pb, x, x0_hat, sigma, sigma_next, eta)
        x = (x_vp - zeta * grad / math.sqrt(a_t)) / math.sqrt(a_s)
        pb.check(i, x, f"ζ = {zeta} too large for this problem (the guided step overshoots)")
        pb.callback(i, x, x0_hat)
    return pb.finish(x)
