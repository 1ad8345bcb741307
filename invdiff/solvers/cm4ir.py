"""CM4IR — zero-shot image restoration with few-step guidance of consistency models.

Garber & Tirer, "Zero-Shot Image Restoration Using Few-Step Guidance of Consistency Models (and
Beyond)", CVPR 2025, arXiv:2412.20596 (code: github.com/tirer-lab/CM4IR, ``cm4ir_restoration``).

A few consistency-model calls (4 in the paper) interleaved with back-projection (BP) onto the
measurements and a re-noising that mixes fresh noise with the *negated* estimated noise. With
f the prior's one denoiser call (a consistency prior's f(x, σ); a diffusion prior's Tweedie mean —
the paper's "beyond": the same noise injection in guided diffusion models), model space, and the
regularised pseudo-inverse ``A_ζ⁺ = Aᵀ(AAᵀ + ζσ_y² I)⁻¹`` (``A⁺`` when ζσ_y² = 0) — the paper's three
ingredients, initialisation from y, BP guidance and the new noise injection, as the authors'
``cm4ir_restoration`` runs them — for k = 1 … N:

    x_1     = A_ζ⁺ y + σ_1 z                                                    (initialisation)
    x_{0|k} = f(x_k, (1 + δ_k) σ_k)                              (CM call at a boosted level)
    x̂_{0|k} = x_{0|k} − μ A_ζ⁺(A x_{0|k} − y)                            (BP guidance; μ = 1)
    x_{k+1} = x̂_{0|k} + σ_{k+1} (η z + √(1 − η²) ẑ⁻_k),   ẑ⁻_k = (x_{0|k} − x_k)/σ_k  (noise injection)

and returns x̂_{0|N} for noiseless y and x_{0|N} (the last CM output, without its BP) for noisy y, as
the authors' code does (decided per batch item from its σ_y). ẑ⁻ is minus the estimated noise: the
deterministic part of the injection keeps moving along the last denoising step (x_k → x_{0|k}),
the paper's Polyak/heavy-ball reading of it; η sets the share of fresh noise. δ_k decouples the
level the network denoises at from the level σ_k of the injected noise.

Time points. The paper parameterises them by DDPM's linear-β schedule (T = 1000): ᾱ_1 = ᾱ at
timestep ``i_N + 1`` (the authors' ``compute_alpha(betas, iN + 1)``), ᾱ_{k+1} = min((1 + γ) ᾱ_k,
0.9999), and uses ``σ_k = √(1 − ᾱ_k)`` directly as the EDM noise level of the state
``x = x₀ + σ n`` (the consistency model's own σ, whose range is [σ_min, σ_max] = [0.002, 80]); so
every σ_k ≤ 1 and σ_k ≥ 0.01. Each σ_k (and each (1 + δ_k) σ_k) is clipped to the prior's
[σ_min, σ_max]. Example, i_N = 250, γ = 0.2: σ = 0.694, 0.614, 0.503, 0.322.

NFE = ``steps`` = N network calls (the noisy case also calls f at the last level and then stops).
No gradient through the prior; the operator needs A and A⁺ (``pinv``), and ``prox_l2`` when
ζσ_y² > 0 (A_ζ⁺ r = (AᵀA + ζσ_y² I)⁻¹Aᵀ r = ``prox_l2(0, r, γ = 1/(ζσ_y²))``).

==============  ==========================  ==============  ===============================
code            paper / authors' code       code            paper / authors' code
==============  ==========================  ==============  ===============================
``x``           x_k = x_{t_k} (EDM form)    ``steps``       N (``T_sampling``)
``x0``          x_{0|t_k}                   ``i_N``         i_N (``iN``), first timestep
``x0_bp``       x̂_{0|t_k}                   ``gamma``       γ (ᾱ growth per step)
``z_minus``     ẑ⁻ (``z_hat_minus``)        ``eta``         η (fresh-noise share)
``sigma``       σ_{t_k} = √(1 − ᾱ_{t_k})    ``zeta``        ζ (BP regulariser ζσ_y²)
``x_init``      A_ζ⁺ y (``Apy``)            ``deltas``      δ_k (boosted denoising level)
``lam``         ζ σ_y² (``bp_eta_reg``)     ``mu``          μ (BP step, 1)
==============  ==========================  ==============  ===============================

Defaults: N = 4, η = 0.1, ζ = 0, δ = 0, μ = 1 (the authors' ``main.py``/``cm4ir_scheme.py``
defaults and the paper's 4 NFEs); i_N = 250, γ = 0.2 — the authors' LSUN SR ×4, σ_y = 0.05 setting
(README quick start, ``evaluate_CM4IR.sh``; their argparse default γ = 0.7 is used by no
experiment with i_N = 250). Their tuned values per task (σ_y on [0, 1], LSUN bedroom / cat):
SR ×4 σ_y = 0.025: i_N = 400, γ = 0.7; deblurring σ_y = 0.025: i_N = 75 / 125, γ = 0.01 / 0.05, ζ = 3 / 4;
deblurring σ_y = 0.05: i_N = 150 / 250, γ = 0.05 / 0.2, ζ = 1; inpainting (random 80 %, letters):
i_N = 150, γ = 0.2, optionally δ = (0.1, 0.1, 0.8, 0.8); ImageNet-64 SR ×2, σ_y = 0.01 / 0.025 /
0.05: i_N = 50 / 75 / 100, γ = 0.01 / 0.02 / 0.03. Those go in ``configs/experiment/``.

Deviations:

* The start is A_ζ⁺ y for every operator; for inpainting the authors start from a median-filled y
  (``median_inpainting``), which needs the mask as an image and is not part of the operator
  interface (A⁺y fills the holes with zeros; the noise σ_1 (0.69 at the defaults) and the CM
  call repaint them).
* δ boosts the σ of the whole denoiser call, f(x, (1 + δ)σ) (their ``deltas_injection_type=0``, the
  default); their type 1 (the boosted σ only in the network's c_noise, the scalings at σ) reaches
  inside a consistency network and has no counterpart behind the one denoiser interface.
* x_{0|k} is not clipped to [−1, 1] unless ``clip=True`` (then to the prior's ``model_range``): the
  authors clamp every CM output; priors here need not be bounded (the analytic oracles are not).
* The initial noise uses the clipped σ_1 (the authors add the unclipped √(1 − ᾱ_1); equal for CMs).
* ``mu`` is the authors' constant BP step μ (their ``mu_factor`` decay, 1 and not exposed by their
  command line, is not kept).

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: back-projection guidance
with noise injection on the consistency function).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from operators import require

from ..priors.schedules import VPSchedule
from ._common import Callback, Problem, setup

ALPHA_BAR_MAX = 0.9999  # the authors' clamp of ᾱ_{k+1} = (1 + γ) ᾱ_k


def cm4ir_sigmas(steps: int, i_N: int = 250, gamma: float = 0.2) -> list[float]:
    """The paper's N noise levels ``σ_k = √(1 − ᾱ_k)``: ᾱ_1 = ᾱ at timestep i_N + 1 of DDPM's
    linear-β schedule (T = 1000), ᾱ_{k+1} = min((1 + γ) ᾱ_k, 0.9999). Not clipped to a prior.

    >>> [round(s, 3) for s in cm4ir_sigmas(4, 250, 0.2)]
    [0.694, 0.614, 0.503, 0.322]
    """
    alpha = float(VPSchedule("linear", 1000).alphas_cumprod[i_N + 1])
    out = []
    for _ in range(steps):
        out.append(math.sqrt(1.0 - alpha))
        alpha = min(alpha * (1.0 + gamma), ALPHA_BAR_MAX)
    return out


def _pinv_reg(pb: Problem, r: Tensor, lam: Tensor) -> Tensor:
    """``Aᵀ(AAᵀ + λ I)⁻¹ r`` per batch item (λ ``[B]``, ≥ 0): ``prox_l2(0, r, 1/λ)`` where λ > 0,
    ``A⁺ r`` where λ = 0 (the authors' ``A_pinv_add_eta``)."""
    op, pos = pb.op, lam > 0
    out = None
    if bool(pos.any()):
        gamma = torch.where(pos, 1.0 / torch.where(pos, lam, 1.0), 1.0)
        out = op.prox_l2(torch.zeros(pb.shape, dtype=r.dtype, device=r.device), r, gamma)
    if not bool(pos.all()):
        exact = op.A_dagger(r)
        out = exact if out is None else torch.where(pb.per_sample(pos), out, exact)
    return out


def _deltas(deltas, steps: int) -> list[float]:
    if isinstance(deltas, (int, float)) and not isinstance(deltas, bool):
        out = [float(deltas)] * steps
    else:
        try:
            out = [float(d) for d in deltas]
        except (TypeError, ValueError):
            out = None
        if out is None or len(out) != steps:
            raise ValueError(f"cm4ir: deltas must be a number or a list of one δ_k per step ({steps}), got {deltas!r}")
    if not all(d >= 0 and math.isfinite(d) for d in out):
        raise ValueError(f"cm4ir: deltas boost the denoising level to (1 + δ_k)σ_k and must be finite and >= 0, got {out}")
    return out


def cm4ir(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 4, generator=None, callback: Callback = None,
          i_N: int = 250, gamma: float = 0.2, eta: float = 0.1, zeta: float = 0.0, deltas=0.0, mu: float = 1.0,
          clip: bool = False) -> Tensor:
    """One CM4IR restoration per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: a linear operator with a pseudo-inverse (``pinv``; ``prox_l2`` too when
        ζ > 0 and σ_y > 0).
    :param prior: any :class:`invdiff.priors.Prior` of shape ``operator.img_size``; made for a
        :class:`~invdiff.priors.ConsistencyPrior` (its f), runs on diffusion priors (Tweedie mean).
    :param sigma_y: noise std in measurement units, float or ``[B]``; σ_y > 0 returns the last CM
        output, σ_y = 0 the last back-projection.
    :param steps: N, the number of network calls (NFE).
    :param i_N: first DDPM timestep (integer in [0, 998]): σ_1 = √(1 − ᾱ_{i_N + 1}).
    :param gamma: γ ≥ 0, ᾱ_{k+1} = min((1 + γ) ᾱ_k, 0.9999).
    :param eta: η ∈ [0, 1], the share of fresh noise in the injection.
    :param zeta: ζ ≥ 0, the back-projection's regulariser ζσ_y² (model-space σ_y).
    :param deltas: δ_k ≥ 0, a number or one per step: the network denoises at (1 + δ_k)σ_k.
    :param mu: μ > 0, the back-projection step (1: an exact projection onto {A x = y} when ζσ_y² = 0).
    :param clip: clip each x_{0|k} to the prior's ``model_range`` (the authors clamp to [−1, 1]).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    bad = []
    if isinstance(i_N, bool) or not isinstance(i_N, int) or not 0 <= i_N <= 998:
        bad.append(f"i_N must be a whole number in [0, 998] (the first of DDPM's 1000 timesteps), got {i_N!r}")
    for name, value, ok, rule in (("gamma", gamma, lambda v: v >= 0, ">= 0"), ("eta", eta, lambda v: 0 <= v <= 1, "in [0, 1]"),
                                  ("zeta", zeta, lambda v: v >= 0, ">= 0"), ("mu", mu, lambda v: v > 0, "> 0")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
            bad.append(f"{name} must be a finite number {rule}, got {value!r}")
    if not isinstance(clip, bool):
        bad.append(f"clip must be a bool, got {clip!r}")
    if bad:
        raise ValueError("cm4ir: " + "; ".join(bad))
    pb = setup("cm4ir", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["linear", "pinv"])
    delta = _deltas(deltas, steps)
    lam = zeta * pb.sigma_y**2  # [B], model space
    if bool((lam > 0).any()):
        require(operator, "cm4ir (zeta > 0 with sigma_y > 0)", ["prox_l2"])
    lo, hi = prior.sigma_min, prior.sigma_max
    sigmas = [min(max(s, lo), hi) for s in cm4ir_sigmas(steps, i_N, gamma)]
    noisy = pb.per_sample(pb.sigma_y > 0)
    cause = ("A⁺ amplifies the noise of y on an ill-conditioned operator (set zeta > 0, the paper's regularised "
             "back-projection) or mu too large")

    # 0. Initialisation at A_ζ⁺ y plus noise of level σ_1.
    x_init = _pinv_reg(pb, pb.y, lam)
    x = x_init + sigmas[0] * pb.randn()
    for k, sigma in enumerate(sigmas):
        # 1. Consistency-model call at the boosted level (1 + δ_k)σ_k.
        x0 = pb.denoise(x, min(max((1.0 + delta[k]) * sigma, lo), hi), k)
        if clip:
            x0 = x0.clamp(*prior.model_range)
        # 2. Back-projection guidance x̂₀ = x₀ − μ A_ζ⁺(A x₀ − y).
        x0_bp = x0 - mu * _pinv_reg(pb, pb.forward(x0) - pb.y, lam)
        if k == steps - 1:  # noisy y: the last CM output; noiseless y: its back-projection
            x = torch.where(noisy, x0, x0_bp)
        else:
            # 3. Noise injection: fresh noise and the negated estimated noise ẑ⁻ = (x₀ − x)/σ_k.
            z_minus = (x0 - x) / sigma
            sigma_next = sigmas[k + 1]
            x = x0_bp + sigma_next * (eta * pb.randn() + math.sqrt(1.0 - eta**2) * z_minus)
        pb.check(k, x, cause)
        pb.callback(k, x, x0)
    return pb.finish(x)
