"""Shared, tested linear-algebra helpers for the operators.

* :func:`conjugate_gradient` — batched CG with per-sample stopping (batch items never interact).
* :func:`pad_index` / :func:`conv_matrix_1d` — boundary handling as an index map, so every padding
  mode works for any signal length (reflection of a 61-tap kernel on a 17-pixel image included) and
  its adjoint is an exact scatter-add.
* :class:`RealFourierBasis` — a *real* orthonormal basis in which circular convolution with a real
  kernel is an SVD (cos/sin pairs of conjugate frequencies), so the coefficient space of a circular
  blur is real and orthonormal, as the solvers' noise-injection steps assume.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

PADDINGS = ("reflect", "symmetric", "replicate", "circular", "zeros", "valid")


def per_sample(v: Tensor | float, like: Tensor) -> Tensor:
    """Broadcast a float or a ``[B]`` tensor against ``like`` of shape ``[B, ...]``."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    if v.ndim == 0:
        return v
    if v.ndim != 1 or v.shape[0] != like.shape[0]:
        raise ValueError(
            f"a per-sample parameter must be a float or a [B] tensor with B={like.shape[0]}, "
            f"got shape {tuple(v.shape)}"
        )
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample real inner product ``<a_i, b_i>`` over all but the first dimension -> ``[B]``."""
    return (a * b).flatten(1).sum(1)


def conjugate_gradient(
    apply: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
) -> Tensor:
    """Solve ``apply(x) = b`` for a symmetric positive (semi-)definite ``apply``, per batch item.

    Each sample stops on its own once ``||r_i|| <= tol * ||b_i||`` (its step size is then zero),
    so a sample's result does not depend on the other samples in the batch. Started from zero on
    the normal equations ``AᵀA x = Aᵀy`` the iterates stay in range(Aᵀ), so CG converges to the
    minimum-norm least-squares solution.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply(x) if x0 is not None else b.clone()
    p = r.clone()
    rs = batch_dot(r, r)
    threshold = (tol * batch_dot(b, b).sqrt()) ** 2
    shape = (-1,) + (1,) * (b.ndim - 1)
    for _ in range(max_iter):
        active = rs > threshold
        if not bool(active.any()):
            break
        Ap = apply(p)
        pAp = batch_dot(p, Ap)
        alpha = torch.where(active & (pAp > 0), rs / torch.where(pAp > 0, pAp, 1.0), 0.0)
        x = x + alpha.reshape(shape) * p
        r = r - alpha.reshape(shape) * Ap
        rs_new = batch_dot(r, r)
        beta = torch.where(active, rs_new / torch.where(rs > 0, rs, 1.0), 0.0)
        p = torch.where(active.reshape(shape), r + beta.reshape(shape) * p, p)
        rs = torch.where(active, rs_new, rs)
    return x


def pad_index(n: int, before: int, after: int, mode: str) -> Tensor:
    """Indices into a length-``n`` signal for each sample of its padded version.

    ``-1`` marks a zero sample (mode ``"zeros"``). Modes follow numpy/torch names: ``reflect``
    (whole-sample, edge not repeated: dcb|abcd|cba), ``symmetric`` (half-sample, MATLAB's default:
    cba|abc), ``replicate``, ``circular``, ``zeros``. Padding wider than the signal keeps
    reflecting/wrapping, so any size works.
    """
    i = torch.arange(-before, n + after)
    if mode == "circular":
        return i % n
    if mode == "replicate":
        return i.clamp(0, n - 1)
    if mode == "reflect":
        if n == 1:
            return torch.zeros_like(i)
        j = i % (2 * n - 2)
        return torch.where(j < n, j, 2 * n - 2 - j)
    if mode == "symmetric":
        j = i % (2 * n)
        return torch.where(j < n, j, 2 * n - 1 - j)
    if mode == "zeros":
        return torch.where((i >= 0) & (i < n), i, torch.full_like(i, -1))
    raise ValueError(f"unknown padding mode {mode!r}; choose one of {PADDINGS}")


def conv_padding(kernel_size: int, padding: str) -> tuple[int, int]:
    """Samples added before/after for a "same"-size convolution centred at ``kernel_size // 2``."""
    if padding == "valid":
        return 0, 0
    centre = kernel_size // 2
    return kernel_size - 1 - centre, centre


