"""DDS — Decomposed Diffusion Sampling.

Chung, Lee & Ye, "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems",
ICLR 2024, arXiv:2303.05754. Official code: https://github.com/HJ-harry/DDS @ 509b140ee8ba
(``solver_2d.py``, ``utils.py:CG``, ``main.py``, ``eval_*.sh``).

Each step splits into denoising, a few conjugate-gradient (CG) steps on the data term, and
re-noising (paper §3, the DDS algorithm; the loop of ``solver_2d.py:Diffusion.dds``; here in EDM
form, σ_t = √((1−ᾱ_t)/ᾱ_t), x = x_vp/√ᾱ_t):

1. Tweedie: ``x̂₀ = D(x_t, σ_t)``  (= (x_vp − √(1−ᾱ_t) ε̂)/√ᾱ_t; ε̂ = (x_t − x̂₀)/σ_t).
2. Data consistency in the Krylov subspace around x̂₀: ``x̂₀' = argmin_{x ∈ x̂₀ + K_M} ℓ(x)``,
   ``K_M = span{r₀, H r₀, …, H^{M−1} r₀}``, ``r₀ = b − H x̂₀`` — exactly what M CG iterations on
   ``H x = b`` started at x̂₀ return (CG minimises the H-norm error over x̂₀ + K_M):

   * σ_y = 0: ``ℓ(x) = ½‖y − Ax‖²``, ``H = AᵀA``, ``b = Aᵀy``. As M grows, x̂₀' → x̂₀ + A⁺(y − A x̂₀),
     the least-squares solution nearest x̂₀ (the iterates never leave x̂₀ + range(Aᵀ)).
   * σ_y > 0: ``ℓ(x) = (γ/2)‖y − Ax‖² + ½‖x − x̂₀‖²``, i.e. ``(I + γAᵀA) x = x̂₀ + γAᵀy``; as M grows
     x̂₀' → ``operator.prox_l2(x̂₀, y, γ) = (AᵀA + I/γ)⁻¹(Aᵀy + x̂₀/γ)`` (the same γ as deepinv's
     prox_l2). Written here as ``(AᵀA + ρI) x = Aᵀy + ρ x̂₀`` with ρ = 1/γ, which has the same CG
     iterates (CG is invariant to scaling the system) and, with ρ = 0, is the noiseless case.

   This follows the official code: the plain M-step CG on the normal equations when σ_y = 0, the
   regularised system (γ on the data term) when σ_y > 0; σ_y enters only through that switch.
3. DDIM(η) re-noising with the *unconditional* ε̂ of step 1, into σ_s = σ_{t−1}:

   * ``eta_form="authors"`` (default; the official code, ``c₁ = η√(1−ᾱ_{t−1})``,
     ``c₂ = √(1−η²)√(1−ᾱ_{t−1})``): ``x_s = x̂₀' + σ_s (η z + √(1−η²) ε̂)``; η is the share of fresh noise.
   * ``eta_form="ddim"`` (Song, Meng & Ermon 2021, eq. 16: ``c₁ = η β̃_t``, ``c₂ = √(1−ᾱ_{t−1}−c₁²)``,
     β̃_t = √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_{t−1})), as :func:`~invdiff.solvers._common.ddim_step`.

   Both coincide at η = 0. The last step (σ_s = 0) returns x̂₀' itself.

NFE = ``steps`` (network calls); each step also applies AᵀA (``cg_iter`` + 1) times and Aᵀ once.

Units: the CG runs in the prior's model space on ``pb.y`` with the operator applied to the
model-space state (for a linear operator ``pb.forward(x_m) = A x_m``; ``_common`` module
docstring). γ weights ‖y − Ax‖² against ‖x − x̂₀‖² in those units, so it is not invariant to the
operator's scaling: the paper's γ = 1 belongs to its operators (MRI: orthonormal centred FFTs of
coil-weighted images; CT: Aᵀ taken as the unfiltered back-projection × π/(2·n_views), a scaled
adjoint). Rescale γ by 1/‖A‖² when moving to an operator of another norm (e.g.
:class:`operators.ParallelBeamCT`: the unnormalised Radon transform with its exact adjoint).

==============  ==========================  ==============  =====================
code            paper                       code            paper
==============  ==========================  ==============  =====================
``x``           x_t / √ᾱ_t (EDM form)       ``cg_iter``     M (code: CG_iter)
``x0_hat``      x̂_t (Tweedie)               ``gamma``       γ
``x0_dc``       x̂'_t (after M CG steps)     ``rho``         1/γ (0 where σ_y = 0)
``eps``         ε̂_θ(x_t)                    ``eta``         η
``sigma``       σ_t = √(1−ᾱ_t)/√ᾱ_t         ``sigma_next``  σ_{t−1}
==============  ==========================  ==============  =====================

Defaults (``main.py`` and ``eval_MRI_multi.sh`` / ``eval_SVCT_2d.sh`` @ 509b140): 50 steps
(``T_sampling``), η = 0.85 (authors' form), γ = 1.0, M = 5 CG iterations (``CG_iter``).

Deviations:

* The CG is per sample (the official ``CG`` takes one inner product over the whole batch) and stops
  a sample when ``‖r‖ ≤ cg_tol·‖b‖`` (relative; the official code stops at an absolute ‖r‖ < 1e-5,
  which M = 5 iterations on 256² images practically never reach).
* The official single-coil MRI branch uses the closed-form projection ``x̂₀ − A⁺(A x̂₀ − y)`` (for any
  σ_y); here every operator takes the same CG (for single-coil MRI AᵀA is a projection and one CG
  iteration gives that projection when σ_y = 0).
* Time grid: evenly respaced VP timesteps from T−1 to 0 over the prior's schedule, then σ = 0
  (the official ``range(0, 1000, 1000 // T_sampling)`` starts at 980 for 50 steps).
* Only the VP (DDIM) sampler; the paper's VE variant is not implemented. The measurement's noise
  level only switches between the two data terms (as in the official code), it does not set γ.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: the posterior mean of
x₀ replaced by M CG steps on the data term from the Tweedie estimate (a projection onto A x = y,
or a proximal step of fixed weight γ), re-noised with the unconditional ε̂; not exact for any
non-degenerate prior, Gaussian ones included).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from operators.linalg import conjugate_gradient

from ..checks import whole_number
from ._common import Callback, ddim_step, setup, vp_scale, vp_sigmas


def krylov_step(operator, x0_hat: Tensor, y: Tensor, rho, cg_iter: int, cg_tol: float = 1e-6) -> Tensor:
    """DDS's data-consistency step: ``cg_iter`` CG iterations on ``(AᵀA + ρI) x = Aᵀy + ρ x̂₀``
    started at x̂₀, per batch item (each stops on its own at ``‖r‖ ≤ cg_tol·‖b‖``).

    The result minimises ``½‖y − Ax‖² + (ρ/2)‖x − x̂₀‖²`` over ``x̂₀ + K_M``, the Krylov subspace of
    ``H = AᵀA + ρI`` and the initial residual ``Aᵀ(y − A x̂₀)``. ρ = 0: the noiseless data term
    (converges to ``x̂₀ + A⁺(y − A x̂₀)``); ρ = 1/γ > 0: converges to ``operator.prox_l2(x̂₀, y, γ)``.

    :param operator: linear operator with ``A`` and ``A_adjoint``.
    :param x0_hat: ``[B, *img_size]`` start (float64 for the solver state).
    :param y: ``[B, *meas_size]`` measurement in the same units as ``operator.A(x0_hat)``.
    :param rho: float or ``[B]`` tensor, ≥ 0.
    :param cg_iter: M ≥ 0 (0 returns x̂₀).
    :param cg_tol: relative tolerance, > 0: with ρ = 0 the system is singular, and CG run past
        convergence drifts along A's null space by rounding (measured: 1e32 on a blur after 100
        iterations with tol = 0).
    """
    rho_t = torch.as_tensor(rho, dtype=x0_hat.dtype, device=x0_hat.device)
    rho_b = rho_t.reshape(-1, *([1] * (x0_hat.ndim - 1))) if rho_t.ndim == 1 else rho_t
    if cg_iter == 0:
        return x0_hat.clone()

    def normal(v: Tensor) -> Tensor:
        return operator.A_adjoint(operator.A(v)) + rho_b * v

    rhs = operator.A_adjoint(y) + rho_b * x0_hat
    return conjugate_gradient(normal, rhs, x0_hat, tol=cg_tol, max_iter=int(cg_iter))


def dds(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 50, generator=None, callback: Callback = None,
        eta: float = 0.85, gamma: float = 1.0, cg_iter: int = 5, cg_tol: float = 1e-6, eta_form: str = "authors",
        schedule=None) -> Tensor:
    """One DDS sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: linear operator with an exact adjoint (MRI single/multi-coil, CT, blur,
        inpainting, …); neither an SVD nor a pseudo-inverse is needed.
    :param prior: :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std in measurement units, float or ``[B]``; per sample, 0 selects the
        noiseless data term ½‖y − Ax‖², > 0 the regularised one (γ/2)‖y − Ax‖² + ½‖x − x̂₀‖².
    :param steps: DDIM steps (NFE).
    :param eta: η in [0, 1] (see ``eta_form``).
    :param gamma: γ > 0, the data weight of the noisy data term (model-space units, see module docstring).
    :param cg_iter: M, CG iterations per step (0: no data consistency, unconditional DDIM).
    :param cg_tol: per-sample relative stopping tolerance of the CG, in (0, 1).
    :param eta_form: ``"authors"`` (the official code's c₁ = η√(1−ᾱ_{t−1})) or ``"ddim"`` (Song et al.'s η).
    :param schedule: a VP schedule (default: the prior's, else DDPM's linear one).
    :param callback: ``callback(i, x, x0_hat)`` after each step, with the data-consistent x̂₀' as x0_hat
        (keyword ``x0_denoised``: the Tweedie estimate before the CG).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"dds: eta must lie in [0, 1], got {eta}")
    if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"dds: gamma must be a finite number > 0, got {gamma!r}")
    if not whole_number(cg_iter, 0):
        raise ValueError(f"dds: cg_iter must be a whole number >= 0, got {cg_iter!r}")
    if not (isinstance(cg_tol, (int, float)) and not isinstance(cg_tol, bool) and 0 < cg_tol < 1):
        raise ValueError(f"dds: cg_tol must be a number in (0, 1), got {cg_tol!r} (CG run past convergence on the "
                         "singular noiseless system drifts along A's null space by rounding)")
    if eta_form not in ("authors", "ddim"):
        raise ValueError(f"dds: eta_form must be 'authors' or 'ddim', got {eta_form!r}")
    pb = setup("dds", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["linear", "adjoint"])
    rho = torch.where(pb.sigma_y > 0, 1.0 / gamma, 0.0)  # [B]: 1/γ for noisy items, 0 for noiseless ones
    sigmas = vp_sigmas(prior, steps, schedule)
    x = pb.init_noise(1.0 / vp_scale(sigmas[0]))  # VP N(0, I)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # 1. Tweedie estimate and the network's noise ε̂.
        x0_hat = pb.denoise(x, sigma, i)
        # 2. M CG steps on the data term from x̂₀ (the Krylov subspace around x̂₀).
        x0_dc = krylov_step(operator, x0_hat, pb.y, rho, cg_iter, cg_tol)
        # 3. Re-noise to σ_{t−1} with the unconditional ε̂ (DDIM(η); x̂₀' itself at σ = 0).
        if sigma_next == 0:
            x = x0_dc
        elif eta_form == "ddim":  # ddim_step's x̂₀ + (c₂ ε̂ + c₁ z)/√ᾱ_{t−1}, moved to x̂₀'
            x = ddim_step(pb, x, x0_hat, sigma, sigma_next, eta) + (x0_dc - x0_hat)
        else:
            eps = (x - x0_hat) / sigma
            x = x0_dc + (sigma_next * math.sqrt(1.0 - eta * eta)) * eps
            if eta > 0:
                x = x + (sigma_next * eta) * pb.randn()
        pb.check(i, x, "the data-consistency step diverged (check γ against the operator's norm, or y)")
        pb.callback(i, x, x0_dc, x0_denoised=x0_hat)
    return pb.finish(x)
