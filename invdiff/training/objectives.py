"""The diffusion and flow objectives of ``invdiff-train``: EDM denoising score matching, flow
matching and reflow (the reflow couplings come from :class:`~invdiff.training.trainer.Trainer`).

``objective="edm"`` (Karras et al. 2022, eq. 2 with Table 1's choices): σ ~ logN(P_mean, P_std²),
``λ(σ) = (σ² + σ_d²)/(σ σ_d)²``, ``L = λ(σ) ‖D(x + σn; σ) − x‖²`` (per-pixel mean); the network is
:func:`~invdiff.priors.unet.build_unet` (EDM-preconditioned), exported as a ``NetworkPrior``.

``objective="flow"``: conditional flow matching (Lipman et al. 2023, arXiv:2210.02747, eq. 9 with the
conditional OT path, eq. 20–23) = rectified flow's loss (Liu, Gong & Liu 2023, arXiv:2209.03003,
eq. 1): on an interpolant path x_t = α(t) x₀ + σ(t) ε (:mod:`invdiff.priors.flow`, ``linear`` by
default), ``L = ‖v_θ(x_t, t) − (α'(t) x₀ + σ'(t) ε)‖²`` (per-pixel mean, weight 1 at every t), with t
drawn ``uniform`` on [0, 1] (default: Lipman et al.; Liu et al.) or ``logit_normal`` (t =
sigmoid(m + s·n), Esser et al. 2024, arXiv:2403.03206, eq. 19 and §5.1: m = 0, s = 1 ranked first of
their rectified-flow variants for text-to-image FID; it puts 0.2 % of its draws below t = 0.05, where
posterior solvers spend their last steps, against 5 % for uniform — the reason for the default). The
network is :func:`~invdiff.priors.unet.build_flow_unet` (the same UNet, no preconditioning),
exported as a :class:`~invdiff.priors.flow.FlowPrior`.

``objective="reflow"``: the 2-rectified flow (Liu et al. 2023, §2.2, Alg. 1 with k = 2): the same
loss on couplings (x̂₀, ε) where x̂₀ is the ``teacher`` flow's ODE solution from ε (Heun,
``teacher_steps`` steps), the student initialised from the teacher's weights (their §5: 2-RF starts
from 1-RF). Deviation: the couplings are generated afresh for every batch (from the run's generator)
instead of once into a fixed set of pairs — the same coupling distribution, never a reused pair,
and nothing to store; it costs ``2·teacher_steps − 1`` forward passes of the teacher per batch.
"""

from __future__ import annotations


import torch
from torch import Tensor

from ..priors.flow import make_path

from .settings import TrainSettings


def edm_loss(net: torch.nn.Module, x: Tensor, generator: torch.Generator, s: TrainSettings) -> Tensor:
    """Mean EDM loss of a batch ``x`` in model units (noise drawn from ``generator``)."""
    B = x.shape[0]
    sigma = (s.p_mean + s.p_std * torch.randn(B, generator=generator)).exp().to(x.device)
    n = torch.randn(x.shape, generator=generator).to(x.device) * sigma[:, None, None, None]
    d = net(x + n, sigma)
    w = (sigma**2 + s.sigma_data**2) / (sigma * s.sigma_data) ** 2
    return (w[:, None, None, None] * (d - x).square()).mean()


def sample_t(B: int, generator: torch.Generator, s: TrainSettings) -> Tensor:
    """Flow-matching times ``[B]`` in (0, 1): logit-normal (Esser et al. 2024, eq. 19) or uniform."""
    if s.t_sampling == "uniform":
        return torch.rand(B, generator=generator)
    return torch.sigmoid(s.t_mean + s.t_std * torch.randn(B, generator=generator))


def flow_loss(net: torch.nn.Module, x0: Tensor, generator: torch.Generator, s: TrainSettings,
              eps: Tensor | None = None) -> Tensor:
    """Mean conditional flow-matching loss ``‖v_θ(x_t, t) − (α' x₀ + σ' ε)‖²`` of a batch ``x0`` in
    model units; ``eps`` given (reflow's coupled noise) or drawn from ``generator``."""
    path = make_path(s.path)
    B = x0.shape[0]
    t = sample_t(B, generator, s).to(torch.float64)
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    tt = t.reshape(B, 1, 1, 1).to(x0.device)
    a, sg = path.alpha(tt).to(x0.dtype), path.sigma(tt).to(x0.dtype)
    target = path.velocity_target(x0, eps, tt).to(x0.dtype)
    v = net(a * x0 + sg * eps, t.to(x0.device, x0.dtype))
    return (v - target).square().mean()
