"""DAPS — Decoupled Annealing Posterior Sampling.

Zhang, Chu, Berner, Sun, Azizzadenesheli & Anandkumar, CVPR 2025, arXiv:2407.01521.

Noise levels σ_0 > σ_1 > … > σ_{N−1} anneal from ``sigma_max`` to ``sigma_min`` (EDM's
poly-ρ spacing, paper §4 / the authors' ``edm`` scheduler), then σ_N = 0. From x ~ N(0, σ_0² I),
at each level i (paper Alg. 1):

1. ``x̂₀ = x̂₀(x_{σ_i})``: the probability-flow ODE ``dx/dσ = (x − D(x, σ))/σ`` integrated by
   ``ode_steps`` Euler steps from σ_i to ``ode_sigma_min`` on a poly-ρ grid (the authors'
   ``DiffusionPFODE``; ``ode_sigma_min = 0`` with one step is Tweedie's x̂₀ = D(x, σ_i)).
2. Langevin dynamics (or damped HMC) on x₀ started at x̂₀, targeting the paper's eq. 9,
   ``p(x₀ | x_{σ_i}, y) ∝ N(x₀; x̂₀, r_i² I) · exp(−‖y − A(x₀)‖² / τ²)``:
   ``x₀ ← x₀ + η_i ∇log p + √(2η_i) ε`` for ``langevin_steps`` steps (eq. 10), with
   ``η_i = lr · (1 + (i/N)(lr_min_ratio − 1))`` (the authors' linear decay). r_i = σ_i (the
   authors' "gaussian" prior term), or, with ``r_data_std = s``, ``r_i² = σ_i² s²/(σ_i² + s²)``,
   the exact spread of p(x₀ | x_σ) for data of isotropic variance s².
3. ``x_{σ_{i+1}} = x₀ + σ_{i+1} ε`` (eq. 7's forward step; σ_N = 0 returns the last x₀).

τ follows the authors' code, where the data term is ``‖A(x₀) − y‖²/τ²`` (no ½): the Bayes
choice for Gaussian noise is ``τ = √2 σ_y`` (``tau=None``; model units). The residual is in the
prior's units (× scale, as the paper's [−1, 1] residual), for linear and nonlinear operators.

NFE = ``steps × ode_steps`` network calls; the ``steps × langevin_steps`` Langevin steps call
only the operator (A and Aᵀ for a linear operator, a vector–Jacobian product of A otherwise)
and never the network.

==============  ======================  ==================  =========================
code            paper                   code                paper
==============  ======================  ==================  =========================
``x``           x_{t_i} (EDM form)      ``lr``              η₀ (Langevin step)
``x0_hat``      x̂₀(x_{t_i})             ``tau``             the authors' τ (√2 β_y)
``x0``          x₀ (Langevin state)     ``r2``              r_{t_i}²
``sigmas``      σ_{t_i}                 ``momentum``        HMC damping (code only)
==============  ======================  ==================  =========================

Defaults: DAPS-1K on pixel-space FFHQ (configs/sampler/edm_daps.yaml and configs/task/*.yaml in
the authors' repository): 200 levels × 5 ODE steps, σ 100 → 0.1 (poly-7), ODE down to 0.01,
100 Langevin steps with lr = 1e-4 (5e-5 for phase retrieval), lr_min_ratio = 0.01, τ = 0.01.

Deviations: σ_0 is clipped to the prior's trained ``sigma_max``; the Langevin noise comes from the
solver's generator(s) (batch items independent); a NaN in the state raises instead of the
authors' silent return of zeros.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: p(x₀ | x_σ) ≈ N(x̂₀,
r_σ²) in each annealing level's Langevin target (exact for isotropic Gaussian priors with r_data_std
matched and converged Langevin chains)).
"""

from __future__ import annotations

import math

from torch import Tensor

from ..checks import whole_number
from ..priors.schedules import edm_sigma_grid
from ._common import Callback, setup


