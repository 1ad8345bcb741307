"""Shared, tested machinery of every posterior sampler (DESIGN.md "Solver").

* :func:`setup` checks everything before any work — the operator's capabilities, y's shape and
  values, σ_y, steps, generators, the prior/operator geometry — and returns a :class:`Problem`.
* :class:`Problem` holds the measurement in the prior's *model space* and the model-space forward
  map and residual, the network call (:class:`~invdiff.solvers.network.Network`, with the run-time
  settings of :func:`~invdiff.solvers.network.runtime`), the noise source, the NaN guard and the
  callback.
* :class:`Spectral` gives SVD-based solvers (DDRM, DDNM) one coefficient-wise view of a linear
  operator: the exact SVD, or the "simplified" mode built from A and A⁺ only.

Model space. The solver state lives in the prior's space ``x_m = a·x + b`` (a = ``prior.scale``,
b = ``prior.offset``), the operator in physical units. A solver sees the problem in model space
only: ``pb.y`` is the measurement in model units, ``pb.forward(x_m)`` the forward map and
``pb.residual(x_m)`` the misfit ``pb.y − pb.forward(x_m)``, with noise ``pb.sigma_y = a·σ_y``:

====================  =============================  ===============================
                      linear operator                nonlinear operator
====================  =============================  ===============================
``pb.y``              ``y_m = a·y + A(b·1)``         ``y_m = a·y``
``pb.forward(x_m)``   ``A x_m`` (the same operator)  ``a·A(to_physical(x_m))``
``pb.residual(x_m)``  ``y_m − A x_m = a·(y − A x)``  ``a·(y − A(to_physical(x_m)))``
====================  =============================  ===============================

For a linear operator ``y = A x + σ_y n`` is equivalent to ``y_m = A x_m + (a σ_y) n``: the same
operator on the model-space state, with σ_y scaled by ``a`` (e.g. σ_y on [0, 1] doubles on
[-1, 1], as DDRM/DDNM do by hand), so linear solvers apply ``operator.A``, ``A_dagger`` or
``prox_l2`` to the state and ``pb.y`` directly. ``pb.y_phys`` keeps y in measurement units (DPS's
Poisson weights and ``residual="physical"``).
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Iterable

import torch
from torch import Tensor

from operators import require
from operators.base import module_device

from .._random import GeneratorArg, check_generator, randn
from ..checks import check_measurement, check_sigma_y, whole_number
from ..priors.base import Prior
from ..priors.bridge import BridgePrior
from ..priors.schedules import vp_schedule_of, vp_timesteps
from .network import runtime_network

Callback = Callable[[int, Tensor, Tensor], None] | None


class SolverDivergedError(FloatingPointError):
    """NaN or Inf appeared in a solver's state; the message names the solver, the step and a cause."""


# --------------------------------------------------------------------------------------------
# σ grids shared by the VP-paper solvers
# --------------------------------------------------------------------------------------------
def svd_condition(operator) -> float | None:
    """Span max/min of the operator's nonzero singular values, or ``None`` without an exact SVD
    (or with no nonzero one). Above ~10³ a step through A⁺ amplifies y's noise (a blur)."""
    if "svd" not in operator.capabilities:
        return None
    sv = operator.singular_values.detach().to("cpu", torch.float64)
    sv = sv[sv > 0]
    return float(sv.max() / sv.min()) if sv.numel() else None


def vp_sigmas(prior: Prior, steps: int, schedule=None, spacing: str = "uniform") -> list[float]:
    """EDM-form σ of ``steps`` respaced VP timesteps (the prior's own VP schedule, else DDPM's
    linear T = 1000), decreasing, starting at the largest step the prior covers, then a final 0.

    ``spacing="uniform"``: evenly spread timesteps (guided-diffusion's respacing).
    ``spacing="quad"``: DiffPIR's ``skip_type="quad"``, ``t_i = t_max − ⌊√(i/(N−1))·(t_max+1)⌋``
    (the last one 0): coarse at high noise, fine near t = 0.
    """
    sched = vp_schedule_of(prior, schedule)
    t = vp_timesteps(prior, sched, steps)
    if spacing == "quad":
        t_max = int(t[0])
        seq = torch.linspace(0, float(t_max + 1) ** 2, steps, dtype=torch.float64).sqrt().floor().long()
        seq[-1] = t_max
        t = t_max - seq
    elif spacing != "uniform":
        raise ValueError(f"spacing must be 'uniform' or 'quad', got {spacing!r}")
    return sched.sigmas[t].tolist() + [0.0]


