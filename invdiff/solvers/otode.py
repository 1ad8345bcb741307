"""OT-ODE — training-free linear image inverses via flows (ΠGDM guidance in the flow ODE).

Pokle, Muckley, Chen & Karrer, TMLR 2024, arXiv:2310.04432 (no official code; the PnP-Flow
authors' re-implementation, github.com/annegnx/PnP-Flow ``pnpflow/methods/ot_ode.py``, fixes the
details the paper leaves open).

The paper writes data at t = 1 (x_t = α_t x₁ + σ_t ε, OT path α_t = t, σ_t = 1 − t); here data sit
at t = 0 (:mod:`invdiff.priors.flow`, t ↦ 1 − t, v ↦ −v). The conditional velocity is the
unconditional one plus the likelihood score, weighted by the path (paper eqs. 11–12):

    v(x_t, y) = v(x_t) + γ_t · σ_t² d ln(α_t/σ_t)/dt · ∇_{x_t} log q(y | x_t)            (eq. 12)

with ΠGDM's Gaussian approximation p(x₀ | x_t) ≈ N(x̂₀, r_t² I) of a unit-variance data prior
(eq. 13) and its likelihood score, a vector–Jacobian product through the denoiser:

    r_t² = σ_t² / (σ_t² + α_t²)                                                          (eq. 13)
    ∇ log q(y | x_t) ≈ ∂x̂₀/∂x_tᵀ Aᵀ (r_t² AAᵀ + σ_y² I)⁻¹ (y − A x̂₀)                       (ΠGDM)

On the linear path σ² d ln(α/σ)/dt = −t/(1 − t) in this convention (the paper's (1 − t)/t). The ODE
starts at a non-zero data time t₀ (``start_time``, paper convention) from the measurement,
``x_{τ₀} = α(τ₀) A⁺y + σ(τ₀) ε`` with τ₀ = 1 − t₀ (paper Alg. 1's initialisation), then takes
Euler steps to t = 0. Matrix-free ``Aᵀ(r²AAᵀ + σ_y²I)⁻¹ = (r²AᵀA + σ_y²I)⁻¹Aᵀ`` through
``prox_l2`` (closed form with an SVD, CG otherwise); ``A⁺(·)/r²`` when σ_y = 0.

Every prior works: the velocity and x̂₀ come from one denoiser call (:mod:`~invdiff.solvers._flow`).

NFE = ``steps`` forward + ``steps`` backward passes (one vector–Jacobian product per step).

=============  ==============================  ==================  =============================
code           paper                           code                paper
=============  ==============================  ==================  =============================
``x``          x_t (t here = 1 − t there)      ``r2``              r_t²
``x0_hat``     x̂₁ = E[x₁ | x_t]                ``start_time``      t₀ (start time, data at 1)
``v``          v̂(x_t)                          ``gamma``           γ_t
``g``          ∇_{x_t} log q^app(y | x_t)      ``coef``            σ_t² d ln(α_t/σ_t)/dt
=============  ==============================  ==================  =============================

Defaults (the re-implementation's ``ot_ode.yaml``): a 100-step grid entered at t₀ = 0.2, i.e.
80 Euler steps of 0.01; γ_t = 1 (``gamma: constant``; its per-task runs use t₀ = 0.1–0.4 and
sometimes ``gamma="adaptive"``, √(α/(α² + σ²)) on the linear path, the re-implementation's
``gamma_t``); r_t² of a unit-variance prior.

Deviations:

* The start is α(τ₀) A⁺y + σ(τ₀) ε (the re-implementation uses Aᵀy; the two agree for inpainting
  and denoising, where AAᵀ = I); τ₀ is clipped to the prior's largest time t(σ_max).
* ``prior_variance`` v generalises eq. 13 to r_t² = v σ_t²/(σ_t² + v α_t²) (exact for a prior
  N(μ, v I)); the paper's v = 1 is the default.
* Any interpolant path: the paper's OT path is ``path="linear"`` (and the default for priors
  without a path of their own).

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: ΠGDM's Gaussian p(x₀ |
x_t) guidance in the flow ODE).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..priors.flow_samplers import flow_time_grid
from ._common import Callback, pigdm_vector, setup
from ._flow import flow_path, flow_t_max, flow_x0_graph


def ot_ode(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 80, generator=None, callback: Callback = None,
           path=None, start_time: float = 0.2, gamma: float | str = 1.0, prior_variance: float = 1.0) -> Tensor:
    """One OT-ODE posterior sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: linear operator with ``prox_l2`` and ``pinv`` (closed form or CG).
    :param prior: differentiable :class:`invdiff.priors.Prior` of shape ``operator.img_size`` (flow,
        diffusion or analytic).
    :param sigma_y: noise std in measurement units, float or ``[B]``.
    :param steps: Euler steps from τ₀ = 1 − ``start_time`` to 0; NFE = steps forward + steps backward.
    :param path: interpolant path (default: the prior's own, else linear — the paper's OT path).
    :param start_time: t₀ in [0, 1), the paper's data-at-1 start time.
    :param gamma: γ_t, a float ≥ 0 or ``"adaptive"`` (√(α/(α² + σ²))).
    :param prior_variance: v in r_t² = v σ²/(σ² + v α²), model space (paper: 1).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if not 0.0 <= start_time < 1.0 or prior_variance <= 0:
        raise ValueError(f"ot_ode: need 0 <= start_time < 1 and prior_variance > 0, got {start_time}, {prior_variance}")
    if not (gamma == "adaptive" or (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma >= 0)):
        raise ValueError(f"ot_ode: gamma must be a float >= 0 or 'adaptive', got {gamma!r}")
    pb = setup("ot_ode", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["linear", "prox_l2", "pinv"], prior_grad=True)
    path = flow_path(prior, path)
    tau0 = min(1.0 - start_time, flow_t_max(prior, path))
    ts = flow_time_grid(steps, tau0, 0.0).tolist()
    # Start at data time t₀ from the measurement (Alg. 1): x = α A⁺y + σ ε.
    x = float(path.alpha(tau0)) * operator.A_dagger(pb.y) + float(path.sigma(tau0)) * pb.randn()
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        a, s = float(path.alpha(t)), float(path.sigma(t))
        da, ds = float(path.d_alpha(t)), float(path.d_sigma(t))
        # 1. x̂₀ with the graph kept; the unconditional velocity from it.
        x_in = x.detach().requires_grad_(True)
        x0_graph = flow_x0_graph(pb, x_in, t, path)
        x0_hat = x0_graph.detach()
        pb.check(i, x0_hat, "the prior's denoiser returned NaN/Inf")
        v = da * x0_hat + ds * (x - a * x0_hat) / s
        # 2. ΠGDM likelihood score (eq. 13 and ΠGDM): g = Jᵀ Aᵀ (r² AAᵀ + σ_y² I)⁻¹ (y − A x̂₀).
        r2 = prior_variance * s * s / (s * s + prior_variance * a * a)
        w = pigdm_vector(pb, pb.y - operator.A(x0_hat), r2)
        (g,) = torch.autograd.grad(x0_graph, x_in, grad_outputs=w.to(x0_graph.dtype))
        # 3. Corrected velocity (eq. 12): v + γ σ² d ln(α/σ)/dt g, then an Euler step.
        coef = s * s * (da / a - ds / s)
        gam = math.sqrt(a / (a * a + s * s)) if gamma == "adaptive" else float(gamma)
        x = x + (t_next - t) * (v + gam * coef * g.to(torch.float64))
        pb.check(i, x, "guidance too strong for this problem (try a later start_time or more steps)")
        pb.callback(i, x, x0_hat)
    return pb.finish(x)
