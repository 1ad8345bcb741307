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
``flow_sde``    Euler–Maruyama on the interpolant's backward SDE       steps
                with diffusion ε(t) (Albergo, Boffi & Vanden-Eijnden
                2023, arXiv:2303.08797, §2.4): :func:`flow_sde`
==============  ====================================================  =========================

Time grids (``grid``): ``"uniform"`` (equal steps in t, rectified flow) or ``"shift"`` with
``shift = k`` (Esser et al. 2024, arXiv:2403.03206, eq. 23: t' = k·t/(1 + (k − 1)·t), more steps near
the noise end for k > 1).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .._random import GeneratorArg, randn
from .base import Prior
from .flow import Interpolant, LinearPath, make_path
from .samplers import sampling_setup

Callback = Callable[[int, Tensor, Tensor], None] | None

__all__ = ["flow_time_grid", "flow_start", "flow_euler", "flow_heun", "flow_sde", "EPS_SCHEDULES", "FLOW_SAMPLERS"]


def sampling_path(prior: Prior, path=None) -> Interpolant:
    """The path a flow sampler runs on: ``path`` if given, else the prior's own (a flow prior's),
    else the linear path."""
    if path is not None:
        return make_path(path)
    own = getattr(prior, "path", None)
    return own if isinstance(own, Interpolant) else LinearPath()


def flow_start(prior: Prior, path: Interpolant) -> float:
    """The first time of a flow sampler: 1 for a flow prior on its own path (the network knows
    t = 1), else the time of the prior's largest noise level ``t(σ_max)``, at most 1 (an analytic
    prior has σ_max = ∞: t(∞) is 1, or NaN/∞ in floating point, and its closed-form velocity
    answers at t = 1)."""
    if getattr(prior, "path", None) == path:
        return 1.0
    t = float(path.t_of_sigma(prior.sigma_max))
    return t if t < 1.0 else 1.0  # NaN (∞/∞ on the linear path) and t > 1 (VE beyond its σ_max) -> 1


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
    shape, device = sampling_setup(prior, shape, generator)
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
    shape, device = sampling_setup(prior, shape, generator)
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


def _eps_sigma(path: Interpolant, t: float) -> float:
    return float(path.sigma(t))


def _eps_sbdm(path: Interpolant, t: float) -> float:
    a, s, da, ds = (float(f(t)) for f in (path.alpha, path.sigma, path.d_alpha, path.d_sigma))
    return s * ds - s * s * da / a if a > 0 else math.inf


#: Named diffusion coefficients ε(t) of :func:`flow_sde` (``path, t -> ε``), after SiT's
#: ``diffusion_form`` (Ma et al. 2024, arXiv:2401.08740, ``transport/path.py``), in this module's time:
#: ``"sigma"``: ε = σ(t) (SiT's sampling default); ``"sbdm"``: ε = σσ' − σ²α'/α = ½g(t)², the
#: score-based diffusion model's reverse SDE (Song et al. 2021, arXiv:2011.13456, eq. 6) for the
#: forward SDE whose marginals are the path (infinite where α = 0, e.g. t = 1 on the linear path).
EPS_SCHEDULES: dict[str, Callable[[Interpolant, float], float]] = {"sigma": _eps_sigma, "sbdm": _eps_sbdm}


def _eps_fn(eps, eps_scale: float, path: Interpolant) -> Callable[[float], float]:
    """``t -> eps_scale · ε(t)`` from a number, a name of :data:`EPS_SCHEDULES` or a callable ``ε(t)``."""
    if not (isinstance(eps_scale, (int, float)) and not isinstance(eps_scale, bool) and eps_scale >= 0
            and math.isfinite(eps_scale)):
        raise ValueError(f"eps_scale must be a finite number >= 0, got {eps_scale!r}")
    if isinstance(eps, str):
        if eps not in EPS_SCHEDULES:
            raise ValueError(f"unknown diffusion schedule eps={eps!r}; choose one of {sorted(EPS_SCHEDULES)}, a number "
                             "ε >= 0 or a callable t -> ε(t)")
        named = EPS_SCHEDULES[eps]
        return lambda t: eps_scale * named(path, t)
    if callable(eps):
        return lambda t: eps_scale * float(eps(t))
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        return lambda t: eps_scale * float(eps)
    raise TypeError(f"eps must be a number, a name ({sorted(EPS_SCHEDULES)}) or a callable t -> ε(t), got {eps!r}")


