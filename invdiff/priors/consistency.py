"""Consistency models as priors: the consistency function f(x, σ) behind the one denoiser interface,
and multistep consistency sampling.

Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023 (arXiv:2303.01469). A consistency
function maps every point x_σ of a probability-flow ODE trajectory (EDM form, dx/dσ = (x − D(x, σ))/σ)
to the trajectory's end point at σ_min (the paper's ε): f(x_σ, σ) = x_{σ_min}. Its network F sits
inside scalings that build the boundary condition f(x, σ_min) = x into the parameterisation
(eq. 5 and Appendix C):

    f(x, σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x, c_noise(σ)),
    c_skip(σ) = σ_d² / ((σ − σ_min)² + σ_d²),     c_out(σ) = σ_d (σ − σ_min) / √(σ_d² + σ²),
    c_in(σ)   = 1 / √(σ² + σ_d²),                  c_noise(σ) = ¼ ln σ   (EDM, Karras et al. 2022),

so c_skip(σ_min) = 1 and c_out(σ_min) = 0: the boundary condition holds exactly, in the state's
dtype, whatever F is.

=================  ===========================================  ==================================
code               paper (Song et al. 2023)                     meaning
=================  ===========================================  ==================================
``sigma``          t (EDM time = noise level)                   σ of x = x₀ + σ·n
``sigma_min``      ε                                            the boundary, 0.002 (EDM)
``sigma_max``      T                                            80 (EDM)
``sigma_data``     σ_data                                       0.5
``sigmas``         τ_1 > τ_2 > … > τ_{N−1} with τ_0 = T         Alg. 1's time points, T first
=================  ===========================================  ==================================

**As a denoiser.** :class:`ConsistencyPrior` answers ``denoiser(x, σ) = f(x, σ)``: the end point of
x's PF-ODE trajectory. For an exact f this is *not* E[x₀ | x] (the Tweedie mean); it is a sample-
like point on the data manifold whose average over the trajectories through the noise level σ is
the data mean. Existing solvers may use it as an approximation of E[x₀ | x] at few steps (CM4IR,
Garber & Tirer 2025; PnP-CM, Gülle et al. 2026 do exactly this); at many steps, with solvers whose
correctness rests on Tweedie's formula (DPS's likelihood gradient, score-based Langevin), it is an
approximation with no guarantee.

Deviations from the paper: c_noise = ¼ ln σ (EDM's, which :class:`~invdiff.priors.unet.SmallUNet`
embeds) instead of the released code's 1000·¼ ln σ — the same conditioning up to the embedding's
frequency scale; the default time points of Alg. 1 are the ρ = 7 Karras grid (below), where the
paper picks τ by greedy / ternary search of FID (pass ``sigmas`` to choose them).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .._random import GeneratorArg, randn
from .base import Prior, per_sample_sigma, raw_call
from .samplers import sampling_setup
from .schedules import edm_sigma_grid

SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5  # EDM's range and σ_data (Song et al. 2023, App. C)


def consistency_scalings(sigma: Tensor, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN):
    """``(c_skip, c_out, c_in, c_noise)`` of Song et al. 2023, App. C, for σ (any shape, any dtype):
    c_skip(σ_min) = 1 and c_out(σ_min) = 0 exactly."""
    sd2 = sigma_data**2
    c_skip = sd2 / ((sigma - sigma_min) ** 2 + sd2)
    c_out = sigma_data * (sigma - sigma_min) / (sd2 + sigma**2).sqrt()
    c_in = 1.0 / (sigma**2 + sd2).sqrt()
    return c_skip, c_out, c_in, sigma.log() / 4


class ConsistencyPreconditioned(torch.nn.Module):
    """``forward(x, σ) = f(x, σ) = c_skip x + c_out F(c_in x, c_noise)`` around a raw network ``F``
    held as ``self.model`` (the key prefix of EDM's preconditioned networks, so a teacher's
    :class:`~invdiff.priors.formats.EDMPreconditioned` state dict loads as is). ``F`` is called as
    ``F.forward_unet(x_in, c_noise)`` when it has that method (:class:`~invdiff.priors.unet.SmallUNet`,
    EDM's raw UNets), else ``F(x_in, c_noise)``; c_noise is ``[B]``.

    The scalings and the skip path run in x's dtype (float64 in the samplers), only F in its
    parameters' dtype, so that f(x, σ_min) = x holds bit for bit.

    :param x: ``[B, *shape]`` in model space; σ ``[B]`` (or ``[B, 1, …]``), positive."""

    def __init__(self, model: torch.nn.Module, sigma_data: float = SIGMA_DATA, sigma_min: float = SIGMA_MIN):
        super().__init__()
        if not (sigma_min > 0 and sigma_data > 0):
            raise ValueError(f"sigma_min and sigma_data must be > 0, got {sigma_min}, {sigma_data}")
        self.model, self.sigma_data, self.sigma_min = model, float(sigma_data), float(sigma_min)

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
        c_skip, c_out, c_in, c_noise = consistency_scalings(s, self.sigma_data, self.sigma_min)
        dtype = next((p.dtype for p in self.model.parameters()), x.dtype)
        raw = getattr(self.model, "forward_unet", self.model)
        out = raw((c_in * x).to(dtype), c_noise.flatten().to(dtype))
        return c_skip * x + c_out * out.to(x.dtype)


class ConsistencyPrior(Prior):
    """A consistency model behind the :class:`Prior` interface: ``denoiser(x, σ) = f(x, σ)`` (module
    docstring: an approximation of E[x₀ | x] that solvers may use at few steps).

    :param net: a :class:`ConsistencyPreconditioned` (its ``sigma_min`` must be ``sigma_range[0]``),
        or a raw network F, which is wrapped in one with ``sigma_data`` and ``sigma_range[0]``.
    :param shape: event shape in model space, ``(C, H, W)`` or ``(d,)``.
    :param sigma_range: ``(σ_min, σ_max)``: the boundary σ_min and the largest σ trained.
    """

    def __init__(self, net: torch.nn.Module, *, shape, sigma_range=(SIGMA_MIN, SIGMA_MAX), sigma_data: float = SIGMA_DATA,
                 data_range=(0.0, 1.0), model_range=(-1.0, 1.0), differentiable: bool = True):
        lo, hi = (float(v) for v in sigma_range)
        if not 0 < lo < hi:
            raise ValueError(f"sigma_range must be 0 < σ_min < σ_max, got {sigma_range}")
        super().__init__(shape, data_range=data_range, model_range=model_range, sigma_range=(lo, hi),
                         differentiable=differentiable)
        if not isinstance(net, ConsistencyPreconditioned):
            net = ConsistencyPreconditioned(net, sigma_data, lo)
        if net.sigma_min != lo:
            raise ValueError(f"the network's boundary σ_min = {net.sigma_min} is not the prior's sigma_range[0] = {lo}: "
                             "f(x, σ_min) = x must hold at the prior's σ_min")
        self.net = net

    def denoiser(self, x: Tensor, sigma) -> Tensor:
        """f(x, σ) for ``x`` ``[B, *shape]`` in model space and σ a float or ``[B]`` tensor."""
        self.check_input(x)
        return self.raw_denoiser(x, per_sample_sigma(sigma, x))

    def raw_denoiser(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.net(x, sigma.reshape(-1))

    def consistency(self, x: Tensor, sigma) -> Tensor:
        """The consistency function f(x, σ) (the same as :meth:`denoiser`, by its own name)."""
        return self.denoiser(x, sigma)

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, sigma_range={(self.sigma_min, self.sigma_max)}, "
                f"sigma_data={self.net.sigma_data}, data_range={self.data_range}, model_range={self.model_range}")


def heun_step(prior: Prior, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One step of EDM's Heun solver (Karras et al. 2022, Alg. 1 lines 5–8; the step of
    :func:`~invdiff.priors.samplers.edm_heun`) of the PF-ODE dx/dσ = (x − D(x, σ))/σ from σ to
    σ_next > 0: two denoiser calls. ``x`` ``[B, *shape]``, σ and σ_next ``[B]`` tensors (or floats).
    Differentiable only if the caller enables grad; used without it as consistency distillation's
    teacher step (Song et al. 2023, eq. 7 with Φ = Heun)."""
    s = per_sample_sigma(sigma, x)
    s_next = per_sample_sigma(sigma_next, x)
    D = raw_call(prior)
    d_cur = (x - D(x, s)) / s  # Euler step.
    x_next = x + (s_next - s) * d_cur
    d_prime = (x_next - D(x_next, s_next)) / s_next  # 2nd order correction.
    return x + (s_next - s) * (0.5 * d_cur + 0.5 * d_prime)


def default_sigmas(prior: Prior, steps: int, rho: float = 7.0) -> list[float]:
    """Alg. 1's time points for ``steps`` network calls: the ρ-grid (Karras et al. 2022, eq. 5) of
    ``steps + 1`` levels from the prior's σ_max to its σ_min, without σ_min (T first)."""
    if isinstance(steps, bool) or int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    return edm_sigma_grid(int(steps) + 1, prior.sigma_min, prior.sigma_max, rho)[:-1].tolist()


def consistency_sampling(prior: Prior, shape, *, steps: int = 1, sigmas=None, generator: GeneratorArg = None,
                         callback: Callable[[int, Tensor, Tensor], None] | None = None) -> Tensor:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1):

        x ← f(T z, T);   for τ in τ_1 > … > τ_{N−1}:  x ← f(x + √(τ² − ε²) z, τ),   z ~ N(0, I).

    :param prior: a consistency prior (any :class:`Prior`; its denoiser is taken as f).
    :param shape: ``[B, *prior.shape]``.
    :param steps: number of network calls when ``sigmas`` is not given (:func:`default_sigmas`).
    :param sigmas: the time points ``[T, τ_1, …]`` (strictly decreasing, in (σ_min, σ_max]).
    :param generator: one ``torch.Generator`` or one per item.
    :param callback: ``callback(i, x, x0_hat)`` after every call (x = x0_hat = f's output).
    :returns: ``[B, *prior.shape]`` samples in physical units, float64. NFE = ``len(sigmas)``
        (= ``steps``).
    """
    shape, device = sampling_setup(prior, shape, generator)
    sigmas = default_sigmas(prior, steps) if sigmas is None else [float(s) for s in sigmas]
    eps = prior.sigma_min
    if not sigmas or any(not (eps < s <= prior.sigma_max * (1 + 1e-12)) for s in sigmas) or \
            any(b >= a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"sigmas must be strictly decreasing in (σ_min, σ_max] = ({eps}, {prior.sigma_max}], "
                         f"got {sigmas}")
    x = None
    for i, tau in enumerate(sigmas):
        z = randn(shape, generator, device=device)
        x_tau = tau * z if i == 0 else x + math.sqrt(tau**2 - eps**2) * z  # 1. noise to level τ
        with torch.no_grad():
            x = prior.denoiser(x_tau, tau).to(torch.float64)  # 2. one consistency step
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"the consistency function returned NaN/Inf at sigma={tau:.4g}")
        if callback is not None:
            callback(i, x, x)
    return prior.to_physical(x)


CONSISTENCY_SAMPLERS = {"consistency_sampling": consistency_sampling}
