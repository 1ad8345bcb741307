"""Unconditional samplers: ``sampler(prior, shape, *, steps, generator=None, callback=None)``.

Each returns ``[B, *prior.shape]`` samples in *physical* units; the state is EDM's
``x = x₀ + σ·n`` in model space, float64, around the prior's denoiser. Exact network-call counts
(NFE) are listed per sampler. ``generator`` is one ``torch.Generator`` or one per batch item.
``callback(i, x, x0_hat)`` is called after every step.

==================  ==========================================  ============================
sampler             paper                                       NFE
==================  ==========================================  ============================
ddpm                Ho et al. 2020 (arXiv:2006.11239), Alg. 2    steps
ddim                Song, Meng & Ermon 2021 (2010.02502), eq. 12 steps
annealed_langevin   Song & Ermon 2019 (1907.05600), Alg. 1       steps·n_steps_each (+1)
reverse_sde         Song et al. 2021 (2011.13456), eq. 47 + PC   steps + corrector_steps·(steps−1)
pf_ode              Song et al. 2021, probability-flow ODE       steps
edm_heun            Karras et al. 2022 (2206.00364), Alg. 1/2    2·steps − 1
==================  ==========================================  ============================
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import torch
from torch import Tensor

from .._random import GeneratorArg, check_generator, randn
from .base import Prior
from .schedules import VPSchedule, edm_sigma_grid, geometric_sigma_grid, vp_schedule_of, vp_timesteps

Callback = Callable[[int, Tensor, Tensor], None] | None


def sampling_setup(prior: Prior, shape, generator: GeneratorArg) -> tuple[tuple, torch.device]:
    """Check an unconditional sampler's ``shape`` ``[B, *prior.shape]`` and generator(s); the prior's device."""
    shape = tuple(int(s) for s in shape)
    if shape[1:] != prior.shape:
        raise ValueError(f"shape must be [B, {', '.join(map(str, prior.shape))}] for this prior, got {list(shape)}")
    check_generator(generator, shape[0])
    tensors = itertools.chain(prior.parameters(), prior.buffers())
    device = next((t.device for t in tensors), torch.device("cpu"))
    return shape, device


def _range(prior: Prior, sigma_min: float, sigma_max: float) -> tuple[float, float]:
    """The sampler's default σ range, clipped to the prior's trained range."""
    lo = max(sigma_min, prior.sigma_min) if prior.sigma_min > 0 else sigma_min
    hi = min(sigma_max, prior.sigma_max)
    return lo, hi


def _D(prior: Prior, x: Tensor, sigma: float | Tensor) -> Tensor:
    with torch.no_grad():
        out = prior.denoiser(x, sigma)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f"the prior's denoiser returned NaN/Inf at sigma={float(sigma):.4g}")
    return out.to(torch.float64)


def _vp_start(prior: Prior, shape, steps: int, generator: GeneratorArg, schedule: VPSchedule | None):
    """Shape, device, the ᾱ of the respaced steps (then 1) and the initial VP state N(0, I)."""
    shape, device = sampling_setup(prior, shape, generator)
    sched = vp_schedule_of(prior, schedule)
    abar = sched.alphas_cumprod[vp_timesteps(prior, sched, steps)].tolist() + [1.0]
    return shape, device, abar, randn(shape, generator, device=device)


def ddpm(prior: Prior, shape, *, steps: int = 1000, generator: GeneratorArg = None, callback: Callback = None,
         schedule: VPSchedule | None = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2), on ``steps`` evenly respaced timesteps.

    In VP coordinates ``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε``, from t to the previous kept step s, with
    ``β' = 1 − ᾱ_t/ᾱ_s`` (respacing as in Nichol & Dhariwal 2021):
    ``x_s = (√ᾱ_s β'/(1−ᾱ_t)) x̂₀ + (√(1−β') (1−ᾱ_s)/(1−ᾱ_t)) x_t + √β̃ z``, ``β̃ = β'(1−ᾱ_s)/(1−ᾱ_t)``
    (eq. 7, the "fixed small" variance); the last step returns x̂₀.
    The schedule is the prior's own if it is VP, else DDPM's linear-β T = 1000, started at the
    largest step whose σ the prior covers. NFE = ``steps``.
    """
    shape, device, abar, x_vp = _vp_start(prior, shape, steps, generator, schedule)
    for i in range(steps):
        a_t, a_s = abar[i], abar[i + 1]
        sigma = math.sqrt((1 - a_t) / a_t)
        x0_hat = _D(prior, x_vp / math.sqrt(a_t), sigma)  # 1. Tweedie estimate
        beta = 1 - a_t / a_s
        mean = (math.sqrt(a_s) * beta / (1 - a_t)) * x0_hat + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x_vp
        var = beta * (1 - a_s) / (1 - a_t)  # 2. posterior q(x_s | x_t, x̂₀)
        x_vp = mean + math.sqrt(var) * randn(shape, generator, device=device) if i < steps - 1 else mean
        if callback is not None:
            callback(i, x_vp / math.sqrt(a_s), x0_hat)
    return prior.to_physical(x_vp)


