"""Diffusion bridges from a degraded image to a clean one: I²SB and InDI on one path, and the
closed-form Gaussian bridge that tests them.

**The path.** A bridge joins a clean image x₀ (t = 0) to its degraded partner x₁ (t = 1, here
x₁ = A⁺y of a measurement of x₀) by the two-sided stochastic interpolant (Albergo, Boffi &
Vanden-Eijnden 2023, eq. 2.1, x_t = α(t)x₀ + β(t)x₁ + γ(t)z) with α = 1 − t, β = t and
γ(t) = √(b·t(1 − t)): the Brownian bridge of diffusion coefficient b from x₀ to x₁.

* b > 0 is I²SB's bridge (Liu, Vahdat, Huang, Theodorou, Nie & Anandkumar, ICML 2023, eq. 11 with a
  constant β_t = b: σ_t² = b·t, σ̄_t² = b·(1 − t), so q(x_t | x₀, x₁) = N((1 − t)x₀ + t x₁, b·t(1 − t))).
  Deviation: their schedule is the symmetric "linear in √β" one (nearly constant, from 10⁻⁴ to about
  1.9·10⁻⁴ per step of 1 000 for β_max = 0.3); a constant b keeps every coefficient in closed form.
  Default b = 0.15: their total ∫β ≈ 0.145 for β_max = 0.3.
* b = 0 is InDI's path (Delbracio & Milanfar, TMLR 2023, eq. 3: x_t = (1 − t)x + t y). With x₁ = ε
  it is rectified flow's :class:`~invdiff.priors.flow.LinearPath` — the one-sided case of the same
  interpolant, so the InDI step below is :func:`~invdiff.priors.flow.LinearPath`'s Euler step with x₁
  in place of the noise (shared code, :meth:`BrownianBridge.step`).

**The generative step** from t to s < t with x̂₀ = E[x₀ | x_t] (I²SB eq. 4 / its code's
``p_posterior``; b = 0: InDI eq. 6):
``x_s = x̂₀ + (s/t)(x_t − x̂₀) + √(b·s(t − s)/t) z`` — the Brownian motion from x₀ seen at s given
its value at t. With the exact x̂₀ and steps → ∞ the chain's marginals are the path's (the
Markovian projection, Peluchetti 2023; Shi et al. 2023): the outputs over x₁ ~ p(x₁) are distributed
as p(x₀). One step from t = 1 returns x̂₀(x₁) = E[x₀ | x₁], the MMSE estimate. A bridge whose network
does not see x₁ beside x_t draws from that projection, not from the posterior p(x₀ | y): its
spread is not a calibrated posterior spread (measured in benchmarks/results/bridge_*.md).

:class:`GaussianBridge` is the oracle: for x₀ ~ N(μ, Σ) and x₁ = M x₀ + e, e ~ N(0, R), every
(x₀, x_t) is jointly Gaussian and E[x₀ | x_t] is a linear map in closed form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._random import randn
from .flow import LinearPath

SIGMA_FLOOR = 0.002  # the conditioning level of the network at t → 0 (EDM's σ_min)


def _t(t, like: Tensor) -> Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim else t


class BrownianBridge:
    """x_t = (1 − t)x₀ + t x₁ + √(b t(1 − t)) z (module docstring); ``b = 0``: InDI's straight path."""

    def __init__(self, b: float = 0.15):
        if not (b >= 0 and math.isfinite(b)):
            raise ValueError(f"the bridge's diffusion coefficient b must be finite and >= 0, got {b}")
        self.b = float(b)

    def gamma(self, t):
        """γ(t) = √(b t(1 − t)); t a float (→ float64) or a tensor (its dtype)."""
        t = t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)
        return (self.b * t * (1 - t)).clamp(min=0).sqrt()

    def sample(self, x0: Tensor, x1: Tensor, t, z: Tensor | None = None) -> Tensor:
        """A draw of q(x_t | x₀, x₁); ``z`` the standard normal noise (needed when b > 0)."""
        tt = _t(t, x0)
        out = (1 - tt) * x0 + tt * x1
        if self.b > 0:
            if z is None:
                raise ValueError("BrownianBridge.sample needs the noise z when b > 0")
            out = out + self.gamma(tt) * z
        return out

    def step(self, x_t: Tensor, x0_hat: Tensor, t, s, z: Tensor | None = None) -> Tensor:
        """x_s from x_t with the estimate x̂₀ (module docstring). ``b = 0`` or ``z = None``: the mean
        only — InDI's iteration, computed as the Euler step of the linear path's velocity."""
        tt, ss = _t(t, x_t), _t(s, x_t)
        if self.b == 0 or z is None:
            v = LinearPath().velocity_from_x0(x_t, x0_hat, tt)  # (x_t − x̂₀)/t: E[x₁ − x₀ | x_t]
            return x_t + (ss - tt) * v
        mean = x0_hat + (ss / tt) * (x_t - x0_hat)
        return mean + (self.b * ss * (tt - ss) / tt).clamp(min=0).sqrt() * z

    def noise_level(self, t, sigma_1: float) -> Tensor:
        """The level at which the network is conditioned: √((t·σ₁)² + b·t(1 − t)), σ₁ the typical
        size of x₁ − x₀ — the spread of x_t − x₀ if the degradation were white noise (so a
        denoiser's weights are a sensible start), never below ``SIGMA_FLOOR``."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return ((t * sigma_1) ** 2 + self.b * t * (1 - t)).clamp(min=SIGMA_FLOOR**2).sqrt()

    def to_dict(self) -> dict:
        return {"kind": "brownian_bridge", "b": self.b}

    def __eq__(self, other) -> bool:
        return isinstance(other, BrownianBridge) and other.b == self.b

    def __repr__(self) -> str:
        return f"BrownianBridge(b={self.b})"


class GaussianBridge:
    """The exact bridge of a linear-Gaussian problem: x₀ ~ N(μ, Σ) in ``d`` dimensions, x₁ = M x₀ + e,
    e ~ N(0, R). :meth:`x0_hat` is E[x₀ | x_t] on the path; :meth:`mmse` is E[x₀ | x₁]."""

    def __init__(self, mean: Tensor, cov: Tensor, M: Tensor, R: Tensor, path: BrownianBridge):
        self.mu, self.S = mean.to(torch.float64), cov.to(torch.float64)
        self.M, self.R, self.path = M.to(torch.float64), R.to(torch.float64), path
        self.d = self.mu.numel()

    def pairs(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` draws of (x₀, x₁), each ``[n, d]``."""
        L = torch.linalg.cholesky(self.S)
        x0 = self.mu + torch.randn(n, self.d, generator=generator, dtype=torch.float64) @ L.T
        e = torch.randn(n, self.d, generator=generator, dtype=torch.float64) @ _sqrtm(self.R).T
        return x0, x0 @ self.M.T + e

    def _moments(self, t: float) -> tuple[Tensor, Tensor, Tensor]:
        """(E x_t, Cov(x₀, x_t), Cov(x_t)) at time t."""
        I = torch.eye(self.d, dtype=torch.float64)
        K = (1 - t) * I + t * self.M                         # x_t = K x₀ + t e + γ z
        g2 = float(self.path.gamma(t)) ** 2
        m = K @ self.mu
        C0t = self.S @ K.T
        Ctt = K @ self.S @ K.T + t * t * self.R + g2 * I
        return m, C0t, Ctt

    def x0_hat(self, x_t: Tensor, t: float) -> Tensor:
        """E[x₀ | x_t] for rows of ``x_t`` ``[n, d]`` at a scalar t ∈ (0, 1]."""
        m, C0t, Ctt = self._moments(float(t))
        G = torch.linalg.solve(Ctt, C0t.T).T                 # C0t Ctt⁻¹
        return self.mu + (x_t.to(torch.float64) - m) @ G.T

    def mmse(self, x1: Tensor) -> Tensor:
        """E[x₀ | x₁] (= :meth:`x0_hat` at t = 1)."""
        return self.x0_hat(x1, 1.0)