def vp_scale(sigma: float) -> float:
    """√ᾱ = 1/√(1 + σ²): the factor from the EDM state to the VP state, ``x_vp = √ᾱ · x``."""
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


def ddpm_step_vp(pb: "Problem", x: Tensor, x0_hat: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """DDPM ancestral step (Ho et al. 2020, eq. 7; respaced ``β' = 1 − ᾱ_t/ᾱ_s``) from the EDM state
    ``x`` at σ to the **VP** state at σ_next: ``√ᾱ_s β'/(1−ᾱ_t) x̂₀ + √(1−β')(1−ᾱ_s)/(1−ᾱ_t) x_vp
    + √(β'(1−ᾱ_s)/(1−ᾱ_t)) z``, without noise into σ_next = 0. Guided solvers add their step in VP
    coordinates and divide by √ᾱ_s."""
    a_t, a_s = vp_scale(sigma) ** 2, vp_scale(sigma_next) ** 2
    beta = 1 - a_t / a_s
    out = (math.sqrt(a_s) * beta / (1 - a_t)) * x0_hat + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t) * math.sqrt(a_t)) * x
    if sigma_next > 0:
        out = out + math.sqrt(beta * (1 - a_s) / (1 - a_t)) * pb.randn()
    return out


def pigdm_vector(pb: "Problem", residual: Tensor, r2: float) -> Tensor:
    """ΠGDM's guidance vector ``Aᵀ (r² AAᵀ + σ_y² I)⁻¹ residual`` for each batch item (σ_y per
    sample, model space; through ``prox_l2``, or ``A⁺ residual / r²`` where σ_y = 0): ΠGDM
    (Song et al. 2023, eq. 7) and OT-ODE (Pokle et al. 2024, eq. 12) use it."""
    op = pb.op
    s2 = pb.sigma_y**2  # [B]
    pos = s2 > 0
    out = None
    if bool(pos.any()):
        gamma = torch.where(pos, r2 / torch.where(pos, s2, 1.0), 1.0)
        out = op.prox_l2(torch.zeros(pb.shape, dtype=residual.dtype, device=residual.device), residual, gamma) / r2
    if not bool(pos.all()):
        exact = op.A_dagger(residual) / r2
        out = exact if out is None else torch.where(pb.per_sample(pos), out, exact)
    return out


def ddim_step(pb: "Problem", x: Tensor, x0_hat: Tensor, sigma: float, sigma_next: float, eta: float) -> Tensor:
    """DDIM(η) step (Song, Meng & Ermon 2021, eqs. 12, 16) from the EDM state ``x`` at σ to the EDM
    state at σ_next: ``(√ᾱ_s x̂₀ + c₂ ε̂ + c₁ z)/√ᾱ_s`` with ε̂ = (x − x̂₀)/σ,
    ``c₁ = η √((1−ᾱ_t/ᾱ_s)(1−ᾱ_s)/(1−ᾱ_t))`` (0 into σ_next = 0) and ``c₂ = √(1−ᾱ_s−c₁²)``."""
    a_t, a_s = vp_scale(sigma) ** 2, vp_scale(sigma_next) ** 2
    c1 = eta * math.sqrt(max((1 - a_t / a_s) * (1 - a_s) / (1 - a_t), 0.0)) if sigma_next > 0 else 0.0
    c2 = math.sqrt(max(1 - a_s - c1 * c1, 0.0))
    x_vp = math.sqrt(a_s) * x0_hat + c2 * (x - x0_hat) / sigma
    if c1 > 0:
        x_vp = x_vp + c1 * pb.randn()
    return x_vp / math.sqrt(a_s)


