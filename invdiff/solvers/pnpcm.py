"""PnP-CM — consistency models as plug-and-play priors for inverse problems.

Gülle, Yun, Alçalar & Akçakaya, arXiv:2509.22736 (v1 2025; CVPR 2026), code:
github.com/MerveGulle/PnP-CM.

PnP-ADMM for ``min_x ½‖A x − y‖² + R(x)`` whose proximal step on R is the consistency function
f(·, σ) (the paper's reading of a CM as the proximal operator of a prior), accelerated by noise
injection and momentum on both ADMM variables. From x₀ = x̄₀ = 0 and u₀ = ū₀ = 0, for n = 1..N
(written from the authors' released code, ``pnp_cm_scheme/{natural_linear,natural_nonlinear,
fastmri}_scheme.py``, which matches the paper's description: PnP-ADMM, a CG data step, noise
injection and momentum; no paper equation numbers are cited here):

    z_n = argmin_z ½‖A z − y‖² + ρ_n/2 ‖z − (x̄_{n−1} − ū_{n−1})‖²                  (data step)
        = (AᵀA + ρ_n I)⁻¹ (Aᵀy + ρ_n (x̄_{n−1} − ū_{n−1}))        (linear A: prox or CG)
    x_n = f(z_n + ū_{n−1} + σ_n ε_n, (1 + δ_n) σ_n),   ε_n ~ N(0, I)   (CM prox, noise injected)
    u_n = ū_{n−1} + z_n − x_n                                                          (dual step)
    x̄_n = x_n + μ_n (x_n − x_{n−1}),   ū_n = u_n + μ_n (u_n − u_{n−1})                  (momentum)

and the output is x_N. Schedules (the authors' code):

    ρ_n = softplus(r₀ + (r₁ − r₀)(n − 1)/(N − 1))        (linear in softplus⁻¹ space, increasing)
    μ_n = μ₀ / n
    ᾱ_1 = ᾱ[i_N + 1] of DDPM's linear β (10⁻⁴ → 0.02, T = 1000),  ᾱ_{n+1} = min(ᾱ_n (1 + γ), 0.9999)
    σ_n = √(1 − ᾱ_n)                 (used directly as the EDM σ of the CM, as the authors do)

With no noise (``noise=False``) and μ₀ = 0 this is plain PnP-ADMM with the CM as denoiser (the
paper's baseline). Any prior serves through its one denoiser call: on a
:class:`~invdiff.priors.ConsistencyPrior` it is f(x, σ), on a diffusion prior the Tweedie mean
D(x, σ). NFE = ``steps`` (one denoiser call per iteration); the data step calls only the operator.

Data step (``data_step``): ``"prox"`` — the operator's exact ``prox_l2`` (closed form with an SVD,
converged CG otherwise; what the authors' natural-image code does with its SVD operators);
``"cg"`` — ``cg_iters`` conjugate-gradient iterations from 0 on the normal equations (the authors'
MRI setting: 10); ``"gradient"`` — for nonlinear operators (the paper's JPEG, nonlinear deblurring
and phase retrieval), ``dc_steps`` SGD or Adam steps on the same objective from the previous z,
the learning rate multiplied by ``dc_decay`` after every step whose loss exceeds the previous one
(the first compared with 0, as in the authors' code). ``"auto"``: prox, else cg (a linear operator
with an adjoint only), else gradient (a differentiable operator).

=============  ============================  ==============  ==============================
code           paper / authors' code         code            paper / authors' code
=============  ============================  ==============  ==============================
``x``          x_n (``xt``)                  ``steps``       N (``T_sampling``), NFE
``x_bar``      x̄_n (``xt_moment``)           ``i_N``         i_N (``iN``), first timestep
``u``          u_n (``ut``)                  ``gamma``       γ, noise-level decay
``u_bar``      ū_n (``ut_moment``)           ``deltas``      δ_n, σ_cm = (1 + δ_n) σ_n
``z``          z_n (``zt``)                  ``rhos``        (r₀, r₁) of ρ_n (``rhos``)
``z_tilde``    z_n + ū + σ_n ε (``z_noisy``)  ``mu_0``        μ₀ (momentum μ_n = μ₀/n)
``sigma``      σ_n (``sigma_t_i``)           ``cg_iters``    CG iterations (``cg_iter``)
``sigma_cm``   (1 + δ_n) σ_n                 ``dc_*``        ``opt_type/lr/num_iter/decay``
=============  ============================  ==============  ==============================

Defaults: the authors' ``main.py`` (N = 4, i_N = 150, γ = 0.1, δ_n = 0.1, (r₀, r₁) = (−4, 4); SGD
with lr 5·10⁻⁴, 100 steps, decay 0.8 for nonlinear data steps) except μ₀ = 0.1 (``main.py``'s 0.0
switches the momentum off; every task file sets it: 0.05–0.2 on CelebA-HQ, 0.1 for Gaussian
deblurring, 0.2–0.5 for MRI). CG: 10 iterations (their MRI scheme). Per-task settings
(``task_specific_args/*.yml``, σ_y = 0.05) go in experiment configs, e.g. Gaussian deblurring
i_N = 100, γ = 0.1, δ = (0.3, 0.2, 0.1, 0.1), (r₀, r₁) = (−4, 6.5), μ₀ = 0.1.

Units: the data term is ½‖A z − y‖² in the prior's model space, without 1/σ_y² (the authors'
code; ρ_n carries the weighting), so σ_y is checked but does not enter the updates. σ_n and ρ_n
are in model units ([−1, 1] for the authors' CMs).

Deviations:

* The start is x₀ = 0 in model space for every task (the authors start inpainting from a median
  filling of A⁺y); a nonlinear data step starts from the model-space image of y when y has the
  image's shape (the authors' ``zt = y``), else from 0 (their phase-retrieval start is specific
  to that operator).
* The CM output is not clipped to [−1, 1] by default (``clip=True`` clips to the prior's model
  range as the authors' ``torch.clamp``): priors here need not be bounded.
* σ_cm is clipped to the prior's σ range (the authors clip both σ_n and σ_cm to [0.002, 80]; σ_n
  never reaches a bound: σ_n ≥ √(1 − 0.9999) = 0.01).
* A gradient data step whose result overflows (a non-finite loss or gradient, e.g. exp in a
  transmission model far from its scale) is taken back and that sample's learning rate multiplied by
  0.1 (``OVERFLOW_SHRINK``), and a data step that ends above its starting objective stops the run
  with :class:`~invdiff.solvers.SolverDivergedError` naming ``dc_lr`` / ``dc_optimizer=adam``
  (the authors' code has neither guard; finite descending steps are untouched).
* The nonlinear data step runs per sample (its own learning rate and loss comparison per batch
  item, so batch items never interact; the authors compare the batch's summed loss) and each step
  uses its own gradient (the authors' loop never zeroes ``.grad``, so their step follows the
  running sum of all gradients so far).

Class (:mod:`invdiff.solvers.classes`): Point estimator (estimates PnP-ADMM with the consistency
function as the prior's proximal map).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from operators.linalg import conjugate_gradient

from ..checks import whole_number
from ..priors.schedules import VPSchedule
from ._common import Callback, setup
from .network import checks_done

DATA_STEPS = ("auto", "prox", "cg", "gradient")


def pnp_cm_schedule(steps: int, i_N: int = 150, gamma: float = 0.1, deltas=0.1, rhos=(-4.0, 4.0),
                    mu_0: float = 0.1) -> list[tuple[float, float, float, float]]:
    """``[(σ_n, σ_cm,n, ρ_n, μ_n)]`` for n = 1..N: the authors' schedules (module docstring), σ in
    model units before any clipping to a prior's range."""
    alpha = float(VPSchedule("linear", 1000).alphas_cumprod[i_N + 1])
    deltas = [float(deltas)] * steps if not isinstance(deltas, Sequence) else [float(d) for d in deltas]
    r0, r1 = (float(r) for r in rhos)
    out = []
    for n in range(1, steps + 1):
        sigma = math.sqrt(1.0 - alpha)
        r = r0 + (r1 - r0) * (n - 1) / (steps - 1) if steps > 1 else r0
        rho = max(r, 0.0) + math.log1p(math.exp(-abs(r)))  # softplus, stable for any r
        out.append((sigma, (1.0 + deltas[n - 1]) * sigma, rho, mu_0 / n))
        alpha = min(alpha * (1.0 + gamma), 0.9999)
    return out


