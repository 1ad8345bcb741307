"""Classical baselines with the solvers' call shape (no diffusion prior).

Class (:mod:`invdiff.solvers.classes`): ``pinv``: point estimator (estimates the pseudo-inverse
A⁺y). ``tv``: point estimator (estimates the total-variation regularised least-squares estimate).
``dpir``: point estimator (estimates plug-and-play half-quadratic splitting with the prior's
denoiser).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from operators import require

from ..checks import check_measurement, check_sigma_y, whole_number
from ._common import svd_condition
from .network import checks_done


def pinv(y: Tensor, operator, prior=None, *, sigma_y=0.0, steps: int = 1, generator=None, callback=None) -> Tensor:
    """The operator's pseudo-inverse ``A⁺y`` (truncated SVD, closed form, or CG): the zero-filled
    MRI image, the pseudo-inverse of a blur or a downsampling. ``prior``, ``sigma_y``, ``steps``
    and ``generator`` are accepted for the common call shape and ignored (y and σ_y are checked
    like every solver's). NFE = 0."""
    require(operator, "pinv", ["pinv"])
    check_measurement("pinv", y, operator)
    check_sigma_y(sigma_y, y.shape[0], y_shape=y.shape, name="pinv")
    checks_done()
    return operator.A_dagger(y)


def _grad(x: Tensor) -> Tensor:
    """Forward differences (Neumann boundary), ``[..., H, W] -> [2, ..., H, W]``."""
    gy = torch.zeros_like(x)
    gx = torch.zeros_like(x)
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return torch.stack([gy, gx])


def _div(p: Tensor) -> Tensor:
    """Minus the adjoint of :func:`_grad`."""
    py, px = p[0], p[1]
    dy = torch.zeros_like(py)
    dx = torch.zeros_like(px)
    dy[..., 0, :] = py[..., 0, :]
    dy[..., 1:-1, :] = py[..., 1:-1, :] - py[..., :-2, :]
    dy[..., -1, :] = -py[..., -2, :]
    dx[..., :, 0] = px[..., :, 0]
    dx[..., :, 1:-1] = px[..., :, 1:-1] - px[..., :, :-2]
    dx[..., :, -1] = -px[..., :, -2]
    return dy + dx


def _start(operator, y: Tensor) -> Tensor:
    """Where TV starts: ``A⁺y`` when the operator has an exact SVD whose nonzero singular values
    span less than 10³ (MRI, inpainting, SR: the pseudo-inverse is a fair image), otherwise the
    Tikhonov solution ``(AᵀA + I)⁻¹Aᵀy`` = ``prox_l2(0, y, 1)`` (a blur's A⁺y amplifies the noise
    without bound, and Chambolle–Pock would spend its iterations undoing that)."""
    cond = svd_condition(operator)
    if "pinv" in operator.capabilities and cond is not None and cond < 1e3:
        return operator.A_dagger(y)
    return operator.prox_l2(torch.zeros_like(operator.A_adjoint(y)), y, 1.0)


def tv(y: Tensor, operator, prior=None, *, sigma_y=0.0, steps: int = 300, generator=None, callback=None,
       lam: float = 0.01) -> Tensor:
    """Total-variation regularised reconstruction ``argmin_x ½‖Ax − y‖² + λ TV(x)`` (isotropic TV
    per channel, Neumann boundary) by Chambolle–Pock (2011, Alg. 1, θ = 1, τ = σ = 0.35 so that
    τσ‖∇‖² < 1), the data term through the operator's exact prox (closed form or CG); ``steps``
    iterations from ``A⁺y`` or a Tikhonov solution (:func:`_start`). ``lam``: a float or ``[B]`` tensor, in y's units (tune it on
    validation images). NFE = 0."""
    require(operator, "tv", ["linear", "adjoint", "prox_l2"])
    check_measurement("tv", y, operator)
    check_sigma_y(sigma_y, y.shape[0], y_shape=y.shape, name="tv")
    if not whole_number(steps):
        raise ValueError(f"tv: steps must be a positive integer, got {steps!r}")
    lam_t = torch.as_tensor(lam, dtype=torch.float64, device=y.device)
    if bool((lam_t < 0).any()):
        raise ValueError(f"tv: lam must be >= 0, got {lam}")
    checks_done()
    y64 = y.to(torch.float64)
    x = _start(operator, y64)
    lam_b = lam_t.reshape(-1, *([1] * (x.ndim - 1))) if lam_t.ndim == 1 else lam_t
    tau = sig = 0.35
    p = _grad(x) * 0
    x_bar = x
    for i in range(steps):
        p = p + sig * _grad(x_bar)
        norm = p.square().sum(0, keepdim=True).sqrt()
        p = p / torch.clamp(norm / torch.clamp(lam_b, min=1e-300), min=1.0)
        x_new = operator.prox_l2(x + tau * _div(p), y64, tau)
        x_bar = 2 * x_new - x
        x = x_new
        if callback is not None:
            callback(i, x, x)
    return x.to(y.dtype)


def dpir(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 8, generator=None, callback=None,
         sigma_floor: float = 0.01) -> Tensor:
    """Plug-and-play baseline: deepinv's DPIR (Zhang et al., TPAMI 2021; half-quadratic splitting,
    ``deepinv.optim.DPIR``'s iteration and parameter schedule: denoiser σ from 49/255 down to the
    noise level, log-spaced over ``steps`` iterations, step sizes ∝ σ_y²/σ_k²) with the *prior's
    denoiser* as the plug-in denoiser (deepinv's default DRUNet would need a download). The data
    step is the operator's exact ``prox_l2``. Deterministic (``generator`` unused); NFE = ``steps``.
    ``sigma_floor`` keeps the schedule finite for noiseless data (σ_y below it is raised to it)."""
    from deepinv.optim import dpir as _dpir

    require(operator, "dpir", ["linear", "prox_l2"])
    check_measurement("dpir", y, operator)
    check_sigma_y(sigma_y, y.shape[0], y_shape=y.shape, name="dpir")
    if not whole_number(steps):
        raise ValueError(f"dpir: steps must be a positive integer, got {steps!r}")
    s_y = torch.as_tensor(sigma_y, dtype=torch.float64).reshape(-1)
    if bool((s_y != s_y[0]).any()):
        raise ValueError("dpir: one σ_y for the batch (deepinv's schedule is per batch)")
    s_y = max(float(s_y[0]), float(sigma_floor))
    checks_done()

    class _Denoiser(torch.nn.Module):
        def forward(self, x, sigma, *args, **kwargs):
            s = float(torch.as_tensor(sigma).reshape(-1)[0]) * prior.scale
            out = prior.to_physical(prior.denoiser(prior.to_model(x.to(torch.float64)), s))
            return out.to(x.dtype)

    # deepinv.optim.DPIR's construction (HQS iterator, PnP prior, L2 fidelity), with its schedule
    # (get_DPIR_params: σ_k log-spaced 49/255 → σ_y, stepsize (σ_k / max(0.01, σ_y))² / 0.23)
    # stretched to `steps` iterations (its own is 8)
    sig = torch.logspace(math.log10(49 / 255), math.log10(s_y), steps, dtype=torch.float64)
    pnp = _dpir.PnP(denoiser=_Denoiser())
    model = _dpir.BaseOptim(_dpir.create_iterator("HQS", prior=pnp, cost_fn=None, g_first=False), max_iter=steps,
                            data_fidelity=_dpir.L2(), prior=pnp, early_stop=False,
                            params_algo={"stepsize": ((sig / max(0.01, s_y)) ** 2 / 0.23).tolist(),
                                         "g_param": sig.tolist()})
    with torch.no_grad():
        x = model(y.to(torch.float64), operator)
    if callback is not None:
        callback(steps - 1, x, x)
    return x.to(y.dtype)
