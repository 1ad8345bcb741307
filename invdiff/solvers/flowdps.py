"""FlowDPS — Flow-Driven Posterior Sampling for inverse problems.

Kim, Kim & Ye, ICCV 2025, arXiv:2503.08136 (code: github.com/FlowDPS-Inverse/FlowDPS).

The flow ODE step is split by the flow version of Tweedie's formula (paper §3, Prop. 1) into a
clean-image estimate and a noise estimate, ``x_t = α(t) x̂₀ + σ(t) ε̂``; the likelihood enters the
first, fresh noise the second, and the two are recombined at the next time (paper eq. for the
DDIM-form step, Alg. 1; the official ``SD3FlowDPS.sample``):

    x̂₀ = E[x₀ | x_t],   ε̂ = (x_t − α(t) x̂₀)/σ(t)                     (flow Tweedie; linear path: x_t − t v, x_t + (1−t) v)
    x̂₀ʸ ← x̂₀ʸ − ζ ∇ ½‖y − A x̂₀ʸ‖²,  K times from x̂₀ʸ = x̂₀                (likelihood step on the clean estimate)
    x̄₀ = (1 − t) x̂₀ + t x̂₀ʸ                                           (official code: the guided estimate weighted by t)
    ε̃ = √(1 − η) ε̂ + √η z,   η = 1 − t_next,  z ~ N(0, I)              (stochastic noise mixing)
    x_{t_next} = α(t_next) x̄₀ + σ(t_next) ε̃                            (renoising; = x̄₀ at t_next = 0)

Pixel space: the gradient is taken with respect to x̂₀ itself (no vector–Jacobian product through
the network, which the latent version needs only for its decoder), so the prior need not be
differentiable and the operator only needs a differentiable forward map (``Aᵀ(A x − y)`` without
autograd when it is linear with an adjoint).

NFE = ``steps`` forward passes, no backward pass.

==============  ==========================  ==============  ==========================
code            paper / official code       code            paper / official code
==============  ==========================  ==============  ==========================
``x``           x_t (``z``)                 ``zeta``        ζ (``step_size``)
``x0_hat``      x̂_{0|t} (``z0t``)           ``dc_steps``    data-consistency iterations
``x0_y``        x̂_{0|t}(y) (``z0y``)        ``eta``         η_t (noise mixing weight)
``eps_hat``     x̂_{1|t} (``z1t``)           ``t``           σ (SD3's time, noise at 1)
==============  ==========================  ==============  ==========================

Defaults: 28 steps on SD3's time grid with shift 4 (:func:`scheduler_times`: diffusers'
flow-matching grid, 28 network times from t_max towards 10⁻³, shifted as in Esser et al. 2024,
eq. 23, then a last step to 0), K = 3 gradient steps, η = 1 − t_next (the official code's noise mix
``√t_next ε̂ + √(1 − t_next) z``), ζ = 0.5 on the model-space (e.g. [−1, 1]) residual.

Deviations:

* Pixel space, not SD3's latent space: no decoder, no text conditioning or classifier-free
  guidance; the gradient is with respect to x̂₀ in the prior's model space.
* The data term is the paper's Gaussian likelihood ½‖y − A x̂₀‖² (the official code uses the
  unsquared norm ‖Aᵀy − AᵀA D(z)‖ through the SD3 decoder, ‖A⁺y − A⁺A D(z)‖ for super-resolution,
  with ζ = 15 per latent step). That latent step size has no pixel-space meaning; ζ = 0.5 here is
  in units of 1/‖A‖² (K = 3 steps of 0.5 reduce the residual of a unit singular value eightfold).
* The step is per sample (the official code takes one norm over the batch).
* σ_y is not used by the step (as in the paper; ζ absorbs it); it is checked like every solver's.
* Times start at ``t(σ_max)`` of the prior, not at 1 (where α = 0 and no x̂₀ exists through a
  denoiser); at 1 − 10⁻³ for priors with σ_max = ∞ (analytic ones).

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: DPS-like
data-consistency steps on x̂₀ inside the flow ODE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import Callback, setup
from ._flow import flow_path, flow_t_max, flow_x0

#: The last noisy time of diffusers' flow-matching grid before its final step to 0 (σ_min = 1/T,
#: T = 1000 training timesteps, as SD3's scheduler).
T_LAST = 1e-3


def scheduler_times(t_max: float, steps: int, grid: str, shift: float) -> list[float]:
    """The official sampler's grid (diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps``):
    ``steps`` network times equally spaced from t_max down to the shifted :data:`T_LAST`, then
    shifted ``k·t/(1 + (k − 1)·t)`` for ``grid="shift"`` (Esser et al. 2024, eq. 23; diffusers shifts
    its σ_min once at construction and the grid again; kept ≤ t_max), then a final step to 0 — the
    last call is near the data end (t ≈ 0.016 at k = 4), not at t_max/steps. With t_max = 1 it is
    diffusers' grid exactly."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"flowdps: steps must be a whole number >= 1, got {steps!r}")
    if grid not in ("shift", "uniform"):
        raise ValueError(f"flowdps: grid must be 'shift' or 'uniform', got {grid!r}")
    if grid == "shift" and not shift > 0:
        raise ValueError(f"flowdps: shift must be > 0, got {shift}")
    def shifted(v):
        return shift * v / (1.0 + (shift - 1.0) * v) if grid == "shift" else v

    # as diffusers: equally spaced between t_max and the *shifted* σ_min, then shifted (again)
    t = torch.linspace(t_max, min(float(shifted(torch.tensor(T_LAST, dtype=torch.float64))), t_max), steps,
                       dtype=torch.float64)
    return shifted(t).clamp(max=t_max).tolist() + [0.0]


