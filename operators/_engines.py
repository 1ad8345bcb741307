"""Engines: the linear maths behind the operators, each with its exact adjoint (and SVD if any).

Buffers are float64; every call casts them to the input's dtype and device, so an operator works
in float32 and float64 alike. Image engines act on the last two dimensions and broadcast over
batch and channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .linalg import RealFourierBasis, conv_padding, pad_index


class SeparableEngine(torch.nn.Module):
    """``Y = A_h X A_wᵀ`` with dense 1-D factors; SVD from the SVDs of the factors.

    With ``A_h = U_h S_h V_hᵀ`` and ``A_w = U_w S_w V_wᵀ``: coefficients ``Z = V_hᵀ X V_w``, singular
    values ``s_h[i] · s_w[j]`` (zero beyond the factors' ranks), ``U(Z) = U_h Z[:r_h, :r_w] U_wᵀ``.
    """

    has_svd = True

    def __init__(self, A_h: Tensor, A_w: Tensor):
        super().__init__()
        A_h = torch.as_tensor(A_h, dtype=torch.float64)
        A_w = torch.as_tensor(A_w, dtype=torch.float64)
        self.register_buffer("A_h", A_h)
        self.register_buffer("A_w", A_w)
        for name, M in (("h", A_h), ("w", A_w)):
            U, s, Vt = torch.linalg.svd(M, full_matrices=True)
            r = min(M.shape)
            s_full = torch.zeros(M.shape[1], dtype=torch.float64)
            s_full[:r] = s[:r]
            self.register_buffer(f"U_{name}", U[:, :r].contiguous())
            self.register_buffer(f"V_{name}", Vt.T.contiguous())
            self.register_buffer(f"s_{name}", s_full)
        self.r_h, self.r_w = min(A_h.shape), min(A_w.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.A_h.to(x) @ x @ self.A_w.to(x).T

    def adjoint(self, y: Tensor) -> Tensor:
        return self.A_h.to(y).T @ y @ self.A_w.to(y)

    def V_adjoint(self, x: Tensor) -> Tensor:
        return self.V_h.to(x).T @ x @ self.V_w.to(x)

    def V(self, z: Tensor) -> Tensor:
        return self.V_h.to(z) @ z @ self.V_w.to(z).T

    def U(self, z: Tensor) -> Tensor:
        return self.U_h.to(z) @ z[..., : self.r_h, : self.r_w] @ self.U_w.to(z).T

    def U_adjoint(self, y: Tensor) -> Tensor:
        c = self.U_h.to(y).T @ y @ self.U_w.to(y)
        H, W = self.V_h.shape[0], self.V_w.shape[0]
        return F.pad(c, (0, W - self.r_w, 0, H - self.r_h))

    def singular_values(self) -> Tensor:
        return self.s_h[:, None] * self.s_w[None, :]


class FourierEngine(torch.nn.Module):
    """Circular convolution, diagonal in the Fourier domain; real SVD through
    :class:`RealFourierBasis`: ``V`` the real Fourier basis, ``s = |k̂|``, ``U = V ∘ phase(k̂)``."""

    has_svd = True

    def __init__(self, kernel: Tensor, H: int, W: int):
        super().__init__()
        kernel = torch.as_tensor(kernel, dtype=torch.float64)
        Kh, Kw = kernel.shape
        # Wrap the kernel onto the H×W torus with its centre (K//2) at the origin.
        rows = (torch.arange(Kh) - Kh // 2) % H
        cols = (torch.arange(Kw) - Kw // 2) % W
        wrapped = torch.zeros(H, W, dtype=torch.float64)
        wrapped.index_put_((rows[:, None].expand(Kh, Kw), cols[None, :].expand(Kh, Kw)), kernel,
                           accumulate=True)
        otf = torch.fft.fft2(wrapped)
        mag = otf.abs()
        # Where k̂ = 0 the component is not measured: U drops it (phase 0), as the SVD convention says.
        phase = torch.where(mag > 0, otf / torch.where(mag > 0, mag, 1.0), torch.zeros_like(otf))
        # Complex buffers are stored as real pairs: deepinv-style .to(float64) keeps them intact.
        self.register_buffer("phase", torch.view_as_real(phase).contiguous())
        self.register_buffer("mag", mag)
        # Half spectrum for the real-input FFTs of A, Aᵀ, A⁺ and the prox (the fast paths).
        self.register_buffer("otf_half", torch.view_as_real(otf[:, : W // 2 + 1]).contiguous())
        self.basis = RealFourierBasis(H, W)
        self.shape = (H, W)

    def _c(self, buf: Tensor, like: Tensor) -> Tensor:
        c = torch.view_as_complex(buf.to(device=like.device))
        return c.to(torch.complex128 if like.dtype == torch.float64 else torch.complex64)

    def _filter(self, x: Tensor, transfer: Tensor) -> Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * transfer, s=self.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self._filter(x, self._c(self.otf_half, x))

    def adjoint(self, y: Tensor) -> Tensor:
        return self._filter(y, self._c(self.otf_half, y).conj())

    def pinv(self, y: Tensor, rtol: float) -> Tensor:
        """Truncated-SVD pseudo-inverse, directly in the Fourier domain."""
        k = self._c(self.otf_half, y)
        mag2 = k.real**2 + k.imag**2
        keep = mag2 > (rtol * self.mag.max().item()) ** 2
        return self._filter(y, torch.where(keep, k.conj() / torch.where(keep, mag2, 1.0), 0.0))

    def prox_l2(self, z: Tensor, y: Tensor, rho: Tensor) -> Tensor:
        """``(AᵀA + ρI)⁻¹(Aᵀy + ρz)`` in the Fourier domain (ρ scalar or ``[B, 1, 1, 1]``)."""
        k = self._c(self.otf_half, y)
        num = torch.fft.rfft2(y) * k.conj() + rho * torch.fft.rfft2(z)
        return torch.fft.irfft2(num / (k.real**2 + k.imag**2 + rho), s=self.shape)

    def V_adjoint(self, x: Tensor) -> Tensor:
        return self.basis.analysis(x)

    def V(self, z: Tensor) -> Tensor:
        return self.basis.synthesis(z)

    def U(self, z: Tensor) -> Tensor:
        return self.basis.synthesis(z, self._c(self.phase, z))

    def U_adjoint(self, y: Tensor) -> Tensor:
        return self.basis.analysis(y, self._c(self.phase, y).conj())

    def singular_values(self) -> Tensor:
        return self.mag


class ConvEngine(torch.nn.Module):
    """2-D convolution with any padding: an index map (gather) pads, then a *valid* convolution;
    the adjoint is the transposed convolution followed by the scatter-add of the index map. No SVD.

    Kernels with at least ``fft_threshold`` taps use FFTs of the padded size (valid convolution =
    the cropped circular one, no wrap-around), small ones ``conv2d``; both are exact.
    """

    has_svd = False
    fft_threshold = 100

    def __init__(self, kernel: Tensor, H: int, W: int, padding: str, index: tuple[Tensor, Tensor] | None = None):
        super().__init__()
        kernel = torch.as_tensor(kernel, dtype=torch.float64)
        Kh, Kw = kernel.shape
        mode = "zeros" if padding == "valid" else padding
        if index is None:
            idx_h = pad_index(H, *conv_padding(Kh, padding), mode)
            idx_w = pad_index(W, *conv_padding(Kw, padding), mode)
        else:  # given index maps of the padded rows/columns (-1: zero), e.g. a tile of a larger image
            idx_h, idx_w = (torch.as_tensor(i, dtype=torch.long) for i in index)
        # -1 (a zero sample) points at an extra zero row/column appended to the image.
        self.register_buffer("idx_h", torch.where(idx_h < 0, H, idx_h), persistent=False)
        self.register_buffer("idx_w", torch.where(idx_w < 0, W, idx_w), persistent=False)
        # conv2d is a cross-correlation: flip so that y[i] = Σ_t k[t] x̃[i + K-1 - t].
        self.register_buffer("weight", kernel.flip(0, 1)[None, None].contiguous())
        self.H, self.W, self.Kh, self.Kw = H, W, Kh, Kw
        self.P, self.Q = idx_h.numel(), idx_w.numel()  # padded size
        self.use_fft = Kh * Kw >= self.fft_threshold
        if self.use_fft:
            otf = torch.fft.rfft2(kernel, s=(self.P, self.Q))
            self.register_buffer("otf", torch.view_as_real(otf).contiguous(), persistent=False)

    def _otf(self, like: Tensor) -> Tensor:
        c = torch.view_as_complex(self.otf.to(device=like.device))
        return c.to(torch.complex128 if like.dtype == torch.float64 else torch.complex64)

    def _valid_conv(self, xp: Tensor) -> Tensor:
        if not self.use_fft:
            return F.conv2d(xp, self.weight.to(xp))
        full = torch.fft.irfft2(torch.fft.rfft2(xp) * self._otf(xp), s=(self.P, self.Q))
        return full[..., self.Kh - 1 :, self.Kw - 1 :]

    def _valid_conv_adjoint(self, y: Tensor) -> Tensor:
        if not self.use_fft:
            return F.conv_transpose2d(y, self.weight.to(y))
        emb = F.pad(y, (self.Kw - 1, 0, self.Kh - 1, 0))
        return torch.fft.irfft2(torch.fft.rfft2(emb) * self._otf(y).conj(), s=(self.P, self.Q))

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-2]
        x = F.pad(x.reshape(-1, 1, self.H, self.W), (0, 1, 0, 1))
        x = x.index_select(2, self.idx_h.to(x.device)).index_select(3, self.idx_w.to(x.device))
        y = self._valid_conv(x)
        return y.reshape(*lead, *y.shape[-2:])

    def adjoint(self, y: Tensor) -> Tensor:
        lead = y.shape[:-2]
        z = self._valid_conv_adjoint(y.reshape(-1, 1, *y.shape[-2:]))
        rows = z.new_zeros(z.shape[0], 1, self.H + 1, self.Q).index_add_(2, self.idx_h.to(y.device), z)
        out = z.new_zeros(z.shape[0], 1, self.H + 1, self.W + 1).index_add_(3, self.idx_w.to(y.device), rows)
        return out[..., : self.H, : self.W].reshape(*lead, self.H, self.W)


class DiagonalEngine(torch.nn.Module):
    """Multiplication by a non-negative mask (Inpainting's is {0, 1}); ``V = I``, ``s = mask`` and
    ``U`` the projection onto the entries with ``mask > 0``."""

    has_svd = True

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", torch.as_tensor(mask, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return self.mask.to(x) * x

    adjoint = forward

    def pinv(self, y: Tensor, rtol: float) -> Tensor:
        m = self.mask.to(y)
        keep = m.abs() > rtol * m.abs().max()
        return torch.where(keep, y / torch.where(keep, m, torch.ones_like(m)), torch.zeros_like(y))

    def prox_l2(self, z: Tensor, y: Tensor, rho: Tensor) -> Tensor:
        m = self.mask.to(y)
        return (m * y + rho * z) / (m * m + rho)

    def V_adjoint(self, x: Tensor) -> Tensor:
        return x.clone()

    V = V_adjoint

    def U(self, z: Tensor) -> Tensor:
        # A partial isometry onto the measured entries: components with s = 0 are dropped.
        return (self.mask != 0).to(z) * z

    U_adjoint = U

    def singular_values(self) -> Tensor:
        return self.mask.abs()


class DenseEngine(torch.nn.Module):
    """``y = x Aᵀ`` for vectors ``[B, d]``; SVD from ``torch.linalg.svd`` (full V)."""

    has_svd = True

    def __init__(self, matrix: Tensor):
        super().__init__()
        A = torch.as_tensor(matrix, dtype=torch.float64)
        U, s, Vt = torch.linalg.svd(A, full_matrices=True)
        m, d = A.shape
        self.r = min(m, d)
        s_full = torch.zeros(d, dtype=torch.float64)
        s_full[: self.r] = s
        self.register_buffer("matrix", A)
        self.register_buffer("U_r", U[:, : self.r].contiguous())
        self.register_buffer("V_full", Vt.T.contiguous())
        self.register_buffer("s", s_full)

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.matrix.to(x).T

    def adjoint(self, y: Tensor) -> Tensor:
        return y @ self.matrix.to(y)

    def V_adjoint(self, x: Tensor) -> Tensor:
        return x @ self.V_full.to(x)

    def V(self, z: Tensor) -> Tensor:
        return z @ self.V_full.to(z).T

    def U(self, z: Tensor) -> Tensor:
        return z[..., : self.r] @ self.U_r.to(z).T

    def U_adjoint(self, y: Tensor) -> Tensor:
        c = y @ self.U_r.to(y)
        return F.pad(c, (0, self.V_full.shape[0] - self.r))

    def singular_values(self) -> Tensor:
        return self.s
