"""Remote sensing: pansharpening (two measurements), cloud masks.

Band-wise super-resolution is :class:`Downsampling` with any number of channels (one filter per
band); cloud removal is :class:`Inpainting` with a :class:`CloudMask` shared by all bands.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._engines import SeparableEngine
from .base import LinearOperator
from .downsampling import gaussian_matrix
from .kernels import numpy_rng
from .noise import check_finite


class CloudMask:
    """Cloud-like blobs: white noise smoothed by a Gaussian of ``smoothness`` pixels, thresholded
    at its ``coverage`` quantile, so the cloudy (missing) fraction is ``coverage`` (up to ties).
    Returns ``[n, 1, H, W]`` (1 = clear), shared by all bands."""

    def __init__(self, coverage: float = 0.3, smoothness: float = 6.0):
        if not 0 <= coverage < 1:
            raise ValueError(f"CloudMask: coverage must be in [0, 1), got {coverage}")
        self.coverage, self.smoothness = float(coverage), float(smoothness)

    def __call__(self, img_size, n: int = 1, generator: torch.Generator | None = None) -> Tensor:
        from scipy.ndimage import gaussian_filter

        H, W = (int(s) for s in tuple(img_size)[-2:])
        rng = numpy_rng(generator)
        masks = []
        for _ in range(n):
            field = gaussian_filter(rng.standard_normal((H, W)), self.smoothness, mode="wrap")
            masks.append(field < np.quantile(field, 1 - self.coverage) if self.coverage > 0 else np.ones((H, W), bool))
        return torch.from_numpy(np.stack(masks)[:, None].astype(np.float64))


class _PansharpenEngine(torch.nn.Module):
    has_svd = False

    def __init__(self, bands: list[SeparableEngine], response: Tensor, ms_shape, pan_shape):
        super().__init__()
        self.bands = torch.nn.ModuleList(bands)
        self.register_buffer("response", response)
        self.ms_shape, self.pan_shape = tuple(ms_shape), tuple(pan_shape)
        self.n_ms = int(np.prod(ms_shape))

    def forward(self, x: Tensor) -> Tensor:
        ms = torch.stack([band(x[:, c]) for c, band in enumerate(self.bands)], 1)
        pan = (self.response.to(x)[None, :, None, None] * x).sum(1)
        return torch.cat([ms.flatten(1), pan.flatten(1)], 1)

    def adjoint(self, y: Tensor) -> Tensor:
        ms = y[:, : self.n_ms].reshape(-1, *self.ms_shape)
        pan = y[:, self.n_ms :].reshape(-1, *self.pan_shape)
        x_ms = torch.stack([band.adjoint(ms[:, c]) for c, band in enumerate(self.bands)], 1)
        return x_ms + self.response.to(y)[None, :, None, None] * pan[:, None]


class Pansharpening(LinearOperator):
    """Pansharpening: a low-resolution multispectral image and a high-resolution panchromatic one.

    * MS: band-wise Gaussian MTF blur (σ per band, default ``factor/2``) then decimation by
      ``factor`` — ``[C, ceil(H/f), ceil(W/f)]``;
    * PAN: the spectral response ``Σ_c w_c x_c`` (``w`` default uniform) — ``[1, H, W]``.

    The measurement is one vector ``[B, C·h·w + H·W]``; :meth:`split` and :meth:`join` convert,
    and :meth:`noise` builds a noise model with one σ_y per measurement.
    """

    def __init__(self, img_size=(4, 64, 64), factor: int = 4, mtf_sigma=None, spectral_response=None,
                 padding: str = "reflect", **solver_options):
        img_size = tuple(int(s) for s in img_size)
        C, H, W = img_size
        sig = [factor / 2] * C if mtf_sigma is None else (
            [float(mtf_sigma)] * C if isinstance(mtf_sigma, (int, float)) else [float(s) for s in mtf_sigma])
        if len(sig) != C:
            raise ValueError(f"Pansharpening: {len(sig)} MTF sigmas for {C} bands")
        w = torch.full((C,), 1.0 / C, dtype=torch.float64) if spectral_response is None else \
            torch.as_tensor(spectral_response, dtype=torch.float64)
        if w.shape != (C,):
            raise ValueError(f"Pansharpening: spectral_response needs {C} weights, got {tuple(w.shape)}")
        bands = [SeparableEngine(gaussian_matrix(H, factor, s, padding), gaussian_matrix(W, factor, s, padding))
                 for s in sig]
        ms_shape = (C, bands[0].A_h.shape[0], bands[0].A_w.shape[0])
        engine = _PansharpenEngine(bands, w, ms_shape, (H, W))
        super().__init__(engine, img_size, (engine.n_ms + H * W,), **solver_options)
        self.factor, self.mtf_sigma, self.padding = int(factor), sig, padding
        self._solver_options = solver_options

    @property
    def spectral_response(self) -> Tensor:
        return self.engine.response

    def split(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``y`` -> (multispectral ``[B, C, h, w]``, panchromatic ``[B, 1, H, W]``)."""
        n = self.engine.n_ms
        return y[:, :n].reshape(-1, *self.engine.ms_shape), y[:, n:].reshape(-1, 1, *self.engine.pan_shape)

    def join(self, ms: Tensor, pan: Tensor) -> Tensor:
        return torch.cat([ms.flatten(1), pan.flatten(1)], 1)

    def noise(self, sigma_ms: float, sigma_pan: float) -> "SplitGaussianNoise":
        return SplitGaussianNoise(self.engine.n_ms, sigma_ms, sigma_pan)

    def sigma_y(self, sigma_ms: float, sigma_pan: float) -> Tensor:
        """Per-entry σ_y ``[C·h·w + H·W]`` for solvers that weight the two measurements."""
        n, total = self.engine.n_ms, self.meas_size[0]
        s = torch.full((total,), float(sigma_pan), dtype=torch.float64)
        s[:n] = float(sigma_ms)
        return s

    def _describe_params(self) -> str:
        return f"×{self.factor}, {self.img_size[0]} bands, img_size={list(self.img_size)}"

    def config(self) -> dict:
        return dict(img_size=self.img_size, factor=self.factor, mtf_sigma=self.mtf_sigma,
                    spectral_response=self.spectral_response, padding=self.padding, **self._solver_options)


class SplitGaussianNoise(torch.nn.Module):
    """Gaussian noise with σ₁ on the first ``n_first`` entries of a flat measurement and σ₂ on the
    rest (pansharpening: multispectral, then panchromatic)."""

    def __init__(self, n_first: int, sigma_first: float, sigma_rest: float):
        super().__init__()
        self.n_first, self.sigma_first, self.sigma_rest = int(n_first), float(sigma_first), float(sigma_rest)

    def forward(self, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_finite(y, "SplitGaussianNoise")
        s = torch.full_like(y, self.sigma_rest)
        s[:, : self.n_first] = self.sigma_first
        return y + s * torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
