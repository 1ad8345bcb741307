"""Nonlinear forward models: Fourier phase retrieval, HDR/saturation, transmission CT.

A nonlinear operator is a :class:`deepinv.physics.Physics` with capabilities
``{"differentiable", "forward"}``: solvers that need only ``A`` and autograd (DPS, DAPS, RED-diff, …)
and derivative-free ones that only evaluate ``A`` (EnKG) accept it; those that need an adjoint, SVD,
pinv or prox are refused by :func:`operators.require`. A forward map without autograd (a simulator,
an instrument's code) is an :class:`operators.BlackBoxOperator` (capabilities ``{"forward"}``).
"""

from __future__ import annotations

import torch
from deepinv.physics import Physics
from torch import Tensor

from .base import CapabilityError, OperatorMixin
from .mri import fft2c


class NonlinearOperator(OperatorMixin, Physics):
    """Base of the nonlinear operators: shapes, capabilities, simulation and persistence."""

    capabilities = frozenset({"differentiable", "forward"})
    closed_form = frozenset()

    def __init__(self, img_size, meas_size):
        super().__init__()
        self.img_size = tuple(int(s) for s in img_size)
        self.meas_size = tuple(int(s) for s in meas_size)

    def A(self, x: Tensor, **kwargs) -> Tensor:
        self._no_kwargs(kwargs, "A")
        self._check(x, self.img_size, "x")
        return self.forward_model(x)

    def forward_model(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def A_dagger(self, y: Tensor, **kwargs) -> Tensor:
        raise CapabilityError(f"{self.describe()} is nonlinear: it has no pseudo-inverse "
                              f"(capabilities: {', '.join(sorted(self.capabilities))})")

    def A_adjoint(self, y: Tensor, **kwargs) -> Tensor:
        raise CapabilityError(f"{self.describe()} is nonlinear: it has no adjoint "
                              f"(capabilities: {', '.join(sorted(self.capabilities))})")


class PhaseRetrieval(NonlinearOperator):
    """Fourier phase retrieval ``y = |fft2c(pad(x))|`` (orthonormal centred FFT, per channel).

    The DPS/DAPS convention (REFERENCE.md): "oversampling 2.0" pads ``int(2.0/8 · H)`` pixels on
    each side (256 → 384, i.e. 1.5× per side), images in [0, 1] (DPS maps its [-1, 1] images to
    [0, 1] first), ``fft2_m`` = fastMRI's orthonormal centred FFT.
    """

    def __init__(self, img_size=(1, 64, 64), oversampling: float = 2.0):
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) != 3 or oversampling < 0:
            raise ValueError(f"PhaseRetrieval: img_size must be (C, H, W) and oversampling >= 0, got {img_size}, {oversampling}")
        C, H, W = img_size
        self.oversampling = float(oversampling)
        self.pad = (int(self.oversampling / 8.0 * H), int(self.oversampling / 8.0 * W))
        super().__init__(img_size, (C, H + 2 * self.pad[0], W + 2 * self.pad[1]))

    def forward_model(self, x: Tensor) -> Tensor:
        ph, pw = self.pad
        padded = torch.nn.functional.pad(x, (pw, pw, ph, ph))
        return fft2c(padded.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)).abs()

    def _describe_params(self) -> str:
        return f"oversampling {self.oversampling} (pad {self.pad}), img_size={list(self.img_size)}"

    def config(self) -> dict:
        return dict(img_size=self.img_size, oversampling=self.oversampling)


class HDR(NonlinearOperator):
    """High-dynamic-range / saturation: ``y = clip(c + scale·(x − c), lo, hi)`` with ``c`` the
    middle of ``data_range = (lo, hi)``. With data on [0, 1] and scale 2 this is DAPS's
    ``clip(2x, −1, 1)`` on [−1, 1] images. Differentiable (zero gradient where saturated)."""

    def __init__(self, img_size=(1, 64, 64), scale: float = 2.0, data_range=(0.0, 1.0)):
        img_size = tuple(int(s) for s in img_size)
        lo, hi = (float(v) for v in data_range)
        if hi <= lo or scale <= 0:
            raise ValueError(f"HDR: need data_range lo < hi and scale > 0, got {data_range}, {scale}")
        self.scale, self.data_range = float(scale), (lo, hi)
        super().__init__(img_size, img_size)

    def forward_model(self, x: Tensor) -> Tensor:
        lo, hi = self.data_range
        c = 0.5 * (lo + hi)
        return (c + self.scale * (x - c)).clamp(lo, hi)

    def _describe_params(self) -> str:
        return f"scale {self.scale}, range {self.data_range}, img_size={list(self.img_size)}"

    def config(self) -> dict:
        return dict(img_size=self.img_size, scale=self.scale, data_range=list(self.data_range))
