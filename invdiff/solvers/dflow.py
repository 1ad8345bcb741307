"""D-Flow — optimising the source noise through a differentiated flow ODE.

Ben-Hamu, Puny, Gat, Karrer, Singer & Lipman, "D-Flow: Differentiating through flows for controlled
generation", ICML 2024, arXiv:2402.14017.

The flow's ODE solution map Φ (source noise → sample) is differentiated end to end, and the source
point is optimised (paper eq. 4, §3; noise at t = 1 here, data at t = 0 — the paper writes noise at
0, data at 1, i.e. t ↦ 1 − t, v ↦ −v):

    min_ε  L(ε) = ‖y − A Φ(ε)‖² + λ R(ε),      Φ(ε) = x₀ from x_{t_max} = σ(t_max)·ε along dx/dt = v(x, t)
    R(ε) = −log χ_d(‖ε‖) = ½‖ε‖² − (d − 1) log ‖ε‖   (+ const)        (the χ regulariser of §3.3, d = dim ε)
    ε_init = √α Φ⁻¹(A⁺y) + √(1 − α) z,  z ~ N(0, I)                   (blended initialisation, §5 inverse problems)

with Φ an explicit ODE solver of a few steps (``ode="midpoint"`` or ``"euler"``) whose every step
is differentiated (a vector–Jacobian product through the network per velocity call), and the
optimiser L-BFGS (the paper's choice for images) or Adam. The result is ``Φ(ε*)``: an optimiser,
mode-seeking, not a posterior sampler — its spread comes from the random initialisation only.

L-BFGS here is per sample (two-loop recursion with per-sample curvature pairs) with a per-sample
Armijo accept/reject of the unit step (a rejected sample halves its step and keeps its point), so
every iteration costs exactly one loss-and-gradient evaluation for the whole batch.

NFE (``k`` = 1 for Euler, 2 for midpoint; ``n`` = ``ode_steps``): forward passes
``(steps + 1)·k·n`` (+ ``n`` for the backward-ODE inversion of ``init="blend"``), backward passes
``steps·k·n``.

==============  =====================================  ==============  ===========================
code            paper                                  code            paper
==============  =====================================  ==============  ===========================
``eps``         x₀ (source point; here at t_max)       ``lam``         λ (regulariser weight)
``x0``          x(1) = Φ(x₀) (the sample)              ``alpha``       α (blend weight)
``steps``       optimiser iterations                   ``ode_steps``   ODE solver steps
==============  =====================================  ==============  ===========================

Defaults (the paper's inverse-problem set-up as reproduced by PnP-Flow, Martin et al. ICLR 2025,
``config/method_config/d_flow.yaml``): midpoint solver with 5 steps (10 NFE per solve), α = 0.1,
λ = 0.01; L-BFGS with history 20 (this package's choice; PnP-Flow's code keeps torch's 100) and 100
iterations (PnP-Flow: 20 × 20 L-BFGS iterations with line search). Loss in the prior's model space (e.g. [−1, 1]).

Deviations:

* No strong-Wolfe line search and no pooled batch: torch's L-BFGS treats the batch as one problem
  (samples would depend on each other) and its line search makes the NFE data-dependent; here
  one evaluation per iteration, per-sample Armijo accept/reject (see above).
* The inversion Φ⁻¹ of the blended initialisation uses ``ode_steps`` Euler steps on the reversed
  grid with the velocity taken at the later time of each step (as DDIM inversion does; the
  velocity is undefined at t = 0); PnP-Flow uses an adaptive dopri5 solve.
* The initial point inverts A⁺y (PnP-Flow's code inverts Aᵀy; the two agree for inpainting and
  denoising, where AAᵀ = I). The regulariser is PnP-Flow's,
  λ(½‖ε‖² − (d − 1) log ‖ε‖) = −λ log χ_d(‖ε‖) + const, without its clamp and its 10⁻⁵ in the log.
* σ_y is not used (the paper's loss has no noise model; λ and the iteration count act as the
  regularisation); it is checked like every solver's.
* Times start at ``t(σ_max)`` of the prior, not at 1 (1 − 10⁻³ for priors with σ_max = ∞), and
  follow a uniform grid (``grid``/``shift`` as in :func:`~invdiff.priors.flow_samplers.flow_time_grid`).

Class (:mod:`invdiff.solvers.classes`): Point estimator (estimates an optimiser of the source noise
through the ODE (MAP-like)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import Callback, Problem, SolverDivergedError, setup
from ._flow import flow_path, flow_times, flow_x0, flow_x0_graph

def _velocity(pb: Problem, x: Tensor, t: float, path) -> Tensor:
    """``v(x_t, t)`` with the autograd graph kept (one network call)."""
    x0 = flow_x0_graph(pb, x, t, path)
    return path.velocity_from_x0(x, x0, torch.tensor(t, dtype=torch.float64))


def _solve(pb: Problem, eps: Tensor, ts: list[float], path, ode: str) -> Tensor:
    """``Φ(ε)``: the ODE from ``x = σ(t_max)·ε`` down the grid ``ts`` to t = 0, differentiable in ε."""
    x = float(path.sigma(ts[0])) * eps
    for i in range(len(ts) - 1):
        t, h = ts[i], ts[i + 1] - ts[i]
        v = _velocity(pb, x, t, path)
        if ode == "midpoint":
            v = _velocity(pb, x + 0.5 * h * v, t + 0.5 * h, path)
        x = x + h * v
    return x


def _invert(pb: Problem, x0: Tensor, ts: list[float], path) -> Tensor:
    """``Φ⁻¹(x₀)``: Euler up the reversed grid, the velocity at each step's later time; returns ε."""
    x = x0
    rev = ts[::-1]
    for i in range(len(rev) - 1):
        t, t_next = rev[i], rev[i + 1]
        x0_hat = flow_x0(pb, x, t_next, path, i)
        v = path.velocity_from_x0(x, x0_hat, torch.tensor(t_next, dtype=torch.float64))
        x = x + (t_next - t) * v
    return x / float(path.sigma(ts[0]))


