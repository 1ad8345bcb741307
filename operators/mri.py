"""Cartesian MRI: ``y = M F (S x)`` with fastMRI's orthonormal centred 2-D FFT.

Conventions (DESIGN.md, REFERENCE.md):

* Images are real ``[B, 1, H, W]`` (imaginary part zero; the adjoint returns the real part) or
  complex ``[B, 2, H, W]`` (real, imaginary channels). Single-coil k-space is ``[B, 2, H, W]``,
  multi-coil ``[B, 2, N_coils, H, W]``; unsampled entries are zero.
* ``fft2c = fftshift ∘ FFT_ortho ∘ ifftshift`` and ``ifft2c = fftshift ∘ IFFT_ortho ∘ ifftshift``
  (fastMRI's pair; one shift order throughout, so the pair is adjoint on odd sizes too).
* Masks are ``[H, W]`` in centred k-space (1-D masks repeat along H: columns are phase encodes).

Single-coil MRI has an exact SVD. For complex images ``V`` is the centred DFT itself (unitary,
written on 2 real channels), ``s = M`` and ``U`` keeps the sampled entries. For real images
``AᵀA = Fᴴ diag((M(k) + M(−k))/2) F``: in the real Fourier basis each conjugate pair has singular
value 1 (both sampled), √½ (one) or 0, and self-conjugate frequencies 1 or 0. Multi-coil MRI under
undersampling has no closed form: pinv/prox use conjugate gradients.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .linalg import RealFourierBasis
from .base import LinearOperator

DIMS = (-2, -1)


def fft2c(z: Tensor) -> Tensor:
    """Orthonormal centred 2-D FFT of a complex tensor (last two dims)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(z, dim=DIMS), norm="ortho"), dim=DIMS)


def ifft2c(k: Tensor) -> Tensor:
    """Its inverse and adjoint."""
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=DIMS), norm="ortho"), dim=DIMS)


def to_complex(x: Tensor, channel_dim: int = 1) -> Tensor:
    """``[B, 1|2, ...]`` real channels -> complex ``[B, ...]``."""
    if x.shape[channel_dim] == 1:
        return torch.complex(x.select(channel_dim, 0), torch.zeros_like(x.select(channel_dim, 0)))
    return torch.complex(x.select(channel_dim, 0), x.select(channel_dim, 1))


def to_channels(z: Tensor, channel_dim: int = 1) -> Tensor:
    """complex ``[B, ...]`` -> ``[B, 2, ...]`` (real, imaginary)."""
    return torch.stack([z.real, z.imag], dim=channel_dim)


def _offsets(small: tuple[int, int], big: tuple[int, int], what: str) -> tuple[int, int]:
    if small[0] > big[0] or small[1] > big[1]:
        raise ValueError(f"{what}: {tuple(small)} does not fit inside {tuple(big)}")
    return (big[0] - small[0]) // 2, (big[1] - small[1]) // 2  # fastMRI's center_crop offsets


def center_pad(x: Tensor, shape: tuple[int, int]) -> Tensor:
    """Zero-pad the last two dims to ``shape``, placed where fastMRI's ``center_crop`` crops."""
    H, W = x.shape[-2:]
    top, left = _offsets((H, W), tuple(shape), "center_pad")
    return torch.nn.functional.pad(x, (left, shape[1] - W - left, top, shape[0] - H - top))


def center_crop(x: Tensor, shape: tuple[int, int]) -> Tensor:
    """fastMRI's centre crop of the last two dims, offsets ``(H − h)//2`` (the adjoint of
    :func:`center_pad`); a crop larger than the input is an error."""
    H, W = x.shape[-2:]
    top, left = _offsets(tuple(shape), (H, W), "center_crop")
    return x[..., top : top + shape[0], left : left + shape[1]]


def _draw_mask(mask, shape, seed, generator) -> Tensor:
    if callable(mask) and not isinstance(mask, Tensor):
        # The mask generators take the seed directly (an int or a fastMRI file-name tuple), so
        # seed=s gives fastMRI's own mask for seed s.
        return mask(shape, generator=generator, seed=seed)
    if seed is not None or generator is not None:
        raise ValueError("a seed/generator was given but the mask is fixed, not a mask generator")
    return mask


