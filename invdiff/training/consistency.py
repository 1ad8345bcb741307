"""The consistency objectives of ``invdiff-train``: consistency distillation and consistency training.

``objective="consistency_distillation"`` (short name ``"cd"``): consistency distillation (Song,
Dhariwal, Chen & Sutskever 2023, arXiv:2303.01469, Alg. 2). On the Karras grid σ_min = σ_1 < … < σ_N = σ_max (their eq. 5 / Karras et al. eq. 5, ρ = 7,
N = ``cm_levels``), n ~ U{1, …, N−1}, x_{n+1} = x + σ_{n+1} z, one Heun step of the ``teacher``'s
PF-ODE dx/dσ = (x − D(x, σ))/σ from σ_{n+1} to σ_n (:func:`~invdiff.priors.consistency.heun_step`,
the step of the package's EDM Heun solver: two teacher calls) gives x̂_n, and

    L = λ(σ_n) d(f_θ(x_{n+1}, σ_{n+1}), f_θ⁻(x̂_n, σ_n)),   θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ),

λ ≡ 1, μ = ``cm_target_ema`` (0.95 and N = 18: their CIFAR-10 CD settings, App. C). The student
starts from the teacher's weights when the teacher is an ``invdiff.unet`` of the same ``arch`` and
σ_data (as they initialise from the teacher), else from the usual initialisation. The network is
:func:`~invdiff.priors.unet.build_cm_unet` (the UNet inside the boundary-condition scalings, so
f(x, σ_min) = x), exported as a :class:`~invdiff.priors.consistency.ConsistencyPrior`.

``objective="consistency_training"`` (short name ``"ct"``): improved consistency training from data
(Song & Dhariwal 2024, arXiv:2310.14189, "iCT"), no teacher: the same pair of levels, both noised with one z, x_i = x + σ_i z, the target
network θ⁻ = stopgrad(θ) (their §3.2: no EMA target), weight λ(σ_i) = 1/(σ_{i+1} − σ_i) (§3.1), the
discretisation curriculum N(k) = min(s₀ 2^⌊k/K'⌋, s₁) + 1 with K' = ⌊K/(log₂⌊s₁/s₀⌋ + 1)⌋,
s₀ = 10, s₁ = 1280, K = ``steps`` (§3.4), and levels drawn from the discretised log-normal
p(σ_i) ∝ erf((ln σ_{i+1} − P_mean)/(√2 P_std)) − erf((ln σ_i − P_mean)/(√2 P_std)), P_mean = −1.1,
P_std = 2.0 (§3.5). iCT rather than easy consistency tuning (Geng et al. 2024,
arXiv:2406.14548): it needs no pretrained diffusion model, which is what training "from data" asks;
ECT's start from a diffusion prior is what ``cd`` already has. Because N(k) depends on K, a ``ct`` run
is not resumed under another ``steps``.

The distance d (``cm_distance``) is the pseudo-Huber metric √(‖a − b‖² + c²) − c, c = 0.00054 √d_x
(iCT §3.3, d_x = C·H·W) by default for both, or ``l2``: the per-pixel mean of (a − b)² (Song et al.
2023's L2, divided by d_x like this module's other losses). Pseudo-Huber because iCT found it close to
LPIPS and ahead of L2 (§3.3), LPIPS needs a pretrained ImageNet classifier this
package does not ship (and that would leak ImageNet features into the metric), and it is robust to
the rare large residuals of the high noise levels.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..priors import Prior
from ..priors.consistency import SIGMA_MAX, SIGMA_MIN, heun_step
from ..priors.schedules import edm_sigma_grid

from .settings import TrainSettings


def karras_levels(N: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = 7.0) -> Tensor:
    """The consistency models' levels σ_1 = σ_min < … < σ_N = σ_max (Song et al. 2023, §5 / App. C;
    Karras et al. 2022, eq. 5), increasing, float64 ``[N]``."""
    return edm_sigma_grid(int(N), sigma_min, sigma_max, rho).flip(0)


def cm_distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Per-item distance ``[B]`` between ``a`` and ``b`` ``[B, ...]``: pseudo-Huber
    √(‖a − b‖² + c²) − c with c = 0.00054 √d (Song & Dhariwal 2024, §3.3), or the per-pixel mean
    squared error (``l2``)."""
    diff = (a - b).flatten(1)
    if kind == "l2":
        return diff.square().mean(1)
    c = 0.00054 * math.sqrt(diff.shape[1])
    return (diff.square().sum(1) + c * c).sqrt() - c


