"""Adapters: any ε-, x₀-, v- or score-network, VP or VE or EDM, as one EDM denoiser D(x, σ).

With the EDM state ``x = x₀ + σ·n`` and ``s = √ᾱ = 1/√(1+σ²)`` (VP; ``s = 1`` otherwise), the
network sees ``x_in = s · x`` and a conditioning value (timestep, σ, log σ, ...). Its output maps
to the denoiser as

============  ====================================  ===========================================
output        meaning                                D(x, σ)
============  ====================================  ===========================================
``eps``       ε̂ with x_in = s·x₀ + s·σ·ε             ``x − σ ε̂``
``x0``        x̂₀                                     ``x̂₀``
``v``         v̂ = √ᾱ ε − √(1−ᾱ) x₀ (VP only)         ``s² x − s σ v̂``
``score``     ∇_{x_in} log p(x_in)                   ``x + s σ² ŝ``
============  ====================================  ===========================================

"Learned σ" networks (guided-diffusion/ADM) output 2·C channels; the first C are kept.

Between discrete VP training steps the timestep is *interpolated* (fractional t, exact inverse of
:meth:`VPSchedule.sigma`), which networks with sinusoidal timestep embeddings accept; ``snap=True``
instead rounds to the nearest training step in log σ (deepinv's ``DiffUNet`` behaviour) while the
input scaling still uses the requested σ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from operators.base import module_device

from .base import Prior, per_sample_sigma
from .schedules import VPSchedule, vp_timestep

PARAMETERIZATIONS = ("eps", "x0", "v", "score")
CONDITIONINGS = ("timestep", "t", "sigma", "log_sigma", "edm")


class NetworkPrior(Prior):
    """A pretrained network behind the :class:`Prior` interface.

    :param net: ``net(x_in, cond) -> Tensor`` (an object with a ``.sample`` attribute, as
        diffusers returns, is unwrapped).
    :param parameterization: ``eps``, ``x0``, ``v`` or ``score``.
    :param schedule: :class:`VPSchedule`, :class:`VESchedule` or :class:`EDMSchedule`.
    :param shape: event shape ``(C, H, W)`` in model space.
    :param conditioning: what ``cond`` is: ``timestep`` (fractional DDPM index, or the nearest
        one with ``snap``; VP default), ``t`` (the schedule's own time: the fractional index for VP,
        t ∈ [0, 1] for VE, σ for EDM), ``sigma`` (VE/EDM default), ``log_sigma``, or ``edm``
        (¼ ln σ, EDM's c_noise).
    :param learned_sigma: ``"auto"`` (keep the first C of 2·C output channels), True or False.
    :param snap: VP only: round the timestep to the nearest training step.
    :param net_dtype: dtype the network runs in (default: its parameters' dtype); the state keeps
        its own dtype (float64 in the solvers).
    """

    def __init__(self, net, parameterization: str, schedule, *, shape, data_range=(0.0, 1.0),
                 model_range=(-1.0, 1.0), conditioning: str | None = None, learned_sigma="auto",
                 snap: bool = False, net_dtype: torch.dtype | None = None, differentiable: bool = True):
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")
        is_vp = isinstance(schedule, VPSchedule)
        if parameterization == "v" and not is_vp:
            raise ValueError("v-prediction is defined for VP schedules only")
        conditioning = conditioning or ("timestep" if is_vp else "sigma")
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"unknown conditioning {conditioning!r}; choose one of {CONDITIONINGS}")
        if conditioning == "timestep" and not is_vp:
            raise ValueError("conditioning='timestep' needs a VPSchedule (discrete DDPM steps)")
        if learned_sigma not in ("auto", True, False):
            raise ValueError(f"learned_sigma must be 'auto', True or False, got {learned_sigma!r}")
        super().__init__(shape, data_range=data_range, model_range=model_range,
                         sigma_range=(schedule.sigma_min, schedule.sigma_max), differentiable=differentiable)
        self.net = net
        self.parameterization, self.schedule, self.conditioning = parameterization, schedule, conditioning
        self.learned_sigma, self.snap, self.is_vp = learned_sigma, bool(snap), is_vp
        if net_dtype is None and isinstance(net, torch.nn.Module):
            net_dtype = next((p.dtype for p in net.parameters()), None)
        self.net_dtype = net_dtype
        if is_vp:  # the σ → timestep table, on the network's device and moved with the prior
            where = (module_device(net) if isinstance(net, torch.nn.Module) else None) or torch.device("cpu")
            self.register_buffer("_log_sigmas", schedule._log_sigmas.to(where), persistent=False)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if self.is_vp:  # moved with the prior, but kept in float64 whatever dtype the network is cast to
            self._log_sigmas = self.schedule._log_sigmas.to(self._log_sigmas.device)
        return out

    def _condition(self, sigma: Tensor) -> Tensor:
        if self.conditioning in ("timestep", "t") and self.is_vp:
            return vp_timestep(self._log_sigmas, sigma, snap=self.snap and self.conditioning == "timestep")
        if self.conditioning == "t":
            return self.schedule.t(sigma)
        if self.conditioning == "sigma":
            return sigma
        if self.conditioning == "log_sigma":
            return sigma.log()
        return 0.25 * sigma.log()

    def _channels_out(self, out: Tensor) -> Tensor:
        C = self.shape[0]
        if out.ndim != len(self.shape) + 1 or tuple(out.shape[2:]) != self.shape[1:]:
            raise ValueError(f"network output has shape {list(out.shape)}, expected [B, C or 2C, {self.shape[1:]}]")
        if self.learned_sigma is True or (self.learned_sigma == "auto" and out.shape[1] == 2 * C):
            if out.shape[1] != 2 * C:
                raise ValueError(f"learned_sigma=True expects {2 * C} output channels, got {out.shape[1]}")
            return out[:, :C]
        if out.shape[1] != C:
            raise ValueError(f"network output has {out.shape[1]} channels, expected {C} "
                             f"(or {2 * C} with learned σ)")
        return out

    def denoiser(self, x: Tensor, sigma) -> Tensor:
        self.check_input(x)
        return self.raw_denoiser(x, per_sample_sigma(sigma, x))  # σ: [B, 1, ...] in x's dtype

    def raw_denoiser(self, x: Tensor, sig: Tensor) -> Tensor:
        s = 1.0 / torch.sqrt(1.0 + sig**2) if self.is_vp else torch.ones_like(sig)
        dtype = self.net_dtype or x.dtype
        cond = self._condition(sig.flatten().to(torch.float64)).to(dtype)
        out = self.net((s * x).to(dtype), cond)
        out = getattr(out, "sample", out)
        out = self._channels_out(out).to(x.dtype)
        if self.parameterization == "eps":
            return x - sig * out
        if self.parameterization == "x0":
            return out
        if self.parameterization == "v":
            return s**2 * x - s * sig * out
        return x + s * sig**2 * out

    def extra_repr(self) -> str:
        return (f"parameterization={self.parameterization!r}, schedule={self.schedule}, "
                f"conditioning={self.conditioning!r}, shape={self.shape}, "
                f"data_range={self.data_range}, model_range={self.model_range}")

