"""Objectives for priors learned from corrupted data (``data=measurements``, no clean image):
``objective="ambient"`` (masks, undersampled k-space) and ``objective="noisy"`` (noisy images).

Both are one loss on the *observed coordinates* of each sample: pixels for masks and denoising, the
Fourier coefficients of the real image for single-coil Cartesian MRI. For a real image x, sampling
k-space at k also gives −k (x̂(−k) = conj x̂(k)), so the observed set S is the mask symmetrised, and
the observed coefficients ĉ are y_k where only one of (k, −k) is sampled, (y_k + conj y_{−k})/2 where
both are. With complex white measurement noise of σ_y on each part (:class:`operators.GaussianNoise`
on the 2 channels), ĉ = x̂ + e with e distributed as the k-space of real white image noise of level
τ(k) = σ_y (both sampled, or k = −k) or √2·σ_y (one sampled); pixels: τ = σ_y. The loss works in
the orthonormal coefficients, so ‖·‖ is the image-space norm of the projection onto S.

**Noisy data (Tweedie; Daras, Dimakis & Daskalakis, ICML 2024, "Consistent diffusion meets Tweedie",
their eq. for t ≥ t_n; the same identity is Noisier2Noise's).** At a level σ ≥ τ the training input is
z = ĉ + √(σ² − τ²)·ξ, distributed exactly as x + σ·n on the observed coordinates; since
E[ĉ | z] = (τ²/σ²)·z + (1 − τ²/σ²)·E[x | z], the loss
``‖(τ²/σ²) z + (1 − τ²/σ²) h(z, σ) − ĉ‖²`` is minimised by h = E[x | z] = D(z; σ), the clean
denoiser, using noisy targets only. Why this and not GSURE (Kawar, Elata, Michaeli & Elad 2023): the
same minimiser without a divergence estimate (GSURE needs a Hutchinson trace per step, a noisier
gradient), and for σ ≥ σ_n it is exact. Deviation from Daras et al. 2024: no consistency loss below
σ_n — the prior's σ range starts at the noise floor (``sigma_min`` = max τ in model units), so solvers
stop there and return E[x | x + σ_n·n] (slightly smooth) instead of a sample below the data's noise.

**Ambient diffusion (Daras, Shah, Dagan, Gollakota, Dimakis & Klivans, NeurIPS 2023, eq. 3.2 and
Thm. 4.2; for k-space: Aali, Daras, Levac, Kumar, Dimakis & Tamir 2024).** Each sample's observed set
S is corrupted further to S̃ ⊂ S (``ambient_delta``: the fraction of observed columns — MRI — or
pixels dropped, redrawn every step; entries that every sample observes, the fully sampled k-space
centre, are never dropped: they are in every input, so nothing has to be learned where they miss); the network sees only
z = P_S̃(x + σn) (built from the measurements as above) and the mask S̃, and the loss is taken on
all of S: ``‖P_S(pred − ĉ)‖²`` with pred = h on S \\ S̃ (targets whose noise is independent of z) and
the Tweedie mix of the noisy case on S̃. Its minimiser is E[x | P_S̃(x + σn), S̃] wherever
E[P_S | S̃] has full rank (their Thm. 4.2): the network learns to fill what S̃ hides from what it shows,
checked by the dropped entries. Deviations: Daras et al. weight the loss with A (‖A(h − x₀)‖²); we use
the projection P_S (the same minimiser; it differs by the ½ weight of half-sampled Fourier pairs);
the measurement noise is handled by the Tweedie mix (their paper is noiseless; Aali et al. add noise
to the inputs); inference feeds the complete noisy image with a mask of ones
(:class:`~invdiff.priors.unet.AmbientPreconditioned`), their "fixed mask" sampler is not used.

Assumptions (both): Gaussian measurement noise of known σ_y per sample, white in the measurement
channels; linear masking operators (pixel masks, Cartesian k-space masks of real images); images
whose corruption patterns vary across samples so that every coordinate is observed somewhere
(a fixed mask cannot be learned around).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .settings import TrainSettings


def _partner_index(n: int) -> Tensor:
    """Centred-frequency index of −f for each index (fftshift layout, even or odd n)."""
    return (2 * (n // 2) - torch.arange(n)) % n


class PixelDomain:
    """Pixel masks and denoising: the coefficients are the pixels. ``keep``: the ``[H, W]`` mask of
    pixels every sample observes (never dropped further)."""

    def __init__(self, shape: tuple[int, int, int], keep: Tensor | None = None):
        self.shape, self.keep = tuple(shape), keep

    def observed(self, y: Tensor, mask: Tensor, sigma_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        S = mask[:, None].expand(-1, self.shape[0], -1, -1).to(y)
        tau2 = sigma_y.to(y).reshape(-1, 1, 1, 1) ** 2 * S
        return y * S, S, tau2

    def forward(self, x: Tensor) -> Tensor:
        return x

    def to_image(self, c: Tensor) -> Tensor:
        return c

    def support(self, mask: Tensor) -> Tensor:
        return mask[:, None].expand(-1, self.shape[0], -1, -1)

    def further(self, mask: Tensor, delta: float, generator: torch.Generator) -> Tensor:
        drop = torch.rand(mask.shape, generator=generator).to(mask.device) < delta
        if self.keep is not None:
            drop &= ~(self.keep.to(mask.device) > 0)
        out = mask * (~drop).to(mask)
        empty = out.flatten(1).sum(1) == 0  # never an empty input: keep the sample's own mask then
        return torch.where(empty[:, None, None], mask, out)


class FourierDomain:
    """Single-coil Cartesian k-space of a real image (``operators.SingleCoilMRI``, centred orthonormal
    FFT). ``keep``: the ``[H, W]`` mask of entries every sample observes (never dropped further)."""

    def __init__(self, shape: tuple[int, int, int], keep: Tensor | None = None):
        from operators.mri import fft2c, ifft2c

        self.shape, self.keep = tuple(shape), keep
        self.fft, self.ifft = fft2c, ifft2c
        self.pi, self.pj = _partner_index(shape[1]), _partner_index(shape[2])

    def partner(self, a: Tensor) -> Tensor:
        return a.index_select(-2, self.pi.to(a.device)).index_select(-1, self.pj.to(a.device))

    def observed(self, y: Tensor, mask: Tensor, sigma_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        yc = torch.complex(y[:, 0], y[:, 1])[:, None]
        M = mask[:, None].to(y)
        Mp, yp = self.partner(M), self.partner(yc).conj()
        both, one, other = M * Mp, M * (1 - Mp), (1 - M) * Mp
        c = both * (yc + yp) / 2 + one * yc + other * yp
        S = (M + Mp).clamp(max=1)
        tau2 = sigma_y.to(y).reshape(-1, 1, 1, 1) ** 2 * (both + 2 * (one + other))
        return c, S, tau2

    def forward(self, x: Tensor) -> Tensor:
        return self.fft(x.to(torch.complex64 if x.dtype == torch.float32 else torch.complex128))

    def to_image(self, c: Tensor) -> Tensor:
        return self.ifft(c).real

    def support(self, mask: Tensor) -> Tensor:
        M = mask[:, None]
        return (M + self.partner(M)).clamp(max=1)

    def further(self, mask: Tensor, delta: float, generator: torch.Generator) -> Tensor:
        """Drop each sampled column with probability ``delta``, except the columns every sample of the
        data set observes (``keep``: the fully sampled centre, as Aali et al. keep the ACS lines). Only
        those: a random column that could never be dropped would never be learned where it is missing."""
        B, H, W = mask.shape
        cols = mask.amax(dim=1) > 0                                   # [B, W]
        keep = torch.zeros(W, dtype=torch.bool) if self.keep is None else self.keep.amax(0) > 0
        drop = torch.rand(B, W, generator=generator).to(mask.device) < delta
        new = cols & (keep.to(mask.device) | ~drop)
        return mask * new[:, None, :].to(mask)


def make_domain(kind: str, shape: tuple[int, int, int], keep: Tensor | None = None):
    """The domain of a measurement kind; ``keep``: entries observed by every sample (``mask.amin(0)``)."""
    return FourierDomain(shape, keep) if kind == "mri" else PixelDomain(shape, keep)


def to_model_units(domain, c: Tensor, S: Tensor, tau2: Tensor, data_range: tuple[float, float]):
    """Observed coefficients and noise variances of x in model units x_m = a·x + b ([lo, hi] → [−1, 1])."""
    lo, hi = data_range
    a = 2.0 / (hi - lo)
    b = -1.0 - a * lo
    one = domain.forward(torch.ones((1, *domain.shape), dtype=torch.float64)).to(c.dtype if c.is_complex() else c.dtype)
    return a * c + b * S * one.to(c.device), a * a * tau2


def noise_floor(ms, domain) -> float:
    """The lowest level the data support, in model units: max τ over every observed coefficient."""
    lo, hi = ms.data_range
    a = 2.0 / (hi - lo)
    worst = 0.0
    for start in range(0, len(ms), 512):
        y, m, s = ms.batch(torch.arange(start, min(start + 512, len(ms))))
        _, S, tau2 = domain.observed(y.to(torch.float64), m.to(torch.float64), s)
        worst = max(worst, float((tau2 * S).amax()))
    return a * math.sqrt(worst)


def corrupted_loss(net, batch: tuple[Tensor, Tensor, Tensor], domain, generator: torch.Generator, s: TrainSettings,
                   *, ambient: bool, sigma_floor: float, data_range=(0.0, 1.0), return_parts: bool = False):
    """Mean loss of a batch of measurements ``(y, mask, σ_y)`` (module docstring): ambient (further
    corruption and a mask input) or noisy (every observed coefficient in the input). σ is EDM's
    log-normal clipped below at ``sigma_floor``; the EDM weight λ(σ) applies."""
    y, mask, sigma_y = batch
    c, S, tau2 = domain.observed(y, mask, sigma_y)
    c, tau2 = to_model_units(domain, c, S, tau2, data_range)
    B = y.shape[0]
    if ambient:
        mask_t = domain.further(mask, float(s.ambient_delta), generator)
        St = domain.support(mask_t).to(S)
    else:
        St = S
    sigma = (s.p_mean + s.p_std * torch.randn(B, generator=generator)).exp().clamp(min=sigma_floor).to(y.device, y.dtype)
    sig = sigma.reshape(-1, 1, 1, 1)
    xi = domain.forward(torch.randn((B, *domain.shape), generator=generator).to(y.device, y.dtype))
    extra = (sig**2 - tau2).clamp(min=0).sqrt()
    zc = St * (c + extra * xi)
    z = domain.to_image(zc).to(y.dtype)
    h = net(z, sigma, St.to(y.dtype)) if ambient else net(z, sigma)
    hc = domain.forward(h)
    r = St * tau2 / sig**2
    pred = (1 - r) * hc + r * zc
    res = S * (pred - c)
    w = (sigma**2 + s.sigma_data**2) / (sigma * s.sigma_data) ** 2
    per = res.abs().square().flatten(1).mean(1)
    loss = (w * per).mean()
    if return_parts:
        return loss, dict(z=z, h=h, sigma=sigma, St=St, S=S, c=c, tau2=tau2)
    return loss
