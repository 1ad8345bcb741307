"""Priors across the deepinv boundary, both ways.

* :class:`AsDeepinvDenoiser` — an invdiff :class:`~invdiff.priors.base.Prior` as a
  ``deepinv.models.Denoiser``: ``forward(x, sigma)`` takes ``x`` and σ in the prior's *physical*
  units (deepinv's convention: images in [0, 1], σ the noise std in those units) and returns
  ``to_physical(D(to_model(x), scale·σ))`` — so a shipped invdiff prior drops into deepinv's
  samplers and plug-and-play algorithms (``deepinv.sampling.DiffPIR``, ``deepinv.optim``).
* :class:`DeepinvPrior` — a deepinv denoiser (``model(x, sigma)``, x and σ in [0, 1] units) as an
  invdiff prior: model space = physical space = ``data_range`` (default (0, 1)), σ passed through,
  with the σ range the user states (a denoiser trained up to σ = 50/255 is only asked for that range
  by solvers that respect ``sigma_range``; invdiff's diffusion solvers start at ``sigma_max``).

Noise levels below the prior's ``sigma_min`` are raised to it in :class:`AsDeepinvDenoiser` (the
network was not trained below it; deepinv's algorithms ask for very small σ near the end); a
σ = 0 request returns ``x`` unchanged, the exact denoiser's limit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Prior, per_sample_sigma

try:  # deepinv is a dependency; the import is guarded so that this module's import error names it
    from deepinv.models import Denoiser as _DeepinvDenoiser
except ImportError:  # pragma: no cover
    _DeepinvDenoiser = torch.nn.Module


class AsDeepinvDenoiser(_DeepinvDenoiser):
    """An invdiff prior as a deepinv denoiser (module docstring)."""

    def __init__(self, prior: Prior):
        torch.nn.Module.__init__(self)
        self.prior = prior

    def forward(self, x: Tensor, sigma, **kwargs) -> Tensor:
        p = self.prior
        if x.shape[1:] != torch.Size(p.shape):
            raise ValueError(f"AsDeepinvDenoiser: x has shape {list(x.shape)}, the prior's images are {list(p.shape)}")
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        s = s.expand(x.shape[0]) if s.numel() == 1 else s
        if s.numel() != x.shape[0]:
            raise ValueError(f"AsDeepinvDenoiser: sigma must be a float or one value per image ({x.shape[0]}), "
                             f"got {s.numel()} values")
        if bool((s < 0).any()) or not bool(torch.isfinite(s).all()):
            raise ValueError("AsDeepinvDenoiser: sigma must be finite and >= 0")
        zero = (s == 0).reshape(-1, *([1] * (x.ndim - 1)))
        s_model = (s * p.scale).clamp(min=max(p.sigma_min, 1e-12))
        d = p.to_physical(p.denoiser(p.to_model(x), s_model))
        return torch.where(zero, x, d)


class DeepinvPrior(Prior):
    """A deepinv denoiser as an invdiff prior (module docstring).

    :param model: a ``deepinv.models.Denoiser`` (or any ``model(x, sigma)``), x and σ in ``data_range`` units.
    :param shape: ``(C, H, W)`` of the images.
    :param sigma_range: ``(σ_min, σ_max)`` the denoiser serves, in the same units.
    :param data_range: the values the denoiser's images take (deepinv: (0, 1)).
    :param differentiable: whether autograd through the model is meaningful (False for a median
        filter or a TV denoiser solved iteratively).
    """

    def __init__(self, model, shape, *, sigma_range=(0.002, 1.0), data_range=(0.0, 1.0), differentiable: bool = True):
        super().__init__(shape, data_range=data_range, model_range=data_range, sigma_range=sigma_range,
                         differentiable=differentiable)
        self.model = model

    def denoiser(self, x: Tensor, sigma) -> Tensor:
        s = per_sample_sigma(sigma, x).reshape(-1)
        return self.model(x, s)

    def describe(self) -> str:
        return f"deepinv denoiser {type(self.model).__name__} {list(self.shape)}"