def _kspace_size(kspace_size, h: int, w: int, who: str) -> tuple[int, int]:
    if kspace_size is None:
        return h, w
    H, W = (int(s) for s in kspace_size)
    if H < h or W < w:
        raise ValueError(f"{who}: kspace_size {(H, W)} must be at least the image size {(h, w)}")
    return H, W


def _check_mask(mask, H: int, W: int, who: str) -> Tensor:
    mask = torch.as_tensor(mask, dtype=torch.float64)
    given = list(mask.shape)
    if mask.ndim == 1 and mask.shape[0] == W:
        mask = mask[None].expand(H, -1).clone()
    if mask.shape != (H, W):
        raise ValueError(f"{who}: the mask has shape {given}, but k-space is {H}×{W}: it must be [{W}] (one entry per "
                         f"phase-encode column) or [{H}, {W}]")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{who}: mask values must be 0 or 1")
    if not bool(mask.any()):
        raise ValueError(f"{who}: the mask samples no k-space line ({W} phase encodes are too few for this "
                         "acceleration and centre fraction); use a larger image or a lower acceleration")
    return mask


class _SingleCoilEngine(torch.nn.Module):
    def __init__(self, mask: Tensor, complex_image: bool, image_shape: tuple[int, int]):
        super().__init__()
        H, W = mask.shape
        self.register_buffer("mask", mask)
        self.complex_image = complex_image
        self.image_shape = tuple(image_shape)
        self.padded = self.image_shape != (H, W)
        self.has_svd = not self.padded  # F·pad is not unitary: the SVD is lost, CG remains
        self.basis = RealFourierBasis(H, W)
        # Real images: singular values in the real Fourier basis of the unshifted spectrum of
        # ifftshift(x): sqrt((M(f) + M(−f)) / 2) on each conjugate pair.
        m_u = torch.fft.ifftshift(mask, dim=DIMS)
        partner = torch.roll(m_u.flip(0, 1), shifts=(1, 1), dims=(0, 1))  # M_u(−f mod N)
        self.register_buffer("s_real", ((m_u + partner) / 2).sqrt())

    def forward(self, x: Tensor) -> Tensor:
        return to_channels(self.mask.to(x) * fft2c(center_pad(to_complex(x), self.mask.shape)))

    def adjoint(self, y: Tensor) -> Tensor:
        z = center_crop(ifft2c(self.mask.to(y) * to_complex(y)), self.image_shape)
        return to_channels(z) if self.complex_image else z.real[:, None]

    # SVD ----------------------------------------------------------------------------------
    def V_adjoint(self, x: Tensor) -> Tensor:
        if self.complex_image:
            return to_channels(fft2c(to_complex(x)))
        return self.basis.analysis(torch.fft.ifftshift(x, dim=DIMS))

    def V(self, z: Tensor) -> Tensor:
        if self.complex_image:
            return to_channels(ifft2c(to_complex(z)))
        return torch.fft.fftshift(self.basis.synthesis(z), dim=DIMS)

    def singular_values(self) -> Tensor:
        return self.mask[None] if self.complex_image else self.s_real[None]

    def _inv_s(self, like: Tensor) -> Tensor:
        s = self.singular_values().to(like)
        return torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))

    def U(self, z: Tensor) -> Tensor:
        if self.complex_image:
            return self.mask.to(z) * z
        return self.forward(self.V(self._inv_s(z) * z))  # U = A V diag(1/s) on s > 0

    def U_adjoint(self, y: Tensor) -> Tensor:
        if self.complex_image:
            return self.mask.to(y) * y
        return self._inv_s(y) * self.V_adjoint(self.adjoint(y))


