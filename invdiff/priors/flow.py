"""The flow view: interpolant paths, their exact conversions, and velocity networks as priors.

One family of paths ``x_t = α(t)·x₀ + σ(t)·ε`` (t ∈ [0, 1], data at t = 0, noise at t = 1; the
convention of DDPM, score SDEs and diffusers' flow-matching scheduler) covers

===========  =================================================  ===========================================
path         α(t), σ(t)                                         from
===========  =================================================  ===========================================
``linear``   1 − t, t                                           rectified flow (Liu, Gong & Liu 2023,
                                                                arXiv:2209.03003); flow matching with the
                                                                OT path (Lipman et al. 2023, 2210.02747)
``trig``     cos(πt/2), sin(πt/2)                               stochastic interpolants (Albergo, Boffi &
                                                                Vanden-Eijnden 2023, 2303.08797, §3.1)
``vp``       e^{−½B(t)}, √(1 − e^{−B(t)}),                      Song et al. 2021 (2011.13456), VP SDE
             B(t) = β_min t + ½(β_max − β_min) t²
``ve``       1, σ_min (σ_max/σ_min)^t                           Song et al. 2021, VE SDE
===========  =================================================  ===========================================

Every point of a path is a point of EDM's state ``x = x₀ + s·ε`` with ``x = x_t/α(t)`` and
``s = σ(t)/α(t)`` (the noise-to-signal ratio). So a velocity ``v = dx_t/dt = α'x₀ + σ'ε`` and the
one denoiser ``D(x, s) = E[x₀ | x]`` carry the same information, exactly:

    x₀ = (σ v − σ' x_t) / (σ α' − σ' α),          v = α' x₀ + σ' (x_t − α x₀)/σ,
    ε  = (x_t − α x₀)/σ,                          ∇ log p_t(x_t) = −ε/σ

(``σα' − σ'α < 0`` on every path above, so the conversion never divides by zero; on the linear path
it is −1, x₀ = x_t − t·v). :class:`FlowPrior` makes a velocity network the denoiser every solver
uses; :meth:`invdiff.priors.Prior.velocity` goes the other way for any prior (diffusion, analytic),
so flow samplers and flow solvers run on every prior. The inverse ``t(s)`` is closed form on every
path (linear: t = s/(1+s); trig: t = (2/π)·atan s; VP: the root of a quadratic in t; VE: a log).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Prior, per_sample_sigma

__all__ = ["Interpolant", "LinearPath", "TrigPath", "VPPath", "VEPath", "PATHS", "make_path", "FlowPrior",
           "TIME_CONVENTIONS"]


def _t64(t, like: Tensor | None = None) -> Tensor:
    if isinstance(t, Tensor):
        return t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64, device=None if like is None else like.device)


class Interpolant:
    """A path ``x_t = α(t) x₀ + σ(t) ε``. Subclasses define ``alpha``, ``sigma``, their derivatives
    ``d_alpha``, ``d_sigma`` and the inverse ``t_of_sigma`` of the noise-to-signal ratio
    ``s(t) = σ(t)/α(t)`` (increasing in t). Every method takes t (and s) as floats or float64 tensors
    broadcastable against the state."""

    name = "interpolant"

    # -- the path ----------------------------------------------------------------------------------
    def alpha(self, t) -> Tensor:
        raise NotImplementedError

    def sigma(self, t) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t) -> Tensor:
        raise NotImplementedError

    def edm_sigma(self, t) -> Tensor:
        """The EDM noise level ``s = σ(t)/α(t)`` of time t (∞ where α = 0)."""
        return self.sigma(t) / self.alpha(t)

    def t_of_sigma(self, s) -> Tensor:
        """The time whose noise-to-signal ratio is ``s`` (inverse of :meth:`edm_sigma`)."""
        raise NotImplementedError

    # -- exact conversions -------------------------------------------------------------------------
    def x0_from_velocity(self, x_t: Tensor, v: Tensor, t) -> Tensor:
        """``x₀ = (σ v − σ' x_t)/(σ α' − σ' α)``: the denoiser's estimate from a velocity."""
        a, s, da, ds = self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)
        return (s * v - ds * x_t) / (s * da - ds * a)

    def velocity_from_x0(self, x_t: Tensor, x0: Tensor, t) -> Tensor:
        """``v = α' x₀ + σ' ε`` with ``ε = (x_t − α x₀)/σ`` (needs σ(t) > 0)."""
        a, s, da, ds = self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t)
        return da * x0 + ds * (x_t - a * x0) / s

    def eps_from_x0(self, x_t: Tensor, x0: Tensor, t) -> Tensor:
        return (x_t - self.alpha(t) * x0) / self.sigma(t)

    def x0_from_eps(self, x_t: Tensor, eps: Tensor, t) -> Tensor:
        return (x_t - self.sigma(t) * eps) / self.alpha(t)

    def score_from_x0(self, x_t: Tensor, x0: Tensor, t) -> Tensor:
        """``∇_{x_t} log p_t(x_t) = −E[ε | x_t]/σ(t) = (α x₀ − x_t)/σ²``."""
        return (self.alpha(t) * x0 - x_t) / self.sigma(t) ** 2

    def x0_from_score(self, x_t: Tensor, score: Tensor, t) -> Tensor:
        return (x_t + self.sigma(t) ** 2 * score) / self.alpha(t)

    def velocity_target(self, x0: Tensor, eps: Tensor, t) -> Tensor:
        """The conditional velocity ``α'(t) x₀ + σ'(t) ε`` (flow matching's regression target)."""
        return self.d_alpha(t) * x0 + self.d_sigma(t) * eps

    # -- identity ----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": self.name}

    def __eq__(self, other) -> bool:
        return isinstance(other, Interpolant) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({args})"


class LinearPath(Interpolant):
    """``α = 1 − t, σ = t``: rectified flow / flow matching's OT path; ``v = ε − x₀``."""

    name = "linear"

    def alpha(self, t):
        return 1.0 - _t64(t)

    def sigma(self, t):
        return _t64(t)

    def d_alpha(self, t):
        return torch.full_like(_t64(t), -1.0)

    def d_sigma(self, t):
        return torch.ones_like(_t64(t))

    def t_of_sigma(self, s):
        s = _t64(s)
        return s / (1.0 + s)


class TrigPath(Interpolant):
    """``α = cos(πt/2), σ = sin(πt/2)``: variance preserving for unit-variance data (GVP)."""

    name = "trig"

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * _t64(t))

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * _t64(t))

    def d_alpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * _t64(t))

    def d_sigma(self, t):
        return 0.5 * math.pi * torch.cos(0.5 * math.pi * _t64(t))

    def t_of_sigma(self, s):
        return (2.0 / math.pi) * torch.atan(_t64(s))


