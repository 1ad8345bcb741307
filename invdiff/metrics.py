"""Image-quality and data-consistency metrics, per image.

PSNR and SSIM are scikit-image's (``peak_signal_noise_ratio``, ``structural_similarity``) with the
data range given explicitly (never inferred from the image). Complex images (2 real channels) are
compared as magnitudes, as fastMRI does. All functions take ``[B, C, H, W]`` tensors (any float
dtype, any device) and return one float per image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def display(x: Tensor, complex_image: bool = False) -> Tensor:
    """``[B, C, H, W]`` → what is compared and shown: the magnitude ``[B, 1, H, W]`` of a complex
    (2-channel) image, the image itself otherwise."""
    if complex_image:
        if x.shape[1] != 2:
            raise ValueError(f"a complex image has 2 channels (real, imag), got {list(x.shape)}")
        return x.square().sum(1, keepdim=True).sqrt()
    return x


def _pairs(x_hat: Tensor, x: Tensor):
    if x_hat.shape != x.shape:
        raise ValueError(f"metrics: reconstruction {list(x_hat.shape)} and reference {list(x.shape)} differ in shape")
    a = x_hat.detach().to("cpu", torch.float64).numpy()
    b = x.detach().to("cpu", torch.float64).numpy()
    return zip(a, b)


def psnr(x_hat: Tensor, x: Tensor, data_range: float) -> list[float]:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range² / MSE)``, per image."""
    from skimage.metrics import peak_signal_noise_ratio

    out = []
    for a, b in _pairs(x_hat, x):
        out.append(math.inf if np.array_equal(a, b) else float(peak_signal_noise_ratio(b, a, data_range=data_range)))
    return out


def ssim(x_hat: Tensor, x: Tensor, data_range: float) -> list[float]:
    """Structural similarity (Wang et al. 2004; scikit-image, 7×7 uniform window, smaller on tiny
    images), channels averaged, per image."""
    from skimage.metrics import structural_similarity

    out = []
    for a, b in _pairs(x_hat, x):
        win = min(7, *(s if s % 2 else s - 1 for s in a.shape[-2:]))
        if win < 3:
            out.append(math.nan)
            continue
        out.append(float(structural_similarity(b, a, data_range=data_range, channel_axis=0, win_size=win)))
    return out


def nmse(x_hat: Tensor, x: Tensor) -> list[float]:
    """Normalised mean squared error ``‖x̂ − x‖² / ‖x‖²`` (fastMRI's NMSE), per image."""
    out = []
    for a, b in _pairs(x_hat, x):
        den = float((b**2).sum())
        out.append(float(((a - b) ** 2).sum()) / den if den > 0 else math.nan)
    return out


def data_consistency(operator, x_hat: Tensor, y: Tensor, sigma_y) -> dict[str, list[float]]:
    """How well a reconstruction explains its measurement, per image.

    * ``residual_rel`` = ``‖A(x̂) − y‖ / ‖y‖``;
    * ``residual_chi`` = ``‖A(x̂) − y‖ / (σ_y √m)`` (m entries of y): about 1 when the residual is
      at the noise level, ≪ 1 for over-fitting, ≫ 1 for a reconstruction the data contradict
      (NaN when σ_y = 0). Per-measurement σ_y (tuple/list) is not supported here.
    """
    with torch.no_grad():
        r = (operator.A(x_hat.to(y.dtype)) - y).reshape(y.shape[0], -1).to(torch.float64)
    norm_r = r.norm(dim=1)
    norm_y = y.reshape(y.shape[0], -1).to(torch.float64).norm(dim=1)
    s = torch.as_tensor(sigma_y, dtype=torch.float64).reshape(-1).expand(y.shape[0]).to(r.device)
    m = r.shape[1]
    chi = torch.where(s > 0, norm_r / (s.clamp_min(1e-300) * math.sqrt(m)), torch.full_like(s, math.nan))
    rel = torch.where(norm_y > 0, norm_r / norm_y.clamp_min(1e-300), torch.full_like(norm_y, math.nan))
    return {"residual_rel": rel.cpu().tolist(), "residual_chi": chi.cpu().tolist()}


def summary(values) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of the finite values (std with ddof = 1; 0 for one value)."""
    v = np.asarray([float(a) for a in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}
