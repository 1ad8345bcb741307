"""Scoring one reconstruction against its ground truth and its measurement: the one definition of
the per-image metrics that the ``invdiff`` app and the ``invdiff-bench`` presets both write.

    base, name = baseline(op, y, "auto")
    m = image_metrics(op, prior, x_true, rec, base, y, sigma_y)     # rec: an invdiff.Reconstruction

Per image, with N posterior draws (papers' conventions):

* ``psnr`` / ``ssim`` (and ``nmse`` for MRI): the *average over the draws* of single-draw scores —
  what papers report for one sample, with less variance; ``psnr_mean`` / ``ssim_mean`` score the
  posterior mean (N > 1 and the draws differ); ``psnr_best_of_N`` only when asked for, and labelled so.
* ``coverage_50/90/95`` and ``z_median`` (median |z-score| over its calibrated value: 1
  calibrated, > 1 over-confident; samplers only — not for point estimators) measure calibration (:func:`invdiff.metrics.coverage`,
  :func:`invdiff.metrics.z_scores`).
* ``residual_rel`` / ``residual_chi``: the data consistency ‖A(x̂) − y‖ of the draws, averaged
  (:func:`invdiff.metrics.data_consistency`) — the only scores without a ground truth.
* ``psnr_baseline`` / ``ssim_baseline`` (/ ``nmse_baseline``): the same scores of the reference shown
  beside the result (:func:`baseline`); ``lpips`` with local LPIPS weights.

Draws, means and baselines are clipped to the prior's data range before PSNR/SSIM (a
reconstruction is an image on that range); complex MRI images are compared as magnitudes, unclipped,
on the range [0, max |range|]. NMSE is computed unclipped. Which operators count as MRI and which
images are complex is what the operator declares (``operator.modality``, ``operator.complex_image``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import metrics as M


def is_mri(op) -> bool:
    """The operator declares MRI (``modality == "mri"``): NMSE is reported, the baseline is 'zero-filled'."""
    return getattr(op, "modality", None) == "mri"


def complex_image(op) -> bool:
    """The operator's images are complex, stored as 2 real channels (compared as magnitudes)."""
    return bool(getattr(op, "complex_image", False))


def baseline(op, y: Tensor, kind: str = "auto") -> tuple[Tensor | None, str]:
    """(image, name) of the reference shown and scored beside a reconstruction.

    ``auto``: the measurement itself when it is an image of the problem's shape (blur, inpainting:
    the input a user would compare against; a blur's pseudo-inverse amplifies the noise without
    bound), else the zero-filled / pseudo-inverse image A⁺y, else Aᵀy; ``pinv`` / ``adjoint`` force
    one (``ValueError`` when the operator has none); ``none`` gives ``(None, "")``."""
    if kind not in ("auto", "pinv", "adjoint", "none"):
        raise ValueError(f"baseline must be auto, pinv, adjoint or none, got {kind!r}")
    caps, mri = op.capabilities, is_mri(op)
    if kind == "none":
        return None, ""
    if kind == "auto" and tuple(y.shape[1:]) == tuple(op.img_size) and not mri:
        return y, "measurement y"
    if kind in ("auto", "pinv") and "pinv" in caps:
        return op.A_dagger(y), ("zero-filled (A⁺y)" if mri else "A⁺y")
    if kind in ("auto", "adjoint") and "adjoint" in caps:
        return op.A_adjoint(y), ("zero-filled (Aᴴy)" if mri else "Aᵀy")
    if kind != "auto":
        raise ValueError(f"baseline={kind}: the operator {op.describe()} has no {kind}")
    return None, ""