def daps_sigmas(prior, steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> list[float]:
    """The annealing levels: ``steps`` values of the poly-ρ grid of ``steps + 1`` points from
    σ_max (clipped to the prior's) to σ_min, without its last point, then 0 (the authors'
    ``Scheduler.discretize``)."""
    top = min(float(sigma_max), float(prior.sigma_max))
    if top <= sigma_min:
        raise ValueError(f"daps: the annealing needs sigma_min < the prior's sigma_max; got {sigma_min} >= {top}")
    return edm_sigma_grid(steps + 1, sigma_min, top, rho)[:-1].tolist() + [0.0]


def _ode_x0(pb, x: Tensor, sigma: float, ode_steps: int, ode_sigma_min: float, rho: float, step: int) -> Tensor:
    """Euler steps of the probability-flow ODE from σ to ``ode_sigma_min`` (poly-ρ grid)."""
    grid = edm_sigma_grid(ode_steps + 1, ode_sigma_min, sigma, rho).tolist()  # σ·(1 − k/K)^ρ for σ_min = 0
    for s, s_next in zip(grid[:-1], grid[1:]):
        d = pb.denoise(x, s, step)
        x = x + (s_next - s) * (x - d) / s
    return x


def daps(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 200, generator=None, callback: Callback = None,
         ode_steps: int = 5, sigma_max: float = 100.0, sigma_min: float = 0.1, rho: float = 7.0,
         ode_sigma_min: float = 0.01, langevin_steps: int = 100, lr: float = 1e-4, lr_min_ratio: float = 0.01,
         tau: float | None = 0.01, mc: str = "langevin", momentum: float = 0.9, r_data_std: float | None = None) -> Tensor:
    """One DAPS posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: linear (with Aᵀ) or any operator differentiable by autograd.
    :param prior: :class:`invdiff.priors.Prior` of shape ``operator.img_size`` (no gradients needed).
    :param sigma_y: noise std: float, ``[B]`` or shaped like y (per-entry noise); used for
        ``tau=None``.
    :param steps: annealing levels N.
    :param ode_steps: Euler steps of the inner PF-ODE (network calls per level).
    :param sigma_max, sigma_min, rho: the annealing grid; ``ode_sigma_min``: where the ODE stops.
    :param langevin_steps, lr, lr_min_ratio: the inner chain and its step-size decay.
    :param tau: the authors' τ, float (model units) or None for the Bayes value √2·σ_y.
    :param mc: ``"langevin"`` or ``"hmc"`` (the authors' damped HMC with ``momentum``).
    :param r_data_std: None for r_i = σ_i (the authors'), else the data std s of the exact
        Gaussian r_i² = σ_i² s²/(σ_i² + s²).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if mc not in ("langevin", "hmc"):
        raise ValueError(f"daps: mc must be 'langevin' or 'hmc', got {mc!r}")
    for name, v in (("ode_steps", ode_steps), ("langevin_steps", langevin_steps)):
        if not whole_number(v, 1 if name == "ode_steps" else 0):
            raise ValueError(f"daps: {name} must be an integer >= {1 if name == 'ode_steps' else 0}, got {v!r}")
    if not (lr > 0 and lr_min_ratio > 0 and 0 <= momentum < 1 and rho > 0):
        raise ValueError(f"daps: need lr > 0, lr_min_ratio > 0, 0 <= momentum < 1, rho > 0; got "
                         f"{lr}, {lr_min_ratio}, {momentum}, {rho}")
    if not 0 <= ode_sigma_min < sigma_min < sigma_max:
        raise ValueError(f"daps: need 0 <= ode_sigma_min < sigma_min < sigma_max, got {ode_sigma_min}, "
                         f"{sigma_min}, {sigma_max}")
    if tau is not None and not tau > 0:
        raise ValueError(f"daps: tau must be > 0 or None (√2·σ_y), got {tau}")
    if r_data_std is not None and not r_data_std > 0:
        raise ValueError(f"daps: r_data_std must be > 0 or None, got {r_data_std}")
    linear = "linear" in operator.capabilities
    needs = [("adjoint", "differentiable")] if linear else ["differentiable"]
    pb = setup("daps", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=needs, per_entry_sigma_y=True)
    if tau is None:
        if bool((pb.sigma_y == 0).any()):
            raise ValueError("daps: tau=None uses √2·σ_y, but σ_y = 0; give tau (the authors use 0.01)")
        weight = 1.0 / (2.0 * pb.sigma_y.square())  # 1/τ² with τ = √2 σ_y; [B] or y-shaped
    else:
        weight = 1.0 / float(tau) ** 2
    sigmas = daps_sigmas(prior, steps, sigma_max, sigma_min, rho)
    x = pb.init_noise(sigmas[0])
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # 1. x̂₀ from the PF-ODE (no graph).
        x0_hat = _ode_x0(pb, x, sigma, ode_steps, ode_sigma_min, rho, i)
        # 2. Langevin / HMC on p(x₀ | x_σ, y), started at x̂₀; gradients through A only.
        r2 = sigma * sigma if r_data_std is None else sigma**2 * r_data_std**2 / (sigma**2 + r_data_std**2)
        eta = lr * (1.0 + (i / steps) * (lr_min_ratio - 1.0))
        x0 = x0_hat.clone()
        v = pb.randn() if mc == "hmc" else None
        for _ in range(langevin_steps):
            score = -2.0 * pb.data_grad(x0, weight) + (x0_hat - x0) / r2  # ∇ of −‖r‖²/τ² and of the Gaussian
            if mc == "langevin":
                x0 = x0 + eta * score + math.sqrt(2 * eta) * pb.randn()
            else:
                v = momentum * v + math.sqrt(eta) * score + math.sqrt(2 * (1 - momentum)) * pb.randn()
                x0 = x0 + math.sqrt(eta) * v
        pb.check(i, x0, f"lr = {eta:.3g} too large for the Langevin chain (lower lr or raise tau)")
        # 3. Forward to the next level.
        x = x0 + sigma_next * pb.randn() if sigma_next > 0 else x0
        pb.callback(i, x, x0_hat)
    return pb.finish(x)