def conv_matrix_1d(kernel: Tensor, n: int, padding: str) -> Tensor:
    """Dense ``[n_out, n]`` matrix of the 1-D convolution ``y[i] = Σ_t k[t] x̃[i + K-1 - t]``.

    ``x̃`` is ``x`` padded by :func:`conv_padding`; the kernel centre is ``K // 2`` (scipy.ndimage's
    convention), ``n_out = n`` except for ``"valid"`` (``n - K + 1``).
    """
    kernel = torch.as_tensor(kernel, dtype=torch.float64).flatten()
    K = kernel.numel()
    before, after = conv_padding(K, padding)
    n_out = n + before + after - K + 1
    if n_out < 1:
        raise ValueError(f"a {K}-tap kernel with 'valid' padding needs a signal of at least {K} samples, got {n}")
    idx = pad_index(n, before, after, "zeros" if padding == "valid" else padding)
    rows = torch.arange(n_out)[:, None].expand(n_out, K)
    taps = torch.arange(K)[None, :].expand(n_out, K)
    cols = idx[rows + K - 1 - taps]
    keep = cols >= 0
    M = torch.zeros(n_out, n, dtype=torch.float64)
    M.index_put_((rows[keep], cols[keep]), kernel[taps[keep]], accumulate=True)
    return M


class RealFourierBasis(torch.nn.Module):
    """Real orthonormal basis of real ``H×W`` signals built from the orthonormal 2-D DFT.

    For each pair of conjugate frequencies ``{f, -f}`` (``f ≠ -f``) the coefficient at the first
    position (in flat order) holds ``√2·Re X(f)`` and the one at ``-f`` holds ``√2·Im X(f)``;
    self-conjugate frequencies hold ``Re X(f)``. ``analysis`` (the matrix Vᵀ) and ``synthesis`` (V)
    are exact inverses and isometries; a multiplier with Hermitian symmetry (the transfer function
    of a real kernel) acts on each pair as a scaled rotation.
    """

    def __init__(self, H: int, W: int):
        super().__init__()
        a = torch.arange(H)[:, None].expand(H, W)
        b = torch.arange(W)[None, :].expand(H, W)
        p = (a * W + b).flatten()
        q = (((-a) % H) * W + (-b) % W).flatten()
        self.H, self.W = H, W
        self.register_buffer("first", p[p < q], persistent=False)
        self.register_buffer("second", q[p < q], persistent=False)
        self.register_buffer("self_conj", p[p == q], persistent=False)

    def pack(self, X: Tensor) -> Tensor:
        """Hermitian-symmetric complex ``[..., H, W]`` -> real coefficients ``[..., H, W]``."""
        Xf = X.flatten(-2)
        z = torch.empty(Xf.shape, dtype=Xf.real.dtype, device=Xf.device)
        root2 = math.sqrt(2.0)
        z[..., self.first] = root2 * Xf[..., self.first].real
        z[..., self.second] = root2 * Xf[..., self.first].imag
        z[..., self.self_conj] = Xf[..., self.self_conj].real
        return z.unflatten(-1, (self.H, self.W))

    def unpack(self, z: Tensor) -> Tensor:
        """Real coefficients -> Hermitian-symmetric complex ``[..., H, W]``."""
        zf = z.flatten(-2)
        X = torch.empty(zf.shape, dtype=torch.complex128 if zf.dtype == torch.float64 else torch.complex64,
                        device=zf.device)
        inv_root2 = 1.0 / math.sqrt(2.0)
        re, im = zf[..., self.first] * inv_root2, zf[..., self.second] * inv_root2
        X[..., self.first] = torch.complex(re, im)
        X[..., self.second] = torch.complex(re, -im)
        X[..., self.self_conj] = torch.complex(zf[..., self.self_conj], torch.zeros_like(zf[..., self.self_conj]))
        return X.unflatten(-1, (self.H, self.W))

    def analysis(self, x: Tensor, multiplier: Tensor | None = None) -> Tensor:
        """``pack(multiplier · F x)`` with F the orthonormal 2-D DFT over the last two dims."""
        X = torch.fft.fft2(x, norm="ortho")
        if multiplier is not None:
            X = X * multiplier
        return self.pack(X)

    def synthesis(self, z: Tensor, multiplier: Tensor | None = None) -> Tensor:
        """``Re F⁻¹(multiplier · unpack(z))``."""
        X = self.unpack(z)
        if multiplier is not None:
            X = X * multiplier
        return torch.fft.ifft2(X, norm="ortho").real