# --------------------------------------------------------------------------------------------
# the problem: checked inputs + helpers used inside every loop
# --------------------------------------------------------------------------------------------
def _per_sample_sigma_y(name: str, sigma_y, y: Tensor, per_entry: bool) -> Tensor:
    """σ_y as ``[B]`` (or, with ``per_entry``, as y's shape) float64 on y's device, checked
    (:func:`invdiff.checks.check_sigma_y`); a y-shaped σ_y that is constant within each sample is
    taken as ``[B]``."""
    s = check_sigma_y(sigma_y, y.shape[0], y_shape=y.shape, name=name, device=y.device)
    if s.shape == y.shape and s.ndim > 1:
        flat = s.reshape(y.shape[0], -1)
        if bool((flat == flat[:, :1]).all()):
            s = flat[:, 0].clone()
        elif not per_entry:
            raise ValueError(f"solver '{name}' takes one σ_y per sample (a float or a [B] tensor); it got "
                             "a per-entry σ_y that varies within a sample (e.g. pansharpening). Use a "
                             "solver with a per-entry Gaussian likelihood (dps, daps) or one σ_y.")
    return s


class Problem:
    """A checked posterior-sampling problem; built by :func:`setup`."""

    def __init__(self, name, y, op, prior, sigma_y, steps, generator, callback, net, linear):
        self.name, self.op, self.prior, self.steps = name, op, prior, steps
        self.generator, self._callback, self.net = generator, callback, net
        self.linear = linear
        self.device = y.device
        self.B = y.shape[0]
        self.shape = (self.B, *prior.shape)
        self.out_dtype = y.dtype
        self.y_phys = y.to(torch.float64)  # measurement units
        self.sigma_y_phys = sigma_y
        self.sigma_y = sigma_y * prior.scale  # model space
        # the measurement in model units (module docstring): y_m = a·y (+ A(b·1) for a linear operator)
        self.y = prior.scale * self.y_phys
        if linear and prior.offset != 0:
            self.y = self.y + op.A(torch.full(self.shape, prior.offset, dtype=torch.float64, device=self.device))

    # -- the measurement model in model space -----------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """The forward map in model units, ``pb.y ≈ forward(x_m) + noise``: ``A x_m`` for a linear
        operator (the same operator on the model-space state), ``a·A(to_physical(x_m))`` otherwise."""
        if self.linear:
            return self.op.A(x)
        return self.prior.scale * self.op.A(self.prior.to_physical(x))

    def residual(self, x: Tensor, physical: bool = False) -> Tensor:
        """The data misfit ``pb.y − forward(x_m)`` in model units (the papers' residual of [−1, 1]
        images), computed as ``a·(y − A(to_physical(x_m)))`` for linear and nonlinear operators
        alike (for a linear one equal to ``y_m − A x_m`` up to rounding); differentiable in x.
        ``physical=True``: the same misfit in measurement units, ``y − A(to_physical(x_m))``."""
        r = self.y_phys - self.op.A(self.prior.to_physical(x))
        return r if physical else self.prior.scale * r

    # -- shapes -------------------------------------------------------------------------------
    def per_sample(self, v: Tensor) -> Tensor:
        """A ``[B]`` tensor reshaped to broadcast against the state ``[B, *shape]``."""
        return v.reshape(-1, *([1] * len(self.prior.shape)))

    @property
    def sigma_y_b(self) -> Tensor:
        """Model-space σ_y broadcastable against the state (or y's shape when given per entry)."""
        s = self.sigma_y
        return self.per_sample(s) if s.ndim == 1 else s

    def per_meas(self, v: Tensor) -> Tensor:
        """A ``[B]`` tensor (or one shaped like y) broadcastable against the measurement."""
        return v if v.shape == self.y.shape else v.reshape(-1, *([1] * (self.y.ndim - 1)))

    def data_grad(self, x: Tensor, weight) -> Tensor:
        """``∇ₓ ½ Σ w·r²`` of the model-space residual ``r = pb.residual(x)``; ``weight`` is a float,
        ``[B]`` or y-shaped. For a linear operator with an adjoint it is ``Aᵀ w (A x − y_m)``, with
        no autograd. Langevin likelihood steps (DAPS, PnP-DM)."""
        w = self.per_meas(weight) if isinstance(weight, Tensor) else weight
        if self.linear and "adjoint" in self.op.capabilities:
            return self.op.A_adjoint(w * (self.forward(x) - self.y))
        x_in = x.detach().requires_grad_(True)
        with torch.enable_grad():
            r = self.residual(x_in)
            (g,) = torch.autograd.grad(0.5 * (w * r.square()).sum(), x_in)
        return g.to(torch.float64)

    # -- randomness ------------------------------------------------------------------------------
    def randn(self, shape=None) -> Tensor:
        """Standard normal noise (state shape by default) from the solver's generator(s)."""
        return randn(self.shape if shape is None else shape, self.generator, device=self.device)

    def init_noise(self, sigma: float) -> Tensor:
        """The starting state N(0, σ² I) in EDM form."""
        return sigma * self.randn()

    # -- network ----------------------------------------------------------------------------------
    def denoise(self, x: Tensor, sigma: float, step: int) -> Tensor:
        out = self.net(x, sigma)
        if not bool(torch.isfinite(out).all()):
            raise SolverDivergedError(
                f"solver '{self.name}': the prior's denoiser returned NaN/Inf at step {step}/{self.steps} "
                f"(σ={float(sigma):.4g}). Likely cause: the state left the prior's range in an earlier step "
                "(a step size too large), or the network overflows in reduced precision (autocast).")
        return out

    def norm_grad(self, x: Tensor, sigma: float, residual: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """``x̂₀ = D(x, σ)`` and ``∇_x ‖residual(x̂₀)‖`` per sample (the gradient of the sum of the
        per-sample norms, so row i depends on sample i only): DPS's and MCG's guidance."""
        x_in = x.detach().requires_grad_(True)
        x0_graph = self.net.with_grad(x_in, sigma)
        r = residual(x0_graph)
        sq = r.square().sum(tuple(range(1, r.ndim)))
        norm = sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()  # a zero residual gives a zero gradient, not NaN
        (grad,) = torch.autograd.grad(norm.sum(), x_in)
        return x0_graph.detach(), grad.to(torch.float64)

    # -- guards and reporting ------------------------------------------------------------------
    def check(self, step: int, x: Tensor, cause: str = "a step size too large for this problem") -> None:
        if not bool(torch.isfinite(x).all()):
            raise SolverDivergedError(
                f"solver '{self.name}': NaN/Inf in the state at step {step}/{self.steps}. Likely cause: "
                f"{cause}. Nothing was written; lower the step size or check y and σ_y.")

    @property
    def has_callback(self) -> bool:
        """Whether a callback was given (solvers skip computing what only a callback would see)."""
        return self._callback is not None

    def callback(self, step: int, x: Tensor, x0_hat: Tensor, **info) -> None:
        """``callback(step, x_t, x0_hat)``; solver-specific extras (e.g. MCGdiff's ``ess``) are
        passed as keywords to callbacks whose signature accepts them."""
        if self._callback is None:
            return
        self._callback(step, x, x0_hat, **_accepted(self._callback, info))

    def finish(self, x_model: Tensor) -> Tensor:
        """Model-space state -> physical units, in y's dtype."""
        self.check(self.steps, x_model)
        return self.prior.to_physical(x_model).to(self.out_dtype)


def _accepted(fn: Callable, info: dict) -> dict:
    """The keywords of ``info`` that ``fn``'s signature takes (all of them with ``**kwargs``)."""
    if not info:
        return {}
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return info
    names = {p.name for p in params[3:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    names |= {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    return {k: v for k, v in info.items() if k in names}


def same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` name one device when 0 is the current one."""
    def full(d: torch.device) -> torch.device:
        if d.type == "cuda" and d.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return d

    return full(torch.device(a)) == full(torch.device(b))


def _check_devices(name: str, y: Tensor, prior: Prior, operator) -> None:
    """Refuse a prior or operator whose tensors are not on y's device (checked once, here)."""
    for what, module in (("prior", prior), ("operator", operator)):
        if not isinstance(module, torch.nn.Module):
            continue
        dev = module_device(module, f"solver '{name}': the {what}")
        if dev is not None and not same_device(dev, y.device):
            raise ValueError(f"solver '{name}': y is on {y.device} but the {what} is on {dev}; move them to one "
                             f"device (e.g. {what}.to(y.device))")


def setup(name: str, y: Tensor, operator, prior: Prior, *, sigma_y, steps: int, generator: GeneratorArg,
          callback: Callback = None, needs: Iterable = (), per_entry_sigma_y: bool = False,
          prior_grad: bool = False) -> Problem:
    """Check a solver call before any work and build its :class:`Problem`.

    The network call gets the run-time settings of the enclosing
    :func:`~invdiff.solvers.network.runtime` block (autocast, compile, checkpoint, channels-last).
    Raises :class:`operators.CapabilityError` for a missing capability, ``ValueError`` for bad
    shapes, values, σ_y, steps or generators, or (``prior_grad``) a prior without gradients,
    ``TypeError`` for non-tensors.
    """
    require(operator, name, needs)
    if not isinstance(prior, Prior):
        if isinstance(prior, BridgePrior):
            raise TypeError(f"solver '{name}' needs a diffusion or flow prior (a denoiser of Gaussian noise), but this "
                            "is a bridge from degraded to clean images: run it with a bridge solver (i2sb, indi, cddb; "
                            "invdiff.solvers.BRIDGE_SOLVERS)")
        raise TypeError(f"solver '{name}': prior must be an invdiff.priors.Prior, got {type(prior).__name__}")
    check_measurement(name, y, operator)
    img = tuple(getattr(operator, "img_size", prior.shape))
    if tuple(img) != tuple(prior.shape):
        raise ValueError(f"solver '{name}': the operator acts on images {list(img)} but the prior models "
                         f"{list(prior.shape)}; resize the problem or choose a matching prior")
    if prior_grad and not prior.differentiable:
        raise ValueError(f"solver '{name}' takes vector–Jacobian products through the denoiser, but "
                         f"{type(prior).__name__} is not differentiable")
    if not whole_number(steps):
        raise ValueError(f"solver '{name}': steps must be a positive integer, got {steps!r}")
    check_generator(generator, y.shape[0])
    _check_devices(name, y, prior, operator)
    s = _per_sample_sigma_y(name, sigma_y, y, per_entry_sigma_y)
    linear = "linear" in operator.capabilities
    return Problem(name, y, operator, prior, s, steps, generator, callback, runtime_network(prior), linear)


# --------------------------------------------------------------------------------------------
# coefficient-wise view of a linear operator (DDRM, DDNM)
# --------------------------------------------------------------------------------------------
class Spectral:
    """A linear operator seen coefficient by coefficient: ``x̄ = Vᵀx``, singular values ``s``,
    ``ȳ = s⁻¹ Uᵀ y`` (zero where ``s = 0``).

    ``mode="svd"`` uses the exact SVD. ``mode="simplified"`` uses only A and A⁺ (DDNM's
    "simplified" form): the coefficient space is the image itself, split by the projection
    ``P = A⁺A`` into range (treated as ``s = 1``) and null space (``s = 0``), with ``ȳ = A⁺y``. It
    is exact when A's non-zero singular values are all 1 (inpainting, single-coil MRI on complex
    images, A with orthonormal rows); otherwise the noise in ``A⁺y`` is treated as ``σ_y`` per
    coefficient where it really is ``σ_y/s_i``. ``mode="auto"`` picks the SVD when there is one.

    Updates are written as an elementwise function ``fn(s)`` of the singular values, evaluated
    on coefficient tensors; :meth:`combine` maps the result back to an image.
    """

    def __init__(self, problem: Problem, mode: str = "auto"):
        op = problem.op
        if mode not in ("auto", "svd", "simplified"):
            raise ValueError(f"mode must be 'auto', 'svd' or 'simplified', got {mode!r}")
        if mode == "auto":
            mode = "svd" if "svd" in op.capabilities else "simplified"
        require(op, f"{problem.name} (mode={mode!r})", ["svd"] if mode == "svd" else ["pinv"])
        self.mode, self.op = mode, op
        y = problem.y
        if mode == "svd":
            s = op.singular_values.to(device=y.device, dtype=torch.float64)
            self.s = torch.broadcast_to(s, problem.shape)
            pos = self.s > 0
            self.ybar = torch.where(pos, op.U_adjoint(y) / torch.where(pos, self.s, 1.0), 0.0)
        else:
            self.s = None
            self.ybar = op.A_dagger(y)

    def to_coef(self, x: Tensor) -> Tensor:
        return self.op.V_adjoint(x) if self.mode == "svd" else x

    def combine(self, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """Image of the coefficient update ``fn(s)``; in simplified mode ``P fn(1) + (I − P) fn(0)``."""
        if self.mode == "svd":
            return self.op.V(fn(self.s))
        ones = torch.ones_like(self.ybar)
        on_range, on_null = fn(ones), fn(0 * ones)
        proj = self.op.A_dagger(self.op.A(on_range - on_null))
        return on_null + proj


# --------------------------------------------------------------------------------------------
# robust (Student-t) likelihood of the gradient-guided solvers (DPS, MCG, RED-diff, LGD)
# --------------------------------------------------------------------------------------------
#: Likelihoods by name: ``"gaussian"`` (½‖r‖²) and ``"student_t"`` (:func:`student_t_residual`).
LIKELIHOODS = ("gaussian", "student_t")
#: The Student-t scale s in model units where σ_y = 0 (or below it): 0.01, half a per cent of a
#: [−1, 1] range. Pass σ_y > 0 to set the scale of data with outliers.
STUDENT_T_SCALE_FLOOR = 1e-2


def check_likelihood(name: str, likelihood: str, nu: float, allowed=LIKELIHOODS) -> None:
    """Refuse an unknown likelihood or a degrees-of-freedom ``nu`` that is not > 0 (``inf`` is the
    Gaussian limit)."""
    if likelihood not in allowed:
        raise ValueError(f"{name}: likelihood must be one of {', '.join(map(repr, allowed))}, got {likelihood!r}")
    if isinstance(nu, bool) or not isinstance(nu, (int, float)) or math.isnan(nu) or not nu > 0:
        raise ValueError(f"{name}: nu (Student-t degrees of freedom) must be a number > 0 (inf: Gaussian), got {nu!r}")


def student_t_scale(pb: "Problem", floor: float = STUDENT_T_SCALE_FLOOR) -> Tensor:
    """The Student-t scale ``s = max(a·σ_y, floor)`` per sample ``[B]`` (model units: the units of
    ``pb.residual``), float64 on y's device."""
    return pb.sigma_y.clamp_min(floor)


def student_t_residual(r: Tensor, scale, nu: float) -> Tensor:
    """The robust residual ``r̃ = r·√(log(1 + u)/u)``, ``u = r²/(ν s²)``, elementwise, with

        ½‖r̃‖² = ½ Σ_j ν s² log(1 + r_j²/(ν s²)) = ν s²/(ν + 1) · ρ(r),
        ρ(r) = (ν + 1)/2 Σ_j log(1 + r_j²/(ν s²))   (the Student-t negative log-likelihood),

    so a solver's Gaussian term ½‖r‖² (or DPS's ‖r‖) becomes ½‖r̃‖² (or ‖r̃‖) with its step size
    unchanged: r̃ ≈ r for |r| ≪ s√ν and r̃ → r as ν → ∞ (``nu=inf`` returns r), while an outlier's
    pull ∂½r̃²/∂r = r/(1 + r²/(ν s²)) falls off as ν s²/r. Odd and smooth in r (a series near
    u = 0, so r = 0 has gradient 1, not NaN).

    :param r: residual, any shape, float.
    :param scale: the scale s > 0 (a float or a tensor broadcastable against ``r``), r's units.
    :param nu: degrees of freedom ν > 0, or ``math.inf`` (Gaussian).
    """
    if math.isinf(nu):
        return r
    u = r.square() / (nu * scale**2)
    small = u < 1e-6
    u_safe = torch.where(small, torch.ones_like(u), u)
    ratio = torch.where(small, 1 - u / 2 + u.square() / 3, torch.log1p(u_safe) / u_safe)  # log(1+u)/u
    return r * ratio.sqrt()