class _CartesianMRI(LinearOperator):
    """What the Cartesian MRI operators share: the sampling mask and its acceleration."""

    modality = "mri"  # (so complex_image is True for img_size (2, H, W))

    @staticmethod
    def _sizes(img_size, kspace_size, who: str) -> tuple[tuple[int, int, int], int, int]:
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) != 3 or img_size[0] not in (1, 2):
            raise ValueError(f"{who}: img_size must be (1, H, W) (real) or (2, H, W) (complex), got {img_size}")
        return (img_size, *_kspace_size(kspace_size, img_size[1], img_size[2], who))

    @property
    def mask(self) -> Tensor:
        return self.engine.mask

    @property
    def acceleration(self) -> float:
        return float(self.mask.numel() / self.mask.sum())

    def restrict_to_range(self, y: Tensor) -> Tensor:
        return self.mask.to(y) * y


class SingleCoilMRI(_CartesianMRI):
    """Single-coil Cartesian MRI ``y = M · fft2c(x)``.

    :param mask: ``[W]`` or ``[H, W]`` {0, 1} tensor, or a mask generator
        (:class:`FastMRIMask`, :class:`RandomLinesMask`, ...) drawn with ``seed`` (an int or
        :func:`fastmri_seed` of a file name: fastMRI's own mask for that seed) or ``generator``.
    :param img_size: ``(1, H, W)`` (real image) or ``(2, H, W)`` (complex image).
    :param kspace_size: the acquired k-space grid when it is larger than the image: the image is
        the centre crop of the field of view (fastMRI's 320×320 targets of 640×368 k-space, readout
        oversampling), modelled as zero-padding before the FFT. The SVD is then lost (CG remains).

    Example::

        >>> import operators
        >>> op = operators.SingleCoilMRI(operators.FastMRIMask("random", [0.08], [4]), (2, 64, 64), seed=0)
        >>> op.meas_size, "svd" in op.capabilities
        ((2, 64, 64), True)
    """

    def __init__(self, mask: Tensor | Callable, img_size=(1, 64, 64), *, kspace_size=None, seed: int | None = None,
                 generator: torch.Generator | None = None, **solver_options):
        img_size, H, W = self._sizes(img_size, kspace_size, "SingleCoilMRI")
        C, h, w = img_size
        mask = _check_mask(_draw_mask(mask, (H, W), seed, generator), H, W, "SingleCoilMRI")
        super().__init__(_SingleCoilEngine(mask, C == 2, (h, w)), img_size, (2, H, W), **solver_options)
        self._solver_options = dict(solver_options, kspace_size=(H, W))

    def _describe_params(self) -> str:
        kind = "complex" if self.img_size[0] == 2 else "real"
        return f"{kind} image, R={self.acceleration:.2f}, img_size={list(self.img_size)}"

    def config(self) -> dict:
        return dict(mask=self.mask, img_size=self.img_size, **self._solver_options)


class _MultiCoilEngine(torch.nn.Module):
    has_svd = False

    def __init__(self, mask: Tensor, coil_maps: Tensor, complex_image: bool, image_shape: tuple[int, int]):
        super().__init__()
        self.register_buffer("mask", mask)
        self.register_buffer("coil_maps", torch.view_as_real(coil_maps).contiguous())  # [N, H, W, 2]
        self.complex_image = complex_image
        self.image_shape = tuple(image_shape)

    def _S(self, like: Tensor) -> Tensor:
        S = torch.view_as_complex(self.coil_maps.to(device=like.device))
        return S.to(torch.complex128 if like.dtype == torch.float64 else torch.complex64)

    def forward(self, x: Tensor) -> Tensor:
        z = center_pad(to_complex(x), self.mask.shape)[:, None]  # [B, 1, H, W] on the k-space grid
        return to_channels(self.mask.to(x) * fft2c(self._S(x) * z))  # [B, 2, N, H, W]

    def adjoint(self, y: Tensor) -> Tensor:
        k = self.mask.to(y) * to_complex(y)  # [B, N, H, W]
        z = center_crop((self._S(y).conj() * ifft2c(k)).sum(1), self.image_shape)
        return to_channels(z) if self.complex_image else z.real[:, None]