def _sqrtm(A: Tensor) -> Tensor:
    w, V = torch.linalg.eigh(A)
    return (V * w.clamp(min=0).sqrt()) @ V.T


def bridge_sample(x0_hat, x1: Tensor, path: BrownianBridge, steps: int, *, generator=None,
                  stochastic: bool = True, t_max: float = 1.0, callback=None) -> Tensor:
    """Run the bridge from x₁ at ``t_max`` to t = 0 in ``steps`` equal steps (NFE = ``steps``):
    ``x0_hat(x_t, t)`` → x̂₀, then :meth:`BrownianBridge.step`; the last step lands on x̂₀.
    ``stochastic=False`` (or b = 0): the mean path — InDI's iteration, I²SB's "OT-ODE"."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    ts = torch.linspace(float(t_max), 0.0, int(steps) + 1, dtype=torch.float64).tolist()
    x = x1
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        x0 = x0_hat(x, t)
        if callback is not None:
            callback(i, x, x0)
        if s == 0:
            return x0
        z = None
        if stochastic and path.b > 0:
            z = randn(x.shape, generator, dtype=x.dtype, device=x.device)
        x = path.step(x, x0, t, s, z)
    return x


class BridgePrior(torch.nn.Module):
    """A trained bridge: ``net(x_t, σ) → x̂₀`` (EDM-preconditioned, conditioned on
    σ = ``path.noise_level(t, sigma_1)``), the ``path``, and the operator family ``spec`` it was trained
    for (:func:`invdiff.training.bridge.family_spec`). Not a Gaussian denoiser: the bridge solvers
    (:mod:`invdiff.solvers.bridge`: ``i2sb``, ``indi``, ``cddb``) run it, and nothing else does.
    Model units map ``data_range`` to [−1, 1], as the package's priors."""

    def __init__(self, net: torch.nn.Module, path: BrownianBridge, *, sigma_1: float, spec: dict,
                 shape=(1, 64, 64), data_range=(0.0, 1.0)):
        super().__init__()
        self.net, self.path, self.sigma_1, self.spec = net, path, float(sigma_1), dict(spec)
        self.shape, self.data_range = tuple(shape), tuple(float(v) for v in data_range)
        lo, hi = self.data_range
        self.scale = 2.0 / (hi - lo)
        self.offset = -1.0 - self.scale * lo
        self.checkpoint: dict = {}
        self.calls = 0  # network calls (NFE), as CountingPrior counts a prior's

    def to_model(self, x: Tensor) -> Tensor:
        return self.scale * x + self.offset

    def to_physical(self, x: Tensor) -> Tensor:
        return (x - self.offset) / self.scale

    def x0_hat(self, x_t: Tensor, t) -> Tensor:
        """E[x₀ | x_t] at time t (a float or ``[B]``), model units."""
        self.calls += 1
        tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x_t.shape[0])
        sig = self.path.noise_level(tt, self.sigma_1).to(device=x_t.device, dtype=x_t.dtype)
        dtype = next(self.net.parameters()).dtype
        return self.net(x_t.to(dtype), sig.to(dtype)).to(x_t.dtype)

    def extra_repr(self) -> str:
        return f"path={self.path}, sigma_1={self.sigma_1}, spec={self.spec}, shape={self.shape}"
