"""DiffPIR — Denoising Diffusion Models for Plug-and-Play Image Restoration.

Zhu, Zhang, Liang, Cao, Wen, Timofte & Van Gool, CVPR-W 2023, arXiv:2305.08995.

Half-quadratic splitting inside a DDPM/DDIM chain (paper Alg. 1), with σ̄_t = √((1−ᾱ_t)/ᾱ_t)
(the EDM-form σ of the VP state):

1. ``x₀⁽ᵗ⁾ = D(x_t, σ̄_t)``                                          (eq. 12, the denoising prior step)
2. ``x̂₀⁽ᵗ⁾ = argmin_z ‖y − A z‖² + ρ_t ‖z − x₀⁽ᵗ⁾‖²``, ``ρ_t = λ σ_n² / σ̄_t²``  (eqs. 13, 14)
   = ``prox_l2(x₀⁽ᵗ⁾, y, γ = 1/ρ_t)`` — the operator's closed form (SVD/FFT) or CG.
3. ``ε̂ = (x_t − x̂₀⁽ᵗ⁾)/σ̄_t``                                     (eq. 15, EDM form of (x_t − √ᾱ x̂₀)/√(1−ᾱ))
4. ``x_{t−1} = √ᾱ_{t−1} x̂₀⁽ᵗ⁾ + √(1−ᾱ_{t−1}) (√(1−ζ) ε̂ + √ζ ε_t)``   (eq. 16; here in EDM form,
   ``x = x̂₀ + σ̄_{t−1}(√(1−ζ) ε̂ + √ζ ε_t)``)

The last step returns the denoised x₀ (without the data step, as the authors' code does).
NFE = ``steps``.

==========  =============  =============  ================
code        paper          code           paper
==========  =============  =============  ================
``x``       x_t / √ᾱ_t      ``lam``        λ
``x0_hat``  x₀⁽ᵗ⁾           ``zeta``       ζ
``x0_dc``   x̂₀⁽ᵗ⁾           ``sigma_y``    σ_n
``sigma``   σ̄_t             ``rho``        ρ_t
==========  =============  =============  ================

Defaults: 100 steps on the authors' "quad" timestep spacing, λ = 7, ζ = 0.3 — the settings their
deblurring script runs (SR ×4: ζ = 0.25 with λ swept 2…12; inpainting: λ = 1, ζ = 1.0, 20 steps).
σ_n is floored at 0.001 (the authors' ``max(0.001, noise_level_img)``), so noiseless data still
give a finite ρ_t.

Noise units: the authors compute ρ_t with σ_n on the [0, 1] image scale and σ̄_t on the network's
[−1, 1] scale. Here both are in the prior's model space and ``units="model"`` uses
ρ_t = λ σ_n² / σ̄_t²; ``units="paper"`` (the default) reproduces the authors' code by evaluating
σ_n on a unit-width range: σ_n = σ_y,model / (model range width), i.e. σ_y/2 for [−1, 1] priors.

Deviations:

* The last network call's x₀ is returned; the authors' code evaluates it and then returns x at
  t = 0 (σ̄ ≈ 0.01 of residual noise) instead.
* The start is VP noise N(0, I) (the paper); the authors' code starts from a noised y (or its
  bicubic upsampling), an initialisation their issue #41 calls optional.
* x₀ is not clipped to [−1, 1] (their ``clip_denoised=True``): priors here need not be bounded.
* The data step is the operator's own exact prox (SVD/FFT closed form or CG); the authors' SR
  uses an FFT formula with a bicubic kernel that does not match their MATLAB-bicubic degradation.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: a
half-quadratic-splitting proximal step on x̂₀ inside the sampler).
"""

from __future__ import annotations

import math

from torch import Tensor

from ._common import Callback, setup, vp_scale, vp_sigmas


def diffpir(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 100, generator=None,
            callback: Callback = None, lam: float = 7.0, zeta: float = 0.3, units: str = "paper",
            sigma_y_min: float = 0.001, skip_type: str = "quad", schedule=None) -> Tensor:
    """One DiffPIR posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, physical units.
    :param operator: linear operator with ``prox_l2`` (closed form or CG).
    :param prior: :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std in measurement units, float or ``[B]``.
    :param steps: number of steps (NFE).
    :param lam, zeta: the paper's λ and ζ.
    :param units: ``"paper"`` (σ_n on a unit-width range, as the authors' code) or ``"model"``.
    :param sigma_y_min: floor of σ_n (same units as ``units``).
    :param skip_type: ``"quad"`` (the authors' default) or ``"uniform"`` timestep spacing.
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if lam <= 0 or not 0.0 <= zeta <= 1.0:
        raise ValueError(f"diffpir: need lam > 0 and 0 <= zeta <= 1, got lam={lam}, zeta={zeta}")
    if units not in ("paper", "model"):
        raise ValueError(f"diffpir: units must be 'paper' or 'model', got {units!r}")
    pb = setup("diffpir", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator,
               callback=callback, needs=["linear", "prox_l2"])
    width = prior.model_range[1] - prior.model_range[0] if units == "paper" else 1.0
    sigma_n = (pb.sigma_y / width).clamp_min(sigma_y_min)  # [B]
    sigmas = vp_sigmas(prior, steps, schedule, spacing=skip_type)
    x = pb.init_noise(1.0 / vp_scale(sigmas[0]))  # VP N(0, I)
    x0_hat = x
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # 1. Denoising prior step (eq. 12).
        x0_hat = pb.denoise(x, sigma, i)
        if sigma_next == 0.0:  # last step: return the denoised estimate
            x = x0_hat
            pb.callback(i, x, x0_hat)
            break
        # 2. Data step: prox of the data term with ρ_t = λ σ_n² / σ̄_t² (eqs. 13–14).
        rho = lam * sigma_n**2 / sigma**2
        x0_dc = operator.prox_l2(x0_hat, pb.y, 1.0 / rho)
        # 3. Effective noise (eq. 15).
        eps_hat = (x - x0_dc) / sigma
        # 4. Re-noise to σ̄_{t−1} with ζ-weighted fresh noise (eq. 16).
        x = x0_dc + sigma_next * (math.sqrt(1 - zeta) * eps_hat + math.sqrt(zeta) * pb.randn())
        pb.check(i, x, "λ or ζ unsuited to this problem, or a CG prox that did not converge")
        pb.callback(i, x, x0_dc)
    return pb.finish(x)
