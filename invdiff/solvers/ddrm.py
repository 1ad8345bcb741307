"""DDRM — Denoising Diffusion Restoration Models.

Kawar, Elad, Ermon & Song, NeurIPS 2022, arXiv:2201.11793.

In the operator's spectral coordinates (``A = U diag(s) Vᵀ``, ``x̄ = Vᵀx``, ``ȳ = s⁻¹ Uᵀy``) and
EDM/VE form ``x_t = x₀ + σ_t n``, one step from σ_t to σ_{t−1} with ``x̄₀ = Vᵀ D(x_t, σ_t)`` and a
fresh standard normal ``z̄`` is (paper eq. 8, per coefficient i):

* ``s_i = 0``:                     ``x̄₀ + √(1−η²) σ_{t−1} (x̄_t − x̄₀)/σ_t + η σ_{t−1} z̄``
* ``s_i σ_{t−1} < σ_y``:           ``x̄₀ + √(1−η²) σ_{t−1} (ȳ − x̄₀)/(σ_y/s_i) + η σ_{t−1} z̄``
* ``s_i σ_{t−1} ≥ σ_y``:           ``(1−η_b) x̄₀ + η_b ȳ + √(σ²_{t−1} − η_b² σ_y²/s_i²) z̄``

The last step goes to σ = 0 and returns x̄₀ on noisy components (ȳ with σ_y = 0 and η_b = 1).
NFE = ``steps`` (one network call per step).

==========  =====================  ==========  ==============================
code        paper                  code        paper
==========  =====================  ==========  ==============================
``x``       x_t (EDM/VE form)      ``eta``     η
``x0_hat``  x_θ(x_t, t)            ``eta_b``   η_b
``s``       s_i                    ``ybar``    ȳ = Σ⁺Uᵀy
``sigma``   σ_t                    ``sigma_y`` σ_y (model space)
==========  =====================  ==========  ==============================

Defaults: η = 0.85, η_b = 1, 20 steps (paper §5); timesteps respaced evenly over the prior's VP
schedule (or DDPM's linear-β T = 1000).

Deviations:

* The start is x_T ~ N(0, (1+σ_T²) I), i.e. VP noise N(0, I) as in the authors' code, rather than
  the paper's y-conditioned q(x_T | y) (the difference is O(σ_y/σ_T) ≈ 0).
* The equality case ``s_i σ_{t−1} = σ_y`` follows the paper (third line); the authors' code sends
  it to the first line, which for σ_y = 0 returns x̄₀ instead of ȳ on observed components.
* ``mode="simplified"`` (operators with A⁺ but no SVD) treats A's non-zero singular values as 1 on
  ``range(A⁺A)`` (see :class:`invdiff.solvers._common.Spectral`); exact for inpainting-type
  operators, an approximation otherwise.
* Fresh noise is drawn in image space and mapped by Vᵀ (still N(0, I), orthonormal V), so the
  SVD and simplified modes consume the generator identically.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: a variational
conditional in the SVD coefficients (η, η_b) that keeps the prior's noise level per coefficient;
ignores the prior's correlations with observed ones).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import Callback, Spectral, setup, vp_scale, vp_sigmas


def ddrm(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 20, generator=None, callback: Callback = None,
         eta: float = 0.85, eta_b: float = 1.0, mode: str = "auto", schedule=None) -> Tensor:
    """One DDRM posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, physical units (float32/64).
    :param operator: linear operator with an exact SVD (``mode="svd"``) or a pseudo-inverse
        (``mode="simplified"``); ``"auto"`` picks the SVD when available.
    :param prior: :class:`invdiff.priors.Prior` whose shape is ``operator.img_size``.
    :param sigma_y: measurement noise std in measurement units: float or ``[B]``.
    :param steps: number of denoising steps (NFE).
    :param generator: ``torch.Generator`` or a list with one per batch item.
    :param callback: ``callback(step, x_t, x0_hat)`` after each step (model space).
    :param eta, eta_b: the paper's η and η_b.
    :param schedule: VP schedule for the timesteps (default: the prior's, else linear-β T = 1000).
    :returns: ``[B, *prior.shape]`` in physical units, y's dtype.
    """
    if not 0.0 <= eta <= 1.0 or not 0.0 <= eta_b <= 1.0:
        raise ValueError(f"ddrm: eta and eta_b must lie in [0, 1], got eta={eta}, eta_b={eta_b}")
    needs = [("svd",)] if mode == "svd" else [("svd", "pinv")]
    pb = setup("ddrm", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=[*needs, "linear"])
    spec = Spectral(pb, mode)
    sigma_y = pb.sigma_y_b
    sigmas = vp_sigmas(prior, steps, schedule)
    x = pb.init_noise(1.0 / vp_scale(sigmas[0]))  # VP N(0, I)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # 1. Denoise and move to spectral coordinates.
        x0_hat = pb.denoise(x, sigma, i)
        x0_bar, x_bar = spec.to_coef(x0_hat), spec.to_coef(x)
        z_bar = spec.to_coef(pb.randn())

        # 2. Eq. 8, coefficient by coefficient.
        def update(s: Tensor) -> Tensor:
            observed = s > 0
            noisier = observed & (s * sigma_next >= sigma_y)  # σ_{t−1} ≥ σ_y/s_i
            s_safe = torch.where(observed, s, 1.0)
            unobserved = x0_bar + math.sqrt(1 - eta**2) * sigma_next * (x_bar - x0_bar) / sigma + eta * sigma_next * z_bar
            ratio = torch.where(sigma_y > 0, s_safe / torch.where(sigma_y > 0, sigma_y, 1.0), 0.0)  # s_i/σ_y
            below = x0_bar + math.sqrt(1 - eta**2) * sigma_next * (spec.ybar - x0_bar) * ratio + eta * sigma_next * z_bar
            var = (sigma_next**2 - (eta_b * sigma_y / s_safe) ** 2).clamp_min(0.0)
            above = (1 - eta_b) * x0_bar + eta_b * spec.ybar + var.sqrt() * z_bar
            return torch.where(noisier, above, torch.where(observed, below, unobserved))

        x = spec.combine(update)
        pb.check(i, x)
        pb.callback(i, x, x0_hat)
    return pb.finish(x)
