"""Parallel-beam CT: linear (sparse-view, limited-angle) and transmission (nonlinear).

The Radon transform is deepinv's (``deepinv.physics.Tomography``: rotation by ``grid_sample`` and
column sums, unnormalised). Its adjoint is taken by autograd of that same map (exact to rounding;
deepinv's filtered-back-projection "adjoint" has a 7 % adjointness error, REFERENCE.md), in the
input's dtype (deepinv's own autograd adjoint fails in float64).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from .base import LinearOperator
from .nonlinear import NonlinearOperator


def _angles(angles, limited_angle) -> Tensor:
    if isinstance(angles, int):
        lo, hi = (0.0, 180.0) if limited_angle is None else (float(limited_angle[0]), float(limited_angle[1]))
        return torch.linspace(lo, hi, angles + 1)[:-1]  # endpoint excluded: 0 and 180 are the same view
    return torch.as_tensor(angles, dtype=torch.float32)


class _RadonEngine(torch.nn.Module):
    has_svd = False

    def __init__(self, width: int, angles: Tensor, circle: bool):
        super().__init__()
        from deepinv.physics import Tomography

        tomo = Tomography(angles=angles, img_width=width, circle=circle, normalize=False,
                          adjoint_via_backprop=True)
        self.radon32 = tomo.radon
        self.radon64 = copy.deepcopy(tomo.radon).to(torch.float64)
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        radon = self.radon64 if x.dtype == torch.float64 else self.radon32
        C = x.shape[1]
        out = radon(x.reshape(-1, 1, *x.shape[-2:]))
        return out.reshape(x.shape[0], C, *out.shape[-2:])

    def adjoint(self, y: Tensor) -> Tensor:
        B, C = y.shape[:2]
        zeros = torch.zeros(B, C, self.width, self.width, dtype=y.dtype, device=y.device)
        _, vjp = torch.func.vjp(self.forward, zeros)
        return vjp(y)[0]


class ParallelBeamCT(LinearOperator):
    """Linear parallel-beam CT ``y = R x`` (sinogram ``[B, C, n_detectors, n_angles]``).

    :param img_size: ``(C, N, N)`` — square images.
    :param angles: number of views (sparse-view: few), spread over [0°, 180°) or over
        ``limited_angle = (start, stop)`` degrees; or an explicit list of angles in degrees.
    :param circle: restrict to the inscribed circle (deepinv's option).
    """

    modality = "ct"

    def __init__(self, img_size=(1, 64, 64), angles=30, limited_angle=None, circle: bool = False, **solver_options):
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) != 3 or img_size[1] != img_size[2]:
            raise ValueError(f"ParallelBeamCT: img_size must be (C, N, N) (square), got {img_size}")
        theta = _angles(angles, limited_angle)
        engine = _RadonEngine(img_size[1], theta, circle)
        n_det = engine(torch.zeros(1, 1, img_size[1], img_size[2])).shape[-2]
        super().__init__(engine, img_size, (img_size[0], n_det, theta.numel()), **solver_options)
        self.angles, self.circle = theta, bool(circle)
        self._solver_options = solver_options

    def _describe_params(self) -> str:
        return (f"{self.angles.numel()} views in [{float(self.angles.min()):.0f}°, {float(self.angles.max()):.0f}°], "
                f"img_size={list(self.img_size)}")

    def config(self) -> dict:
        return dict(img_size=self.img_size, angles=self.angles.tolist(), circle=self.circle, **self._solver_options)


class TransmissionCT(NonlinearOperator):
    """Transmission CT, the Beer–Lambert law ``y = I₀ · exp(−R x)`` (expected photon counts per
    detector bin; simulate counts with ``PoissonNoise(gain=1)``). ``x`` is the attenuation map in
    inverse pixel units; nonlinear and differentiable."""

    modality = "ct"

    def __init__(self, img_size=(1, 64, 64), angles=30, I0: float = 1e4, limited_angle=None, circle: bool = False):
        if not I0 > 0:
            raise ValueError(f"TransmissionCT: I0 must be > 0, got {I0}")
        radon = ParallelBeamCT(img_size, angles, limited_angle, circle)
        super().__init__(img_size, radon.meas_size)
        self.radon, self.I0 = radon, float(I0)

    def forward_model(self, x: Tensor) -> Tensor:
        return self.I0 * torch.exp(-self.radon.A(x))

    def _describe_params(self) -> str:
        return f"I0={self.I0:g}, {self.radon._describe_params()}"

    def config(self) -> dict:
        return dict(img_size=self.img_size, angles=self.radon.angles.tolist(), I0=self.I0, circle=self.radon.circle)
