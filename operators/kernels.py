"""Blur-kernel generators: Gaussian, uniform, random-trajectory motion, and user files.

Each generator is a small object called as ``gen(generator=None) -> Tensor [Kh, Kw] float64``;
random ones draw only from the ``torch.Generator`` they are given (the global state is left
alone when one is given). The drawn kernel is what an operator stores and saves, so an operator
can be rebuilt without the generator.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy Generator seeded by one draw from ``generator`` (for numpy-side sampling)."""
    seed = torch.randint(0, 2**62, (1,), generator=generator).item()
    return np.random.default_rng(seed)


def seeded(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    """``generator`` if given, else a fresh one seeded with ``seed`` (None: torch's default).
    Random parameters (masks, kernels) are drawn on the CPU, so that a seed gives the same
    operator on every machine; move the built operator with ``.to(device)``."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"operators draw their random parameters (masks, kernels) with a CPU generator, so that a "
                         f"seed gives the same operator on every machine; got a generator on {generator.device}. "
                         "Pass a CPU torch.Generator (or seed=) and move the operator with op.to(device)")
    if generator is None and seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return generator


def _pair(v, name: str) -> tuple:
    if isinstance(v, (int, float)):
        return (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f"{name} must be a number or a pair, got {v}")
    return v


def gaussian_1d(size: int, sigma: float, truncate: float | None = None) -> Tensor:
    """Sampled, normalised Gaussian of ``size`` taps centred at ``size // 2``.

    With ``truncate`` the taps farther than ``int(truncate·σ + 0.5)`` from the centre are zero,
    which reproduces ``scipy.ndimage.gaussian_filter`` applied to a delta (how DPS builds its
    61×61, σ = 3 kernel: scipy's default ``truncate=4.0`` leaves a 25×25 support).
    """
    if size < 1 or sigma <= 0:
        raise ValueError(f"Gaussian kernel needs size >= 1 and sigma > 0, got size={size}, sigma={sigma}")
    t = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    if truncate is not None:
        k = torch.where(t.abs() <= int(truncate * sigma + 0.5), k, torch.zeros_like(k))
    return k / k.sum()


class GaussianKernel:
    """Isotropic or axis-aligned Gaussian PSF (separable).

    :param size: kernel size (int or (Kh, Kw)); DPS/DAPS use 61.
    :param sigma: standard deviation in pixels (float or (σ_h, σ_w)); DPS/DAPS use 3.0.
    :param truncate: None for the full support, or scipy's ``truncate`` (DPS: 4.0).
    """

    def __init__(self, size=61, sigma=3.0, truncate: float | None = None):
        self.size, self.sigma, self.truncate = _pair(size, "size"), _pair(sigma, "sigma"), truncate

    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        kh = gaussian_1d(int(self.size[0]), float(self.sigma[0]), self.truncate)
        kw = gaussian_1d(int(self.size[1]), float(self.sigma[1]), self.truncate)
        return kh[:, None] * kw[None, :]


class UniformKernel:
    """Box PSF of ``size`` (int or pair), normalised to sum 1 (separable)."""

    def __init__(self, size=9):
        self.size = _pair(size, "size")

    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        h, w = int(self.size[0]), int(self.size[1])
        if h < 1 or w < 1:
            raise ValueError(f"uniform kernel size must be >= 1, got {self.size}")
        return torch.full((h, w), 1.0 / (h * w), dtype=torch.float64)


class MotionKernel:
    """Random-trajectory camera-shake kernels, the model DPS/DAPS/DiffPIR use (61×61, intensity 0.5).

    The algorithm of the ``motionblur`` package (Borodenko) used by DPS: a trajectory of
    Beta(1, 30)-distributed steps whose total length is ``0.75·D·(U(0,1) + U(0, I²))`` (D the
    diagonal of a canvas twice the kernel size, I the intensity), turning by angles drawn from a
    triangular law bounded by ``U(0, I·π)`` with Beta(2, 20)-probability sign flips; centred,
    randomly rotated, drawn with width ``int(D/150)``, blurred by a Gaussian of σ ``int(0.01·D)``,
    reduced to the kernel size and normalised to sum 1.

    Deviations: the path is rasterised by distance-to-segment and reduced by 2×2 averaging
    (the package draws with PIL and resizes with Lanczos), so kernels are from the same
    distribution, not bit-identical to the package's for the same seed (it uses numpy's global
    RNG, which we never touch).
    """

    def __init__(self, size: int = 61, intensity: float = 0.5):
        if size < 3 or not 0.0 <= intensity <= 1.0:
            raise ValueError(f"motion kernel needs size >= 3 and 0 <= intensity <= 1, got {size}, {intensity}")
        self.size, self.intensity = int(size), float(intensity)

    def _trajectory(self, rng: np.random.Generator, canvas: int) -> np.ndarray:
        eps = 1e-10
        inten = self.intensity
        diag = math.sqrt(2.0) * canvas
        max_len = 0.75 * diag * (rng.uniform() + rng.uniform(0.0, inten**2))
        steps: list[float] = []
        while sum(steps) < max_len:
            step = rng.beta(1, 30) * (1 - inten + eps) * diag
            if step < max_len:
                steps.append(step)
        max_angle = rng.uniform(0.0, inten * math.pi)
        jitter = rng.beta(2, 20)
        angles = [rng.uniform(-max_angle, max_angle)]
        while len(angles) < len(steps):
            a = rng.triangular(0.0, inten * max_angle, max_angle + eps)
            sign = np.sign(angles[-1])
            angles.append(-a * sign if rng.uniform() < jitter else a * sign)
        path = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
        path = (path - path.mean()) * np.exp(1j * rng.uniform(0.0, math.pi)) + (canvas + 1j * canvas) / 2
        return path

    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        from scipy.ndimage import gaussian_filter

        rng = numpy_rng(generator)
        canvas = 2 * self.size
        diag = math.sqrt(2.0) * canvas
        path = self._trajectory(rng, canvas)
        half_width = max(int(diag / 150), 1) / 2.0
        yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float64) + 0.5
        img = np.zeros((canvas, canvas))
        pts = np.stack([path.real, path.imag], axis=1)
        for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:]):
            dx, dy = x1 - x0, y1 - y0
            seg2 = dx * dx + dy * dy
            t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / seg2, 0.0, 1.0) if seg2 > 0 else 0.0
            dist2 = (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2
            img[dist2 <= half_width**2 + 0.25] = 1.0
        radius = int(diag * 0.01)
        if radius > 0:
            img = gaussian_filter(img, sigma=radius)
        img = img.reshape(self.size, 2, self.size, 2).mean(axis=(1, 3))
        if img.sum() <= 0:  # the whole path left the canvas: fall back to a centred point
            img[self.size // 2, self.size // 2] = 1.0
        return torch.from_numpy(img / img.sum())


class KernelFile:
    """A user PSF from a ``.npy`` file holding a 2-D array (used as given unless ``normalize``)."""

    def __init__(self, path: str, normalize: bool = False):
        self.path, self.normalize = str(path), bool(normalize)

    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        p = Path(self.path).expanduser()
        if p.suffix != ".npy":
            raise ValueError(f"kernel file must be a .npy array, got {p}")
        if not p.is_file():
            raise FileNotFoundError(f"kernel file not found: {p}")
        from .files import load_npy

        arr = load_npy(p, "kernel file")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool) or np.iscomplexobj(arr):
            raise ValueError(f"kernel in {p} must hold real numbers, got dtype {arr.dtype}")
        k = torch.from_numpy(arr.astype(np.float64))
        if k.ndim != 2 or k.numel() == 0 or not bool(torch.isfinite(k).all()):
            raise ValueError(f"kernel in {p} must be a finite, non-empty 2-D array, got shape {tuple(k.shape)}")
        if self.normalize:
            if k.sum() == 0:
                raise ValueError(f"kernel in {p} sums to zero and cannot be normalised")
            k = k / k.sum()
        return k
