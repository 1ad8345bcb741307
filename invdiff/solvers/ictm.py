"""ICTM — flow priors for linear inverse problems via iterative corrupted trajectory matching.

Zhang, Yu, Chang, Gao, Wu & Leong, NeurIPS 2024, arXiv:2405.18816 (the PnP-Flow authors'
re-implementation, github.com/annegnx/PnP-Flow ``pnpflow/methods/flow_priors.py``, checked with
the first author, fixes the details used here).

**A MAP estimator, not a posterior sampler** (the paper's own framing): the MAP problem
max log p(x₀) − λ‖Ax₀ − y‖² over the flow's trajectory is split into a sequence of local MAP
problems, one per time step, each matching the flow's next state to a *corrupted trajectory*
y_t of the measurement. Its only randomness is the initial noise and the Hutchinson probes, so
repeated runs scatter around a mode instead of covering the posterior.

The paper writes data at t = 1; here data sit at t = 0 (t ↦ 1 − t, v ↦ −v), the step runs from
t to t' = t − h. With x_t = α(t) x₀ + σ(t) ε₀ the measurement's trajectory is
``y_t = α(t) y + σ(t) A ε₀`` (ε₀ the initial noise; paper §3.2, "corrupted trajectory"), and the
local problem at each time is (paper's compound loss, §3.3 and Alg. 1)

    min_x  λ ‖A x' − y_{t'}‖² − log p_t(x) − h ∇·v(x, t),     x' = x − h v(x, t)

— ``−log p_{t'}(x') ≈ −log p_t(x) − h ∇·v`` by the instantaneous change of variables (here v is
the velocity towards noise, so the sign flips against the paper's data-at-1 form). The divergence
is Hutchinson's estimate uᵀ(∂v/∂x)u with one Rademacher probe u; the prior term enters through its
gradient, the score −∇ log p_t(x) = (x − α x̂₀)/σ² (Tweedie), except at the first time, where p_t
is taken as N(0, σ(t)² I). K Adam steps (learning rate η, fresh state every time) from the current
state solve it approximately; then the flow takes its Euler step ``x ← x − h v(x, t)``.

NFE = ``steps·(K + 1)`` forward passes and ``2·steps·K`` backward passes (per Adam step: one forward
with the graph, one vector–Jacobian product with a graph for the divergence, one through it; per
time one more forward for the Euler step).

============  ===============================  ==============  ==============================
code          paper                            code            paper
============  ===============================  ==============  ==============================
``x``         x_t (t here = 1 − t there)       ``lam``         λ
``y_next``    y_{t+Δt} (corrupted trajectory)  ``lr``          η (Adam learning rate)
``eps0``      x₀ ~ N(0, I) (initial noise)     ``iters``       K (iterations per time)
``div``       Tr ∂v/∂x (Hutchinson)            ``steps``       N
============  ===============================  ==============  ==============================

Defaults (the re-implementation's ``flow_priors.yaml``): N = 100 steps from t = 1 − 10⁻³, K = 1,
λ = 10³, η = 10⁻²; its tuned CelebA runs use λ = 10² (denoising) to 10⁴ (super-resolution,
inpainting) and η = 0.01–0.1 — experiment configs.

Deviations:

* The initial state is σ(t₀) ε₀ (the code uses ε₀ itself; equal on the linear path up to
  1 − t₀ = 10⁻³ relative) and times are clipped to the prior's largest time t(σ_max).
* The data term and the divergence are per sample, and so is Adam (it is elementwise); the code
  sums the batch's losses, which does not couple the samples' gradients either.
* Any interpolant path, through x̂₀ and the path's exact conversions (the paper uses the linear one).

Class (:mod:`invdiff.solvers.classes`): Point estimator (estimates MAP over the flow's source noise
(trajectory matching)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..priors.flow_samplers import flow_time_grid
from ._common import Callback, setup
from ._flow import flow_path, flow_t_max, flow_x0, flow_x0_graph


def _misfit_grad(pb, x: Tensor, target: Tensor, weight: float) -> Tensor:
    """``∇ weight·‖A x − target‖²`` in model space: ``2·weight·Aᵀ(Ax − target)`` with the adjoint,
    autograd through the forward map otherwise."""
    if "adjoint" in pb.op.capabilities:
        return 2.0 * weight * pb.op.A_adjoint(pb.forward(x) - target)
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(weight * (pb.forward(x_in) - target).square().sum(), x_in)
    return g.to(torch.float64)


def ictm(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 100, generator=None, callback: Callback = None,
         path=None, lam: float = 1000.0, lr: float = 0.01, iters: int = 1, start_time: float = 1e-3,
         betas: tuple[float, float] = (0.9, 0.999)) -> Tensor:
    """One ICTM (MAP-type) reconstruction per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: linear operator with an adjoint or a differentiable forward map.
    :param prior: differentiable :class:`invdiff.priors.Prior` of shape ``operator.img_size``
        (second derivatives are taken through it: Hutchinson's divergence is differentiated).
    :param sigma_y: noise std (float or ``[B]``); not used (λ plays its part, as in the paper).
    :param steps: N time steps; NFE = steps·(iters + 1) forward + 2·steps·iters backward passes.
    :param path: interpolant path (default: the prior's own, else linear).
    :param lam: λ, weight of the corrupted-trajectory data term (model units).
    :param lr: η, Adam's learning rate.
    :param iters: K, Adam steps per time.
    :param start_time: the paper's first data time ε (data at 1); the first time here is 1 − ε.
    :param betas: Adam's (β₁, β₂) (PyTorch's defaults, as the authors use).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if not (lam >= 0 and lr >= 0 and 0.0 < start_time < 1.0 and all(0.0 <= b < 1.0 for b in betas)) \
            or isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"ictm: need lam >= 0, lr >= 0, 0 < start_time < 1, betas in [0, 1) and iters a whole "
                         f"number >= 0, got {lam}, {lr}, {start_time}, {betas}, {iters!r}")
    pb = setup("ictm", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["linear", ("adjoint", "differentiable")], prior_grad=True)
    path = flow_path(prior, path)
    tau0 = min(1.0 - start_time, flow_t_max(prior, path))
    ts = flow_time_grid(steps, tau0, 0.0).tolist()
    eps0 = pb.randn()
    s0 = float(path.sigma(tau0))
    x = s0 * eps0
    a_eps0 = pb.forward(eps0)  # A ε₀: the noise half of the corrupted trajectory
    b1, b2 = betas
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        h = t - t_next
        a, s = float(path.alpha(t)), float(path.sigma(t))
        da, ds = float(path.d_alpha(t)), float(path.d_sigma(t))
        # 1. The corrupted trajectory at the next time: y_{t'} = α(t') y + σ(t') A ε₀.
        y_next = float(path.alpha(t_next)) * pb.y + float(path.sigma(t_next)) * a_eps0
        # 2. K Adam steps on λ‖A x' − y_{t'}‖² − log p_t(x) − h ∇·v(x, t), x' = x − h v(x, t).
        m = torch.zeros_like(x)
        v2 = torch.zeros_like(x)
        for k in range(1, iters + 1):
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                x0_graph = flow_x0_graph(pb, x_in, t, path)
                vel = da * x0_graph + ds * (x_in - a * x0_graph) / s
                x_next = x_in - h * vel
                w = _misfit_grad(pb, x_next.detach(), y_next, lam)
                u = pb.randn().sign()  # Rademacher probe
                (uj,) = torch.autograd.grad(vel, x_in, grad_outputs=u, create_graph=True)
                div = (uj * u).sum()
                (grad,) = torch.autograd.grad((x_next * w).sum() - h * div, x_in)
            x0_hat = x0_graph.detach()
            pb.check(i, x0_hat, "the prior's denoiser returned NaN/Inf")
            # the prior term's gradient: N(0, σ₀² I) at the first time, the score (Tweedie) after
            prior_grad = x / (s0 * s0) if i == 0 else (x - a * x0_hat) / (s * s)
            grad = grad.to(torch.float64) + prior_grad
            m = b1 * m + (1 - b1) * grad
            v2 = b2 * v2 + (1 - b2) * grad.square()
            x = x - lr * (m / (1 - b1**k)) / ((v2 / (1 - b2**k)).sqrt() + 1e-8)
            pb.check(i, x, f"lr = {lr} or lam = {lam} too large for this problem")
        # 3. The flow's Euler step from t to t'.
        x0_hat = flow_x0(pb, x, t, path, i)
        x = x - h * (da * x0_hat + ds * (x - a * x0_hat) / s)
        pb.check(i, x)
        pb.callback(i, x, x0_hat)
    return pb.finish(x)
