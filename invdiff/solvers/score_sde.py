"""Score-SDE predictor–corrector with data-consistency projections (score-MRI).

Song, Shen, Xing & Ermon, "Solving Inverse Problems in Medical Imaging with Score-Based Generative
Models", ICLR 2022, arXiv:2111.08005; Chung & Ye, "Score-based diffusion models for accelerated
MRI", Medical Image Analysis 2022, arXiv:2110.05243 (score-MRI).

VE SDE on a geometric grid σ_0 = σ_max > … > σ_{N−1} = σ_min, σ_N = 0 (EDM form: the state is
``x = x₀ + σ n``, the score ``∇log p_σ(x) = (D(x, σ) − x)/σ²``). Each level i (score-MRI's single-coil
order):

1. Langevin corrector (Song et al. 2021, Alg. 4), ``corrector_steps`` times at σ_i:
   ``ε = 2 (snr ‖z‖/‖∇log p‖)²``, ``x ← x + ε ∇log p_{σ_i}(x) + √(2ε) z``;
2. data consistency at σ_i;
3. reverse-diffusion predictor (Song et al. 2021, eq. 47):
   ``x̄ = x + (σ_i² − σ_{i+1}²) ∇log p_{σ_i}(x)``, ``x = x̄ + √(σ_i² − σ_{i+1}²) z``;
4. data consistency at σ_{i+1}.

The last predictor step goes to σ = 0; its mean ``x̄ = D(x, σ_min)``, projected (weight λ) onto
the noise-free y, is the output (score-MRI; Song et al. project the final step with λ = 1).

Data consistency (a λ-weighted projection onto {A x = ŷ}):
``x ← x + λ A⁺(ŷ − A x)``. For a masked orthonormal FFT (A Aᵀ = I, A⁺ = Aᵀ) this is Song et al.'s
``x' = T⁻¹[λΛP⁻¹(Λ)ŷ + (1−λ)ΛTx + (I−Λ)Tx]`` and, at λ = 1, score-MRI's hard k-space replacement.
With ``noisy_projection=False`` (score-MRI) ŷ = y; with ``True`` (Song et al.) ŷ = y + σ A z, a
sample of the measurement of the current noisy state (their ``ŷ_t``, eq. 9).

NFE = ``steps · (1 + corrector_steps)``.

==========  ===================  =======================  ==================
code        paper                code                     paper
==========  ===================  =======================  ==================
``x``       x_i                  ``lam``                  λ
``score``   s_θ(x_i, σ_i)        ``snr``                  r (signal-to-noise)
``x_mean``  x̄_i (predictor mean) ``noisy_projection``     ŷ_t vs y
==========  ===================  =======================  ==================

Defaults (score-MRI): N = 2000, one corrector step, snr = 0.16, σ ∈ [0.01, 378] (clipped to the
prior's σ range), λ = 1, noise-free y.

Deviations:

* The corrector's norms are per sample (score_sde and score-MRI average them over the batch, which
  makes a sample depend on its batch).
* The projection uses the operator's pseudo-inverse, so it applies beyond masked FFTs (multi-coil
  MRI and CT by conjugate gradients); it reduces to the papers' forms when A Aᵀ = I.
* σ_y is not used by the projection (the papers assume noiseless k-space); with noisy data lower λ.
* score-MRI's real/imaginary trick (a magnitude prior applied to each part) is not built in: give a
  prior with the operator's channels (2 for complex images).

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: replacement: the range
of the state projected onto (a noised) y, ignoring σ_y and the coupling between range and null
space).
"""

from __future__ import annotations

import math

from torch import Tensor

from ..priors.schedules import geometric_sigma_grid
from ._common import Callback, Problem, setup, svd_condition


