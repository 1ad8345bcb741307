"""Measurement-noise models, separate from the (noiseless) operators, for simulating y.

Each is called as ``noise(y, generator=None) -> y_noisy`` on measurements in measurement units;
σ and gains are explicit, in those units. ``variance(y)`` gives the per-entry noise variance (what
a Gaussian likelihood with ``sigma_y`` approximates). Randomness comes only from ``generator``
(on the device of ``y``); ``None`` uses torch's default generator.

deepinv's noise models hold a generator inside the object (state shared across calls); ours take
it per call, so a sample's noise depends only on the generator that the caller derives for it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .linalg import per_sample


def check_finite(y: Tensor, who: str) -> None:
    if not bool(torch.isfinite(y).all()):
        raise ValueError(f"{who}: measurements contain NaN or Inf")


class GaussianNoise(torch.nn.Module):
    """``y + σ·n``, n ~ N(0, I); ``sigma`` a float or a per-sample ``[B]`` tensor, ≥ 0."""

    def __init__(self, sigma=0.05):
        super().__init__()
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if bool((sigma < 0).any()) or not bool(torch.isfinite(sigma).all()):
            raise ValueError(f"GaussianNoise: sigma must be finite and >= 0, got {sigma}")
        self.register_buffer("sigma", sigma)

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_finite(y, "GaussianNoise")
        n = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        return y + per_sample(self.sigma.to(y), y) * n

    def variance(self, y: Tensor) -> Tensor:
        return (per_sample(self.sigma.to(y), y) ** 2).expand_as(y)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma.tolist()}"


class PoissonNoise(torch.nn.Module):
    """``gain · Poisson(y / gain)``: photon counting with ``gain`` measurement units per count
    (DPS's "rate r" on [0, 1] images is ``gain = 1 / (255·r)``). y must be ≥ 0."""

    def __init__(self, gain: float = 1.0 / 255.0):
        super().__init__()
        if not gain > 0:
            raise ValueError(f"PoissonNoise: gain must be > 0, got {gain}")
        self.gain = float(gain)

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_finite(y, "PoissonNoise")
        if bool((y < 0).any()):
            raise ValueError("PoissonNoise: the noiseless measurement has negative entries; a Poisson "
                             "rate must be >= 0 (shift the image range, e.g. map [-1, 1] to [0, 1])")
        return self.gain * torch.poisson(y / self.gain, generator=generator)

    def variance(self, y: Tensor) -> Tensor:
        return self.gain * y.clamp_min(0)

    def extra_repr(self) -> str:
        return f"gain={self.gain}"


class RicianNoise(torch.nn.Module):
    """Magnitude-image noise: ``|y + σ(n₁ + i n₂)|`` for a real, non-negative magnitude ``y``
    (what a magnitude reconstruction of complex-Gaussian k-space noise gives). For complex
    k-space stored as 2 real channels, complex Gaussian noise of σ per component is
    :class:`GaussianNoise` (σ) itself."""

    def __init__(self, sigma=0.05):
        super().__init__()
        self.gaussian = GaussianNoise(sigma)

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_finite(y, "RicianNoise")
        re = self.gaussian(y, generator=generator)
        im = self.gaussian(torch.zeros_like(y), generator=generator)
        return torch.sqrt(re**2 + im**2)

    def extra_repr(self) -> str:
        return f"sigma={self.gaussian.sigma.tolist()}"


class PoissonGaussianNoise(torch.nn.Module):
    """``gain · Poisson(y / gain) + σ·n``: shot noise plus read noise."""

    def __init__(self, gain: float = 1.0 / 255.0, sigma: float = 0.01):
        super().__init__()
        self.poisson = PoissonNoise(gain)
        self.gaussian = GaussianNoise(sigma)

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.gaussian(self.poisson(y, generator=generator), generator=generator)

    def variance(self, y: Tensor) -> Tensor:
        return self.poisson.variance(y) + self.gaussian.variance(y)
