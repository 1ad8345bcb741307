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


#: SSIM windows as papers use them: scikit-image's default 7×7 uniform window with the sample
#: covariance, and Wang et al. (2004)'s 11×11 Gaussian window (σ 1.5, population covariance), the
#: form of MATLAB's ``ssim``, ``pytorch_msssim`` and most diffusion-solver papers' tables.
SSIM_WINDOWS = {"uniform7": dict(win_size=7),
                "gaussian11": dict(win_size=11, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)}


def check_ssim_window(window: str) -> str:
    if window not in SSIM_WINDOWS:
        raise ValueError(f"ssim_window must be one of {', '.join(SSIM_WINDOWS)} (7×7 uniform as scikit-image, or "
                         f"Wang et al.'s 11×11 Gaussian σ 1.5), got {window!r}")
    return window


def ssim(x_hat: Tensor, x: Tensor, data_range: float, window: str = "uniform7") -> list[float]:
    """Structural similarity (Wang et al. 2004; scikit-image), channels averaged, per image, with the
    window of :data:`SSIM_WINDOWS` (``uniform7``, the default, or ``gaussian11``); the window shrinks
    to the image on tiny images (NaN below 3 pixels)."""
    from skimage.metrics import structural_similarity

    kw = dict(SSIM_WINDOWS[check_ssim_window(window)])
    out = []
    for a, b in _pairs(x_hat, x):
        win = min(kw["win_size"], *(s if s % 2 else s - 1 for s in a.shape[-2:]))
        if win < 3:
            out.append(math.nan)
            continue
        out.append(float(structural_similarity(b, a, data_range=data_range, channel_axis=0, **{**kw, "win_size": win})))
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


def _predictive_scale(draws: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-pixel mean and predictive scale ``s·√(1 + 1/N)`` of ``N ≥ 2`` draws ``[N, ...]``."""
    n = draws.shape[0]
    if n < 2:
        raise ValueError(f"calibration needs at least 2 posterior draws, got {n}")
    d = draws.detach().to("cpu", torch.float64)
    return d.mean(0), d.std(0, unbiased=True) * math.sqrt(1 + 1 / n), n


def z_scores(draws: Tensor, x: Tensor) -> Tensor:
    """Per-pixel z-score map ``(x − mean) / (s √(1 + 1/N))`` of the ground truth ``x`` against
    ``N`` posterior draws ``[N, *shape]`` (``s``: the draws' standard deviation). For a calibrated
    Gaussian posterior the map is Student-t with N − 1 degrees of freedom (RMS ≈ 1 for large N);
    pixels with zero spread give ±inf (or NaN where also exact)."""
    mean, scale, _ = _predictive_scale(draws)
    return (x.detach().to("cpu", torch.float64) - mean) / scale


def coverage(draws: Tensor, x: Tensor, levels=(0.5, 0.9, 0.95)) -> dict[float, float]:
    """Fraction of pixels whose ground truth lies in the central ``level`` credible interval built
    from ``N`` posterior draws ``[N, *shape]``: the Student-t predictive interval
    ``mean ± t_{N−1, (1+level)/2} · s √(1 + 1/N)``, which has exactly the nominal coverage when the
    posterior is Gaussian and the truth is a draw from it (so it is honest with as few as 2–4
    draws; an empirical quantile interval of N draws would not be). ``coverage ≈ level``:
    calibrated; lower: over-confident; higher: under-confident."""
    from scipy.stats import t as student_t

    _, _, n = _predictive_scale(draws)
    z = z_scores(draws, x).abs().reshape(-1)
    return {float(lv): float((z <= float(student_t.ppf((1 + lv) / 2, n - 1))).double().mean()) for lv in levels}


def metric_bounds(name: str) -> tuple[float, float]:
    """The range a metric's values (and so its intervals) can take: SSIM [-1, 1], coverage and LPIPS
    [0, 1], NMSE/seconds/NFE/memory/sliced-Wasserstein distances ≥ 0, PSNR and the rest unbounded."""
    if name.startswith("ssim"):
        return (-1.0, 1.0)
    if name.startswith(("coverage", "lpips", "residual_chi_high")):
        return (0.0, 1.0)
    if name.startswith(("nmse", "seconds", "nfe", "peak_memory", "residual_chi", "fid", "kid", "sw", "mean_err",
                        "var_ratio")):
        return (0.0, math.inf)
    return (-math.inf, math.inf)


def interval95(values, bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict[str, float]:
    """:func:`summary` plus the 95 % confidence interval of the mean (Student-t, ``lo``/``hi``;
    NaN for fewer than 2 values), clipped to the metric's ``bounds`` (:func:`metric_bounds`): an
    interval never leaves the range the metric can take."""
    from scipy.stats import t as student_t

    s = summary(values)
    if s["n"] >= 2:
        half = float(student_t.ppf(0.975, s["n"] - 1)) * s["std"] / math.sqrt(s["n"])
        s.update(lo=max(s["mean"] - half, bounds[0]), hi=min(s["mean"] + half, bounds[1]))
    else:
        s.update(lo=math.nan, hi=math.nan)
    return s
