"""MCGdiff — Monte Carlo guided diffusion for Bayesian linear inverse problems.

Cardoso, Janati, Le Corff & Moulines, ICLR 2024, arXiv:2308.07983.

Sequential Monte Carlo over the diffusion's backward chain, in the operator's SVD coordinates
``x̄ = Vᵀx``, ``ȳ_i = (Uᵀy)_i / s_i``. In EDM/VE form (``x_σ = x₀ + σ n``) the observed
coefficient i is exactly the diffusion state at ``σ_i = σ_y / s_i`` (paper §3.2: ``ȳ_i = x̄₀,i +
σ_i n``): the posterior is the backward chain *conditioned on x̄_{σ_i, i} = ȳ_i*. Until the chain
reaches σ_i, coordinate i is twisted by the potential ``g_σ(x̄_i) = N(x̄_i; ȳ_i, σ² − σ_i²)``
(the forward transition from σ_i to σ read as a function of x̄_σ — the paper's g_t, eq. 3.5,
here without its grid snapping); unobserved coefficients (s_i = 0, σ_i = ∞) are always free.

One step from σ_a to σ_b with the DDIM(η) kernel ``N(m, q)``, ``m = x̄₀ + √(σ_b² − q)(x̄_a − x̄₀)/σ_a``,
``q = η² σ_b²(σ_a² − σ_b²)/σ_a²`` (η = 1: the DDPM posterior), x̄₀ = Vᵀ D(V x̄_a, σ_a):

* free (σ_i ≥ σ_a):        x̄_b,i ~ N(m_i, q)
* twisted (σ_i < σ_b):     x̄_b,i ~ N(m_i, q) · g_b  (Gaussian product), weight × N(ȳ_i; m_i, q + σ_b² − σ_i²)
* crossing (σ_b ≤ σ_i < σ_a): the kernel to σ_i predicts ȳ_i (weight × N(ȳ_i; m'_i, q')), and
  x̄_b,i is drawn from the DDIM(η) bridge from x̄_{σ_i} = ȳ_i to σ_b with the same x̄₀
* every coordinate with σ_i < σ_a divides the weight by its previous potential g_a(x̄_a,i)

(the paper's Algorithm 1: the weights are those of the auxiliary particle filter, computed on
the current particles; ancestors are resampled by them, then propagated). The last SMC step
into the smallest positive σ is not resampled: its weights are returned with the particles, and
the output draws one particle per item by them, after a final denoising step x̄₀ = D(x, σ_min)
(noiseless observed coefficients are set to ȳ there). Observation noise σ_i below the chain's
smallest positive σ is rounded up to it (at most that σ, 0.01 for DDPM's schedule).

NFE = ``steps`` network calls, each on ``B × particles`` states (``chunk`` splits them).

==============  =================================  ==============  =========================
code            paper                              code            paper
==============  =================================  ==============  =========================
``xb``          ξ_t: particles in SVD coordinates  ``lw``          log ω_t (log weights)
``sa``, ``sb``  σ_a, σ_b (one step)                ``anc``         ancestors I_t
``x0b``         x̄₀ = Vᵀ D(V x̄_a, σ_a)            ``particles``   N
``m``, ``q``    kernel mean m, variance q          ``eta``         DDIM η
``ybar``        ȳ = s⁻¹ Uᵀ y (0 unobserved)        ``sig_i``       σ_i = σ_y/s_i (τ_i, VE)
``var_g``       σ_a² − σ_i² (variance of g_a)      ``var_g_next``  σ_b² − σ_i² (of g_b)
``m_cross``     m'_i (kernel to σ_i)               ``q_cross``     q'_i
``gain``        q/(q + σ_b² − σ_i²)                ``q_bridge``    bridge variance σ_i → σ_b
==============  =================================  ==============  =========================

Defaults: the authors' configs (scripts/configs/mcg_diff/default.yaml, diffusion/ddim_100.yaml):
64 particles, 100 steps, η = 1, multinomial resampling at every step.

Resampling at every step (the paper's default, kept) adds resampling noise at every step; at a
fixed N its bias grows with the steps (path degeneracy): on 9-mode mixtures in 10-D the
normalised distance to the exact posterior went from 0.23 at 100 steps to 0.56 at 400 (64
particles), and 1024 particles still left a 0.72 vs 0.94 error in a mode's weight at 400 steps.
``resample_threshold=0.5`` with ``resample="systematic"`` (configs/experiment/mcgdiff_converging.yaml)
resamples only when the ESS drops below N/2 and converges (0.03 at 100, 0.07 at 400;
benchmarks/results/posterior_convergence.md).

Deviations: no grid snapping of the observation times (crossing steps use the exact σ_i), so
the authors' variance floor κ is not needed; the chain starts from N(0, 1 + σ_0²) twisted by the
first potentials (exact for the Gaussian reference law).

Class (:mod:`invdiff.solvers.classes`): Asymptotically exact sampler (exact as particles → ∞ (and
steps → ∞ for the DDPM kernel); converges at a fixed budget with adaptive resampling (ESS < N/2),
see configs/experiment/mcgdiff_converging).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._random import rand
from ..checks import whole_number
from ._common import Callback, Spectral, setup, vp_sigmas


def _resample(lw: Tensor, generator, how: str) -> Tensor:
    """Ancestor indices ``[B, N]`` from log weights ``[B, N]`` (per-item draws)."""
    B, N = lw.shape
    w = torch.softmax(lw, dim=1)
    cdf = w.cumsum(1)
    cdf[:, -1] = 1.0
    if how == "systematic":
        u = (rand((B, 1), generator, device=lw.device) + torch.arange(N, device=lw.device, dtype=lw.dtype)) / N
    else:
        u = rand((B, N), generator, device=lw.device)
    return torch.searchsorted(cdf, u.contiguous()).clamp(max=N - 1)


def _take(t: Tensor, anc: Tensor) -> Tensor:
    idx = anc.reshape(*anc.shape, *([1] * (t.ndim - 2))).expand(*anc.shape, *t.shape[2:])
    return torch.gather(t, 1, idx)


def _ess(lw: Tensor) -> Tensor:
    w = torch.softmax(lw, dim=1)
    return 1.0 / w.square().sum(1)


class _Observed:
    """Where each SVD coefficient is observed, per item: ``[B, 1, *shape]`` tensors (broadcast over
    the N particles). ``sig_i`` = σ_y/s_i, ∞ where unobserved (s_i = 0), raised to the chain's
    smallest positive σ where it is below it (but not where it is 0: noiseless coefficients)."""

    def __init__(self, pb, spec: Spectral, s_last: float):
        s = spec.s.unsqueeze(1)
        sig_y = pb.per_sample(pb.sigma_y).unsqueeze(1)
        sig_i = torch.where(s > 0, sig_y / torch.where(s > 0, s, 1.0), math.inf)
        self.sig_i = torch.where((sig_i > 0) & (sig_i < s_last), torch.full_like(sig_i, s_last), sig_i)
        self.noiseless = self.sig_i == 0
        self.finite = torch.isfinite(self.sig_i)
        self.ybar = torch.where(self.finite, spec.ybar.unsqueeze(1), 0.0)
        self.sig2_i = torch.where(self.finite, self.sig_i.square(), 0.0)


def _gauss(a: Tensor, m: Tensor, var) -> Tensor:
    """log N(a; m, var) up to the per-coordinate constant (the same for every particle)."""
    return -(a - m).square() / (2 * var)


def _initial_particles(obs: _Observed, s0: float, noise: Tensor) -> Tensor:
    """N(0, c²), c² = 1 + σ_0², twisted by g_0 (or conditioned on ȳ_i where σ_i ≥ σ_0)."""
    c2 = 1.0 + s0 * s0
    p = torch.where(obs.finite, (s0 * s0 - obs.sig2_i).abs(), 1.0)
    mean0 = torch.where(obs.finite, obs.ybar * c2 / (c2 + p), 0.0)
    var0 = torch.where(obs.finite, c2 * p / (c2 + p), c2)
    return mean0 + var0.sqrt() * noise


class _Step:
    """One SMC step from σ_a to σ_b on the particles ``xb`` with x̄₀ = ``x0b``: the DDIM(η) kernel
    N(m, q), the coordinate classes (twisted, crossing, active) and the log-weight increment of
    the auxiliary particle filter (module docstring)."""

    def __init__(self, obs: _Observed, xb: Tensor, x0b: Tensor, sa: float, sb: float, eta: float):
        self.obs, self.sa, self.sb, self.eta = obs, sa, sb, eta
        self.q = eta**2 * sb * sb * (sa * sa - sb * sb) / (sa * sa)
        self.m = x0b + math.sqrt(max(sb * sb - self.q, 0.0)) / sa * (xb - x0b)
        self.twisted = obs.sig_i < sb
        self.crossing = (obs.sig_i >= sb) & (obs.sig_i < sa)
        self.active = obs.sig_i < sa
        self.var_g_next = torch.where(self.twisted, sb * sb - obs.sig2_i, 1.0)
        self.sig_cross = torch.where(self.crossing, obs.sig_i, sa / 2)  # placeholder away from 0 / σ_a elsewhere
        self.q_cross = eta**2 * self.sig_cross.square() * (sa * sa - self.sig_cross.square()) / (sa * sa)
        self.m_cross = x0b + (self.sig_cross.square() - self.q_cross).clamp(min=0).sqrt() / sa * (xb - x0b)
        self.var_g = torch.where(self.active, sa * sa - obs.sig2_i, 1.0)

    def log_weight_increment(self, xb: Tensor) -> Tensor:
        """``[B, N]``: × N(ȳ_i; m_i, q + σ_b² − σ_i²) (twisted), × N(ȳ_i; m'_i, q') (crossing),
        ÷ g_a(x̄_a,i) (every coordinate with σ_i < σ_a)."""
        ybar = self.obs.ybar
        t = (torch.where(self.twisted, _gauss(ybar, self.m, self.q + self.var_g_next), 0.0)
             + torch.where(self.crossing, _gauss(ybar, self.m_cross, self.q_cross), 0.0)
             - torch.where(self.active, _gauss(xb, ybar, self.var_g), 0.0))
        return t.reshape(*t.shape[:2], -1).sum(-1)

    def propagate(self, m: Tensor, x0b: Tensor, z: Tensor) -> Tensor:
        """x̄_b from the (resampled) kernel means ``m`` and x̄₀'s ``x0b``, noise ``z``: free
        coordinates from N(m, q), twisted ones from N(m, q)·g_b, crossing ones by the DDIM(η)
        bridge from x̄_{σ_i} = ȳ_i to σ_b."""
        q, sb, ybar = self.q, self.sb, self.obs.ybar
        x_free = m + math.sqrt(q) * z
        gain = q / (q + self.var_g_next)
        x_twisted = m + gain * (ybar - m) + (q * self.var_g_next / (q + self.var_g_next)).sqrt() * z
        sig_c2 = self.sig_cross.square()
        q_bridge = self.eta**2 * sb * sb * (sig_c2 - sb * sb).clamp(min=0) / sig_c2
        x_bridge = x0b + (sb * sb - q_bridge).clamp(min=0).sqrt() / self.sig_cross * (ybar - x0b) + q_bridge.sqrt() * z
        return torch.where(self.twisted, x_twisted, torch.where(self.crossing, x_bridge, x_free))


def _weighted_mean(lw: Tensor, t: Tensor) -> Tensor:
    """Σ_n softmax(lw)_n t_n over the particles: ``[B, N, *shape] -> [B, *shape]``."""
    w = torch.softmax(lw, dim=1).reshape(*lw.shape, *([1] * (t.ndim - 2)))
    return (w * t).sum(1)


def mcgdiff(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 100, generator=None, callback: Callback = None,
            particles: int = 64, eta: float = 1.0, resample: str = "multinomial", resample_threshold: float = 1.0,
            schedule=None, return_particles: bool = False, chunk: int | None = None):
    """MCGdiff posterior samples (one per item of ``y``), optionally with all particles.

    :param y: ``[B, *operator.meas_size]`` measurements, physical units.
    :param operator: linear operator with an exact SVD.
    :param prior: :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std (float or ``[B]``); 0 is the noiseless case.
    :param steps: diffusion steps (respaced VP timesteps of the prior's schedule).
    :param particles: N, particles per batch item.
    :param eta: DDIM η in (0, 1] of the backward kernel (1: DDPM).
    :param resample: ``"multinomial"`` (paper) or ``"systematic"``.
    :param resample_threshold: resample an item when its ESS < threshold × N; 1 (the paper):
        at every step.
    :param return_particles: also return the particles ``[B, N, *shape]`` (physical units) and
        their normalised log weights ``[B, N]``.
    :param chunk: most states per network call (None: all ``B × N`` at once).
    :param callback: ``callback(step, x_t, x0_hat)`` with the weighted particle means; a callback
        taking ``ess`` (``[B]`` effective sample size), ``particles`` and ``log_weights`` keywords
        receives them too.
    :returns: ``x`` ``[B, *prior.shape]`` physical units, y's dtype; with ``return_particles``,
        ``(x, particles, log_weights)``.
    """
    if not 0 < eta <= 1:
        raise ValueError(f"mcgdiff: eta must lie in (0, 1] (the weights need a stochastic kernel), got {eta}")
    if not whole_number(particles):
        raise ValueError(f"mcgdiff: particles must be a positive integer, got {particles!r}")
    if resample not in ("multinomial", "systematic"):
        raise ValueError(f"mcgdiff: resample must be 'multinomial' or 'systematic', got {resample!r}")
    if not 0 < resample_threshold <= 1:
        raise ValueError(f"mcgdiff: resample_threshold must lie in (0, 1], got {resample_threshold}")
    if chunk is not None and not whole_number(chunk):
        raise ValueError(f"mcgdiff: chunk must be a positive integer or None, got {chunk!r}")
    pb = setup("mcgdiff", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["linear", "svd"])
    B, N, shape = pb.B, particles, prior.shape
    sigmas = vp_sigmas(prior, steps, schedule)  # steps positive levels, then 0
    s_last = sigmas[-2]
    obs = _Observed(pb, Spectral(pb, "svd"), s_last)

    def randn():
        return pb.randn((B, N, *shape))

    def denoise(xb: Tensor, sigma: float, step: int) -> Tensor:
        flat = operator.V(xb.reshape(B * N, *shape))
        size = B * N if chunk is None else chunk
        d = torch.cat([pb.denoise(flat[j:j + size], sigma, step) for j in range(0, B * N, size)])
        return operator.V_adjoint(d).reshape(B, N, *shape)

    def images(xb: Tensor) -> Tensor:
        return operator.V(xb.reshape(B * N, *shape)).reshape(B, N, *shape)

    # 1. Initial particles, equal weights.
    xb = _initial_particles(obs, sigmas[0], randn())
    lw = torch.zeros(B, N, dtype=torch.float64, device=pb.device)
    for k in range(steps):
        sa, sb = sigmas[k], sigmas[k + 1]
        x0b = denoise(xb, sa, k)
        if sb == 0:
            break
        # 2. Weights of the current particles (auxiliary particle filter).
        step = _Step(obs, xb, x0b, sa, sb, eta)
        lw = lw + step.log_weight_increment(xb)
        ess = _ess(lw)  # of the current particles' weights: what the resampling sees
        if pb.has_callback:
            x0_img = operator.V(_weighted_mean(lw, x0b))  # x̂₀ of the particles before propagation
        # 3. Resample the ancestors (not into the last level: its weights are returned).
        m, x0b_a = step.m, x0b
        if sb != s_last:
            redo = ess < resample_threshold * N if resample_threshold < 1 else torch.ones_like(ess, dtype=torch.bool)
            anc = torch.where(redo[:, None], _resample(lw, pb.generator, resample),
                              torch.arange(N, device=pb.device).expand(B, N))
            lw = torch.where(redo[:, None], torch.zeros_like(lw), lw)
            m, x0b_a = _take(m, anc), _take(x0b, anc)
        # 4. Propagate.
        xb = step.propagate(m, x0b_a, randn())
        pb.check(k, xb)
        if pb.has_callback:
            pb.callback(k, operator.V(_weighted_mean(lw, xb)), x0_img, ess=ess, log_weights=torch.log_softmax(lw, 1),
                        particles=images(xb))
    # 5. Final step: x̄₀ = D(x, σ_min) (computed above), noiseless observations exactly; one
    # particle per item drawn by the last weights.
    x0b = torch.where(obs.noiseless, obs.ybar, x0b)
    pb.check(steps, x0b)
    all_images = images(x0b) if pb.has_callback or return_particles else None  # all particles, once
    if pb.has_callback:
        pb.callback(steps - 1, operator.V(_weighted_mean(lw, xb)), operator.V(_weighted_mean(lw, x0b)), ess=_ess(lw),
                    log_weights=torch.log_softmax(lw, 1), particles=all_images)
    pick = _resample(lw, pb.generator, "multinomial")[:, :1]
    out = pb.finish(operator.V(_take(x0b, pick)[:, 0]))
    if not return_particles:
        return out
    return out, pb.prior.to_physical(all_images).to(pb.out_dtype), torch.log_softmax(lw, 1)
