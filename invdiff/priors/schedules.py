"""Noise schedules and the conversions between DDPM timesteps, continuous time and σ.

invdiff's solver state is EDM's ``x = x₀ + σ·n``. A variance-preserving (VP) network sees
``x_vp = √ᾱ · x₀ + √(1 − ᾱ) · n = s · x`` with ``s = √ᾱ = 1/√(1 + σ²)``, i.e.

    σ = √((1 − ᾱ) / ᾱ),        ᾱ = 1 / (1 + σ²).

* :class:`VPSchedule` — discrete DDPM schedules (Ho et al. 2020 linear β; Nichol & Dhariwal 2021
  cosine) over T training steps. ``sigma(t)`` accepts fractional t by interpolating log σ
  linearly between integer steps; ``t(sigma)`` is its exact inverse (or snaps to the nearest step).
* :class:`VESchedule` — variance exploding (Song & Ermon 2019; Song et al. 2021),
  ``σ(t) = σ_min (σ_max/σ_min)^t`` for t ∈ [0, 1].
* :class:`EDMSchedule` — Karras et al. 2022, σ(t) = t, with the ρ time grid (their eq. 5).

Every schedule builds its own sampling grid with ``sigma_grid(steps)`` (decreasing, no final 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _as64(v) -> Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


def edm_sigma_grid(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022) eq. 5: ``(σ_max^{1/ρ} + i/(N−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ``, i = 0..N−1."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return _as64([sigma_max])
    i = torch.arange(steps, dtype=torch.float64)
    inv = 1.0 / rho
    return (sigma_max**inv + i / (steps - 1) * (sigma_min**inv - sigma_max**inv)) ** rho


def geometric_sigma_grid(steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``steps`` σ levels from σ_max down to σ_min, equally spaced in log σ (NCSN, score_sde VE)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return _as64([sigma_max])
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64))


def vp_timestep(log_sigmas: Tensor, sigma: Tensor, snap: bool = False) -> Tensor:
    """The fractional DDPM timestep of ``sigma`` on a table ``log_sigmas`` ``[T]`` (increasing
    log σ of the training steps): log σ interpolated linearly between steps, clamped to the table;
    ``snap`` rounds to the nearest step. Pure tensor code on the table's device (no host sync), so
    the network call can be compiled with σ as a tensor."""
    T = log_sigmas.shape[0]
    log_s = sigma.to(log_sigmas.dtype).log().clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, log_s.contiguous()).clamp(1, T - 1)
    lo = hi - 1
    w = (log_s - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    t = lo + w
    return t.round() if snap else t


def vp_sde_sigma(t: float, beta_min: float, beta_d: float) -> float:
    """σ(t) of the continuous VP SDE with β(t) = β_min + t·β_d (score_sde's VP, EDM's VPPrecond):
    ``σ(t)² = exp(½ β_d t² + β_min t) − 1``."""
    return math.sqrt(math.expm1(0.5 * beta_d * t * t + beta_min * t))


def vp_sde_time(sigma: Tensor, beta_min: float, beta_d: float) -> Tensor:
    """The inverse of :func:`vp_sde_sigma`: ``t(σ) = (√(β_min² + 2 β_d ln(1 + σ²)) − β_min) / β_d``."""
    return ((beta_min**2 + 2 * beta_d * (sigma**2).log1p()).sqrt() - beta_min) / beta_d


class VPSchedule:
    """Discrete variance-preserving schedule.

    :param kind: ``"linear"`` (β from ``beta_start`` to ``beta_end``, DDPM: 1e-4 → 0.02),
        ``"scaled_linear"`` (linear in √β, diffusers' name) or ``"cosine"`` (Nichol & Dhariwal 2021 eq. 17, offset s = 0.008, β clipped at 0.999).
    :param T: number of training steps (1000).

    Timestep ``t`` indexes ``alphas_cumprod[t]`` (0-based, as in guided-diffusion/diffusers).
    """

    kind_name = "vp"

    def __init__(self, kind: str = "linear", T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        if T < 2:
            raise ValueError(f"VPSchedule needs T >= 2, got {T}")
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        elif kind == "scaled_linear":  # latent/Stable-Diffusion style: linear in √β
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
        elif kind == "cosine":
            s = 0.008
            f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown VP schedule kind {kind!r}; choose 'linear', 'scaled_linear' or 'cosine'")
        self.kind, self.T = kind, T
        self.beta_start, self.beta_end = beta_start, beta_end
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()  # increasing in t
        self._log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma(self, t) -> Tensor:
        """σ at (possibly fractional) timestep ``t`` ∈ [0, T−1]: log σ interpolated linearly."""
        t = _as64(t)
        if bool(((t < 0) | (t > self.T - 1)).any()):
            raise ValueError(f"timesteps must lie in [0, {self.T - 1}]")
        lo = t.floor().long().clamp(max=self.T - 2)
        w = t - lo
        return torch.exp((1 - w) * self._log_sigmas[lo] + w * self._log_sigmas[lo + 1])

    def t(self, sigma, snap: bool = False) -> Tensor:
        """Inverse of :meth:`sigma` (fractional timestep), or the nearest integer step in log σ
        with ``snap=True``. σ outside the schedule's range is clamped to it."""
        return vp_timestep(self._log_sigmas, _as64(sigma), snap)

    @staticmethod
    def alpha_bar(sigma) -> Tensor:
        """ᾱ = 1/(1 + σ²) for any σ (not only on the grid)."""
        return 1.0 / (1.0 + _as64(sigma) ** 2)

    def timesteps(self, steps: int, t_max: int | None = None, t_min: int = 0) -> Tensor:
        """``steps`` integer timesteps, decreasing from ``t_max`` (default T−1) to ``t_min`` (default 0),
        evenly spread (a rounded ``linspace``, as guided-diffusion's respacing; DDIM's code uses
        ``range(0, T, T // steps)``, which starts lower, at T − T/steps)."""
        t_max = self.T - 1 if t_max is None else int(t_max)
        t_min = int(t_min)
        if not 1 <= steps <= t_max - t_min + 1:
            raise ValueError(f"steps must be in [1, {t_max - t_min + 1}] (the timesteps of the {self.T}-step VP schedule "
                             f"whose σ lies in the prior's range), got {steps}; steps={t_max - t_min + 1} takes every one "
                             "of them")
        return torch.linspace(t_max, t_min, steps, dtype=torch.float64).round()

    def sigma_grid(self, steps: int) -> Tensor:
        return self.sigmas[self.timesteps(steps).long()]

    def __repr__(self) -> str:
        return f"VPSchedule(kind={self.kind!r}, T={self.T})"


def vp_schedule_of(prior, schedule: "VPSchedule | None" = None) -> "VPSchedule":
    """The VP schedule a VP-paper sampler runs on: ``schedule`` if given, else the prior's own if
    it is VP, else DDPM's linear-β schedule with T = 1000."""
    if schedule is not None:
        return schedule
    own = getattr(prior, "schedule", None)
    return own if isinstance(own, VPSchedule) else VPSchedule("linear", 1000)


def vp_timesteps(prior, schedule: "VPSchedule", steps: int) -> Tensor:
    """``steps`` respaced integer timesteps (decreasing, int64) within the prior's σ range: from the
    last training step whose σ ≤ ``prior.sigma_max`` down to the first whose σ ≥ ``prior.sigma_min``
    (a prior learned from noisy data is not evaluated below its noise floor; for every prior trained
    down to σ ≈ 0 this is step 0)."""
    t_max, t_min = schedule.T - 1, 0
    if prior.sigma_max < schedule.sigma_max:
        t_max = int(schedule.t(prior.sigma_max).floor())
    if prior.sigma_min > float(schedule.sigmas[0]):
        t_min = min(int(schedule.t(prior.sigma_min).ceil()), t_max)
    return schedule.timesteps(steps, t_max=t_max, t_min=t_min).long()


class VESchedule:
    """Continuous variance-exploding schedule ``σ(t) = σ_min (σ_max/σ_min)^t``, t ∈ [0, 1]
    (score_sde: σ_min = 0.01, σ_max = 50 for 32×32, 348–378 for 256×256 images)."""

    kind_name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VESchedule needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sigma(self, t) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _as64(t)

    def t(self, sigma, snap: bool = False) -> Tensor:
        return (_as64(sigma) / self.sigma_min).log() / math.log(self.sigma_max / self.sigma_min)

    def sigma_grid(self, steps: int) -> Tensor:
        return geometric_sigma_grid(steps, self.sigma_min, self.sigma_max)

    def __repr__(self) -> str:
        return f"VESchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class EDMSchedule:
    """Karras et al. (2022): σ(t) = t, sampled on the ρ grid (σ_min 0.002, σ_max 80, ρ 7)."""

    kind_name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"EDMSchedule needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)

    def sigma(self, t) -> Tensor:
        return _as64(t)

    def t(self, sigma, snap: bool = False) -> Tensor:
        return _as64(sigma)

    def sigma_grid(self, steps: int) -> Tensor:
        return edm_sigma_grid(steps, self.sigma_min, self.sigma_max, self.rho)

    def __repr__(self) -> str:
        return f"EDMSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho})"