def flowdps(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 28, generator=None, callback: Callback = None,
            path=None, zeta: float = 0.5, dc_steps: int = 3, eta: float | None = None, grid: str = "shift",
            shift: float = 4.0) -> Tensor:
    """One FlowDPS posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: any operator with a differentiable forward map (linear or not).
    :param prior: any :class:`invdiff.priors.Prior` of shape ``operator.img_size`` (flow, diffusion
        or analytic; no gradients through it are taken).
    :param sigma_y: noise std (float or ``[B]``); not used by the step (ζ absorbs it).
    :param steps: flow steps; NFE = ``steps`` forward passes, no backward pass.
    :param path: interpolant path (default: the prior's own, else linear).
    :param zeta: step size ζ of the K gradient steps on ½‖y − A x̂₀‖² (model units).
    :param dc_steps: K, gradient steps per flow step.
    :param eta: noise mixing weight η in [0, 1]; ``None``: the official schedule η = 1 − t_next.
    :param grid: ``"shift"`` (SD3's, default) or ``"uniform"`` time grid; ``shift``: its k.
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if not zeta >= 0 or isinstance(dc_steps, bool) or not isinstance(dc_steps, int) or dc_steps < 0:
        raise ValueError(f"flowdps: need zeta >= 0 and dc_steps a whole number >= 0, got {zeta}, {dc_steps!r}")
    if eta is not None and not 0.0 <= eta <= 1.0:
        raise ValueError(f"flowdps: eta must be None or in [0, 1], got {eta}")
    pb = setup("flowdps", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["differentiable"])
    path = flow_path(prior, path)
    ts = scheduler_times(flow_t_max(prior, path), steps, grid, shift)
    x = float(path.sigma(ts[0])) * pb.randn()
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        # 1. Flow Tweedie: clean estimate and noise estimate from one network call.
        x0_hat = flow_x0(pb, x, t, path, i)
        eps_hat = (x - float(path.alpha(t)) * x0_hat) / float(path.sigma(t))
        # 2. K likelihood gradient steps on the clean estimate, weighted by t (official code).
        x0_y = x0_hat
        for _ in range(dc_steps):
            x0_y = x0_y - zeta * pb.data_grad(x0_y, 1.0)
        x0_bar = (1.0 - t) * x0_hat + t * x0_y
        pb.check(i, x0_bar, f"ζ = {zeta} too large for this operator (the gradient steps overshoot when ζ‖A‖² > 2)")
        # 3. Stochastic noise mixing and renoising at t_next (the clean estimate itself at t_next = 0).
        if t_next > 0:
            e = 1.0 - t_next if eta is None else eta
            eps_mix = math.sqrt(1.0 - e) * eps_hat + (math.sqrt(e) * pb.randn() if e > 0 else 0.0)
            x = float(path.alpha(t_next)) * x0_bar + float(path.sigma(t_next)) * eps_mix
        else:
            x = x0_bar
        pb.callback(i, x, x0_bar)
    return pb.finish(x)
