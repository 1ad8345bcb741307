"""Blur (deconvolution) operator with every common boundary model.

``y = k * x`` per channel, ``y[i] = Σ_t k[t] x̃[i + K-1 - t]`` (true convolution, kernel centre at
``K // 2``), where ``x̃`` is ``x`` padded by ``padding``:

============  ===================================================  ==================
padding       boundary                                              output size
============  ===================================================  ==================
reflect       dcb|abcd|cba (torch/numpy "reflect"; DPS, DAPS)        H × W
symmetric     cba|abc|cba (half-sample; MATLAB ``imfilter``)         H × W
replicate     aaa|abc|ccc                                            H × W
circular      periodic (DiffPIR)                                     H × W
zeros         zero outside the image                                 H × W
valid         no padding: only fully-supported outputs               (H-Kh+1) × (W-Kw+1)
============  ===================================================  ==================

Exact SVDs, chosen automatically (``method="auto"``):

* circular padding — diagonal in the Fourier domain (:class:`FourierEngine`, a real orthonormal
  Fourier basis so the coefficient space is real);
* a separable (rank-1) kernel with any other padding — the Kronecker product of the 1-D
  convolution matrices' SVDs, as DDRM does (:class:`SeparableEngine`);
* otherwise (a motion kernel with reflect padding, say) no SVD: ``A_dagger``/``prox_l2`` use CG.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ._engines import ConvEngine, FourierEngine, SeparableEngine
from .linalg import PADDINGS, conv_matrix_1d
from .base import LinearOperator
from .kernels import seeded
from .restriction import ConvRestriction, Restriction, SeparableRestriction

METHODS = ("auto", "fourier", "separable", "conv")


def draw(param, seed: int | None, generator: torch.Generator | None, what: str):
    """Use ``param`` as given, or, if it is a generator object (callable), draw from it with
    ``generator`` (or a fresh one seeded by ``seed``)."""
    if callable(param) and not isinstance(param, Tensor):
        return param(generator=seeded(generator, seed))
    if generator is not None or seed is not None:
        raise ValueError(f"a seed/generator was given but the {what} is fixed, not a generator object")
    return param


def separable_factors(kernel: Tensor, rtol: float = 1e-10) -> tuple[Tensor, Tensor] | None:
    """``(k_h, k_w)`` with ``kernel = outer(k_h, k_w)`` when the kernel is rank one (to ``rtol``)."""
    U, s, Vt = torch.linalg.svd(kernel)
    if s.numel() > 1 and s[1] > rtol * s[0]:
        return None
    k_h, k_w = U[:, 0] * s[0].sqrt(), Vt[0] * s[0].sqrt()
    if k_h.sum() < 0:
        k_h, k_w = -k_h, -k_w
    return k_h, k_w


class Blur(LinearOperator):
    """Convolution with a kernel shared by all channels and batch items.

    :param kernel: ``[Kh, Kw]`` tensor/array, or a kernel generator (:class:`GaussianKernel`,
        :class:`MotionKernel`, ...) drawn with ``generator`` or ``seed``.
    :param img_size: ``(C, H, W)``; any H, W (odd, non-square) — reflection repeats for kernels
        larger than the image.
    :param padding: one of ``reflect, symmetric, replicate, circular, zeros, valid``.
    :param method: ``auto`` (exact SVD where one exists), or force ``fourier`` (circular only),
        ``separable`` (rank-1 kernels only) or ``conv`` (no SVD).

    Example::

        >>> import torch, operators
        >>> op = operators.Blur(operators.GaussianKernel(61, 3.0), img_size=(3, 64, 64))
        >>> "svd" in op.capabilities
        True
        >>> op.A(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """

    tileable = True

    def __init__(self, kernel: Tensor | Callable, img_size=(1, 64, 64), padding: str = "reflect", *,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 method: str = "auto", **solver_options):
        drawn = draw(kernel, seed, generator, "kernel")
        try:
            kernel = torch.as_tensor(drawn, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"Blur: kernel must be a [Kh, Kw] array of numbers or a kernel generator (GaussianKernel, "
                            f"MotionKernel, UniformKernel, KernelFile), got {drawn!r}") from err
        if kernel.ndim != 2 or kernel.numel() == 0:
            raise ValueError(f"Blur: kernel must be a non-empty 2-D array, got shape {tuple(kernel.shape)}")
        if not bool(torch.isfinite(kernel).all()):
            raise ValueError("Blur: kernel contains NaN or Inf")
        if padding not in PADDINGS:
            raise ValueError(f"Blur: unknown padding {padding!r}; choose one of {PADDINGS}")
        if method not in METHODS:
            raise ValueError(f"Blur: unknown method {method!r}; choose one of {METHODS}")
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) != 3:
            raise ValueError(f"Blur: img_size must be (C, H, W), got {img_size}")
        C, H, W = img_size
        Kh, Kw = kernel.shape
        if padding == "valid" and (Kh > H or Kw > W):
            raise ValueError(f"Blur: a {Kh}×{Kw} kernel with 'valid' padding needs an image of at least that size, got {H}×{W}")
        factors = separable_factors(kernel) if method in ("auto", "separable") else None

        if method == "fourier" or (method == "auto" and padding == "circular"):
            if padding != "circular":
                raise ValueError("Blur: method='fourier' needs padding='circular'")
            engine = FourierEngine(kernel, H, W)
        elif factors is not None:
            engine = SeparableEngine(conv_matrix_1d(factors[0], H, padding), conv_matrix_1d(factors[1], W, padding))
        elif method == "separable":
            raise ValueError("Blur: method='separable' needs a rank-one (separable) kernel")
        else:
            engine = ConvEngine(kernel, H, W, padding)
        meas = (C, H - Kh + 1, W - Kw + 1) if padding == "valid" else (C, H, W)
        super().__init__(engine, img_size, meas, **solver_options)
        self.register_buffer("kernel", kernel)
        self.padding, self.method = padding, method
        self._solver_options = solver_options

    def restriction(self) -> Restriction:
        """Exact tile problems (:mod:`operators.restriction`): a separable kernel keeps an exact SVD
        per tile (whatever the engine), any other kernel gives a gather + valid convolution."""
        kernel = tuple(int(k) for k in self.kernel.shape)
        if isinstance(self.engine, SeparableEngine):
            return SeparableRestriction(self, (self.engine.A_h, self.engine.A_w), kernel=kernel)
        f = separable_factors(self.kernel.cpu())
        if f is not None:
            _, H, W = self.img_size
            factors = conv_matrix_1d(f[0], H, self.padding), conv_matrix_1d(f[1], W, self.padding)
            return SeparableRestriction(self, factors, kernel=kernel)
        return ConvRestriction(self, self.kernel, self.padding)

    def _describe_params(self) -> str:
        kind = type(self.engine).__name__.replace("Engine", "").lower()
        return (f"kernel {tuple(self.kernel.shape)[0]}×{tuple(self.kernel.shape)[1]}, padding='{self.padding}', "
                f"{kind}, img_size={list(self.img_size)}")

    def config(self) -> dict:
        return dict(kernel=self.kernel, img_size=self.img_size, padding=self.padding, method=self.method,
                    **self._solver_options)
