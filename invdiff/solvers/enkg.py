"""EnKG — Ensemble Kalman Diffusion Guidance, a derivative-free solver.

Zheng, Chu, Wang, Kovachki, Baptista & Yue, "Ensemble Kalman Diffusion Guidance: A Derivative-free
Method for Inverse Problems", 2024/2025, arXiv:2409.20175 (Algorithm 1). Checked line by line
against the authors' code: github.com/devzhk/enkg-pytorch ``algo/enkg.py`` @ 2ee4a909 (the paper's
repository; its ``scripts/ffhq.sh`` gives the image settings used as defaults here) and InverseBench
``algo/enkg.py`` @ b113d67b (the same update, with the guidance window in steps and ``factor`` 8).

The forward model G is only *evaluated* and the network only *called* — no gradient of either —
so any operator with the capability ``forward`` works, black boxes included
(:class:`operators.BlackBoxOperator`). Each batch item carries its own ensemble of J particles
``x⁽ʲ⁾`` in EDM form (x = x₀ + σ n), started from N(0, σ_max² I), and runs the EDM Euler sampler on
the poly-ρ grid σ_0 > … > σ_{N−1}, σ_N = 0 (Karras et al. 2022, eq. 5). At step i inside the
guidance window, before the Euler step, ``num_updates`` times:

1. x̂₀⁽ʲ⁾ = ODE(x⁽ʲ⁾, σ_i): K_i Euler steps of the probability-flow ODE from σ_i down to
   ``ode_sigma_min`` then 0 (the last step is D(x, ode_sigma_min)), K_i = min(1 + ⌊(N − i)/4⌋, 20);
   K_i = 1 is x̂₀ = D(x, σ_i).
2. g⁽ʲ⁾ = G(x̂₀⁽ʲ⁾), and the ensemble statistics (means over the J particles of one item)

       C^{xG} = (1/J) Σ_k (x⁽ᵏ⁾ − x̄)(g⁽ᵏ⁾ − ḡ)ᵀ,        M_{jk} = (1/J) ⟨g⁽ʲ⁾ − y, g⁽ᵏ⁾ − ḡ⟩

3. the statistical-linearisation (ensemble Kalman) step, normalised by ‖M‖_F:

       x⁽ʲ⁾ ← x⁽ʲ⁾ − (w_i/‖M‖_F) C^{xG} (g⁽ʲ⁾ − y) = x⁽ʲ⁾ − (w_i/‖M‖_F) Σ_k M_{jk} (x⁽ᵏ⁾ − x̄)

then the Euler step x ← x + (σ_{i+1} − σ_i)(x − D(x, σ_i))/σ_i (NFE: one call on the J particles).
C^{xG} replaces the gradient's Jacobian of x ↦ G(x̂₀(x)): when that map is affine, g = Hx + c,
C^{xG}(g − y) = C^{xx} Hᵀ(Hx − (y − c)) exactly — a gradient step on ½‖y − G(x̂₀(x))‖²
preconditioned by the ensemble covariance C^{xx} = (1/J) Σ_k (x⁽ᵏ⁾ − x̄)(x⁽ᵏ⁾ − x̄)ᵀ (the
Kalman-gain numerator; tests/test_blackbox_enkg.py checks this identity). The step size
w_i = ``guidance_scale`` (with ``lr_min_ratio`` r > 0 the authors' schedule
w_i = w (1 − r)(N − i)/N + r). Guidance runs at the steps ``start·N < i < N − ⌊end·N⌋``.

NFE per batch item (network evaluations, counting each particle): J × (N + num_updates × Σ_guided
K_i); the network is called N + num_updates × Σ K_i times, each call on all B × J particles
(``chunk`` splits them). The forward model is evaluated J × num_updates × (number of guided steps)
times per item. :func:`enkg_cost` states these numbers; at the defaults (N = 80, J = 1024,
2 updates, window 5…75) that is 1,588 calls, 1.63 M network evaluations and 145 k forward
evaluations per image — the paper's method is costly (its authors: "3 hours per image on a single
A100" for FFHQ 256²).

==================  ==============================  ==================  =========================
code                paper                           code                paper
==================  ==============================  ==================  =========================
``x`` ``[B,J,…]``   ensemble {x_t⁽ʲ⁾}, EDM form     ``ensemble``        J (ensemble size)
``x0``              x̂₀⁽ʲ⁾ = ODE(x_t⁽ʲ⁾)            ``g``               G(x̂₀⁽ʲ⁾)
``coef``            M_{jk} (residual × dG / J)      ``guidance_scale``  w (step size)
``sigmas[i]``       σ_{t_i} (poly-ρ grid)           ``num_updates``     guidance updates per step
``ode_steps(i)``    K_i (inner ODE steps)           ``ode_factor``      4 (the authors' divisor)
==================  ==============================  ==================  =========================

Defaults: the paper's code and its FFHQ script (``scripts/ffhq.sh``: guidance_scale 2, ensemble
1024, 2 updates, thresholds 0.05 and 0.05, lr_min_ratio 0; ``configs/algorithm/enkg.yaml``: 80
steps, σ 80 → 0.002, ρ = 7; the inner ODE ``ode_sampler``: σ down to 0.002, ρ = 7,
K_i = min(1 + (N − i)//4, 20)). The σ grid is clipped to the prior's σ range.

Measured (tests/test_blackbox_enkg.py; op.A given as a black box, 80 steps, seed 0): on the
exact-posterior cases of :mod:`invdiff.exact_posterior` the step size decides everything. With
w = 0.1 the ensemble is close to the posterior — sliced W2 over the prior's 0.16 (inpaint, J 64),
0.13 (dense_gmm, J 64), 0.40 (blur, J 256), Monte-Carlo floor 0.09, 0.07, 0.15; variance ratios
0.42, 0.54, 0.70 (under-dispersed). With the paper's w = 2 it over-contracts: W2 ratios 1.39, 0.72,
0.77, inpaint variance ratio 0.03 and its ensemble mean farther from the posterior mean than the
prior mean. Nothing in the step scales with σ_y, so the contraction is not calibrated to the noise;
the paper’s w = 2 comes from its FFHQ 256² and Navier–Stokes 128² runs; w needs tuning per problem.
On 64×64 phantoms (benchmarks/blackbox.py, J = 32, 20 steps, 2 images) w = 2 did best of
{2, 0.5, 0.1}: 17.8 dB against DPS's 21.1 dB (200 steps).

Output: the authors' code returns the whole final ensemble, and their evaluation averages each
member's metric, i.e. every member is treated as one posterior draw. Here member 0 of each item's
ensemble is returned (the members are exchangeable, so this is one uniformly chosen member — not
the ensemble mean); ``return_ensemble=True`` also returns all J members.

Deviations:

* One ensemble per batch item, with that item's generator: items never interact (the authors run
  one observation at a time).
* σ_y is not used by the step (as in the authors' code: the normalised step w/‖M‖_F absorbs the
  likelihood's scale; a per-item scalar noise covariance Γ = σ_y² I cancels in it exactly); it is
  checked like every solver's.
* Where ‖M‖_F = 0 (an ensemble with no spread in G, or zero residual) the step is skipped; the
  authors' code divides by zero there.
* The residual is in the prior's model units (``pb.y − pb.forward(x̂₀)``); the normalised step
  makes the update independent of that scale.

Class (:mod:`invdiff.solvers.classes`): Approximate sampler (approximation: DPS-like guidance on
‖y − G(x̂₀(x_t))‖² with the Jacobian replaced by the ensemble's statistical linearisation,
preconditioned by the ensemble covariance and with a normalised step size w/‖M‖_F in place of the
likelihood's scale; the members interact, so they are not independent draws).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import whole_number
from ..priors.schedules import edm_sigma_grid
from ._common import Callback, setup

__all__ = ["enkg", "ensemble_update", "enkg_cost"]


def _guided(i: int, steps: int, start: float, end: float) -> bool:
    """The authors' guidance window: ``start·N < i < N − ⌊end·N⌋``."""
    return start * steps < i < steps - int(end * steps)


