"""Unconditional samplers in flow time: ``sampler(prior, shape, *, steps, generator=None, callback=None,
path=None, ...)`` integrating the probability-flow velocity ``dx_t/dt = v(x_t, t)`` from noise
(t = 1) to data (t = 0) on an interpolant path (:mod:`invdiff.priors.flow`).

They run on every prior: a :class:`~invdiff.priors.flow.FlowPrior` on its own path is called
directly (from t = 1 exactly); any other prior through its denoiser
(:meth:`invdiff.priors.Prior.velocity`, from the time of its largest noise level, the state started
at σ(t_max)·ε as EDM starts at σ_max·ε). Returns ``[B, *prior.shape]`` samples in physical units.

==============  ====================================================  =========================
sampler         scheme                                                NFE
==============  ====================================================  =========================
``flow_euler``  explicit Euler (rectified flow's sampler, Liu et al.   steps
                2023, arXiv:2209.03003, §2.1)
``flow_heun``   Heun's 2nd order, Euler on the last step               2·steps − 1
                (Karras et al. 2022, Alg. 1, in flow time)
==============  ====================================================  =========================

Time grids (``grid``): ``"uniform"`` (equal steps in t, rectified flow) or ``"shift"`` with
``shift = k`` (Esser et al. 2024, arXiv:2403.03206, eq. 23: t' = k·t/(1 + (k − 1)·t), more steps near
the noise end for k > 1).
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import Tensor

from .._random import GeneratorArg, check_generator, randn
from .base import Prior
from .flow import Interpolant, LinearPath, make_path

Callback = Callable[[int, Tensor, Tensor], None] | None

__all__ = ["flow_time_grid", "flow_start", "flow_euler", "flow_heun", "FLOW_SAMPLERS"]


def sampling_path(prior: Prior, path=None) -> Interpolant:
    """The path a flow sampler runs on: ``path`` if given, else the prior's own (a flow prior's),
    else the linear path."""
    if path is not None:
        return make_path(path)
    own = getattr(prior, "path", None)
    return own if isinstance(own, Interpolant) else LinearPath()


def flow_start(prior: Prior, path: Interpolant) -> float:
    """The first time of a flow sampler: 1 for a flow prior on its own path (the network knows
    t = 1), else the time of the prior's largest noise level ``t(σ_max)``."""
    if getattr(prior, "path", None) == path:
        return 1.0
    return float(path.t_of_sigma(prior.sigma_max))


def flow_time_grid(steps: int, t_max: float = 1.0, t_min: float = 0.0, grid: str = "uniform",
                   shift: float = 1.0) -> Tensor:
    """``steps + 1`` decreasing times from ``t_max`` to ``t_min`` (float64)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ValueError(f"need 0 <= t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    if grid == "shift":
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        u = shift * u / (1.0 + (shift - 1.0) * u)
    elif grid != "uniform":
        raise ValueError(f"unknown grid {grid!r}; choose 'uniform' or 'shift'")
    return t_min + (t_max - t_min) * u


def _setup(prior: Prior, shape, generator: GeneratorArg) -> tuple[tuple, torch.device]:
    shape = tuple(int(s) for s in shape)
    if shape[1:] != prior.shape:
        raise ValueError(f"shape must be [B, {', '.join(map(str, prior.shape))}] for this prior, got {list(shape)}")
    check_generator(generator, shape[0])
    tensors = itertools.chain(prior.parameters(), prior.buffers())
    return shape, next((t.device for t in tensors), torch.device("cpu"))


def _noise(shape, generator: GeneratorArg, device, noise: Tensor | None) -> Tensor:
    """The initial standard-normal draw, or the given ``noise`` (reflow's couplings keep their ε)."""
    if noise is None:
        return randn(shape, generator, device=device)
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise must have shape {list(shape)}, got {list(noise.shape)}")
    return noise.to(device, torch.float64)


def _v(prior: Prior, x: Tensor, t: float, path: Interpolant) -> Tensor:
    with torch.no_grad():
        out = prior.velocity(x, t, path)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError(f"the prior's velocity returned NaN/Inf at t = {t:.4g}")
    return out.to(torch.float64)


def _x0(path: Interpolant, x: Tensor, v: Tensor, t: float) -> Tensor:
    return path.x0_from_velocity(x, v, torch.tensor(t, dtype=torch.float64))


def flow_euler(prior: Prior, shape, *, steps: int = 50, generator: GeneratorArg = None, callback: Callback = None,
               path=None, grid: str = "uniform", shift: float = 1.0, noise: Tensor | None = None) -> Tensor:
    """Euler's method on ``dx/dt = v(x, t)`` from t_max (1 for a flow prior) to 0:
    ``x_{i+1} = x_i + (t_{i+1} − t_i)·v(x_i, t_i)``. NFE = ``steps``; the callback's x̂₀ is the
    velocity's x₀ estimate (:meth:`Interpolant.x0_from_velocity`). ``noise``: the initial
    standard-normal draw ``[B, *shape]`` instead of one from ``generator``."""
    shape, device = _setup(prior, shape, generator)
    path = sampling_path(prior, path)
    ts = flow_time_grid(steps, flow_start(prior, path), 0.0, grid, shift).tolist()
    x = float(path.sigma(ts[0])) * _noise(shape, generator, device, noise)
    for i in range(steps):
        v = _v(prior, x, ts[i], path)
        x0 = _x0(path, x, v, ts[i])
        x = x + (ts[i + 1] - ts[i]) * v
        if callback is not None:
            callback(i, x, x0)
    return prior.to_physical(x)


def flow_heun(prior: Prior, shape, *, steps: int = 25, generator: GeneratorArg = None, callback: Callback = None,
              path=None, grid: str = "uniform", shift: float = 1.0, noise: Tensor | None = None) -> Tensor:
    """Heun's method (explicit trapezoid) on ``dx/dt = v(x, t)``: an Euler predictor
    ``x̃ = x_i + h v(x_i, t_i)``, then ``x_{i+1} = x_i + h/2 (v(x_i, t_i) + v(x̃, t_{i+1}))``, except on
    the last step (t_{i+1} = 0, where no velocity is defined through a denoiser), which is Euler.
    NFE = ``2·steps − 1``."""
    shape, device = _setup(prior, shape, generator)
    path = sampling_path(prior, path)
    ts = flow_time_grid(steps, flow_start(prior, path), 0.0, grid, shift).tolist()
    x = float(path.sigma(ts[0])) * _noise(shape, generator, device, noise)
    for i in range(steps):
        h = ts[i + 1] - ts[i]
        v = _v(prior, x, ts[i], path)
        x0 = _x0(path, x, v, ts[i])
        x_next = x + h * v
        if ts[i + 1] > 0:
            v2 = _v(prior, x_next, ts[i + 1], path)
            x_next = x + 0.5 * h * (v + v2)
        x = x_next
        if callback is not None:
            callback(i, x, x0)
    return prior.to_physical(x)


FLOW_SAMPLERS = {"flow_euler": flow_euler, "flow_heun": flow_heun}
