"""The one interface solvers see: a denoiser in EDM form plus an affine map to physical units.

``prior.denoiser(x, sigma) ≈ E[x₀ | x₀ + σ·n = x]`` with ``x`` in the prior's *model space* (the
space the network was trained in, e.g. [-1, 1]) and σ in that space. ``prior.to_model`` and
``prior.to_physical`` are the affine map between physical units (what the instrument measures)
and model space: ``x_model = a · x_phys + b`` per the ``data_range`` → ``model_range`` pair.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def per_sample_sigma(sigma, x: Tensor) -> Tensor:
    """σ as a tensor broadcastable against ``x`` ``[B, ...]``: a float, a 0-d or a ``[B]`` tensor.
    A Python number is checked on the host and filled on x's device (no device→host sync)."""
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError("sigma must be finite and > 0 (use the prior's sigma_min for the last step)")
        return torch.full((x.shape[0], *([1] * (x.ndim - 1))), float(sigma), dtype=x.dtype, device=x.device)
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.ndim != 1 or s.shape[0] != x.shape[0]:
        raise ValueError(f"sigma must be a float or a [B] tensor with B={x.shape[0]}, got shape {tuple(s.shape)}")
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError("sigma must be finite and > 0 (use the prior's sigma_min for the last step)")
    return s.reshape(-1, *([1] * (x.ndim - 1)))