def pnp_cm(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 4, generator=None, callback: Callback = None,
           i_N: int = 150, gamma: float = 0.1, deltas=0.1, rhos=(-4.0, 4.0), mu_0: float = 0.1,
           noise: bool = True, data_step: str = "auto", cg_iters: int = 10, clip: bool = False,
           dc_optimizer: str = "sgd", dc_lr: float = 5e-4, dc_steps: int = 100, dc_decay: float = 0.8) -> Tensor:
    """One PnP-CM reconstruction per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: linear with ``prox_l2`` (or an adjoint, for ``"cg"``), or nonlinear and
        differentiable (``"gradient"``).
    :param prior: any :class:`invdiff.priors.Prior` of shape ``operator.img_size`` (a
        :class:`~invdiff.priors.ConsistencyPrior` for the paper's method); no gradients through it.
    :param sigma_y: noise std (float or ``[B]``), checked; the updates do not use it (ρ_n weights
        the unweighted data term ½‖A z − y‖², as in the authors' code).
    :param steps: N iterations = NFE (the paper: 4, and 2).
    :param i_N: the first noise level's DDPM timestep, 0 ≤ i_N ≤ 998 (ᾱ_1 = ᾱ[i_N + 1]).
    :param gamma: γ ≥ 0, ᾱ_{n+1} = min(ᾱ_n (1 + γ), 0.9999).
    :param deltas: δ_n > −1 (a float for all n, or N values): the CM is called at (1 + δ_n) σ_n.
    :param rhos: (r₀, r₁): ρ_n = softplus of N points evenly spaced from r₀ to r₁ (model units).
    :param mu_0: μ₀ ≥ 0, momentum μ_n = μ₀/n (0: no momentum).
    :param noise: inject σ_n ε before the CM (False with μ₀ = 0: plain PnP-ADMM).
    :param data_step: ``"auto"``, ``"prox"``, ``"cg"`` or ``"gradient"`` (module docstring).
    :param cg_iters: CG iterations of ``"cg"``.
    :param clip: clip the CM output to the prior's model range (the authors' [−1, 1] clamp).
    :param dc_optimizer, dc_lr, dc_steps, dc_decay: the ``"gradient"`` data step: ``"sgd"`` or
        ``"adam"``, learning rate > 0, steps ≥ 1, decay in (0, 1].
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    seq = isinstance(deltas, Sequence) and not isinstance(deltas, str)
    d_vals = list(deltas) if seq else [deltas]
    ok = (whole_number(i_N, 0) and i_N <= 998 and _finite(gamma) and gamma >= 0 and _finite(mu_0) and mu_0 >= 0
          and all(_finite(d) and d > -1 for d in d_vals) and isinstance(rhos, Sequence) and len(rhos) == 2
          and all(_finite(r) for r in rhos) and isinstance(noise, bool) and isinstance(clip, bool)
          and (not seq or not whole_number(steps) or len(d_vals) == steps))
    if not ok:
        raise ValueError(f"pnp_cm: need an integer 0 <= i_N <= 998, gamma >= 0, mu_0 >= 0, every delta > -1 (a float "
                         f"or one per step), rhos two finite numbers and noise/clip booleans; got i_N={i_N!r}, "
                         f"gamma={gamma!r}, mu_0={mu_0!r}, deltas={deltas!r} for steps={steps!r}, rhos={rhos!r}, "
                         f"noise={noise!r}, clip={clip!r}")
    if data_step not in DATA_STEPS or not whole_number(cg_iters) or not whole_number(dc_steps) \
            or dc_optimizer not in ("sgd", "adam") or not (_finite(dc_lr) and dc_lr > 0) \
            or not (_finite(dc_decay) and 0 < dc_decay <= 1):
        raise ValueError(f"pnp_cm: data_step must be one of {DATA_STEPS}, cg_iters and dc_steps whole numbers >= 1, "
                         f"dc_optimizer 'sgd' or 'adam', dc_lr > 0 and 0 < dc_decay <= 1; got {data_step!r}, "
                         f"{cg_iters!r}, {dc_steps!r}, {dc_optimizer!r}, {dc_lr!r}, {dc_decay!r}")
    caps = getattr(operator, "capabilities", frozenset())
    if data_step == "auto":
        data_step = "prox" if {"linear", "prox_l2"} <= caps else "cg" if {"linear", "adjoint"} <= caps \
            else "gradient"
    needs = {"prox": ["linear", "prox_l2"], "cg": ["linear", "adjoint"], "gradient": ["differentiable"]}[data_step]
    pb = setup("pnp_cm", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator,
               callback=callback, needs=needs)
    schedule = pnp_cm_schedule(steps, i_N, gamma, d_vals if seq else d_vals[0], rhos, mu_0)
    dc = DataStep(pb, data_step, cg_iters, dc_optimizer, dc_lr, dc_steps, dc_decay)
    checks_done()  # an app's check_call stops here, before the (possibly long) first data step
    lo, hi = prior.model_range
    x = pb.y.new_zeros(pb.shape)
    u = torch.zeros_like(x)
    x_bar, u_bar = x, u
    for i, (sigma, sigma_cm, rho, mu) in enumerate(schedule):
        sigma_cm = min(max(sigma_cm, prior.sigma_min), prior.sigma_max)
        # 1. Data step: z = argmin ½‖A z − y‖² + ρ/2 ‖z − (x̄ − ū)‖².
        z = dc(x_bar - u_bar, rho)
        pb.check(i, z, f"the {data_step} data step diverged (for 'gradient' lower dc_lr)")
        # 2. Noise injection and the CM as proximal operator of the prior.
        z_tilde = z + u_bar + sigma * pb.randn() if noise else z + u_bar
        x_new = pb.denoise(z_tilde, sigma_cm, i)
        if clip:
            x_new = x_new.clamp(lo, hi)
        # 3. Dual step.
        u_new = u_bar + z - x_new
        # 4. Momentum on both variables.
        x_bar, u_bar = x_new + mu * (x_new - x), u_new + mu * (u_new - u)
        x, u = x_new, u_new
        pb.callback(i, z_tilde, x)
    return pb.finish(x)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


#: learning-rate factor after a data step whose result overflows (a deviation: the authors' code has no guard)
OVERFLOW_SHRINK = 0.1


class DataStep:
    """Step 1, ``z = argmin_z ½‖A z − y‖² + ρ/2 ‖z − v‖²`` in model space (``pb.y``), by ``mode``:
    ``"prox"`` the operator's ``prox_l2(v, y, 1/ρ)``; ``"cg"`` ``cg_iters`` CG iterations from 0 on
    ``(AᵀA + ρI) z = Aᵀy + ρ v``; ``"gradient"`` ``steps`` per-sample SGD/Adam steps on the
    objective with the model-space residual of a nonlinear operator, warm-started from the last z."""

    def __init__(self, pb, mode: str, cg_iters: int = 10, optimizer: str = "sgd", lr: float = 5e-4,
                 steps: int = 100, decay: float = 0.8):
        self.pb, self.mode, self.cg_iters = pb, mode, cg_iters
        self.optimizer, self.lr, self.steps, self.decay = optimizer, lr, steps, decay
        if mode == "cg":
            self.aty = pb.op.A_adjoint(pb.y)
        elif mode == "gradient":  # the authors' zt = y where y is an image
            y = pb.y_phys
            self.z = pb.prior.to_model(y) if tuple(y.shape) == tuple(pb.shape) else y.new_zeros(pb.shape)

    def __call__(self, v: Tensor, rho: float) -> Tensor:
        op = self.pb.op
        if self.mode == "prox":
            return op.prox_l2(v, self.pb.y, 1.0 / rho)
        if self.mode == "cg":
            return conjugate_gradient(lambda w: op.A_adjoint(op.A(w)) + rho * w, self.aty + rho * v,
                                      tol=0.0, max_iter=self.cg_iters)
        self.z = self._descend(self.z, v, rho)
        return self.z

    def _descend(self, z: Tensor, v: Tensor, rho: float) -> Tensor:
        pb, b1, b2 = self.pb, 0.9, 0.999  # Adam's β (torch defaults, as the authors' optim.Adam)
        lr = torch.full((pb.B,), self.lr, dtype=torch.float64, device=z.device)
        prev = torch.zeros_like(lr)
        m = s = torch.zeros_like(z)
        z_prev = z.detach()
        for k in range(1, self.steps + 1):
            z_in = z.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = 0.5 * pb.residual(z_in).square().flatten(1).sum(1) \
                    + 0.5 * rho * (z_in - v).square().flatten(1).sum(1)
                (g,) = torch.autograd.grad(loss.sum(), z_in)
            g, loss = g.to(torch.float64), loss.detach().to(torch.float64)
            if k == 1:
                start = loss
            bad = ~(torch.isfinite(loss) & torch.isfinite(g).flatten(1).all(1))
            if bool(bad.any()):  # the last step overflowed (e.g. exp in a transmission model): take it back
                keep = pb.per_sample(bad).bool()
                z = torch.where(keep, z_prev, z.detach())
                g = torch.where(keep, torch.zeros_like(g), g)  # no step for them this round
                lr = torch.where(bad, lr * OVERFLOW_SHRINK, lr)
                loss = torch.where(bad, prev, loss)
            z_prev = z.detach()
            if self.optimizer == "adam":
                m, s = b1 * m + (1 - b1) * g, b2 * s + (1 - b2) * g * g
                g = (m / (1 - b1**k)) / ((s / (1 - b2**k)).sqrt() + 1e-8)
            z = z.detach() - pb.per_sample(lr) * g
            lr = torch.where(loss > prev, lr * self.decay, lr)
            prev = loss
        ok = pb.per_sample(torch.isfinite(z).flatten(1).all(1)).bool()
        z = torch.where(ok, z, z_prev)  # (a last step into overflow is not taken)
        with torch.no_grad():
            end = self._objective(z, v, rho)
        worse = ~(end <= start * (1 + 1e-9) + 1e-300)
        if bool(worse.any()):
            i = int(worse.nonzero()[0])
            from ._common import SolverDivergedError

            raise SolverDivergedError(
                f"pnp_cm: the gradient data step raised its objective ½‖A(z) − y‖² + ρ/2‖z − v‖² from "
                f"{float(start[i]):.4g} to {float(end[i]):.4g} (item {i}) in {self.steps} steps: dc_lr = {self.lr:g} "
                f"is too large for this operator's scale (measurements up to {float(pb.y.abs().max()):.4g} in model "
                "units). Use dc_optimizer=adam (steps of about dc_lr whatever the gradient's scale) or a smaller "
                "dc_lr. Nothing was written.")
        return z

    def _objective(self, z: Tensor, v: Tensor, rho: float) -> Tensor:
        pb = self.pb
        return (0.5 * pb.residual(z).square().flatten(1).sum(1) + 0.5 * rho * (z - v).square().flatten(1).sum(1)
                ).to(torch.float64)
