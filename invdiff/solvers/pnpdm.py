"""PnP-DM — principled probabilistic imaging using diffusion models as plug-and-play priors.

Wu, Sun, Chen, Zhang, Yue & Bouman, NeurIPS 2024, arXiv:2405.18782.

A split Gibbs sampler for ``π(x, z) ∝ p(x) · exp(−‖y − A(z)‖²/(2σ_y²) − ‖x − z‖²/(2ρ²))``
(paper eq. 4), alternating at each iteration k with ``ρ_k = max(ρ₀ · decay^k, ρ_min)`` (§3.3):

1. Likelihood step (eq. 5): ``z ~ π(z | x) ∝ exp(−‖y − A z‖²/(2σ_y²) − ‖z − x‖²/(2ρ_k²))``.
   Linear-Gaussian: exact. ``"svd"`` per coefficient, ``var = ρ²σ²/(s²ρ² + σ²)``, ``mean =
   (sρ² (Uᵀy) + σ² Vᵀx)/(s²ρ² + σ²)`` (the authors' ``proximal_generator``); ``"prox"`` by
   perturb-and-MAP, ``z = prox(x + ρε₁, y + σ_y ε₂, γ = ρ²/σ_y²)`` (an exact sample of the same
   Gaussian through the operator's closed-form or CG prox; σ_y = 0 projects x + ρε₁ on
   {A z = y} with A⁺); ``"langevin"`` (nonlinear A, the authors' choice) runs
   ``z ← z − γ∇‖A(z) − y‖²/(2σ_y²) − (γ/ρ²)(z − x) + √(2γ) ε`` from z = x.
2. Prior step (eq. 6): ``x ~ p(x | z)``, a denoising posterior at noise ρ_k: z is the state at
   σ = ρ_k of the diffusion, run to σ = 0 by Euler–Maruyama on the reverse SDE
   ``x ← x + (σ' − σ)·2(x − D(x, σ))/σ + √(2σ(σ − σ'))·ε`` (the authors' ``edm_sde`` mode; ``"ode"``
   drops the noise and the factor 2: their deterministic mode) over the grid's levels below ρ_k.

The grid is EDM's poly-7 of ``prior_steps`` levels from 80 to 0.002 (clipped to the prior's
range), then 0. The output is the last prior-step sample x.

NFE per iteration = the number of grid levels below ρ_k (the first one replaced by ρ_k itself;
one call when none is below); total = :func:`pnpdm_schedule`'s sum. Langevin likelihood steps
(nonlinear operators) call only the operator, ``steps × langevin_steps`` in all.

================  ===================  ===============  =======================
code              paper                code             paper
================  ===================  ===============  =======================
``x``             x^(k)                ``rho``          ρ₀
``z``             z^(k)                ``rho_decay``    the authors' decay rate
``r``             ρ_k                  ``langevin_lr``  γ (the authors' 1e-4)
``levels``        prior-step σ levels  ``sig``, ``sv``  σ_y (model units), s
``x_p``, ``y_p``  x + ρε₁, y + σ_y ε₂  ``uty``          Uᵀy (model units)
================  ===================  ===============  =======================

Defaults: the authors' ``commands.sh`` for linear tasks: 100 iterations, ρ 10 → 0.3 with decay
0.9 (ρ_min = 0.1 for phase retrieval / coded diffraction), ``edm_sde`` with 100 grid levels;
Langevin (nonlinear) 100 steps of γ = 1e-4. The start is A⁺y when the operator has a
pseudo-inverse (the authors' ``initialize``), else N(0, I).

Deviations: the prior step starts at exactly σ = ρ_k (the authors start at the first grid level
below ρ_k with the same number of network calls); its last step returns D(x, σ_min) (the
authors' Euler step to 0 gives 2D − x, identical up to σ_min = 0.002); one sample per batch item
(the authors also average iterates after a burn-in; draw more samples with more batch items).

Class (:mod:`invdiff.solvers.classes`): Asymptotically exact sampler (exact as ρ_min → 0 and Gibbs
iterations → ∞ at each ρ (prior_steps → ∞ for the exact denoising step); mixing between
well-separated modes is exponentially slow in separation/ρ, so on multimodal posteriors it does not
converge at practical budgets).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from operators import require

from ..checks import whole_number
from ..priors.schedules import edm_sigma_grid
from ._common import Callback, setup


def pnpdm_schedule(prior, steps: int, rho: float = 10.0, rho_decay: float = 0.9, rho_min: float = 0.3,
                   prior_steps: int = 100, sigma_max: float = 80.0, sigma_min: float = 0.002,
                   grid_rho: float = 7.0) -> list[tuple[float, list[float]]]:
    """``[(ρ_k, levels_k)]`` for each iteration: the σ levels of the prior step, from ρ_k down to
    the smallest grid level, then 0. Network calls = ``sum(len(levels) − 1)``."""
    top, bottom = min(sigma_max, prior.sigma_max), max(sigma_min, prior.sigma_min, 1e-12)
    grid = edm_sigma_grid(prior_steps, bottom, top, grid_rho).tolist()
    out = []
    for k in range(steps):
        r = max(rho * rho_decay**k, rho_min)
        below = [s for s in grid if s < r]
        out.append((r, [r, *below[1:], 0.0]))
    return out


def pnpdm(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 100, generator=None, callback: Callback = None,
          rho: float = 10.0, rho_decay: float = 0.9, rho_min: float = 0.3, prior_steps: int = 100,
          prior_sampler: str = "sde", likelihood: str = "auto", langevin_steps: int = 100,
          langevin_lr: float = 1e-4) -> Tensor:
    """One PnP-DM sample (the chain's last x) per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: linear (SVD, prox or autograd) or nonlinear differentiable operator.
    :param prior: :class:`invdiff.priors.Prior` of shape ``operator.img_size`` (no gradients needed).
    :param sigma_y: noise std (float or ``[B]``); > 0 for the Langevin likelihood step.
    :param steps: Gibbs iterations.
    :param rho, rho_decay, rho_min: the coupling schedule ρ_k = max(ρ₀ decay^k, ρ_min) (model units).
    :param prior_steps: levels of the prior step's EDM grid (80 → 0.002).
    :param prior_sampler: ``"sde"`` (Euler–Maruyama, the paper's sampler) or ``"ode"``.
    :param likelihood: ``"auto"`` (svd, else prox, else langevin), ``"svd"``, ``"prox"``, ``"langevin"``.
    :param langevin_steps, langevin_lr: the Langevin likelihood step.
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    caps = operator.capabilities
    if likelihood == "auto":
        likelihood = "svd" if "svd" in caps else "prox" if {"linear", "prox_l2"} <= caps else "langevin"
    grad_need = [("adjoint", "differentiable")] if "linear" in caps else ["differentiable"]
    needs = {"svd": ["linear", "svd"], "prox": ["linear", "prox_l2"], "langevin": grad_need}.get(likelihood)
    if needs is None:
        raise ValueError(f"pnpdm: likelihood must be 'auto', 'svd', 'prox' or 'langevin', got {likelihood!r}")
    if prior_sampler not in ("sde", "ode"):
        raise ValueError(f"pnpdm: prior_sampler must be 'sde' or 'ode', got {prior_sampler!r}")
    if not (rho > 0 and rho_min > 0 and 0 < rho_decay <= 1 and langevin_lr > 0):
        raise ValueError(f"pnpdm: need rho > 0, rho_min > 0, 0 < rho_decay <= 1, langevin_lr > 0; got "
                         f"{rho}, {rho_min}, {rho_decay}, {langevin_lr}")
    if not whole_number(prior_steps, 2):
        raise ValueError(f"pnpdm: prior_steps must be an integer >= 2, got {prior_steps!r}")
    if rho > prior.sigma_max:
        raise ValueError(f"pnpdm: rho = {rho} exceeds the prior's sigma_max = {prior.sigma_max}")
    pb = setup("pnpdm", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=needs)
    if likelihood == "langevin" and bool((pb.sigma_y == 0).any()):
        raise ValueError("pnpdm: the Langevin likelihood step needs sigma_y > 0")
    if likelihood == "prox" and bool((pb.sigma_y == 0).any()):
        require(operator, "pnpdm (prox likelihood with sigma_y = 0)", ["pinv"])
    schedule = pnpdm_schedule(prior, steps, rho, rho_decay, rho_min, prior_steps)
    lik = _Likelihood(pb, likelihood, langevin_steps, langevin_lr)
    x = operator.A_dagger(pb.y) if pb.linear and "pinv" in caps else pb.randn()
    for k, (r, levels) in enumerate(schedule):
        # 1. Likelihood step: z ~ π(z | x).
        z = lik.sample(x, r)
        pb.check(k, z, "the likelihood step diverged (lower langevin_lr)")
        # 2. Prior step: x ~ p(x | z) at noise ρ_k, σ from ρ_k to 0.
        x = _prior_step(pb, z, levels, prior_sampler, k)
        pb.check(k, x)
        pb.callback(k, z, x)
    return pb.finish(x)


class _Likelihood:
    """Step 1, ``z ~ π(z | x) ∝ exp(−‖y − A z‖²/(2σ_y²) − ‖z − x‖²/(2ρ²))`` in model space, by
    ``mode``: ``"svd"`` (exact, per coefficient), ``"prox"`` (exact, perturb-and-MAP) or
    ``"langevin"`` (``steps`` steps of size ``lr`` from z = x). What does not change over the
    iterations (Uᵀy, the singular values, which items are noiseless) is computed once."""

    def __init__(self, pb, mode: str, steps: int, lr: float):
        self.pb, self.mode, self.steps, self.lr = pb, mode, steps, lr
        op = pb.op
        if mode == "svd":
            self.sv = op.singular_values.to(device=pb.device, dtype=torch.float64)
            self.uty = op.U_adjoint(pb.y)
        elif mode == "prox":
            self.noisy = pb.sigma_y > 0

    def sample(self, x: Tensor, r: float) -> Tensor:
        pb, op = self.pb, self.pb.op
        if self.mode == "svd":
            sig, sv = pb.sigma_y_b, self.sv  # model space, [B, 1, ...]
            den = sv * sv * r * r + sig * sig
            mean = (sv * r * r * self.uty + sig * sig * op.V_adjoint(x)) / den
            std = (r * r * sig * sig / den).sqrt()
            return op.V(mean + std * op.V_adjoint(pb.randn()))
        if self.mode == "prox":  # z = prox(x + ρε₁, y + σ_y ε₂, ρ²/σ_y²); σ_y = 0: x + ρε₁ projected on {A z = y}
            x_p = x + r * pb.randn()
            y_p = pb.y + pb.per_meas(pb.sigma_y) * pb.randn(pb.y.shape)
            gamma = torch.where(self.noisy, r * r / pb.sigma_y.clamp(min=1e-300).square(), 1.0)
            z = op.prox_l2(x_p, y_p, gamma)
            if not bool(self.noisy.all()):
                z_proj = x_p - op.A_dagger(op.A(x_p) - pb.y)
                z = torch.where(pb.per_sample(self.noisy), z, z_proj)
            return z
        weight = 1.0 / pb.sigma_y.square()
        z = x.clone()
        for _ in range(self.steps):
            z = z - self.lr * (pb.data_grad(z, weight) + (z - x) / (r * r)) + math.sqrt(2 * self.lr) * pb.randn()
        return z


def _prior_step(pb, z: Tensor, levels: list[float], sampler: str, k: int) -> Tensor:
    """Step 2, ``x ~ p(x | z)``: z is the diffusion state at σ = ρ_k = ``levels[0]``, run down the
    ``levels`` to 0 by Euler–Maruyama on the reverse SDE (``"sde"``) or Euler on the PF-ODE
    (``"ode"``); the last step returns D(x, σ_min)."""
    x = z
    for s, s_next in zip(levels[:-1], levels[1:]):
        d = pb.denoise(x, s, k)
        if s_next == 0:
            x = d
        elif sampler == "sde":
            x = x + (s_next - s) * 2 * (x - d) / s + math.sqrt(2 * s * (s - s_next)) * pb.randn()
        else:
            x = x + (s_next - s) * (x - d) / s
    return x
