"""SITCOM — Step-wise Triple-Consistent diffusion sampling for inverse problems.

Alkhouri, Liang, Huang, Dai, Qu, Ravishankar & Wang, ICML 2025, arXiv:2410.04479. Official code
github:sjames40/SITCOM @ 445738a (``SITCOM_with_noise.py``: the loop, stopping rule and defaults;
``rebuttal_table.md``: the paper's defaults); the Algorithm 1 line numbers below are those quoted
by the authors' LDCT notebook ``ldct_sitcom.ipynb`` @ 8e2641c (removed again in 350ad52).

Each of the N sampling steps optimises the *network input* instead of stepping the state (paper
Alg. 1; T_θ(v, t) = (v − √(1−ᾱ_t) ε_θ(v, t))/√ᾱ_t is Tweedie's estimate, VP units):

    v⁽⁰⁾ = x_t                                                                     (Alg. 1, line 2)
    v⁽ᵏ⁺¹⁾ = Adam_γ step on  ‖A(T_θ(v⁽ᵏ⁾, t)) − y‖² + λ ‖x_t − v⁽ᵏ⁾‖²,  k < K         (lines 3–4)
        stop when ‖A(T_θ(v⁽ᵏ⁾, t)) − y‖² < m δ²,  δ = σ_y + 0.001                     (lines 5–6)
    x̂₀ = T_θ(v̂, t)                                                                (lines 7–8)
    x_{t−1} = √ᾱ_{t−1} x̂₀ + √(1−ᾱ_{t−1}) η,  η ~ N(0, I)                            (line 9)

and returns the last x̂₀ (line 10). The three consistencies: measurement (A x̂₀ fits y to the noise
level), backward diffusion (x̂₀ is the network's output at an input v̂ near x_t: kept near by λ and,
in the authors' code, only by the start v⁽⁰⁾ = x_t, a small K and the early stop) and forward
diffusion (x_{t−1} is a fresh forward-noised x̂₀). m is the number of entries of y (the authors'
``H·W·3`` of y, zeros of an inpainting mask included): the rule is Morozov's discrepancy principle.
In EDM form (``x = x_vp/√ᾱ``) line 9 is ``x_{t−1} = x̂₀ + σ_{t−1} η``.

Everything is per sample: the objective is a sum of per-sample terms, Adam is elementwise, and a
sample that meets its stopping rule is frozen (its v and x̂₀ kept) while the others go on.

NFE, counted as the paper does (one forward + one backward per inner iteration): at most
``steps × inner_steps`` (N × K; the rebuttal's "N × K = 400"), fewer when samples stop early,
plus one forward pass per step for x̂₀ at the final iterate of samples that did not stop.

==============  ================================  ==============  ==========================
code            paper                             code            paper
==============  ================================  ==============  ==========================
``x``           x_t / √ᾱ_t (EDM form)             ``inner_steps`` K
``x_vp``        x_t                               ``lr``          γ (Adam step size)
``v``           v (network input, VP)             ``lam``         λ
``x0_hat``      x̂₀ = T_θ(v̂, t)                    ``stop_margin`` 0.001 in δ = σ_y + 0.001
``steps``       N                                 ``sigma_y``     σ_y (model space)
==============  ================================  ==============  ==========================

Defaults: N = 20 steps (the scripts' ``n_step``), K = 20 and γ = 0.01 (the authors'
``rebuttal_table.md``: Table A counts SITCOM's NFE as "N × K = 400", i.e. K = 20 at N = 20; Table E
marks "γ = 0.010 (default)"; the scripts' argparse defaults, used by the README's SR example, are
K = 30, γ = 0.02), λ = 0 (the
authors' scripts have no ‖x_t − v‖² term: the closeness is kept by v⁽⁰⁾ = x_t, small K and the
stop; their LDCT notebook uses λ = 0.1), δ = σ_y + 0.001 (``SITCOM_with_noise.py``), Adam's
β = (0.9, 0.999), ε = 10⁻⁸ (``torch.optim.Adam``'s). The residual is in the prior's units
(``pb.residual``: for a linear operator the paper's [−1, 1] residual), σ_y likewise.

Deviations:

* Per-sample stopping and Adam (the authors run one image at a time; a batch-wide ``break``
  would make a sample depend on its batch-mates).
* K Adam steps, then x̂₀ at the last iterate (K backward, K + 1 forward passes). The authors'
  K iterations each evaluate x̂₀, test the stop, then step (K forward, K backward passes) and
  return the x̂₀ evaluated before the K-th step, which is wasted: their K is our K − 1 plus one
  unused backward pass. A stop at iteration k gives the same x̂₀ in both.
* Timesteps respaced evenly from the prior's largest step to 0 (``vp_sigmas``; the authors use
  ``range(0, 1000, 1000/N)`` reversed, 950 … 0 for N = 20); x_T ~ N(0, I) in VP units as theirs.
* x̂₀ is not clamped to [−1, 1] unless ``clip=True`` (then to the prior's ``model_range``): priors
  here need not be bounded (the analytic oracles are not).
* Not implemented: the scripts' ground-truth "best PSNR" image selection (it needs the answer),
  and the April 2026 inpainting-demo extra gradient step on x̂₀ (not in the paper).

Measured on the exact-posterior toys (tests/test_sitcom.py): the samples spread (variance ratio
0.5–0.85 of the exact posterior's), but converging the inner problems (K = 50–200, γ up to 0.1) or
taking more steps leaves the sliced-W₂ distance at 0.11–0.42 of the prior's, far above the
Monte-Carlo floor: the bias is the projection, not the budget.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: each step's x̂₀ is
moved onto the measurement's noise ball ‖A x̂₀ − y‖² = m (σ_y + 0.001)² by optimising the
denoiser's input from x_t, then re-noised with fresh noise; no likelihood weighting, so the spread
along observed directions is set by the stopping rule and the optimiser, not by p(x | y)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..checks import whole_number
from ._common import Callback, setup, vp_scale, vp_sigmas


def sitcom(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 20, generator=None, callback: Callback = None,
           inner_steps: int = 20, lr: float = 0.01, lam: float = 0.0, early_stop: bool = True,
           stop_margin: float = 1e-3, betas=(0.9, 0.999), clip: bool = False, schedule=None) -> Tensor:
    """One SITCOM sample per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units (float).
    :param operator: any operator with a differentiable forward map (linear or nonlinear).
    :param prior: differentiable :class:`invdiff.priors.Prior` of shape ``operator.img_size``.
    :param sigma_y: noise std in measurement units, float or ``[B]``: sets the stopping rule.
    :param steps: N sampling steps.
    :param inner_steps: K, the most Adam steps on the network input per sampling step.
    :param lr: γ, Adam's step size on the VP-scaled network input.
    :param lam: λ, weight of ‖x_t − v‖² (VP units).
    :param early_stop: stop a sample's inner loop once ‖A x̂₀ − y‖² < m (σ_y + stop_margin)².
    :param stop_margin: the authors' 0.001 added to σ_y, model units.
    :param betas: Adam's (β₁, β₂).
    :param clip: clamp x̂₀ to the prior's ``model_range`` (the authors clamp to [−1, 1]).
    :param schedule: VP schedule override (default: the prior's, else DDPM's linear T = 1000).
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.

    A callback taking them also gets ``x_t`` (the EDM state the step started from), ``v`` (the
    optimised input, EDM form ``v_vp/√ᾱ_t``) and ``iterations`` (``[B]`` Adam steps taken).
    """
    bad = []
    if not whole_number(inner_steps):
        bad.append(f"inner_steps must be a positive integer, got {inner_steps!r}")
    if not lr > 0:
        bad.append(f"lr must be > 0, got {lr!r}")
    if not lam >= 0:
        bad.append(f"lam must be >= 0, got {lam!r}")
    if not stop_margin >= 0:
        bad.append(f"stop_margin must be >= 0, got {stop_margin!r}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        bad.append(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not isinstance(early_stop, bool) or not isinstance(clip, bool):
        bad.append(f"early_stop and clip must be bools, got {early_stop!r}, {clip!r}")
    if bad:
        raise ValueError("sitcom: " + "; ".join(bad))
    pb = setup("sitcom", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["differentiable"], prior_grad=True)
    m = math.prod(pb.y.shape[1:])
    threshold = m * (pb.sigma_y + stop_margin) ** 2 if early_stop else None  # [B], model units
    sigmas = vp_sigmas(prior, steps, schedule)
    x = pb.init_noise(1.0 / vp_scale(sigmas[0]))  # VP N(0, I)
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        s = vp_scale(sigma)  # √ᾱ_t
        # 1. Measurement consistency: Adam on the network input v (VP units) from v = x_t, per-sample stop.
        # 2. Backward consistency: x̂₀ = T_θ(v̂, t), the network's output at the optimised input.
        x0_hat, v, iters = _optimise_input(pb, i, x, sigma, s, inner_steps, lr, lam, betas, threshold, clip)
        # 3. Forward diffusion consistency: re-noise x̂₀ to t−1 with fresh noise (none into σ = 0).
        x_t = x
        x = x0_hat + sigma_next * pb.randn() if sigma_next > 0 else x0_hat
        pb.callback(i, x, x0_hat, x_t=x_t, v=v / s, iterations=iters)
    return pb.finish(x)


def _optimise_input(pb, step: int, x: Tensor, sigma: float, s: float, K: int, lr: float, lam: float, betas,
                    threshold: Tensor | None, clip: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Alg. 1 lines 2–8 for every sample: up to K Adam steps on ``v`` (VP units) for
    ``‖r(D(v/s, σ))‖² + λ‖v − x_vp‖²``, each sample frozen once its residual is below its threshold.
    The network sees only the samples still going; the operator always sees the whole batch (it
    may hold per-item parameters), frozen rows at their kept x̂₀. Returns x̂₀ (model space, EDM),
    the final v (VP units) and the number of Adam steps per sample ``[B]``."""
    b1, b2 = betas
    x_vp = s * x
    v = x_vp.clone()
    m1, m2 = torch.zeros_like(v), torch.zeros_like(v)
    x0_hat = torch.zeros_like(x)
    iters = torch.zeros(pb.B, dtype=torch.long, device=x.device)
    active = torch.ones(pb.B, dtype=torch.bool, device=x.device)
    dims = tuple(range(1, pb.y.ndim))
    lo, hi = pb.prior.model_range
    for k in range(K + 1):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        if k == K:  # the final iterate: x̂₀ only, no step follows
            x0 = pb.denoise(v[idx] / s, sigma, step)
            x0_hat[idx] = x0.clamp(lo, hi) if clip else x0
            break
        v_a = v[idx].requires_grad_(True)
        x0 = pb.net.with_grad(v_a / s, sigma)  # the network sees the EDM state v/√ᾱ_t
        if clip:
            x0 = x0.clamp(lo, hi)
        x0_hat[idx] = x0.detach()
        r = pb.residual(x0_hat.index_copy(0, idx, x0))[idx]  # model units, graph through rows idx
        sq = r.square().sum(dims)  # ‖A(x̂₀) − y‖² per sample
        going = torch.ones_like(sq, dtype=torch.bool) if threshold is None else sq >= threshold[idx]
        active[idx[~going]] = False  # met the stopping rule at this iterate: v and x̂₀ are kept
        if not bool(going.any()):
            break
        loss = sq
        if lam > 0:
            loss = loss + lam * (v_a - x_vp[idx]).square().flatten(1).sum(1)
        (g,) = torch.autograd.grad(loss[going].sum(), v_a)
        rows, g = idx[going], g.detach().to(torch.float64)[going]
        # Adam (torch.optim.Adam's update, elementwise) on the samples still going; their step
        # count is k + 1 (a sample never resumes once frozen)
        t = k + 1
        m1[rows] = b1 * m1[rows] + (1 - b1) * g
        m2[rows] = b2 * m2[rows] + (1 - b2) * g.square()
        denom = (m2[rows] / (1 - b2**t)).sqrt() + 1e-8
        v[rows] = v[rows] - (lr / (1 - b1**t)) * m1[rows] / denom
        iters[rows] += 1
    pb.check(step, x0_hat, f"lr = {lr} too large for this problem (the optimised network input diverged)")
    return x0_hat, v, iters