def _project(pb: Problem, x: Tensor, lam: float, sigma: float, noisy: bool) -> Tensor:
    """``x + λ A⁺(ŷ − A x)`` with ŷ = y (+ σ A z when ``noisy``)."""
    y_hat = pb.y
    if noisy and sigma > 0:
        y_hat = y_hat + sigma * pb.op.A(pb.randn())
    return x + lam * pb.op.A_dagger(y_hat - pb.op.A(x))


def score_sde(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 2000, generator=None,
              callback: Callback = None, corrector_steps: int = 1, snr: float = 0.16, lam: float = 1.0,
              noisy_projection: bool = False, sigma_min: float = 0.01, sigma_max: float = 378.0) -> Tensor:
    """One predictor–corrector posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, physical units.
    :param operator: linear operator with a pseudo-inverse (closed form or CG).
    :param prior: :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: accepted for the common call shape; not used by the projection.
    :param steps: number of noise levels N; NFE = steps · (1 + corrector_steps).
    :param corrector_steps, snr: Langevin corrector steps per level and its signal-to-noise ratio.
    :param lam: projection weight λ ∈ (0, 1].
    :param noisy_projection: project onto y + σ A z (Song et al. 2022) instead of y (score-MRI).
    :param sigma_min, sigma_max: VE σ range (clipped to the prior's).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if not 0.0 < lam <= 1.0 or snr <= 0 or corrector_steps < 0:
        raise ValueError(f"score_sde: need 0 < lam <= 1, snr > 0, corrector_steps >= 0; got {lam}, {snr}, {corrector_steps}")
    pb = setup("score_sde", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator,
               callback=callback, needs=["linear", "pinv"])
    cond = svd_condition(operator)
    if cond is not None and cond > 1e3 and float(sigma_y if isinstance(sigma_y, (int, float)) else 1.0) > 0:
        import warnings  # e.g. a blur: A⁺ amplifies y's noise

        warnings.warn(f"score_sde: its projection x + λ A⁺(y − A x) amplifies the measurement noise by up to "
                      f"1/s_min on {type(operator).__name__} (singular values span {cond:.3g}); expect "
                      "noise-dominated results — it is meant for well-conditioned operators such as MRI masks. "
                      "Use lam < 1 or another solver.", stacklevel=2)
    lo = max(sigma_min, prior.sigma_min) if prior.sigma_min > 0 else sigma_min
    hi = min(sigma_max, prior.sigma_max)
    sigmas = geometric_sigma_grid(steps, lo, hi).tolist() + [0.0]
    dims = tuple(range(1, len(pb.shape)))
    x = pb.init_noise(sigmas[0])
    x_mean = x
    nfe = 0
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # 1. Langevin corrector at σ_i (per-sample step sizes).
        for _ in range(corrector_steps):
            score = (pb.denoise(x, sigma, nfe) - x) / sigma**2
            nfe += 1
            z = pb.randn()
            ratio = z.square().sum(dims, keepdim=True).sqrt() / score.square().sum(dims, keepdim=True).sqrt().clamp_min(1e-30)
            eps = 2 * (snr * ratio) ** 2
            x = x + eps * score + (2 * eps).sqrt() * z
            # 2. Data consistency at σ_i.
            x = _project(pb, x, lam, sigma, noisy_projection)
        # 3. Reverse-diffusion predictor σ_i -> σ_{i+1}.
        x0_hat = pb.denoise(x, sigma, nfe)
        nfe += 1
        var = sigma**2 - sigma_next**2
        x_mean = x + var * (x0_hat - x) / sigma**2
        if sigma_next > 0:
            x = x_mean + math.sqrt(var) * pb.randn()
            # 4. Data consistency at σ_{i+1}.
            x = _project(pb, x, lam, sigma_next, noisy_projection)
        else:
            x = _project(pb, x_mean, lam, 0.0, False)  # final: the denoised mean, projected onto y
        pb.check(i, x, "a corrector step too large (lower snr) or a projection that did not converge")
        pb.callback(i, x, x0_hat)
    return pb.finish(x)