def _loss(pb: Problem, eps: Tensor, ts, path, ode: str, lam: float, need_grad: bool):
    """Per-sample loss ``[B]``, the sample Φ(ε) and (``need_grad``) ∇_ε of the summed loss."""
    e = eps.detach().requires_grad_(need_grad)
    with torch.enable_grad() if need_grad else torch.no_grad():
        x0 = _solve(pb, e, ts, path, ode)
        dims = tuple(range(1, eps.ndim))
        r = pb.residual(x0)
        loss = r.square().sum(tuple(range(1, r.ndim)))
        if lam > 0:
            d = e[0].numel()
            norm = e.square().sum(dims).clamp_min(1e-300).sqrt()
            loss = loss + lam * (0.5 * norm**2 - (d - 1) * torch.log(norm))
        grad = torch.autograd.grad(loss.sum(), e)[0].to(torch.float64) if need_grad else None
    return loss.detach(), x0.detach(), grad


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


def dflow(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 100, generator=None, callback: Callback = None,
          path=None, ode_steps: int = 5, ode: str = "midpoint", lam: float = 0.01, init: str = "blend",
          alpha: float = 0.1, optimizer: str = "lbfgs", lr: float = 1.0, history: int = 20, grid: str = "uniform",
          shift: float = 1.0) -> Tensor:
    """One D-Flow reconstruction per item of ``y`` (an optimum, not a posterior sample).

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: any operator with a differentiable forward map; ``init="blend"`` also needs ``pinv``.
    :param prior: differentiable :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std (float or ``[B]``); not used by the loss (checked only).
    :param steps: optimiser iterations (one loss-and-gradient evaluation each).
    :param path: interpolant path (default: the prior's own, else linear).
    :param ode_steps: steps of the ODE solver Φ; ``ode``: ``"midpoint"`` or ``"euler"``.
    :param lam: λ, weight of the χ regulariser of the source point.
    :param init: ``"blend"`` (√α Φ⁻¹(A⁺y) + √(1−α) z) or ``"noise"`` (z).
    :param alpha: α of the blended initialisation.
    :param optimizer: ``"lbfgs"`` (per sample, unit step with Armijo accept/reject) or ``"adam"``.
    :param lr: step size (L-BFGS's initial step, Adam's learning rate).
    :param history: L-BFGS memory (curvature pairs kept).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if ode not in ("euler", "midpoint") or init not in ("blend", "noise") or optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"dflow: need ode 'euler'|'midpoint', init 'blend'|'noise', optimizer 'lbfgs'|'adam'; "
                         f"got {ode!r}, {init!r}, {optimizer!r}")
    if not (lam >= 0 and 0.0 <= alpha <= 1.0 and lr > 0) or isinstance(ode_steps, bool) \
            or not isinstance(ode_steps, int) or ode_steps < 1 or not isinstance(history, int) or history < 1:
        raise ValueError(f"dflow: need lam >= 0, 0 <= alpha <= 1, lr > 0, whole ode_steps >= 1 and history >= 1; "
                         f"got {lam}, {alpha}, {lr}, {ode_steps!r}, {history!r}")
    pb = setup("dflow", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["differentiable"] + (["linear", "pinv"] if init == "blend" else []), prior_grad=True)
    path = flow_path(prior, path)
    ts = flow_times(prior, path, ode_steps, grid=grid, shift=shift)
    # 1. Initial source point: blended (eq. in §5) or plain noise.
    z = pb.randn()
    eps = z if init == "noise" else math.sqrt(alpha) * _invert(pb, operator.A_dagger(pb.y), ts, path) \
        + math.sqrt(1.0 - alpha) * z
    pb.check(0, eps, "the backward ODE of A⁺y diverged (blended initialisation)")
    if optimizer == "adam":
        x0 = _adam(pb, eps, ts, path, ode, lam, lr)
    else:
        x0 = _lbfgs(pb, eps, ts, path, ode, lam, lr, history)
    return pb.finish(x0)


def _adam(pb, eps, ts, path, ode, lam, lr) -> Tensor:
    # Adam's update is elementwise, so each sample's trajectory depends on its own loss only.
    eps = eps.clone().requires_grad_(True)
    opt = torch.optim.Adam([eps], lr=lr)
    for i in range(pb.steps):
        loss, x0, grad = _loss(pb, eps, ts, path, ode, lam, need_grad=True)
        _finite(pb, i, loss)
        eps.grad = grad
        opt.step()
        pb.callback(i, eps.detach(), x0)
    _, x0, _ = _loss(pb, eps, ts, path, ode, lam, need_grad=False)
    return x0


def _finite(pb: Problem, step: int, loss: Tensor) -> None:
    if not bool(torch.isfinite(loss).all()):
        raise SolverDivergedError(f"solver 'dflow': the loss became NaN/Inf at iteration {step}/{pb.steps}; "
                                  "lower lr or use fewer/more stable ODE steps")


def _lbfgs(pb, eps, ts, path, ode, lam, lr, history) -> Tensor:
    """Per-sample L-BFGS (Nocedal & Wright, Alg. 7.4) with per-sample Armijo accept/reject."""
    B, per = pb.B, pb.per_sample
    f, x0, g = _loss(pb, eps, ts, path, ode, lam, need_grad=pb.steps > 0)
    _finite(pb, 0, f)
    S, Y, rho = [], [], []
    gamma = torch.clamp(1.0 / _dot(g, g).sqrt().clamp_min(1e-300), max=1.0) if pb.steps > 0 else None
    tau = torch.full((B,), float(lr), dtype=torch.float64, device=eps.device)
    for i in range(pb.steps):
        # 1. Two-loop recursion: d = −H g with per-sample scalars.
        q, alphas = g.clone(), []
        for s, yv, r in zip(reversed(S), reversed(Y), reversed(rho)):
            a = r * _dot(s, q)
            q = q - per(a) * yv
            alphas.append(a)
        d = per(gamma) * q
        for (s, yv, r), a in zip(zip(S, Y, rho), reversed(alphas)):
            d = d + per(a - r * _dot(yv, d)) * s
        d = -d
        slope = _dot(g, d)
        bad = slope >= 0  # not a descent direction: steepest descent with the initial scaling
        if bool(bad.any()):
            d = torch.where(per(bad), -per(gamma) * g, d)
            slope = _dot(g, d)
        # 2. One evaluation at the candidate; accept per sample (Armijo), else halve its step.
        cand = eps + per(tau) * d
        need = i < pb.steps - 1
        f_c, x0_c, g_c = _loss(pb, cand, ts, path, ode, lam, need_grad=need)
        ok = torch.isfinite(f_c) & (f_c <= f + 1e-4 * tau * slope)
        if need:
            g_c = torch.where(per(ok), g_c, g)
            s_new, y_new = torch.where(per(ok), cand - eps, 0.0), g_c - g
            sy = _dot(s_new, y_new)
            good = ok & (sy > 1e-12 * _dot(s_new, s_new).sqrt() * _dot(y_new, y_new).sqrt())
            # a pair every iteration (zero, a no-op in the recursion, where a sample has none), so
            # which pairs a sample keeps depends on the iteration count only, not on the batch
            S.append(torch.where(per(good), s_new, 0.0))
            Y.append(torch.where(per(good), y_new, 0.0))
            rho.append(torch.where(good, 1.0 / torch.where(good, sy, 1.0), 0.0))
            gamma = torch.where(good, sy / torch.where(good, _dot(y_new, y_new), 1.0), gamma)
            if len(S) > history:
                S.pop(0), Y.pop(0), rho.pop(0)
            g = g_c
        eps = torch.where(per(ok), cand, eps)
        f = torch.where(ok, f_c, f)
        x0 = torch.where(per(ok), x0_c, x0)
        tau = torch.where(ok, float(lr), 0.5 * tau)
        pb.check(i, x0)
        pb.callback(i, eps, x0)
    return x0
