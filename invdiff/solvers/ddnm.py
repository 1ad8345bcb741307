"""DDNM / DDNM+ — Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model.

Wang, Yu & Zhang, ICLR 2023, arXiv:2212.00490.

Range–null-space decomposition: keep the denoiser's null-space content and take the range-space
content from y (eq. 13, noiseless ``x̂₀|t = A⁺y + (I − A⁺A) x₀|t``). DDNM+ (§3.3, eqs. 17–19) shrinks
the range-space correction where y is noisier than the next state, and lowers the injected noise
by the noise already carried by y. In spectral coordinates (x̄ = Vᵀx, ȳ = s⁻¹Uᵀy, EDM form, from σ_t
to the next level σ_s; σ_y in model space), per coefficient i:

* correction (eq. 17): ``x̄₀|t = x̄₀ − λ_i (x̄₀ − ȳ)``, with
  ``λ_i = 1`` if ``σ_s ≥ σ_y/s_i`` else ``λ_i = √(1−η²) s_i σ_s/σ_y``   (eq. 19; s_i > 0)
* next state: ``x̄_s = x̄₀|t + d₁ z̄ + d₂ ε̄``, ε̂ = (x_t − x₀|t)/σ_t the denoiser's noise, with
  ``d₁ = √(σ_s² − σ_y²/s_i²), d₂ = 0`` where λ_i = 1 (y already carries noise σ_y/s_i);
  ``d₁ = η σ_s, d₂ = 0`` where λ_i < 1 (the λ-scaled y-noise supplies the rest of σ_s);
  ``d₁ = η σ_s, d₂ = √(1−η²) σ_s`` on the null space (s_i = 0: plain DDIM(η)).

With σ_y = 0 every observed coefficient takes ȳ (λ = 1) — eq. 13. The last step goes to σ = 0.

Time travel (§3.4, "back-and-forth"; RePaint's jump schedule): on the grid of ``steps`` levels,
after each ``travel_length`` steps down the chain jumps back up ``travel_length`` levels,
``travel_repeat − 1`` times, by forward diffusion ``x_{σ'} = x_σ + √(σ'² − σ²) z`` (EDM form of
q(x_{t+l} | x_t)). NFE = ``steps + (travel_repeat − 1) · travel_length · ⌈(steps − travel_length) / travel_length⌉``
(the number of downward moves; :func:`jump_schedule` lists them).

==========  ===============  =================  ================
code        paper            code               paper
==========  ===============  =================  ================
``x``       x_t (EDM form)   ``lam``            λ_t (Σ_t)
``x0_hat``  x₀|t             ``eta``            η
``x0_dc``   x̂₀|t             ``travel_length``  l
``ybar``    Σ⁺Uᵀy            ``travel_repeat``  r
==========  ===============  =================  ================

Defaults: 100 steps, η = 0.85, no time travel (l = 1, r = 1) — the authors' configs.

Deviations:

* The update is DDIM-style, as in the authors' code ("different from the paper, we use DDIM"),
  with their η-generalised λ (× √(1−η²)); at η = 0 λ is the paper's eq. 19.
* Time travel diffuses the *current* state forward (the paper); the authors' SVD code instead
  re-noises the last uncorrected x₀|t.
* ``mode="simplified"`` treats A's non-zero singular values as 1 on range(A⁺A) (DDNM's
  "simplified" A/A⁺ version; exact for inpainting-type operators). The authors' simplified code
  compares σ_t with ᾱ σ_y and multiplies the noise by √(1−ᾱ) twice; we use the SVD formulas.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: range–null-space
decomposition: the range replaced by A⁺y (noise-shrunk), the null space denoised).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import Callback, Spectral, setup, vp_scale, vp_sigmas


def jump_schedule(steps: int, travel_length: int = 1, travel_repeat: int = 1) -> list[int]:
    """RePaint's time-travel schedule on levels ``steps−1 … 0`` then ``−1`` (σ = 0).

    >>> jump_schedule(6, 2, 2)
    [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    """
    if travel_length < 1 or travel_repeat < 1:
        raise ValueError(f"travel_length and travel_repeat must be >= 1, got {travel_length}, {travel_repeat}")
    jumps = {j: travel_repeat - 1 for j in range(0, steps - travel_length, travel_length)}
    t, out = steps, []
    while t >= 1:
        t -= 1
        out.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(travel_length):
                t += 1
                out.append(t)
    return out + [-1]


def ddnm(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 100, generator=None, callback: Callback = None,
         eta: float = 0.85, travel_length: int = 1, travel_repeat: int = 1, mode: str = "auto", schedule=None) -> Tensor:
    """One DDNM+ posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, physical units.
    :param operator: linear operator with an SVD (``mode="svd"``) or a pseudo-inverse
        (``mode="simplified"``); ``"auto"`` picks the SVD when available.
    :param prior: :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std in measurement units, float or ``[B]``.
    :param steps: number of levels (NFE without time travel).
    :param eta: the DDIM η.
    :param travel_length, travel_repeat: time-travel l and r (1, 1: none).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"ddnm: eta must lie in [0, 1], got {eta}")
    schedule_t = jump_schedule(steps, travel_length, travel_repeat)
    needs = [("svd",)] if mode == "svd" else [("svd", "pinv")]
    pb = setup("ddnm", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=[*needs, "linear"])
    spec = Spectral(pb, mode)
    sigma_y = pb.sigma_y_b
    grid = vp_sigmas(prior, steps, schedule)  # grid[k]: level k from the top; level −1 is σ = 0

    def level(t: int) -> float:
        return grid[steps - 1 - t] if t >= 0 else 0.0

    x = pb.init_noise(1.0 / vp_scale(level(schedule_t[0])))  # VP N(0, I)
    n = 0
    for t_cur, t_next in zip(schedule_t[:-1], schedule_t[1:]):
        sigma, sigma_s = level(t_cur), level(t_next)
        if t_next > t_cur:  # time travel: forward diffusion back up to σ_s
            x = x + math.sqrt(sigma_s**2 - sigma**2) * pb.randn()
            continue
        # 1. Denoise; the denoiser's noise ε̂.
        x0_hat = pb.denoise(x, sigma, n)
        x0_bar, eps_bar = spec.to_coef(x0_hat), spec.to_coef((x - x0_hat) / sigma)
        z_bar = spec.to_coef(pb.randn())

        # 2. Range–null-space correction (eq. 17–19) and the next state, per coefficient.
        def update(s: Tensor) -> Tensor:
            observed = s > 0
            full = observed & (s * sigma_s >= sigma_y)  # σ_s ≥ σ_y/s_i: λ = 1
            s_safe = torch.where(observed, s, 1.0)
            lam = torch.where(full, 1.0, math.sqrt(1 - eta**2) * s_safe * sigma_s / torch.where(sigma_y > 0, sigma_y, 1.0))
            lam = torch.where(observed, lam, 0.0)
            x0_dc = x0_bar - lam * (x0_bar - spec.ybar)
            d1 = torch.where(full, (sigma_s**2 - (sigma_y / s_safe) ** 2).clamp_min(0.0).sqrt(), eta * sigma_s)
            d2 = torch.where(observed, 0.0, math.sqrt(1 - eta**2) * sigma_s)
            return x0_dc + d1 * z_bar + d2 * eps_bar

        x = spec.combine(update)
        pb.check(n, x)
        pb.callback(n, x, x0_hat)
        n += 1
    return pb.finish(x)