def flow_sde(prior: Prior, shape, *, steps: int = 100, generator: GeneratorArg = None, callback: Callback = None,
             path=None, eps: float | str | Callable[[float], float] = "sigma", eps_scale: float = 1.0,
             grid: str = "uniform", shift: float = 1.0, noise: Tensor | None = None) -> Tensor:
    """The stochastic-interpolant backward SDE (Albergo, Boffi & Vanden-Eijnden 2023,
    arXiv:2303.08797, §2.4, the backward SDE with drift ``b_B = b − ε s``), by Euler–Maruyama from
    t_max (1 for a flow prior) to 0. For every ``ε(t) ≥ 0`` it has the marginals of the
    probability-flow ODE ``dx/dt = v``: in reverse time τ = 1 − t, ``dx = (−v + ε s) dτ + √(2ε) dW``
    has the Fokker–Planck equation ``∂_τ p = ∇·(p v) − ε∇·(p s) + εΔp = ∇·(p v)`` (as ``p s = ∇p``),
    which is the ODE's continuity equation ``∂_t p = −∇·(p v)`` run backwards.

    ========================  ==========================  ==================================
    code                      paper (Albergo et al.)      meaning
    ========================  ==========================  ==================================
    ``v``                     b(t, x)                     the velocity (probability flow)
    ``score``                 s(t, x) = ∇ log ρ(t, x)     ``(α x̂₀ − x)/σ²`` (Tweedie)
    ``eps_i``                 ε(t)                        the diffusion coefficient, ≥ 0
    ``h``                     the step of the reverse     ``t_i − t_{i+1} > 0``
                              time
    ========================  ==========================  ==================================

    Each step (``h = t_i − t_{i+1}``, ``z ~ N(0, I)``)::

        x ← x − h·v(x, t_i) + h·ε(t_i)·s(x, t_i) + √(2 ε(t_i) h)·z

    :param eps: ε(t): a number, a name of :data:`EPS_SCHEDULES` (``"sigma"``: ε = σ(t), the default,
        SiT's ``diffusion_form="sigma"``; ``"sbdm"``: the diffusion model's reverse SDE) or a callable
        ``t -> ε(t)``; multiplied by ``eps_scale`` (SiT's ``diffusion_norm``). ``eps = 0`` is
        :func:`flow_euler`, draw for draw (no noise is drawn where ε = 0).
    :param noise: the initial standard-normal draw ``[B, *shape]`` (the steps' noise still comes
        from ``generator``).

    NFE = ``steps`` (one velocity per step; the score is the same call's x̂₀). The callback's x̂₀ is
    the velocity's x₀ estimate. Returns ``[B, *prior.shape]`` samples in physical units.

    *Deviations*: the last step (to t = 0, where σ = 0 and the score is undefined) is the
    probability-flow Euler step ``x − h·v`` — no noise, no score term; on the linear path it lands
    exactly on x̂₀ = E[x₀ | x_t] (SiT's ``last_step="Tweedie"``; its default ``"Mean"`` keeps the
    score term, which diverges as σ → 0 for ε = σ). ε is evaluated at the left end of each step
    (Euler–Maruyama), and refused where it is not finite (``"sbdm"`` at t = 1 on the linear path:
    start below 1 or choose ``"sigma"``).
    """
    shape, device = sampling_setup(prior, shape, generator)
    path = sampling_path(prior, path)
    ts = flow_time_grid(steps, flow_start(prior, path), 0.0, grid, shift).tolist()
    eps_of = _eps_fn(eps, eps_scale, path)
    eps_ts = [eps_of(t) for t in ts[:-2]] + [0.0]  # the last step is deterministic
    bad = [(t, e) for t, e in zip(ts, eps_ts) if not (math.isfinite(e) and e >= 0)]
    if bad:
        raise ValueError(f"flow_sde: the diffusion coefficient ε(t) = {bad[0][1]} at t = {bad[0][0]:.4g} on the "
                         f"{path.name} path; ε must be finite and >= 0 at every step (eps={eps!r}: start below "
                         "t = 1, or use eps='sigma' or a number)")
    x = float(path.sigma(ts[0])) * _noise(shape, generator, device, noise)
    for i in range(steps):
        t_i, eps_i = ts[i], eps_ts[i]
        h = ts[i] - ts[i + 1]
        # 1. Velocity and x̂₀ from one network call.
        v = _v(prior, x, t_i, path)
        x0 = _x0(path, x, v, t_i)
        # 2. Probability-flow (Euler) part: exactly flow_euler's update.
        x_next = x + (ts[i + 1] - ts[i]) * v
        if eps_i > 0:
            # 3. Score correction and noise of the backward SDE (Euler–Maruyama).
            score = path.score_from_x0(x, x0, torch.tensor(t_i, dtype=torch.float64))
            z = randn(shape, generator, device=device)
            x_next = x_next + (h * eps_i) * score + math.sqrt(2.0 * eps_i * h) * z
        x = x_next
        if callback is not None:
            callback(i, x, x0)
    return prior.to_physical(x)


FLOW_SAMPLERS = {"flow_euler": flow_euler, "flow_heun": flow_heun, "flow_sde": flow_sde}