def ddim(prior: Prior, shape, *, steps: int = 100, generator: GeneratorArg = None, callback: Callback = None,
         eta: float = 0.0, schedule: VPSchedule | None = None) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) with ``eta`` (0: deterministic, 1: DDPM-like).

    ``x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s − c²) ε̂ + c z`` with
    ``c = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_s)`` (eq. 16); the last step returns x̂₀. NFE = ``steps``.
    """
    shape, device, abar, x_vp = _vp_start(prior, shape, steps, generator, schedule)
    for i in range(steps):
        a_t, a_s = abar[i], abar[i + 1]
        x0_hat = _D(prior, x_vp / math.sqrt(a_t), math.sqrt((1 - a_t) / a_t))
        eps_hat = (x_vp - math.sqrt(a_t) * x0_hat) / math.sqrt(1 - a_t)
        c = eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        x_vp = math.sqrt(a_s) * x0_hat + math.sqrt(max(1 - a_s - c * c, 0.0)) * eps_hat
        if c > 0 and i < steps - 1:
            x_vp = x_vp + c * randn(shape, generator, device=device)
        if callback is not None:
            callback(i, x_vp / math.sqrt(a_s), x0_hat)
    return prior.to_physical(x_vp)


def annealed_langevin(prior: Prior, shape, *, steps: int = 10, generator: GeneratorArg = None,
                      callback: Callback = None, n_steps_each: int = 100, step_lr: float = 2e-5,
                      sigma_min: float = 0.01, sigma_max: float = 1.0, denoise: bool = True) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1).

    ``steps`` geometric levels σ_1 > … > σ_L; at level i, ``n_steps_each`` updates
    ``x ← x + η_i ∇log p_{σ_i}(x) + √(2η_i) z`` with ``η_i = step_lr · σ_i² / σ_L²``, as in the
    authors' released code (the paper's Alg. 1 writes α_i/2 and √α_i with α_i = ε σ_i²/σ_L², i.e.
    half this step for the same ε; the published ε = 2e-5 was used with the code). Defaults: L = 10,
    σ 1 → 0.01, T = 100, ε = 2e-5. With ``denoise`` a final Tweedie step ``x̂₀ = D(x, σ_L)``
    (Jolicoeur-Martineau et al. 2021; NCSNv2) is added.
    Deviation: initialised from N(0, σ_1² I) instead of U(0, 1) (score_sde's choice; it matches
    the noise level of the first Langevin level). NFE = ``steps · n_steps_each`` (+1 with denoise).
    """
    shape, device = sampling_setup(prior, shape, generator)
    lo, hi = _range(prior, sigma_min, sigma_max)
    sigmas = geometric_sigma_grid(steps, lo, hi).tolist()
    x = sigmas[0] * randn(shape, generator, device=device)
    x0_hat = x
    for i, sigma in enumerate(sigmas):
        eta = step_lr * sigma**2 / sigmas[-1] ** 2
        for _ in range(n_steps_each):
            x0_hat = _D(prior, x, sigma)
            score = (x0_hat - x) / sigma**2
            x = x + eta * score + math.sqrt(2 * eta) * randn(shape, generator, device=device)
        if callback is not None:
            callback(i, x, x0_hat)
    if denoise:
        x = _D(prior, x, sigmas[-1])
    return prior.to_physical(x)


