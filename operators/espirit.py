"""ESPIRiT coil-sensitivity estimation from the auto-calibration (ACS) region (Uecker et al.,
MRM 2014, "ESPIRiT — an eigenvalue approach to autocalibrating parallel MRI"), in torch.

1. Calibration matrix: every ``kernel × kernel`` patch of the fully sampled ``calib`` centre,
   all coils stacked (rows = patches).
2. Its right singular vectors with singular value ≥ ``threshold · σ_max`` span the signal
   subspace; each is a set of k-space kernels ``[N, k, k]``.
3. In image space (the kernels' zero-padded DFTs, scaled by 1/k) the per-pixel matrix
   ``G(r) = Σ_j ĝ_j(r) ĝ_j(r)ᴴ`` has eigenvalue ≈ 1 where the coils see signal, with the coil
   sensitivities as eigenvector (eq. 15 of the paper).
4. Maps = the top eigenvector, phase-referenced to the first coil, zeroed where
   the top eigenvalue is below ``crop``.

Deviation: one set of maps (ESPIRiT's first eigenvector map); soft-SENSE with several maps is not
implemented.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .mri import ifft2c


def _pad_kernel(k: Tensor, H: int, W: int) -> Tensor:
    """Zero-pad kernels to H×W with their centre sample at the DC position of the centred grid
    (the placement the validated ESPIRiT convention uses)."""
    kh, kw = k.shape[-2:]
    top, left = (H - kh + 1) // 2, (W - kw + 1) // 2
    return torch.nn.functional.pad(k, (left, W - kw - left, top, H - kh - top))


def espirit_maps(kspace: Tensor, calib: int | tuple[int, int] = 24, kernel: int = 6, threshold: float = 0.02,
                 crop: float = 0.95) -> Tensor:
    """Coil maps ``[N, H, W]`` (complex128) from centred multi-coil k-space ``[N, H, W]`` (complex,
    or real ``[2, N, H, W]`` channels) whose central ``calib`` block is fully sampled."""
    if not kspace.is_complex():
        if kspace.ndim != 4 or kspace.shape[0] != 2:
            raise ValueError("espirit_maps: real k-space must be [2, N, H, W] (real, imaginary)")
        kspace = torch.complex(kspace[0].double(), kspace[1].double())
    kspace = kspace.to(torch.complex128)
    N, H, W = kspace.shape
    ch, cw = (calib, calib) if isinstance(calib, int) else tuple(calib)
    if ch > H or cw > W or kernel > min(ch, cw):
        raise ValueError(f"espirit_maps: calibration {ch}×{cw} and kernel {kernel} must fit the {H}×{W} k-space")
    top, left = (H - ch + 1) // 2, (W - cw + 1) // 2
    acs = kspace[:, top : top + ch, left : left + cw]
    if bool((acs == 0).all(dim=0).any()):
        raise ValueError("espirit_maps: the calibration region is not fully sampled; reduce `calib`")
    # 1. calibration matrix [patches, N·k·k]
    patches = acs.unfold(1, kernel, 1).unfold(2, kernel, 1)  # [N, ph, pw, k, k]
    A = patches.permute(1, 2, 0, 3, 4).reshape(-1, N * kernel * kernel)
    # 2. signal subspace
    _, S, Vh = torch.linalg.svd(A, full_matrices=False)
    kernels = Vh[S >= threshold * S[0]].reshape(-1, N, kernel, kernel)  # [n, N, k, k]
    # 3. image-space kernels on the full grid: ĝ = (inverse) DFT of the zero-padded kernel / k
    # kernels are accumulated a few at a time: [n, N, H, W] at once can take gigabytes
    G = torch.zeros(H, W, N, N, dtype=torch.complex128)
    for chunk in kernels.split(8):
        img = ifft2c(_pad_kernel(chunk, H, W)) * ((H * W) ** 0.5 / kernel)  # [n, N, H, W]
        G += torch.einsum("jahw,jbhw->hwab", img, img.conj())  # Σ_j ĝ_j ĝ_jᴴ per pixel
    # 4. top eigenvector per pixel (Hermitian eigendecomposition, ascending eigenvalues)
    evals, evecs = torch.linalg.eigh(G)
    eig, v = evals[..., -1], evecs[..., -1]
    v = v * torch.exp(-1j * torch.angle(v[..., :1]))  # phase relative to coil 0
    maps = v.permute(2, 0, 1) * (eig > crop)
    return maps