class Prior(torch.nn.Module):
    """Base class of all priors.

    :param shape: event shape in model space, ``(C, H, W)`` for images or ``(d,)`` for vectors.
    :param data_range: physical values ``(lo, hi)`` that map onto ``model_range``.
    :param model_range: the network's training range (``(-1, 1)`` for most pretrained models).
    :param sigma_range: ``(σ_min, σ_max)`` the denoiser was trained on (model-space units).
    :param differentiable: whether autograd through :meth:`denoiser` is available (for
        gradient-guided solvers).
    """

    def __init__(self, shape, *, data_range=(0.0, 1.0), model_range=(-1.0, 1.0),
                 sigma_range=(0.0, float("inf")), differentiable: bool = True):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        lo, hi = (float(v) for v in data_range)
        mlo, mhi = (float(v) for v in model_range)
        if hi <= lo or mhi <= mlo:
            raise ValueError(f"ranges must be increasing, got data_range={data_range}, model_range={model_range}")
        self.data_range, self.model_range = (lo, hi), (mlo, mhi)
        self.scale = (mhi - mlo) / (hi - lo)  # x_model = scale · x_phys + offset
        self.offset = mlo - self.scale * lo
        self.sigma_min, self.sigma_max = (float(v) for v in sigma_range)
        self.differentiable = bool(differentiable)

    # -- units -----------------------------------------------------------------------------------
    def to_model(self, x_phys: Tensor) -> Tensor:
        return self.scale * x_phys + self.offset

    def to_physical(self, x_model: Tensor) -> Tensor:
        return (x_model - self.offset) / self.scale

    def sigma_to_physical(self, sigma):
        """A model-space noise level in physical units (σ_y conversions)."""
        return sigma / self.scale

    # -- the denoiser ----------------------------------------------------------------------------
    def denoiser(self, x: Tensor, sigma) -> Tensor:
        """``E[x₀ | x]`` for ``x`` ``[B, *shape]`` in model space, σ a float or ``[B]`` tensor."""
        raise NotImplementedError

    def raw_denoiser(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The same ``D(x, σ)`` for a checked ``x`` and σ already a ``[B, 1, …]`` tensor on x's
        device and dtype (:func:`per_sample_sigma`): what the solvers' compiled path runs, so no
        Python check syncs the device and no σ value reaches a graph as a constant (one compilation
        per shape, not per noise level). Priors override it with their denoiser's body; this default
        calls :meth:`denoiser`."""
        return self.denoiser(x, sigma.reshape(-1))

    def forward(self, x: Tensor, sigma) -> Tensor:
        return self.denoiser(x, sigma)

    def score(self, x: Tensor, sigma) -> Tensor:
        """``∇ log p_σ(x) = (D(x, σ) − x) / σ²`` (Tweedie)."""
        s = per_sample_sigma(sigma, x)
        return (self.denoiser(x, sigma) - x) / s**2

    def velocity(self, x_t: Tensor, t, path=None) -> Tensor:
        """The probability-flow velocity ``dx_t/dt = α'(t) x̂₀ + σ'(t) ε̂`` of this prior on an
        interpolant ``path`` (:mod:`invdiff.priors.flow`: ``x_t = α(t) x₀ + σ(t) ε``), at a state
        ``x_t`` ``[B, *shape]`` in model space and time ``t`` (a float or ``[B]``): one denoiser call at
        ``x = x_t/α``, ``s = σ/α``, exact for an exact denoiser. Needs α(t) > 0 and σ(t) > 0 (a
        :class:`~invdiff.priors.flow.FlowPrior` on its own path also answers at t = 1)."""
        if path is None:
            raise ValueError(f"{type(self).__name__}.velocity needs an interpolant path (invdiff.priors.flow): "
                             "this prior has no path of its own")
        tt = torch.as_tensor(t, dtype=torch.float64, device=x_t.device)
        tt = (tt.expand(x_t.shape[0]) if tt.ndim == 0 else tt).reshape(-1, *([1] * (x_t.ndim - 1)))
        if tt.shape[0] != x_t.shape[0]:
            raise ValueError(f"t must be a float or a [B] tensor with B = {x_t.shape[0]}, got shape {tuple(tt.shape)}")
        a, s = path.alpha(tt), path.sigma(tt)
        if not bool(((a > 0) & (s > 0)).all()):
            raise ValueError(f"velocity through the denoiser needs α(t) > 0 and σ(t) > 0 on the {path.name} path; "
                             "t = 1 (pure noise) or t = 0 is outside it — use t in the prior's time range")
        x64 = x_t.to(torch.float64)
        x0 = self.denoiser((x64 / a).to(x_t.dtype), (s / a).reshape(-1).to(x_t.dtype)).to(torch.float64)
        return path.velocity_from_x0(x64, x0, tt).to(x_t.dtype)

    def check_input(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.shape or x.ndim != len(self.shape) + 1:
            raise ValueError(f"{type(self).__name__}: expected x of shape [B, {', '.join(map(str, self.shape))}], "
                             f"got {list(x.shape)}")


class CountingPrior(Prior):
    """Wraps a prior and counts its denoiser calls (``calls``): measures a solver's NFE."""

    def __init__(self, inner: Prior):
        super().__init__(inner.shape, data_range=inner.data_range, model_range=inner.model_range,
                         sigma_range=(inner.sigma_min, inner.sigma_max), differentiable=inner.differentiable)
        self.inner, self.calls = inner, 0
        if getattr(inner, "path", None) is not None:  # a flow prior's own path (solvers default to it)
            self.path = inner.path

    def denoiser(self, x: Tensor, sigma) -> Tensor:
        self.calls += 1
        return self.inner.denoiser(x, sigma)

    def raw_denoiser(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        return raw_call(self.inner)(x, sigma)

    def velocity(self, x_t: Tensor, t, path=None) -> Tensor:
        self.calls += 1
        return self.inner.velocity(x_t, t, path)


def raw_call(prior: Prior):
    """``prior.raw_denoiser``, unless a subclass overrides :meth:`Prior.denoiser` below the class
    that defines ``raw_denoiser`` (a wrapper that counts or alters calls): then ``denoiser``, called
    with the σ tensor, so that the override is never bypassed."""
    mro = type(prior).__mro__
    d = next(c for c in mro if "denoiser" in c.__dict__)
    r = next(c for c in mro if "raw_denoiser" in c.__dict__)
    if issubclass(r, d):
        return prior.raw_denoiser
    return lambda x, sigma: prior.denoiser(x, sigma.reshape(-1))
