"""FPS-SMC — Filtering Posterior Sampling with sequential Monte Carlo.

Dou & Song, "Diffusion Posterior Sampling for Linear Inverse Problem Solving: A Filtering
Perspective", ICLR 2024 (OpenReview tplXNcHZs1); the authors' code
github.com/ZehaoDou-official/FPS-SMC-2023 @ 008e7f73ea6804eddca894e997aacb990c758916:
guided_diffusion/gaussian_diffusion.py (``p_sample_loop``: the y sequence and the first particles;
``p_mean_variance``: the Gaussian conditional; ``DDIM.p_sample``: weights and resampling) and
guided_diffusion/posterior_mean_variance.py (``EpsilonXMeanProcessor``: the prior kernel). The
equations below are cited by those functions (the paper's own numbering is not reproduced here).

FPS reads posterior sampling as Bayesian filtering. The measurement is diffused like the image,
``y_t = √ᾱ_t y + √(1−ᾱ_t) A ε``, so that ``p(y_t | x_t) = N(A x_t, ᾱ_t σ_y² I)``; a sequence y_{T..0}
is drawn by a DDIM-like backward recursion from y, and the image chain is filtered against it:
``x_{t−1} ~ p(x_{t−1} | x_t) p(y_{t−1} | x_{t−1})`` (FPS), with M particles weighted by
``p(y_{t−1} | x_t)`` and resampled (FPS-SMC). Here everything is written in EDM form
(``x = x_vp/√ᾱ``, ``ỹ = y_vp/√ᾱ``) and in the operator's SVD coordinates ``x̄ = Vᵀx``,
``ȳ = s⁻¹Uᵀỹ`` (coefficient i observed where s_i > 0, with noise ``τ_i = σ_y/s_i``), where every
Gaussian is diagonal. One step from σ_a to σ_b (VP: t → t−1), c = ``c_rate``:

* measurement (``p_sample_loop``, ``coef_1..4``): ``ȳ_b = ȳ + √(1−c) σ_b (ȳ_a − ȳ)/σ_a + √c σ_b z̄'``
  on observed coefficients, from ``ȳ_T = ȳ + σ_T z̄'``; marginally ``ȳ_σ ~ N(ȳ, σ² I)``, i.e.
  ``ỹ_σ ~ N(y, σ² AAᵀ)`` (VP: ``y_t ~ N(√ᾱ_t y, (1−ᾱ_t) AAᵀ)``); consecutive levels correlate by
  √(1−c) per coefficient
* prior kernel (``EpsilonXMeanProcessor``: DDIM with variance ``c(1−ᾱ_{t−1})``): ``p(x̄_b | x̄_a) =
  N(m, q)``, ``m = x̄₀ + √(1−c) σ_b (x̄_a − x̄₀)/σ_a``, ``q = c σ_b²``, x̄₀ = Vᵀ D(V x̄_a, σ_a)
* weight (``DDIM.p_sample``): ``p(ȳ_b | x̄_a) = Π_i N(ȳ_b,i; m_i, q + τ_i²)`` over observed i
* conditional (``p_mean_variance``, a Gaussian product): observed i: ``x̄_b,i ~ N(m_i + g_i (ȳ_b,i − m_i),
  g_i τ_i²)``, ``g_i = q/(q + τ_i²)`` (τ_i = 0: x̄_b,i = ȳ_b,i); unobserved: ``N(m_i, q)``

The first particles are N(0, 1 + σ_T²) (VP N(0, I)) conditioned on ȳ_T; the last step returns
x̄₀ = Vᵀ D(x, σ_min) of one particle drawn by the weights. NFE = ``steps``, each network call on
``B × particles`` states (``chunk`` splits them). The closed forms need the exact SVD (``"svd"``):
without it the conditional needs ``(I/q + AᵀA/σ_y²)⁻¹`` and the weights ``log det(q AAᵀ + σ_y² I)``,
so an operator without one is refused (``CapabilityError``) rather than approximated.

==============  ========================================  ==============  ======================
code            paper                                     code            paper
==============  ========================================  ==============  ======================
``xb``          x_t^{(i)}: particles, SVD coordinates     ``c_rate``      c (``c_rate``)
``x0b``         x̄₀ = Vᵀ x_θ(x_t) (Tweedie)               ``particles``   M (``particle_size``)
``m``, ``q``    mean, variance of p(x_{t−1} | x_t)        ``lw``          log w_t^{(i)}
``y_seq``       ȳ_t: the backward measurement sequence    ``anc``         resampled indices
``tau2``        τ² = σ_y²/s² (ᾱ_t σ² in VP units)         ``gain``        q/(q + τ²)
==============  ========================================  ==============  ======================

Defaults: the authors' README and scripts/run_sampling.sh (``c_rate = 0.95``, ``particle_size = 5``)
and configs/diffusion_config.yaml (1000 DDPM steps, linear β); multinomial resampling at every
step (``random.choices`` in ``DDIM.p_sample``).

Deviations:

* The weight is computed in closed form as ``p(y_{t−1} | x_t)`` on the ancestors, which are
  resampled before propagation. The authors propagate first and weight the new particles by
  ``p(y|x_{t−1}) p(x_{t−1}|x_t)/q(x_{t−1})``, which (with consistent variances) is the same function
  of the ancestor, so both orders have one law; their code mixes ᾱ_{t−1}σ² (target) and ᾱ_tσ²
  (proposal) in it, a mismatch not kept.
* x_{t−1} is conditioned on y_{t−1}; the code conditions it on y_t. The code starts the y sequence
  at ``A ε`` (dropping √ᾱ_T y), and its first particles' mean lacks a factor 1/(ᾱ_T σ²) (``get_mean``
  returns (I + AᵀA/t)⁻¹ Aᵀy, not (tI + AᵀA)⁻¹ Aᵀy); here both are exact.
* ``c_rate="ddpm"`` (not in the paper): c per step from the DDPM posterior, ``c = 1 − σ_b²/σ_a²``
  (q = DDPM's posterior variance), the kernel that converges to the reverse process as steps → ∞.

What the filter targets (measured; tests/test_fps_smc.py checks each point). The paper treats y_{T..0} as
observations of a hidden Markov model, each with its own noise ``N(A x_t, ᾱ_t σ_y²)``, and claims
accuracy as the particles grow; but the construction shares one noise draw across t
(``y_t − A x_t = √ᾱ_t σ_y n`` for every t), so for σ_y > 0 the filter counts the measurement once
per step and more particles concentrate the samples on y: with a N(0, 1) prior, A = 1, σ_y = 0.5,
y = 0.8 (exact posterior mean 0.64, variance 0.2), 64 particles give mean 0.76 and variance ratio
0.20 at 100 steps, 0.79 and 0.08 at 1000 (one particle: 0.64 and 0.53). A constant c is also not
the reverse of the forward process (a DDIM kernel with O(1) fresh noise per step): without y,
c = 0.95 keeps 0.57–0.59 of a N(0, 1) prior's variance. With σ_y = 0 the pseudo-measurements are
exact functions of x_t, the model is a hidden Markov model, and with the DDPM kernel the filter
converges to the posterior as particles and steps grow.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: the pseudo-measurements
y_t are filtered as conditionally independent given x_t although they share y's noise (for σ_y > 0
more particles concentrate the samples on y), and a constant c_rate is not the reverse kernel;
asymptotically exact only for σ_y = 0 with c_rate="ddpm", as particles → ∞ and steps → ∞).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._random import rand
from ..checks import whole_number
from ._common import Callback, Spectral, setup, vp_sigmas


def _resample(lw: Tensor, generator, how: str) -> Tensor:
    """Ancestor indices ``[B, N]`` from log weights ``[B, N]`` (per-item draws)."""
    B, N = lw.shape
    cdf = torch.softmax(lw, dim=1).cumsum(1)
    cdf[:, -1] = 1.0
    if how == "systematic":
        u = (rand((B, 1), generator, device=lw.device) + torch.arange(N, device=lw.device, dtype=lw.dtype)) / N
    else:
        u = rand((B, N), generator, device=lw.device)
    return torch.searchsorted(cdf, u.contiguous()).clamp(max=N - 1)


def _take(t: Tensor, anc: Tensor) -> Tensor:
    idx = anc.reshape(*anc.shape, *([1] * (t.ndim - 2))).expand(*anc.shape, *t.shape[2:])
    return torch.gather(t, 1, idx)


def _ess(lw: Tensor) -> Tensor:
    return 1.0 / torch.softmax(lw, dim=1).square().sum(1)


def _weighted_mean(lw: Tensor, t: Tensor) -> Tensor:
    w = torch.softmax(lw, dim=1).reshape(*lw.shape, *([1] * (t.ndim - 2)))
    return (w * t).sum(1)


def noise_ratio(c_rate, sigma_a: float, sigma_b: float) -> float:
    """c of the step σ_a → σ_b: ``c_rate`` itself, or for ``"ddpm"`` the DDPM posterior's
    ``1 − σ_b²/σ_a²`` (so that ``q = c σ_b²`` is DDPM's posterior variance in EDM form)."""
    return 1.0 - (sigma_b / sigma_a) ** 2 if c_rate == "ddpm" else float(c_rate)


def measurement_step(y_a: Tensor, ybar: Tensor, sigma_a: float, sigma_b: float, c: float, z: Tensor) -> Tensor:
    """The backward measurement recursion (the authors' ``coef_1..4``) in EDM/SVD form:
    ``ȳ_b = ȳ + √(1−c) σ_b (ȳ_a − ȳ)/σ_a + √c σ_b z`` (ȳ at σ_b = 0)."""
    return ybar + math.sqrt(1.0 - c) * sigma_b / sigma_a * (y_a - ybar) + math.sqrt(c) * sigma_b * z


def fps_conditional(x_a: Tensor, x0: Tensor, y_b: Tensor, observed: Tensor, tau2: Tensor, sigma_a: float,
                    sigma_b: float, c: float) -> tuple[Tensor, Tensor, Tensor]:
    """One FPS step in SVD coordinates (all tensors broadcastable, coefficient-wise).

    :param x_a: particles x̄ at σ_a; ``x0`` their x̄₀ = Vᵀ D(V x̄_a, σ_a).
    :param y_b: the measurement sequence's ȳ at σ_b; ``observed`` where s > 0; ``tau2`` = σ_y²/s²
        there (any value elsewhere).
    :returns: ``(mean, var, log_w)``: the mean and variance of p(x̄_b | x̄_a, ȳ_b) ∝ N(x̄_b; m, q) ·
        N(ȳ_b; x̄_b, τ²) and, per coefficient, ``log N(ȳ_b; m, q + τ²)`` (0 where unobserved)
        — summed over coefficients, log p(y_b | x_a) up to a constant shared by all particles.
    """
    q = c * sigma_b * sigma_b
    m = x0 + math.sqrt(1.0 - c) * sigma_b / sigma_a * (x_a - x0)
    s2 = q + tau2
    gain = q / s2
    mean = torch.where(observed, m + gain * (y_b - m), m)
    var = torch.where(observed, gain * tau2, torch.full_like(m, q))
    log_w = torch.where(observed, -0.5 * (y_b - m).square() / s2 - 0.5 * torch.log(2 * math.pi * s2), 0.0)
    return mean, var, log_w


def fps_smc(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 1000, generator=None, callback: Callback = None,
            particles: int = 5, c_rate: float | str = 0.95, resample: str = "multinomial",
            resample_threshold: float = 1.0, schedule=None, return_particles: bool = False, chunk: int | None = None):
    """FPS-SMC posterior samples (one per item of ``y``), optionally with all particles.

    :param y: ``[B, *operator.meas_size]`` measurements, physical units (float32/64).
    :param operator: linear operator with an exact SVD (``"svd"``: the Gaussian conditional and the
        weights are coefficient-wise closed forms; an operator without one is refused).
    :param prior: :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std in measurement units (float or ``[B]``); 0 is the noiseless case.
    :param steps: diffusion steps (respaced VP timesteps of the prior's schedule; NFE = steps).
    :param generator: ``torch.Generator`` or a list with one per batch item.
    :param particles: M, particles per batch item.
    :param c_rate: c in (0, 1], the fraction of fresh noise per step of the DDIM kernel and the
        measurement recursion; ``"ddpm"``: DDPM's per-step value (module docstring, Deviations).
    :param resample: ``"multinomial"`` (the authors') or ``"systematic"``.
    :param resample_threshold: resample an item when its ESS < threshold × M; 1 (the authors'):
        at every step.
    :param return_particles: also return the final particles ``[B, M, *shape]`` (physical units)
        and their normalised log weights ``[B, M]``.
    :param chunk: most states per network call (None: all ``B × M`` at once).
    :param callback: ``callback(step, x_t, x0_hat)`` with the weighted particle means (model space);
        a callback taking ``ess`` (``[B]``), ``log_weights``, ``particles`` or ``y_t`` (the
        measurement sequence at the new level, ``ỹ = y_m + σ A ε`` in model-space measurement
        units, ``[B, *meas_size]``) keywords receives them too.
    :returns: ``x`` ``[B, *prior.shape]`` physical units, y's dtype; with ``return_particles``,
        ``(x, particles, log_weights)``.
    """
    if not (c_rate == "ddpm" or (isinstance(c_rate, (int, float)) and not isinstance(c_rate, bool)
                                 and 0 < c_rate <= 1)):
        raise ValueError(f"fps_smc: c_rate must lie in (0, 1] (the weights need a stochastic kernel) or be 'ddpm', "
                         f"got {c_rate!r}")
    if not whole_number(particles):
        raise ValueError(f"fps_smc: particles must be a positive integer, got {particles!r}")
    if resample not in ("multinomial", "systematic"):
        raise ValueError(f"fps_smc: resample must be 'multinomial' or 'systematic', got {resample!r}")
    if not 0 < resample_threshold <= 1:
        raise ValueError(f"fps_smc: resample_threshold must lie in (0, 1], got {resample_threshold}")
    if chunk is not None and not whole_number(chunk):
        raise ValueError(f"fps_smc: chunk must be a positive integer or None, got {chunk!r}")
    pb = setup("fps_smc", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["linear", "svd"])
    B, N, shape = pb.B, particles, prior.shape
    spec = Spectral(pb, "svd")
    sigmas = vp_sigmas(prior, steps, schedule)  # steps positive levels, then 0
    observed = (spec.s > 0).unsqueeze(1)  # [B, 1, *shape]
    tau2 = (pb.sigma_y_b / torch.where(spec.s > 0, spec.s, 1.0)).square().unsqueeze(1)
    ybar = spec.ybar.unsqueeze(1)

    def coef(x: Tensor) -> Tensor:  # image-space N(0, I) noise -> coefficients (still N(0, I))
        return operator.V_adjoint(x.reshape(-1, *shape)).reshape(x.shape)

    def images(xb: Tensor) -> Tensor:
        return operator.V(xb.reshape(-1, *shape)).reshape(xb.shape)

    def denoise(xb: Tensor, sigma: float, step: int) -> Tensor:
        flat = images(xb).reshape(B * N, *shape)
        size = B * N if chunk is None else chunk
        d = torch.cat([pb.denoise(flat[j:j + size], sigma, step) for j in range(0, B * N, size)])
        return coef(d.reshape(B, N, *shape))

    def measurement(yb: Tensor) -> Tensor:  # ȳ -> ỹ = U s ȳ (+ the part of y_m outside A's range)
        return pb.y + operator.U(spec.s * (yb[:, 0] - spec.ybar))

    # 1. The measurement at σ_T, and the first particles N(0, 1 + σ_T²) conditioned on it.
    s0 = sigmas[0]
    y_seq = torch.where(observed, ybar + s0 * coef(pb.randn((B, 1, *shape))), 0.0)
    c2 = 1.0 + s0 * s0
    mean0 = torch.where(observed, y_seq * c2 / (c2 + tau2), 0.0)
    var0 = torch.where(observed, c2 * tau2 / (c2 + tau2), c2)
    xb = mean0 + var0.sqrt() * coef(pb.randn((B, N, *shape)))
    lw = torch.zeros(B, N, dtype=torch.float64, device=pb.device)
    x0b = None
    for k in range(steps):
        sa, sb = sigmas[k], sigmas[k + 1]
        x0b = denoise(xb, sa, k)
        if sb == 0:
            break
        c = noise_ratio(c_rate, sa, sb)
        # 2. Backward measurement recursion: ȳ at σ_b from ȳ at σ_a and y.
        y_seq = torch.where(observed, measurement_step(y_seq, ybar, sa, sb, c, coef(pb.randn((B, 1, *shape)))), 0.0)
        # 3. Weights p(y_b | x_a) of the current particles, and the FPS conditional's moments.
        mean, var, log_w = fps_conditional(xb, x0b, y_seq, observed, tau2, sa, sb, c)
        lw = lw + log_w.reshape(B, N, -1).sum(-1)
        ess = _ess(lw)
        if pb.has_callback:
            x0_img = operator.V(_weighted_mean(lw, x0b))
        # 4. Resample the ancestors (multinomial at every step by default).
        redo = ess < resample_threshold * N if resample_threshold < 1 else torch.ones_like(ess, dtype=torch.bool)
        anc = torch.where(redo[:, None], _resample(lw, pb.generator, resample),
                          torch.arange(N, device=pb.device).expand(B, N))
        lw = torch.where(redo[:, None], torch.zeros_like(lw), lw)
        # 5. Propagate: x̄_b ~ p(x̄_b | x̄_a, ȳ_b).
        xb = _take(mean, anc) + _take(var, anc).sqrt() * coef(pb.randn((B, N, *shape)))
        pb.check(k, xb)
        if pb.has_callback:
            pb.callback(k, operator.V(_weighted_mean(lw, xb)), x0_img, ess=ess, log_weights=torch.log_softmax(lw, 1),
                        particles=images(xb), y_t=measurement(y_seq))
    # 6. Last step: x̄₀ = D(x, σ_min) (computed above); one particle per item drawn by the weights.
    pb.check(steps, x0b)
    all_images = images(x0b) if pb.has_callback or return_particles else None
    if pb.has_callback:
        pb.callback(steps - 1, operator.V(_weighted_mean(lw, xb)), operator.V(_weighted_mean(lw, x0b)), ess=_ess(lw),
                    log_weights=torch.log_softmax(lw, 1), particles=all_images, y_t=pb.y)
    pick = _resample(lw, pb.generator, "multinomial")[:, :1]
    out = pb.finish(operator.V(_take(x0b, pick)[:, 0]))
    if not return_particles:
        return out
    return out, pb.prior.to_physical(all_images).to(pb.out_dtype), torch.log_softmax(lw, 1)
