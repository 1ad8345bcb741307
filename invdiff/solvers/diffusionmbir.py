"""DiffusionMBIR: a 2-D diffusion prior on every slice, coupled along z by total variation (ADMM).

Chung, Ryu, McCann, Klasky & Ye, "Solving 3D Inverse Problems using Pre-trained 2D Diffusion
Models", CVPR 2023, arXiv:2211.10655. Official code: github:HJ-harry/DiffusionMBIR @ 592ea29
(``controllable_generation_TV.py``: ``get_pc_radon_ADMM_TV_vol`` l. 226–350 for CT,
``get_pc_radon_ADMM_TV_mri`` l. 695–824 for MRI; settings in ``inverse_problem_solver_AAPM_3d_total.py``
and ``inverse_problem_solver_BRATS_MRI_3d_total.py``).

A volume ``x`` ``[C, D, H, W]`` is D axial slices. The prior is a 2-D prior of slices ``[C, H, W]``:
every denoiser call takes all D slices of all B volumes as one batch of B·D images, so the prior
alone treats slices as independent. The coupling comes from the model-based data-consistency step
(the paper's "MBIR" prior in the remaining direction), which solves

    x* = argmin_x  ½‖A x − y‖² + λ‖D_z x‖₁                                        (TV-z)

(D_z the forward difference along the slice axis: total variation along z only) by ADMM with the
split ``z = D_z x`` and the scaled dual ``w`` (paper's ADMM updates; official ``CS_routine``, l. 282–294):

    x ← (AᵀA + ρ D_zᵀD_z)⁻¹ (Aᵀy + ρ D_zᵀ(z − w))     (ADMM-x: ``cg_iters`` CG iterations from the current x)
    z ← S_{λ/ρ}(D_z x + w)                             (ADMM-z: S_τ(v) = sign(v)·max(|v| − τ, 0))
    w ← w + D_z x − z                                  (ADMM-w)

``admm_iters`` times per call, with ``z`` and ``w`` kept from one call to the next for the whole
run (the paper's variables shared across diffusion steps: each step warm-starts the ADMM of the
previous one). :func:`admm_tv_z` is that step; run long, it solves (TV-z) (tests/test_diffusionmbir.py).

The sampler is the VE predictor–corrector of Song et al. (ICLR 2021) on the geometric grid
``σ_0 = σ_max > … > σ_{N−1} = σ_min``, ``σ_N = 0`` (EDM form: ``x = x₀ + σ n``, score
``∇log p_σ(x) = (D(x, σ) − x)/σ²``, slice by slice), with a data-consistency step after the
predictor and after each corrector step (the paper's Algorithm 1 as this implementation reads it;
the official code differs, see Deviations). Each level i:

1. reverse-diffusion predictor (Song et al. 2021, eq. 47), σ_i → σ_{i+1}:
   ``x ← x + (σ_i² − σ_{i+1}²) ∇log p_{σ_i}(x) + √(σ_i² − σ_{i+1}²) n`` (no noise into σ = 0);
2. data consistency: ``x ← ADMM-TV-z(x)``;
3. Langevin corrector at σ_{i+1} (Song et al. 2021, Alg. 4), ``corrector_steps`` times (none at
   σ = 0): ``ε = 2 (snr ‖n‖/‖∇log p‖)²`` per slice, ``x ← x + ε ∇log p_{σ_{i+1}}(x) + √(2ε) n``;
4. data consistency after each corrector step.

The output is the state after the last level (predictor mean at σ → 0, then data consistency).
NFE (denoiser calls on the batch of B·D slices) = ``steps + corrector_steps · (steps − 1)``.

``lam = 0`` is the **slice-wise baseline**: the TV term and its split are dropped and the data
consistency is ``cg_iters`` CG iterations on each slice's own normal equations ``A_dᵀA_d x_d = A_dᵀy_d``
(``admm_iters`` times), so slices do not interact at all: slice d's result is the one a 2-D run on
that slice would give with the same noise.

==============  ==============================  ==============  ================================
code            paper / official code           code            paper / official code
==============  ==============================  ==============  ================================
``x``           x_i (all slices)                ``lam``         λ (``lamb_1``)
``x0_hat``      x̂₀ = D(x_i, σ_i)                ``rho``         ρ
``z_split``     z (``del_z``) = D_z x           ``w``           w (``udel_z``), scaled dual
``snr``         r (``snr``)                     ``cg_iters``    CG iterations per ADMM-x (``n_inner``)
``admm_iters``  ADMM iterations per step        ``steps``       N (``num_scales``)
==============  ==============================  ==============  ================================

Units. ``λ`` and ``ρ`` weigh (TV-z) with ``x`` in physical units and ``y`` in measurement units
(the ADMM runs on ``prior.to_physical(x)``), as the official code does on its [0, 1] images. Its
CT back-projection ``AT`` is scaled by π/(2·n_views) (``IRadon(use_filter=None)``), so its CT
problem is (π/(2 n_views))·½‖Rx − y‖² + λ‖D_z x‖₁: with :class:`operators.VolumeParallelBeamCT`
(unnormalised Radon sums, as the official ``Radon``) the same problem takes ``λ·2n/π`` and
``ρ·2n/π`` (8 views: ×5.09). Its MRI pair (``fft2``/``ifft2``) has the orthonormal ``AᵀA`` of
:class:`operators.VolumeSingleCoilMRI`: its λ, ρ carry over.

Scale of ρ: z and w trail the diffusion state by a step; with ρ comparable to ‖AᵀA‖ the x-update
keeps pulling D_z x in the null space of A toward earlier, noisier differences and the result stays
noisy (measured: ρ = 1 on a 2× MRI volume, ‖AᵀA‖ = 1). The official runs have ρ ≈ 0.01–0.03·‖AᵀA‖
(MRI 0.01; CT 10 against ≈ 390 for 8 views of 256², its back-projection scale included).

Defaults (official CT script, AAPM 256, 8 views): N = 2000 levels, σ ∈ [0.01, 378] (clipped to the
prior's range), one corrector step at snr = 0.16, λ = 0.04, ρ = 10, one ADMM iteration with one CG
iteration per data-consistency step. Official MRI script (BRATS, 2× uniform 1-D): λ = 0.005, ρ = 0.01.

Deviations:

* Data consistency after the predictor *and* after each corrector step (Algorithm 1 as read
  here); the official ``pc_radon`` runs one ADMM step per level, after the predictor–corrector pair.
* The corrector runs at σ_{i+1}, the noise level of the state the predictor produced; the official
  code evaluates it at σ_i (the level before the predictor). No corrector at σ = 0 (the official
  one adds σ_min-level noise after its last predictor step).
* D_z has D − 1 differences (no boundary wrap); the official ``_Dz`` is circular (the last slice
  differenced against the first, coupling the top and bottom of the volume).
* The corrector's norms are per slice; the official code averages them over chunks of 12 (CT) or
  20 (MRI) slices, which makes a slice depend on its chunk. ``slice_batch`` only splits the
  denoiser calls (memory); results do not depend on it.
* ``lam = 0`` drops the split (the slice-wise baseline above); in the official code λ = 0 still
  couples slices through ρD_zᵀD_z in the x-update.
* No final CT-specific SIRT step (official ``final_consistency``:
  ``x + Aᵀ(y − Ax)/AᵀA1``).
* σ_y is not used (the paper's data are noiseless; λ, ρ absorb the noise level). CG and the
  corrector norms are per volume / per slice, so each volume of a batch is independent.
* The denoiser is the prior's EDM-form D(x, σ) (any parameterisation), not a VE score network.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: slices a priori
independent under the 2-D prior, coupled only by a z-TV MAP step — a warm-started, inexact ADMM
pulled toward argmin ½‖Ax − y‖² + λ‖D_z x‖₁ — in place of the likelihood; ignores σ_y).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from operators import CapabilityError, require
from operators.base import module_device
from operators.linalg import conjugate_gradient

from .._random import GeneratorArg, check_generator, randn
from ..checks import check_measurement, check_sigma_y, whole_number
from ..priors.base import Prior
from ..priors.bridge import BridgePrior
from ..priors.schedules import geometric_sigma_grid
from ._common import Callback, SolverDivergedError, same_device
from .network import runtime_network

NAME = "diffusionmbir"
CG_TOL = 1e-12  # (CG stops early only at machine precision: cg_iters is the budget)


# --------------------------------------------------------------------------------------------
# z-direction total variation and its ADMM
# --------------------------------------------------------------------------------------------
def z_diff(x: Tensor) -> Tensor:
    """``D_z x``: forward differences along the slice axis, ``[B, C, D, H, W]`` → ``[B, C, D−1, H, W]``."""
    return x[:, :, 1:] - x[:, :, :-1]


def z_diff_adjoint(v: Tensor) -> Tensor:
    """``D_zᵀ v``: ``[B, C, D−1, H, W]`` → ``[B, C, D, H, W]``."""
    pad = torch.nn.functional.pad
    return pad(v, (0, 0, 0, 0, 1, 0)) - pad(v, (0, 0, 0, 0, 0, 1))


def soft_threshold(v: Tensor, tau: float) -> Tensor:
    """``S_τ(v) = sign(v)·max(|v| − τ, 0)``, the proximal map of τ‖·‖₁."""
    return torch.sign(v) * (v.abs() - tau).clamp_min(0.0)


def _slices(x: Tensor) -> Tensor:
    """``[B, C, D, H, W]`` → ``[B·D, C, H, W]`` (slice d of volume b at row b·D + d)."""
    B, C, D = x.shape[:3]
    return x.movedim(2, 1).reshape(B * D, C, *x.shape[3:])


def _volumes(t: Tensor, B: int) -> Tensor:
    """Inverse of :func:`_slices`."""
    return t.reshape(B, -1, *t.shape[1:]).movedim(1, 2)


def admm_tv_z(x: Tensor, y: Tensor, operator, lam: float, rho: float, state: tuple[Tensor, Tensor] | None = None, *,
              admm_iters: int = 1, cg_iters: int = 1, Aty: Tensor | None = None) -> tuple[Tensor, tuple | None]:
    """ADMM for ``min_x ½‖A x − y‖² + λ‖D_z x‖₁`` started at ``x`` (module docstring, ADMM-x/z/w).

    :param x: ``[B, C, D, H, W]`` float64, physical units: the warm start (the diffusion state).
    :param y: ``[B, *operator.meas_size]`` measurement units.
    :param operator: a linear volume operator with an adjoint (block diagonal or not).
    :param lam, rho: λ ≥ 0 and ρ > 0 (floats). ``lam = 0``: no split; ``admm_iters × cg_iters``
        CG iterations (restarted every ``cg_iters``) on each *slice's* normal equations, slices
        independent (valid for a slice-wise operator such as :class:`operators.SliceStack`).
    :param state: ``(z, w)`` ``[B, C, D−1, H, W]`` from the previous call, or ``None`` (zeros).
    :param Aty: ``Aᵀy`` when the caller has it (the sampler computes it once per solve).
    :returns: ``(x, (z, w))`` (``(x, state)`` unchanged for ``lam = 0``); each volume's CG runs on its
        own (per-sample step sizes and stopping).
    """
    Aty = operator.A_adjoint(y) if Aty is None else Aty
    if lam == 0:
        B = x.shape[0]

        def normal(v: Tensor) -> Tensor:  # AᵀA on a batch of slices [B·D, C, H, W]
            return _slices(operator.A_adjoint(operator.A(_volumes(v, B))))

        xs, rhs = _slices(x), _slices(Aty)
        for _ in range(admm_iters):
            xs = conjugate_gradient(normal, rhs, xs, tol=CG_TOL, max_iter=cg_iters)
        return _volumes(xs, B), state

    def system(v: Tensor) -> Tensor:  # AᵀA + ρ D_zᵀD_z
        return operator.A_adjoint(operator.A(v)) + rho * z_diff_adjoint(z_diff(v))

    if state is None:
        z_split = torch.zeros_like(z_diff(x))
        w = torch.zeros_like(z_split)
    else:
        z_split, w = state
    for _ in range(admm_iters):
        # ADMM-x: CG on (AᵀA + ρD_zᵀD_z) x = Aᵀy + ρD_zᵀ(z − w), warm-started at x.
        x = conjugate_gradient(system, Aty + rho * z_diff_adjoint(z_split - w), x, tol=CG_TOL, max_iter=cg_iters)
        dz = z_diff(x)
        # ADMM-z: soft threshold; ADMM-w: scaled dual ascent.
        z_split = soft_threshold(dz + w, lam / rho)
        w = w + dz - z_split
    return x, (z_split, w)


# --------------------------------------------------------------------------------------------
# checks and the slice-wise network call
# --------------------------------------------------------------------------------------------
def _check_pairing(operator, prior) -> tuple[int, int, int, int]:
    """(C, D, H, W) of a volume operator paired with a 2-D prior of its slices; refuses the rest."""
    if not isinstance(prior, Prior):
        if isinstance(prior, BridgePrior):
            raise TypeError(f"solver '{NAME}' needs a diffusion prior of 2-D slices, but this is a bridge prior "
                            "(from degraded to clean images); use a bridge solver (i2sb, indi, cddb)")
        raise TypeError(f"solver '{NAME}': prior must be an invdiff.priors.Prior of 2-D slices [C, H, W], got "
                        f"{type(prior).__name__}")
    if len(prior.shape) != 3:
        kind = "a volume prior" if len(prior.shape) == 4 else "a prior"
        raise ValueError(f"solver '{NAME}' applies a 2-D prior slice by slice: it needs a prior of slices [C, H, W], "
                         f"but got {kind} of shape {list(prior.shape)}. Use a 2-D prior trained on axial slices.")
    desc = operator.describe() if hasattr(operator, "describe") else type(operator).__name__
    img = tuple(getattr(operator, "img_size", ()))
    if len(img) != 4:
        raise CapabilityError(
            f"solver '{NAME}' reconstructs volumes: it needs a volume operator acting on [B, C, D, H, W] "
            f"(operators.SliceStack, VolumeParallelBeamCT, VolumeSingleCoilMRI), but {desc} acts on "
            f"{list(img) or 'unknown shapes'}. For 2-D images use score_sde (the same predictor–corrector "
            "without the z coupling).")
    C, D, H, W = img
    if (C, H, W) != tuple(prior.shape):
        raise ValueError(f"solver '{NAME}': the operator's slices are [{C}, {H}, {W}] (volume {list(img)}), but the "
                         f"prior models slices {list(prior.shape)}; choose a prior of the slices' channels and size")
    return C, D, H, W


def _check_settings(steps, lam, rho, admm_iters, cg_iters, corrector_steps, snr, sigma_min, sigma_max, slice_batch):
    if not whole_number(steps):
        raise ValueError(f"solver '{NAME}': steps must be a positive integer, got {steps!r}")
    for name, v in (("admm_iters", admm_iters), ("cg_iters", cg_iters)):
        if not whole_number(v):
            raise ValueError(f"solver '{NAME}': {name} must be a positive integer, got {v!r}")
    if not whole_number(corrector_steps, 0):
        raise ValueError(f"solver '{NAME}': corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    if slice_batch is not None and not whole_number(slice_batch):
        raise ValueError(f"solver '{NAME}': slice_batch must be None or a positive integer, got {slice_batch!r}")
    for name, v, ok in (("lam", lam, lambda v: v >= 0), ("rho", rho, lambda v: v > 0), ("snr", snr, lambda v: v > 0),
                        ("sigma_min", sigma_min, lambda v: v > 0), ("sigma_max", sigma_max, lambda v: v > sigma_min)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            raise ValueError(f"solver '{NAME}': need lam >= 0, rho > 0, snr > 0 and 0 < sigma_min < sigma_max (finite "
                             f"numbers); got {name}={v!r}")


def _check_devices(y: Tensor, prior: Prior, operator) -> None:
    for what, module in (("prior", prior), ("operator", operator)):
        if not isinstance(module, torch.nn.Module):
            continue
        dev = module_device(module, f"solver '{NAME}': the {what}")
        if dev is not None and not same_device(dev, y.device):
            raise ValueError(f"solver '{NAME}': y is on {y.device} but the {what} is on {dev}; move them to one "
                             f"device (e.g. {what}.to(y.device))")


class _SliceNetwork:
    """The 2-D denoiser on every slice of a batch of volumes, in chunks of ``slice_batch`` slices."""

    def __init__(self, prior: Prior, slice_batch: int | None, steps: int):
        self.net, self.slice_batch, self.steps = runtime_network(prior), slice_batch, steps

    def __call__(self, x: Tensor, sigma: float, step: int) -> Tensor:
        xs = _slices(x)
        chunks = [xs] if self.slice_batch is None else xs.split(self.slice_batch)
        out = torch.cat([self.net(c, sigma) for c in chunks])
        if not bool(torch.isfinite(out).all()):
            raise SolverDivergedError(
                f"solver '{NAME}': the prior's denoiser returned NaN/Inf at step {step}/{self.steps} (σ={sigma:.4g}). "
                "Likely cause: the state left the prior's range in an earlier step (lower snr, or λ/ρ).")
        return _volumes(out, x.shape[0])


# --------------------------------------------------------------------------------------------
# the sampler
# --------------------------------------------------------------------------------------------
def diffusionmbir(y: Tensor, operator, prior: Prior, *, sigma_y=0.0, steps: int = 2000, generator: GeneratorArg = None,
                  callback: Callback = None, lam: float = 0.04, rho: float = 10.0, admm_iters: int = 1,
                  cg_iters: int = 1, corrector_steps: int = 1, snr: float = 0.16, sigma_min: float = 0.01,
                  sigma_max: float = 378.0, slice_batch: int | None = None) -> Tensor:
    """One DiffusionMBIR reconstruction per volume of ``y`` (module docstring).

    :param y: ``[B, *operator.meas_size]`` measurements (e.g. ``[B, D, C, n_det, n_views]`` for
        :class:`operators.VolumeParallelBeamCT`), real float, measurement units.
    :param operator: a linear volume operator with an adjoint acting on ``[B, C, D, H, W]``
        (:class:`operators.SliceStack` and its CT/MRI volumes).
    :param prior: a 2-D :class:`invdiff.priors.Prior` of slices, ``prior.shape == (C, H, W)``.
    :param sigma_y: accepted for the common call shape (float or ``[B]``, checked); not used.
    :param steps: noise levels N; NFE = steps + corrector_steps·(steps − 1) calls on B·D slices.
    :param generator: one ``torch.Generator`` or one per volume (then volume b's noise is its own).
    :param callback: ``callback(i, x, x0_hat)`` after level i, model-space volumes ``[B, C, D, H, W]``.
    :param lam, rho: λ ≥ 0 (TV-z weight; 0 = slice-wise baseline) and ρ > 0, physical units.
    :param admm_iters, cg_iters: ADMM iterations per data-consistency step, CG iterations per ADMM-x.
    :param corrector_steps, snr: Langevin corrector steps per level and their signal-to-noise ratio.
    :param sigma_min, sigma_max: the VE σ range in model units (clipped to the prior's).
    :param slice_batch: at most this many slices per denoiser call (memory only); ``None``: all B·D.
    :returns: ``[B, C, D, H, W]`` in physical units, y's dtype.
    """
    # Every check before any work.
    require(operator, NAME, ["linear", "adjoint"])
    C, D, H, W = _check_pairing(operator, prior)
    check_measurement(NAME, y, operator)
    _check_settings(steps, lam, rho, admm_iters, cg_iters, corrector_steps, snr, sigma_min, sigma_max, slice_batch)
    check_generator(generator, y.shape[0])
    check_sigma_y(sigma_y, y.shape[0], y_shape=y.shape, name=NAME, device=y.device)
    _check_devices(y, prior, operator)
    lam, rho = float(lam), float(rho)

    B = y.shape[0]
    shape = (B, C, D, H, W)
    y64 = y.to(torch.float64)
    Aty = operator.A_adjoint(y64)
    net = _SliceNetwork(prior, slice_batch, steps)
    lo = max(sigma_min, prior.sigma_min) if prior.sigma_min > 0 else sigma_min
    hi = min(sigma_max, prior.sigma_max)
    sigmas = geometric_sigma_grid(steps, lo, hi).tolist() + [0.0]
    slice_dims = (1, 3, 4)  # a slice's pixels: per-slice norms [B, 1, D, 1, 1]
    state = None

    def consistency(x: Tensor) -> Tensor:
        """ADMM-TV-z on the physical image, z and w carried over (warm start)."""
        nonlocal state
        x_phys, state = admm_tv_z(prior.to_physical(x), y64, operator, lam, rho, state,
                                  admm_iters=admm_iters, cg_iters=cg_iters, Aty=Aty)
        return prior.to_model(x_phys)

    def noise() -> Tensor:
        return randn(shape, generator, device=y.device)

    x = sigmas[0] * noise()
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # 1. Reverse-diffusion predictor σ_i → σ_{i+1} (all slices as one batch).
        x0_hat = net(x, sigma, i)
        var = sigma**2 - sigma_next**2
        x = x + var * (x0_hat - x) / sigma**2
        if sigma_next > 0:
            x = x + math.sqrt(var) * noise()
        # 2. Data consistency (ADMM-TV-z, warm-started).
        x = consistency(x)
        # 3. Langevin corrector at σ_{i+1}, per-slice step sizes; 4. data consistency after each.
        for _ in range(corrector_steps if sigma_next > 0 else 0):
            score = (net(x, sigma_next, i) - x) / sigma_next**2
            n = noise()
            ratio = n.square().sum(slice_dims, keepdim=True).sqrt() / \
                score.square().sum(slice_dims, keepdim=True).sqrt().clamp_min(1e-30)
            eps = 2 * (snr * ratio) ** 2
            x = consistency(x + eps * score + (2 * eps).sqrt() * n)
        if not bool(torch.isfinite(x).all()):
            raise SolverDivergedError(f"solver '{NAME}': NaN/Inf in the state at step {i}/{steps}. Likely cause: a "
                                      "corrector step too large (lower snr) or λ/ρ out of scale for this operator.")
        if callback is not None:
            callback(i, x, x0_hat)
    return prior.to_physical(x).to(y.dtype)