class MultiCoilMRI(_CartesianMRI):
    """Multi-coil Cartesian MRI ``y_c = M · fft2c(S_c x)``, c = 1..N.

    :param mask: as :class:`SingleCoilMRI`.
    :param coil_maps: complex ``[N, H, W]`` sensitivities (or real ``[N, 2, H, W]`` channels), a
        ``.npy`` path holding either, or an int N for :func:`birdcage_maps` (simulation).
    :param img_size: ``(1, H, W)`` or ``(2, H, W)``.
    :param kspace_size: as :class:`SingleCoilMRI` (coil maps are on the k-space grid).

    No SVD (ΣS_cᴴFᴴMFS_c is not diagonal under undersampling): ``A_dagger`` and ``prox_l2`` run
    batched conjugate gradients.
    """

    def __init__(self, mask: Tensor | Callable, coil_maps: Tensor, img_size=(1, 64, 64), *, kspace_size=None,
                 seed: int | None = None, generator: torch.Generator | None = None, **solver_options):
        img_size, H, W = self._sizes(img_size, kspace_size, "MultiCoilMRI")
        C, h, w = img_size
        if isinstance(coil_maps, int):  # synthetic smooth sensitivities, for simulation studies
            coil_maps = birdcage_maps(coil_maps, H, W)
        elif isinstance(coil_maps, str):
            from .files import load_npy

            coil_maps = torch.from_numpy(load_npy(coil_maps, "coil-map file"))
        coil_maps = torch.as_tensor(coil_maps)
        if not coil_maps.is_complex():
            if coil_maps.ndim != 4 or coil_maps.shape[1] != 2:
                raise ValueError("MultiCoilMRI: real coil_maps must be [N, 2, H, W] (real, imaginary)")
            coil_maps = torch.complex(coil_maps[:, 0].double(), coil_maps[:, 1].double())
        coil_maps = coil_maps.to(torch.complex128)
        if coil_maps.ndim != 3 or tuple(coil_maps.shape[1:]) != (H, W):
            raise ValueError(f"MultiCoilMRI: coil_maps must be [N, {H}, {W}], got {tuple(coil_maps.shape)}")
        if not bool(torch.isfinite(torch.view_as_real(coil_maps)).all()):
            raise ValueError("MultiCoilMRI: coil_maps contain NaN or Inf")
        mask = _check_mask(_draw_mask(mask, (H, W), seed, generator), H, W, "MultiCoilMRI")
        n = coil_maps.shape[0]
        super().__init__(_MultiCoilEngine(mask, coil_maps, C == 2, (h, w)), img_size, (2, n, H, W), **solver_options)
        self._solver_options = dict(solver_options, kspace_size=(H, W))

    @property
    def coil_maps(self) -> Tensor:
        return torch.view_as_complex(self.engine.coil_maps)

    def _describe_params(self) -> str:
        return f"{self.meas_size[1]} coils, R={self.acceleration:.2f}, img_size={list(self.img_size)}"

    def config(self) -> dict:
        return dict(mask=self.mask, coil_maps=torch.view_as_real(self.coil_maps).permute(0, 3, 1, 2),
                    img_size=self.img_size, **self._solver_options)


def birdcage_maps(n_coils: int, H: int, W: int, radius: float = 1.5) -> Tensor:
    """Smooth synthetic coil sensitivities: ``n_coils`` coils on a circle of ``radius`` (in units of
    the half field of view), magnitude ∝ 1/distance, phase the angle to the coil; normalised so that
    Σ_c |S_c|² = 1 (as ESPIRiT maps are)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H, dtype=torch.float64),
                            torch.linspace(-1, 1, W, dtype=torch.float64), indexing="ij")
    maps = []
    for c in range(n_coils):
        a = 2 * math.pi * c / n_coils
        cy, cx = radius * math.sin(a), radius * math.cos(a)
        d = torch.hypot(yy - cy, xx - cx)
        maps.append(torch.polar(1.0 / d, torch.atan2(yy - cy, xx - cx)))
    S = torch.stack(maps)
    return S / (S.abs() ** 2).sum(0, keepdim=True).sqrt()