def cd_loss(net: Callable[[Tensor, Tensor], Tensor], target: Callable[[Tensor, Tensor], Tensor], teacher: Prior,
            x: Tensor, generator: torch.Generator, s: TrainSettings, levels: Tensor | None = None) -> Tensor:
    """Mean consistency-distillation loss (Song et al. 2023, Alg. 2, λ ≡ 1) of a batch ``x``
    ``[B, ...]`` in model units: ``net`` and ``target`` are f_θ and f_θ⁻ (``f(x, σ)``, σ ``[B]``),
    ``teacher`` the diffusion prior whose Heun step goes from σ_{n+1} to σ_n; noise and levels drawn
    from ``generator``."""
    levels = karras_levels(s.cm_levels) if levels is None else levels
    B = x.shape[0]
    n = torch.randint(0, levels.shape[0] - 1, (B,), generator=generator)
    z = torch.randn(x.shape, generator=generator).to(x.device)
    sigma, sigma_next = levels[n].to(x.device, x.dtype), levels[n + 1].to(x.device, x.dtype)
    x_next = x + sigma_next.reshape(B, *([1] * (x.ndim - 1))) * z
    with torch.no_grad():
        x_hat = heun_step(teacher, x_next, sigma_next, sigma)  # the teacher's ODE step σ_{n+1} → σ_n
        f_target = target(x_hat, sigma)
    return cm_distance(net(x_next, sigma_next), f_target, s.cm_distance).mean()


def ct_levels(step: int, s: TrainSettings) -> int:
    """iCT's discretisation curriculum N(k) = min(s₀ 2^⌊k/K'⌋, s₁) + 1, K' = ⌊K/(log₂⌊s₁/s₀⌋ + 1)⌋
    (Song & Dhariwal 2024, §3.4) at step ``k``, K = ``s.steps``."""
    k_prime = max(1, math.floor(s.steps / (math.log2(math.floor(s.ct_s1 / s.ct_s0)) + 1)))
    return min(s.ct_s0 * 2 ** (step // k_prime), s.ct_s1) + 1


def ct_level_probs(levels: Tensor, s: TrainSettings) -> Tensor:
    """iCT's discretised log-normal over the N − 1 pairs (σ_i, σ_{i+1}) (Song & Dhariwal 2024, §3.5)."""
    cdf = torch.erf((levels.log() - s.ct_p_mean) / (math.sqrt(2.0) * s.ct_p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def ct_loss(net: Callable[[Tensor, Tensor], Tensor], target: Callable[[Tensor, Tensor], Tensor], x: Tensor,
            generator: torch.Generator, s: TrainSettings, step: int) -> Tensor:
    """Mean improved consistency-training loss (Song & Dhariwal 2024) of a batch ``x`` in model
    units at training step ``step``: λ(σ_i) d(f_θ(x + σ_{i+1} z, σ_{i+1}), f_θ⁻(x + σ_i z, σ_i)) with
    ``target`` = the same network without gradient (θ⁻ = stopgrad θ)."""
    levels = karras_levels(ct_levels(step, s))
    B = x.shape[0]
    i = torch.multinomial(ct_level_probs(levels, s), B, replacement=True, generator=generator)
    z = torch.randn(x.shape, generator=generator).to(x.device)
    sigma, sigma_next = levels[i], levels[i + 1]
    weight = (1.0 / (sigma_next - sigma)).to(x.device, x.dtype)
    sigma, sigma_next = sigma.to(x.device, x.dtype), sigma_next.to(x.device, x.dtype)
    shape = (B, *([1] * (x.ndim - 1)))
    with torch.no_grad():
        f_target = target(x + sigma.reshape(shape) * z, sigma)
    d = cm_distance(net(x + sigma_next.reshape(shape) * z, sigma_next), f_target, s.cm_distance)
    return (weight * d).mean()
