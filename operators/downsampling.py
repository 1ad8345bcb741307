"""Downsampling / super-resolution operators, all separable, all with an exact SVD.

``y = D_h X D_wᵀ`` with 1-D matrices ``D`` of shape ``[ceil(n/f), n]``:

* ``average`` — mean over f×f blocks (DDRM/DDNM's exact-SVD super-resolution); H and W must be
  multiples of f.
* ``bicubic`` — MATLAB ``imresize(x, 1/f)`` with antialiasing: the cubic kernel (a = −0.5)
  stretched by f, symmetric (half-sample) boundary, rows normalised to sum 1. This is the resizer
  DPS/DAPS/InverseBench use for SR×4 (Shocher's Python port of imresize).
* ``gaussian`` — Gaussian filter (σ = ``sigma``, default f/2, ``2·ceil(3σ)+1`` taps, ``padding``)
  then keeping every f-th sample starting at 0 (deepinv's ``Downsampling`` convention).
"""

from __future__ import annotations

import math

import torch

from ._engines import SeparableEngine
from .linalg import PADDINGS, conv_matrix_1d
from .base import LinearOperator
from .kernels import gaussian_1d
from .restriction import SeparableRestriction

FILTERS = ("average", "bicubic", "gaussian")


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = −0.5 (MATLAB's ``cubic``)."""
    a = x.abs()
    a2, a3 = a * a, a * a * a
    near = 1.5 * a3 - 2.5 * a2 + 1.0
    far = -0.5 * a3 + 2.5 * a2 - 4.0 * a + 2.0
    return torch.where(a <= 1, near, torch.where(a <= 2, far, torch.zeros_like(a)))


def bicubic_matrix(n: int, factor: int) -> torch.Tensor:
    """``[ceil(n/f), n]`` matrix of MATLAB's antialiased bicubic ``imresize`` by ``1/factor``."""
    scale = 1.0 / factor
    m = math.ceil(n * scale)
    width = 4.0 / scale
    u = torch.arange(1, m + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coords
    left = torch.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # 1-based
    w = scale * _cubic(scale * (u[:, None] - idx))
    w = w / w.sum(1, keepdim=True)
    mirror = torch.cat([torch.arange(n), torch.arange(n - 1, -1, -1)])
    cols = mirror[(idx.long() - 1) % (2 * n)]
    D = torch.zeros(m, n, dtype=torch.float64)
    D.index_put_((torch.arange(m)[:, None].expand(m, taps), cols), w, accumulate=True)
    return D


def average_matrix(n: int, factor: int) -> torch.Tensor:
    if n % factor:
        raise ValueError(f"average-pooling downsampling by {factor} needs sizes divisible by {factor}, got {n}")
    D = torch.zeros(n // factor, n, dtype=torch.float64)
    D[torch.arange(n) // factor, torch.arange(n)] = 1.0 / factor
    return D


def gaussian_matrix(n: int, factor: int, sigma: float, padding: str) -> torch.Tensor:
    taps = 2 * math.ceil(3 * sigma) + 1
    return conv_matrix_1d(gaussian_1d(taps, sigma), n, padding)[::factor]


class Downsampling(LinearOperator):
    """Super-resolution forward model ``y = D x`` by an integer ``factor`` (2, 4, 8, ...).

    :param factor: downsampling factor.
    :param img_size: ``(C, H, W)``.
    :param filter: ``average``, ``bicubic`` or ``gaussian`` (see module docstring).
    :param sigma: Gaussian filter width in high-resolution pixels (default ``factor / 2``).
    :param padding: boundary of the Gaussian filter (see :class:`Blur`); ``valid`` is refused.

    Example::

        >>> import torch, operators
        >>> op = operators.Downsampling(4, img_size=(3, 256, 256), filter="bicubic")
        >>> op.meas_size
        (3, 64, 64)
    """

    tileable = True

    def __init__(self, factor: int = 4, img_size=(1, 64, 64), filter: str = "bicubic",
                 sigma: float | None = None, padding: str = "reflect", **solver_options):
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) != 3:
            raise ValueError(f"Downsampling: img_size must be (C, H, W), got {img_size}")
        if int(factor) != factor or factor < 1:
            raise ValueError(f"Downsampling: factor must be a positive integer, got {factor}")
        factor = int(factor)
        if filter not in FILTERS:
            raise ValueError(f"Downsampling: unknown filter {filter!r}; choose one of {FILTERS}")
        if padding not in PADDINGS or padding == "valid":
            raise ValueError(f"Downsampling: padding must be one of {tuple(p for p in PADDINGS if p != 'valid')}")
        C, H, W = img_size
        if filter == "average":
            D_h, D_w = average_matrix(H, factor), average_matrix(W, factor)
        elif filter == "bicubic":
            D_h, D_w = bicubic_matrix(H, factor), bicubic_matrix(W, factor)
        else:
            sigma = factor / 2 if sigma is None else float(sigma)
            if sigma <= 0:
                raise ValueError(f"Downsampling: sigma must be > 0, got {sigma}")
            D_h, D_w = gaussian_matrix(H, factor, sigma, padding), gaussian_matrix(W, factor, sigma, padding)
        super().__init__(SeparableEngine(D_h, D_w), img_size, (C, D_h.shape[0], D_w.shape[0]), **solver_options)
        self.factor, self.filter, self.sigma, self.padding = factor, filter, sigma, padding
        self._solver_options = solver_options

    def restriction(self) -> SeparableRestriction:
        """Exact tile problems on the ``factor``-grid: the low-resolution pixels whose filter
        support lies in the tile, with an exact SVD (:mod:`operators.restriction`)."""
        return SeparableRestriction(self, (self.engine.A_h, self.engine.A_w), step=self.factor)

    def _describe_params(self) -> str:
        return f"×{self.factor}, filter='{self.filter}', img_size={list(self.img_size)}"

    def config(self) -> dict:
        return dict(factor=self.factor, img_size=self.img_size, filter=self.filter, sigma=self.sigma,
                    padding=self.padding, **self._solver_options)