def _ode_steps(i: int, steps: int, factor: int, most: int) -> int:
    """K_i = min(1 + ⌊(N − i)/factor⌋, most): long inner ODEs early, a single denoiser call late."""
    return min(1 + (steps - i) // factor, most)


def _step_size(i: int, steps: int, guidance_scale: float, lr_min_ratio: float) -> float:
    """w_i: constant, or (r > 0) the authors' ``get_lr``: w (1 − r)(N − i)/N + r."""
    if lr_min_ratio > 0:
        return guidance_scale * (1 - lr_min_ratio) * (steps - i) / steps + lr_min_ratio
    return guidance_scale


def enkg_cost(steps: int = 80, ensemble: int = 1024, num_updates: int = 2, guidance_start: float = 0.05,
              guidance_end: float = 0.05, ode_factor: int = 4, ode_max_steps: int = 20) -> dict:
    """What one EnKG solve costs per batch item: ``network_calls`` (sequential calls, each on all
    particles; = the count of :class:`invdiff.priors.CountingPrior` with ``chunk=None``),
    ``nfe`` (network evaluations, ensemble × calls), ``forward_evals`` (forward-model evaluations)
    and ``guided_steps``, for a guided run (``guidance_scale > 0``; unguided: ``steps`` calls and no
    forward evaluation)."""
    guided = [i for i in range(steps) if _guided(i, steps, guidance_start, guidance_end)]
    calls = steps + num_updates * sum(_ode_steps(i, steps, ode_factor, ode_max_steps) for i in guided)
    return {"network_calls": calls, "nfe": ensemble * calls,
            "forward_evals": ensemble * num_updates * len(guided), "guided_steps": len(guided)}


def ensemble_update(x: Tensor, g: Tensor, y: Tensor, step) -> Tensor:
    """One EnKG guidance update of each item's ensemble (module docstring, step 3).

    :param x: particles ``[B, J, *shape]``.
    :param g: their forward values G(x̂₀) ``[B, J, *meas]``.
    :param y: the measurement ``[B, *meas]`` (same units as ``g``).
    :param step: w, a float or ``[B]`` tensor (≥ 0).
    :returns: ``x − (w/‖M‖_F) · M (x − x̄)`` with ``M_jk = ⟨g_j − y, g_k − ḡ⟩/J`` per item; items where
        ‖M‖_F = 0 are returned unchanged.
    """
    B, J = x.shape[:2]
    xf, gf = x.reshape(B, J, -1), g.reshape(B, J, -1)
    dx = xf - xf.mean(1, keepdim=True)
    dg = gf - gf.mean(1, keepdim=True)
    err = gf - y.reshape(B, 1, -1).to(gf)
    coef = err @ dg.transpose(1, 2) / J  # [B, J, J]
    norm = torch.linalg.matrix_norm(coef)  # Frobenius, [B]
    w = torch.as_tensor(step, dtype=x.dtype, device=x.device).expand(B)
    lr = torch.where(norm > 0, w / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(norm))
    return x - (lr[:, None, None] * (coef @ dx)).reshape(x.shape)


def enkg(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 80, generator=None, callback: Callback = None,
         ensemble: int = 1024, guidance_scale: float = 2.0, num_updates: int = 2, sigma_max: float = 80.0,
         sigma_min: float = 0.002, rho: float = 7.0, guidance_start: float = 0.05, guidance_end: float = 0.05,
         ode_factor: int = 4, ode_max_steps: int = 20, ode_sigma_min: float = 0.002, lr_min_ratio: float = 0.0,
         chunk: int | None = None, return_ensemble: bool = False):
    """One EnKG draw per item of ``y`` (member 0 of the item's ensemble), optionally with the ensemble.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units, real float.
    :param operator: any operator with the capability ``forward`` (only ``operator.A`` is called,
        without gradients): a :class:`operators.BlackBoxOperator`, a nonlinear or a linear operator.
    :param prior: :class:`invdiff.priors.Prior` of shape ``operator.img_size`` (no gradients needed).
    :param sigma_y: noise std (float or ``[B]``), measurement units; not used by the step (module
        docstring, Deviations).
    :param steps: N, Euler steps of the outer sampler (poly-ρ grid, clipped to the prior's σ range).
    :param ensemble: J, particles per batch item (≥ 2).
    :param guidance_scale: w, the normalised step size (0: the unguided EDM Euler sampler).
    :param num_updates: guidance updates per guided step (0: unguided).
    :param sigma_max, sigma_min, rho: the outer grid.
    :param guidance_start, guidance_end: guidance at the steps ``start·N < i < N − ⌊end·N⌋``.
    :param ode_factor, ode_max_steps: K_i = min(1 + ⌊(N − i)/ode_factor⌋, ode_max_steps) inner ODE steps.
    :param ode_sigma_min: where the inner ODE's grid ends (its last step goes to 0).
    :param lr_min_ratio: r; > 0 decays w linearly (the authors' ``get_lr``), 0 keeps it constant.
    :param chunk: most particles per network or operator call (None: all ``B × J`` at once).
    :param return_ensemble: also return all members ``[B, J, *prior.shape]``.
    :param callback: ``callback(step, x_t, x0_hat)`` with member 0's state and x̂₀ (model space); a
        callback taking a ``particles`` keyword also gets the whole ensemble ``[B, J, *shape]``.
    :returns: ``[B, *prior.shape]`` physical units, y's dtype; with ``return_ensemble``, ``(x, ensemble)``.
    """
    for name, v, low in (("ensemble", ensemble, 2), ("num_updates", num_updates, 0), ("ode_factor", ode_factor, 1),
                         ("ode_max_steps", ode_max_steps, 1)):
        if not whole_number(v, low):
            raise ValueError(f"enkg: {name} must be an integer >= {low}, got {v!r}")
    if chunk is not None and not whole_number(chunk):
        raise ValueError(f"enkg: chunk must be a positive integer or None, got {chunk!r}")
    if not (guidance_scale >= 0 and 0 <= lr_min_ratio < 1 and rho > 0):
        raise ValueError(f"enkg: need guidance_scale >= 0, 0 <= lr_min_ratio < 1, rho > 0; got {guidance_scale}, "
                         f"{lr_min_ratio}, {rho}")
    if not (0 < sigma_min < sigma_max and 0 < ode_sigma_min):
        raise ValueError(f"enkg: need 0 < sigma_min < sigma_max and ode_sigma_min > 0, got {sigma_min}, {sigma_max}, "
                         f"{ode_sigma_min}")
    if not (0 <= guidance_start <= 1 and 0 <= guidance_end <= 1):
        raise ValueError(f"enkg: guidance_start and guidance_end are fractions of the steps in [0, 1], got "
                         f"{guidance_start}, {guidance_end}")
    pb = setup("enkg", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator, callback=callback,
               needs=["forward"])
    B, J, shape = pb.B, ensemble, tuple(prior.shape)
    lo = max(sigma_min, prior.sigma_min) if prior.sigma_min > 0 else sigma_min
    hi = min(sigma_max, prior.sigma_max)
    if not lo < hi:
        raise ValueError(f"enkg: the grid σ {sigma_max} → {sigma_min} clipped to the prior's range "
                         f"[{prior.sigma_min}, {prior.sigma_max}] is empty")
    ode_lo = max(ode_sigma_min, prior.sigma_min) if prior.sigma_min > 0 else ode_sigma_min
    sigmas = edm_sigma_grid(steps, lo, hi, rho).tolist() + [0.0]
    size = B * J if chunk is None else chunk
    y_m = pb.y.reshape(B, 1, *pb.y.shape[1:])

    def denoise(x: Tensor, sigma: float, step: int) -> Tensor:
        flat = x.reshape(B * J, *shape)
        return torch.cat([pb.denoise(flat[k:k + size], sigma, step) for k in range(0, B * J, size)]).reshape(x.shape)

    def forward(x0: Tensor) -> Tensor:
        flat = x0.reshape(B * J, *shape)
        g = torch.cat([pb.forward(flat[k:k + size]) for k in range(0, B * J, size)])
        return g.to(torch.float64).reshape(B, J, *g.shape[1:])

    def ode_x0(x: Tensor, sigma: float, k_steps: int, step: int) -> Tensor:
        """x̂₀ by K Euler steps of the PF-ODE from σ to ode_lo, then to 0 (K = 1: D(x, σ))."""
        grid = ([sigma] if k_steps == 1 else edm_sigma_grid(k_steps, min(ode_lo, sigma), sigma, rho).tolist()) + [0.0]
        for s, s_next in zip(grid[:-1], grid[1:]):
            x = x + (s_next - s) * (x - denoise(x, s, step)) / s
        return x

    # 1. The ensembles: J particles per item from N(0, σ_0² I), each item from its own generator.
    x = sigmas[0] * pb.randn((B, J, *shape))
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        # 2. Guidance: x̂₀ by the inner ODE, G(x̂₀), the ensemble Kalman update (num_updates times).
        if guidance_scale > 0 and _guided(i, steps, guidance_start, guidance_end):
            k_steps = _ode_steps(i, steps, ode_factor, ode_max_steps)
            w = _step_size(i, steps, guidance_scale, lr_min_ratio)
            for _ in range(num_updates):
                g = forward(ode_x0(x, sigma, k_steps, i))
                pb.check(i, g, "the forward model returned NaN/Inf on the ensemble's x̂₀")
                x = ensemble_update(x, g, y_m, w)
                pb.check(i, x, f"guidance_scale = {guidance_scale} too large for this problem")
        # 3. Euler step of the PF-ODE (into σ = 0: x = D(x, σ_{N−1})).
        x0_hat = denoise(x, sigma, i)
        x = x + (sigma_next - sigma) * (x - x0_hat) / sigma
        pb.check(i, x)
        if pb.has_callback:
            pb.callback(i, x[:, 0], x0_hat[:, 0], particles=x)
    out = pb.finish(x[:, 0])
    if not return_ensemble:
        return out
    return out, prior.to_physical(x).to(pb.out_dtype)