def reverse_sde(prior: Prior, shape, *, steps: int = 1000, generator: GeneratorArg = None,
                callback: Callback = None, sigma_min: float = 0.01, sigma_max: float = 50.0,
                corrector_steps: int = 0, snr: float = 0.16) -> Tensor:
    """Reverse-time VE SDE (Song et al. 2021): the "reverse diffusion" predictor (eq. 47)
    ``x ← x + (σ_i² − σ_{i+1}²) ∇log p_{σ_i}(x) + √(σ_i² − σ_{i+1}²) z`` on ``steps`` geometric
    levels (score_sde's VE defaults σ 50 → 0.01), optionally preceded at each level by
    ``corrector_steps`` Langevin corrector steps of size ``2 (snr ‖z‖/‖∇log p‖)²`` (their Alg. 4,
    snr 0.16). The last level returns the Tweedie estimate D(x, σ_min) (score_sde's ``denoise``).
    NFE = ``steps + corrector_steps · (steps − 1)``.

    Deviation: the corrector's norms are per sample (score_sde averages them over the batch, which
    makes a sample depend on its batch). The snr rule assumes high dimension, where ‖z‖ and
    ‖∇log p‖ concentrate; in 2-D it is unstable.
    """
    shape, device = sampling_setup(prior, shape, generator)
    lo, hi = _range(prior, sigma_min, sigma_max)
    sigmas = geometric_sigma_grid(steps, lo, hi).tolist()
    x = sigmas[0] * randn(shape, generator, device=device)
    dims = tuple(range(1, len(shape)))
    x0_hat = x
    for i in range(steps - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        for _ in range(corrector_steps):  # 1. Langevin corrector at σ_i (Alg. 4 order)
            grad = (_D(prior, x, sigma) - x) / sigma**2
            z = randn(shape, generator, device=device)
            ratio = z.square().sum(dims, keepdim=True).sqrt() / grad.square().sum(dims, keepdim=True).sqrt()
            step = 2 * (snr * ratio) ** 2
            x = x + step * grad + (2 * step).sqrt() * z
        x0_hat = _D(prior, x, sigma)
        score = (x0_hat - x) / sigma**2
        var = sigma**2 - sigma_next**2
        x = x + var * score + math.sqrt(var) * randn(shape, generator, device=device)  # 2. predictor
        if callback is not None:
            callback(i, x, x0_hat)
    return prior.to_physical(_D(prior, x, sigmas[-1]))


def pf_ode(prior: Prior, shape, *, steps: int = 1000, generator: GeneratorArg = None, callback: Callback = None,
           sigma_min: float = 0.01, sigma_max: float = 50.0) -> Tensor:
    """Probability-flow ODE of the VE SDE (Song et al. 2021, eq. 13), discretised like the reverse
    diffusion predictor without noise: ``x ← x + ½(σ_i² − σ_{i+1}²) ∇log p_{σ_i}(x)`` on ``steps``
    geometric levels, then x̂₀ = D(x, σ_min). Deterministic given the initial noise.
    Deviation: the paper integrates with RK45 (adaptive NFE); this fixed-step Euler version has an
    exact NFE = ``steps`` (use :func:`edm_heun` for a higher-order solver)."""
    shape, device = sampling_setup(prior, shape, generator)
    lo, hi = _range(prior, sigma_min, sigma_max)
    sigmas = geometric_sigma_grid(steps, lo, hi).tolist()
    x = sigmas[0] * randn(shape, generator, device=device)
    x0_hat = x
    for i in range(steps - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0_hat = _D(prior, x, sigma)
        x = x + 0.5 * (sigma**2 - sigma_next**2) * (x0_hat - x) / sigma**2
        if callback is not None:
            callback(i, x, x0_hat)
    return prior.to_physical(_D(prior, x, sigmas[-1]))


def edm_heun(prior: Prior, shape, *, steps: int = 18, generator: GeneratorArg = None, callback: Callback = None,
             sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, S_churn: float = 0.0,
             S_tmin: float = 0.0, S_tmax: float = float("inf"), S_noise: float = 1.0) -> Tensor:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Alg. 1; Alg. 2 with ``S_churn > 0``).

    ρ-grid (eq. 5) clipped to the prior's σ range, then σ_N = 0. Per step: optional churn
    ``σ̂ = σ_i (1 + γ_i)``, Euler step ``d = (x̂ − D(x̂, σ̂))/σ̂``, and the 2nd-order correction
    except into σ = 0. NFE = ``2·steps − 1``.
    """
    shape, device = sampling_setup(prior, shape, generator)
    lo, hi = _range(prior, sigma_min, sigma_max)
    t_steps = edm_sigma_grid(steps, lo, hi, rho).tolist() + [0.0]
    x_next = t_steps[0] * randn(shape, generator, device=device)
    for i in range(steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        x_cur = x_next
        # Increase noise temporarily.
        gamma = min(S_churn / steps, math.sqrt(2) - 1) if S_tmin <= t_cur <= S_tmax else 0.0
        t_hat = t_cur * (1 + gamma)
        x_hat = x_cur
        if gamma > 0:
            x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * S_noise * randn(shape, generator, device=device)
        # Euler step.
        x0_hat = _D(prior, x_hat, t_hat)
        d_cur = (x_hat - x0_hat) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # 2nd order correction.
        if i < steps - 1:
            d_prime = (x_next - _D(prior, x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if callback is not None:
            callback(i, x_next, x0_hat)
    return prior.to_physical(x_next)


SAMPLERS = {f.__name__: f for f in (ddpm, ddim, annealed_langevin, reverse_sde, pf_ode, edm_heun)}