class VPPath(Interpolant):
    """The VP SDE's marginals, ``α = exp(−½B(t))``, ``σ = √(1 − α²)``, ``B(t) = β_min t + ½Δβ t²``
    (β_min = 0.1, β_max = 20: Song et al. 2021). ``s² = e^{B} − 1`` gives t(s) as the positive root of
    ``½Δβ t² + β_min t − ln(1 + s²) = 0``."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"VPPath needs 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _B(self, t):
        t = _t64(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def _beta(self, t):
        return self.beta_min + (self.beta_max - self.beta_min) * _t64(t)

    def alpha(self, t):
        return torch.exp(-0.5 * self._B(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-self._B(t)))

    def d_alpha(self, t):
        return -0.5 * self._beta(t) * self.alpha(t)

    def d_sigma(self, t):
        # σ² = 1 − e^{−B}: 2σσ' = β e^{−B}
        return 0.5 * self._beta(t) * torch.exp(-self._B(t)) / self.sigma(t)

    def t_of_sigma(self, s):
        c = torch.log1p(_t64(s) ** 2)
        a = 0.5 * (self.beta_max - self.beta_min)
        b = self.beta_min
        return 2.0 * c / (b + torch.sqrt(b * b + 4.0 * a * c))  # the stable form of (−b + √(b² + 4ac))/2a

    def to_dict(self):
        return {"type": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max}


class VEPath(Interpolant):
    """``α = 1``, ``σ = σ_min (σ_max/σ_min)^t`` (Song et al. 2021's VE SDE; σ_min 0.01, σ_max 50)."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VEPath needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def alpha(self, t):
        return torch.ones_like(_t64(t))

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** _t64(t)

    def d_alpha(self, t):
        return torch.zeros_like(_t64(t))

    def d_sigma(self, t):
        return self.sigma(t) * math.log(self.sigma_max / self.sigma_min)

    def t_of_sigma(self, s):
        return torch.log(_t64(s) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

    def to_dict(self):
        return {"type": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


PATHS = {"linear": LinearPath, "trig": TrigPath, "vp": VPPath, "ve": VEPath}


def make_path(spec) -> Interpolant:
    """An :class:`Interpolant` from itself, a name (``"linear"``) or a dict ``{"type": ..., **args}``."""
    if isinstance(spec, Interpolant):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or spec.get("type") not in PATHS:
        raise ValueError(f"unknown interpolant path {spec!r}; choose one of {sorted(PATHS)} "
                         "(or a dict {'type': name, ...its arguments})")
    args = {k: v for k, v in spec.items() if k != "type"}
    return PATHS[spec["type"]](**args)


#: How a network's own time variable relates to this module's t (noise at 1): ``noise_at_1`` (t_net
#: = t: diffusers' FlowMatchEulerDiscreteScheduler, SD3, this package) or ``data_at_1`` (t_net = 1 − t,
#: the network's velocity is −v: Lipman et al.'s flow matching, rectified flow's code, PnP-Flow).
TIME_CONVENTIONS = ("noise_at_1", "data_at_1")


class FlowPrior(Prior):
    """A velocity network ``v_θ(x_t, t)`` on an interpolant path, as the package's denoiser.

    ``denoiser(x, s)``: ``t = t(s)``, ``x_t = α(t)·x``, ``D = (σ v_θ − σ' x_t)/(σ α' − σ' α)``: exact
    for the exact velocity (tested on Gaussian mixtures), so every solver runs on a flow prior.
    :meth:`velocity` on the prior's own path calls the network directly (also at t = 1, where
    α may be 0 and no denoiser exists).

    :param net: ``net(x_t, t_net) -> v`` (an output with ``.sample``, as diffusers returns, is unwrapped).
    :param path: an :class:`Interpolant` or its name / dict (:func:`make_path`).
    :param shape: event shape ``(C, H, W)`` in model space.
    :param time_convention: one of :data:`TIME_CONVENTIONS`.
    :param time_scale: the network is called with ``time_scale · t_net`` (diffusers' transformers take
        timesteps in [0, 1000]).
    :param t_range: ``(t_min, t_max)`` the network is used on: the prior's σ range is
        ``(s(t_min), s(t_max))``; t_max < 1 keeps that range finite for the diffusion solvers.
    :param net_dtype: the dtype the network runs in (default: its parameters').
    """

    def __init__(self, net, path="linear", *, shape, data_range=(0.0, 1.0), model_range=(-1.0, 1.0),
                 time_convention: str = "noise_at_1", time_scale: float = 1.0, t_range=(1e-3, 1.0 - 1e-3),
                 net_dtype: torch.dtype | None = None, differentiable: bool = True):
        path = make_path(path)
        if time_convention not in TIME_CONVENTIONS:
            raise ValueError(f"unknown time_convention {time_convention!r}; choose one of {TIME_CONVENTIONS}")
        t_min, t_max = (float(v) for v in t_range)
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"t_range must satisfy 0 <= t_min < t_max <= 1, got {t_range}")
        s_lo, s_hi = (float(path.edm_sigma(v)) for v in (t_min, t_max))
        if not (s_hi < math.inf and s_lo >= 0):
            raise ValueError(f"t_max = {t_max} is where α(t) = 0 on the {path.name} path (infinite noise level); "
                             f"use t_max < 1 (e.g. 1 − 1e-3)")
        super().__init__(shape, data_range=data_range, model_range=model_range, sigma_range=(s_lo, s_hi),
                         differentiable=differentiable)
        self.net, self.path = net, path
        self.time_convention, self.time_scale = time_convention, float(time_scale)
        self.t_range = (t_min, t_max)
        if net_dtype is None and isinstance(net, torch.nn.Module):
            net_dtype = next((p.dtype for p in net.parameters()), None)
        self.net_dtype = net_dtype

    def _net_velocity(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The network's velocity in this module's convention; ``t`` ``[B]`` float64."""
        flip = self.time_convention == "data_at_1"
        t_net = (1.0 - t) if flip else t
        dtype = self.net_dtype or x_t.dtype
        out = self.net(x_t.to(dtype), (self.time_scale * t_net).to(dtype))
        out = getattr(out, "sample", out)
        if tuple(out.shape) != tuple(x_t.shape):
            raise ValueError(f"the velocity network returned shape {list(out.shape)} for an input of shape "
                             f"{list(x_t.shape)}")
        out = out.to(x_t.dtype)
        return -out if flip else out

    def velocity(self, x_t: Tensor, t, path=None) -> Tensor:
        path = self.path if path is None else make_path(path)
        if path != self.path:  # another path: through the denoiser (exact conversion)
            return super().velocity(x_t, t, path)
        self.check_input(x_t)
        tt = _t64(t, x_t).to(x_t.device)
        tt = tt.expand(x_t.shape[0]) if tt.ndim == 0 else tt.reshape(-1)
        if tt.shape[0] != x_t.shape[0] or not bool(((tt >= 0) & (tt <= 1)).all()):
            raise ValueError(f"t must be a float or a [B] tensor in [0, 1] with B = {x_t.shape[0]}")
        return self._net_velocity(x_t, tt)

    def denoiser(self, x: Tensor, sigma) -> Tensor:
        self.check_input(x)
        return self.raw_denoiser(x, per_sample_sigma(sigma, x))

    def raw_denoiser(self, x: Tensor, sig: Tensor) -> Tensor:
        t = self.path.t_of_sigma(sig.to(torch.float64))  # [B, 1, …]
        a = self.path.alpha(t)
        x_t = (a * x.to(torch.float64)).to(x.dtype)
        v = self._net_velocity(x_t, t.reshape(-1))
        return self.path.x0_from_velocity(x_t.to(torch.float64), v.to(torch.float64), t).to(x.dtype)

    def extra_repr(self) -> str:
        return (f"path={self.path!r}, time_convention={self.time_convention!r}, time_scale={self.time_scale}, "
                f"t_range={self.t_range}, shape={self.shape}, data_range={self.data_range}, "
                f"model_range={self.model_range}")