def image_metrics(op, prior, x_true: Tensor | None, rec, base: Tensor | None, y: Tensor, sigma_y, *,
                  best_of: bool = False, lpips=None, sampler: bool = True, ssim_window: str = "uniform7") -> dict:
    """The metrics of one image (module docstring).

    :param op: the operator y was measured with (on the reconstruction's device).
    :param prior: the prior (its ``data_range`` is the images' range).
    :param x_true: ``[1, C, H, W]`` ground truth (physical units), or ``None`` (measured data).
    :param rec: the :class:`invdiff.api.Reconstruction` of this one image (``samples [1, N, C, H, W]``).
    :param base: ``[1, C, H, W]`` the baseline image (:func:`baseline`), or ``None``.
    :param y: ``[1, *meas]`` the measurement; ``sigma_y``: its noise σ (measurement units).
    :param best_of: also report the best of the N draws (``psnr_best_of_N``, ``ssim_best_of_N``).
    :param lpips: an LPIPS network (:func:`invdiff.perceptual.load_perceptual`), or ``None``.
    :param ssim_window: :data:`invdiff.metrics.SSIM_WINDOWS` (``uniform7`` or ``gaussian11``).
    :param sampler: the solver's draws are posterior samples (its class in
        :data:`invdiff.solvers.SOLVER_CLASSES` is not ``point``). For a point estimator the mean of
        its restarts is scored but no coverage or z-scores are reported: its spread is no posterior.
    """
    draws = rec.samples[0]
    n = draws.shape[0]
    cplx = complex_image(op)
    lo, hi = prior.data_range
    rng = max(abs(lo), abs(hi)) if cplx else hi - lo
    clip = (lambda t: t) if cplx else (lambda t: t.clamp(lo, hi))  # noqa: E731
    show = lambda t: M.display(t, cplx)  # noqa: E731
    dc = M.data_consistency(op, draws, y.expand(n, *y.shape[1:]), sigma_y)
    m = {k: float(sum(v) / n) for k, v in dc.items()}
    if x_true is None:
        return m
    X = x_true.expand_as(draws)
    p = M.psnr(show(clip(draws)), show(X), rng)
    s = M.ssim(show(clip(draws)), show(X), rng, ssim_window)
    m.update(psnr=sum(p) / n, ssim=sum(s) / n, data_range=float(rng))
    if is_mri(op):
        m["nmse"] = sum(M.nmse(show(draws), show(X))) / n
    if n > 1 and float(draws.std(0).max()) > 0:  # (a deterministic method has no spread to calibrate)
        m.update(_posterior_metrics(rec, draws, x_true, show, clip, rng, calibrate=sampler, ssim_window=ssim_window))
        if best_of:
            m[f"psnr_best_of_{n}"] = max(p)
            m[f"ssim_best_of_{n}"] = max(s)
    if base is not None:
        m["psnr_baseline"] = M.psnr(show(clip(base)), show(x_true), rng)[0]
        m["ssim_baseline"] = M.ssim(show(clip(base)), show(x_true), rng, ssim_window)[0]
        if is_mri(op):
            m["nmse_baseline"] = M.nmse(show(base), show(x_true))[0]
    if lpips is not None:
        to01 = lambda t: ((show(clip(t)) - (0 if cplx else lo)) / rng).clamp(0, 1).float()  # noqa: E731
        with torch.no_grad():
            m["lpips"] = float(lpips(to01(draws).cpu(), to01(X).cpu()).mean())
    return m


def _posterior_metrics(rec, draws: Tensor, x_true: Tensor, show, clip, rng: float, calibrate: bool = True,
                       ssim_window: str = "uniform7") -> dict:
    """Scores of the posterior mean and (``calibrate``: a sampler's) the calibration of the N > 1 draws."""
    from scipy.stats import t as student_t

    n = draws.shape[0]
    m = {"psnr_mean": M.psnr(show(clip(rec.mean)), show(x_true), rng)[0],
         "ssim_mean": M.ssim(show(clip(rec.mean)), show(x_true), rng, ssim_window)[0]}
    if not calibrate:
        return m
    cov = M.coverage(show(draws), show(x_true)[0])
    m.update({f"coverage_{round(100 * k)}": v for k, v in cov.items()})
    z = M.z_scores(show(draws), show(x_true)[0])
    z = z[~torch.isnan(z)].abs()  # median |z| over its calibrated value (t_{N-1} quartile): 1 = calibrated
    m["z_median"] = float(z.median()) / float(student_t.ppf(0.75, n - 1)) if z.numel() else math.nan
    return m


def denoising_ratios(prior, x_phys: Tensor, sigmas, generator: torch.Generator) -> list[float]:
    """MSE / σ² of ``prior.denoiser`` on the images ``x_phys`` (physical units) plus Gaussian noise,
    for each σ (model units) in order, one noise draw per σ from ``generator`` (on the CPU, in the
    images' dtype): the MSE in model units, so 1 means no better than returning the noisy image. What
    ``invdiff-train``'s validation score, the shipped-prior checks and their tests measure."""
    x = prior.to_model(x_phys)
    out = []
    with torch.no_grad():
        for sigma in sigmas:
            noisy = x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            out.append(float((prior.denoiser(noisy, sigma) - x).square().mean()) / sigma**2)
    return out


def patch_frechet_distance(a: Tensor, b: Tensor, patch: int = 8, stride: int = 4) -> float:
    """Fréchet distance between Gaussian fits of the ``patch × patch`` pixel patches (every ``stride``
    pixels, all channels) of two image sets ``[N, C, H, W]`` in the same units — an FID-like
    score that needs no feature network (a *proxy*: it sees local texture and contrast statistics,
    not objects). 0 for equal patch means and covariances; each set needs more patches than
    ``C·patch²`` (the covariance's size)."""
    from .perceptual import frechet_distance

    def stats(x: Tensor):
        p = torch.nn.functional.unfold(x.double().cpu(), patch, stride=stride)  # [N, C·p², L]
        p = p.transpose(1, 2).reshape(-1, p.shape[1])
        if p.shape[0] <= p.shape[1]:
            raise ValueError(f"patch_frechet_distance: {p.shape[0]} patches of dimension {p.shape[1]}: give more or "
                             "larger images, or a smaller patch")
        return p.mean(0), torch.cov(p.T)

    (m1, c1), (m2, c2) = stats(a), stats(b)
    return frechet_distance(m1, c1, m2, c2)
