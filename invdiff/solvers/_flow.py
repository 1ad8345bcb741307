"""Shared machinery of the flow posterior solvers (OT-ODE, PnP-Flow, ICTM, FlowDPS, D-Flow).

A flow solver works in flow time on an interpolant path ``x_t = α(t) x₀ + σ(t) ε``
(:mod:`invdiff.priors.flow`, data at t = 0, noise at t = 1; papers written with data at t = 1 are
translated by t ↦ 1 − t, v ↦ −v, stated in each solver's docstring). Every network call goes
through the problem's :class:`~invdiff.solvers.network.Network` as one denoiser call at the EDM
point ``x = x_t/α``, ``s = σ/α`` — exact for a :class:`~invdiff.priors.flow.FlowPrior` (its
denoiser is the conversion of its velocity) and the same conversion for any diffusion or analytic
prior — so the run-time settings (autocast, compile), NFE counting and the NaN guard apply as for
every solver. Times therefore start at ``t(σ_max)`` of the prior (1 − 10⁻³ for the shipped flow
priors), not at t = 1 exactly, where α = 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..priors.base import Prior
from ..priors.flow import Interpolant
from ..priors.flow_samplers import flow_time_grid, sampling_path

#: Where flow solvers start on a prior with σ_max = ∞ (t = 1 itself has α = 0 on the linear and
#: trigonometric paths: no denoiser point).
T_MAX_UNBOUNDED = 1.0 - 1e-3

__all__ = ["T_MAX_UNBOUNDED", "flow_t_max", "flow_path", "flow_times", "flow_point", "flow_x0", "flow_velocity", "flow_x0_graph"]


def flow_path(prior: Prior, path=None) -> Interpolant:
    """The path a flow solver runs on: ``path`` (an :class:`Interpolant`, a name or a dict) if
    given, else the prior's own (a flow prior's), else the linear path."""
    return sampling_path(prior, path)


def flow_t_max(prior: Prior, path: Interpolant) -> float:
    """Where a flow solver starts: ``t(prior.sigma_max)``, or :data:`T_MAX_UNBOUNDED` = 1 − 10⁻³ (a
    flow prior's default end) where that is not inside (0, 1) — a prior without a largest noise
    level (σ_max = ∞: the analytic priors), whose t = 1 would leave α = 0 and no denoiser point."""
    t = float(path.t_of_sigma(prior.sigma_max)) if math.isfinite(prior.sigma_max) else math.nan
    return t if 0.0 < t < 1.0 else T_MAX_UNBOUNDED


def flow_times(prior: Prior, path: Interpolant, steps: int, *, t_end: float = 0.0, grid: str = "uniform",
               shift: float = 1.0) -> list[float]:
    """``steps + 1`` decreasing times from :func:`flow_t_max` to ``t_end``."""
    return flow_time_grid(steps, flow_t_max(prior, path), t_end, grid, shift).tolist()


def flow_point(path: Interpolant, t: float) -> tuple[float, float]:
    """``(1/α(t), s(t) = σ(t)/α(t))``: where a flow state at time t sits in EDM form."""
    a, s = float(path.alpha(t)), float(path.sigma(t))
    if not (a > 0 and s > 0):
        raise ValueError(f"t = {t} is outside the open path (α = {a}, σ = {s}); flow solvers stay in 0 < t < 1")
    return 1.0 / a, s / a


def flow_x0(pb, x_t: Tensor, t: float, path: Interpolant, step: int) -> Tensor:
    """``x̂₀ = E[x₀ | x_t]`` (one network call, no graph)."""
    inv_a, s = flow_point(path, t)
    return pb.denoise(inv_a * x_t, s, step)


def flow_velocity(pb, x_t: Tensor, t: float, path: Interpolant, step: int) -> tuple[Tensor, Tensor]:
    """``(v(x_t, t), x̂₀)`` from one network call: ``v = α' x̂₀ + σ' (x_t − α x̂₀)/σ``."""
    x0 = flow_x0(pb, x_t, t, path, step)
    tt = torch.tensor(t, dtype=torch.float64)
    return path.velocity_from_x0(x_t, x0, tt), x0


def flow_x0_graph(pb, x_t: Tensor, t: float, path: Interpolant) -> Tensor:
    """``x̂₀(x_t)`` with the autograd graph kept (for guidance gradients through the network);
    ``x_t`` should require grad."""
    inv_a, s = flow_point(path, t)
    return pb.net.with_grad(inv_a * x_t, s)
