"""PnP-Flow — plug-and-play image restoration with flow matching.

Martin, Gagneux, Mangin & Delon, ICLR 2025, arXiv:2410.02423 (code: github.com/annegnx/PnP-Flow).

A forward–backward splitting whose denoiser is the flow's x̂₀ at a time that decreases to 0: a
gradient step on the data term, a re-noising of the result onto the path at the current time, and
the flow-matching denoiser (paper Alg. 1, written with data at t = 1; here data sit at t = 0,
t ↦ 1 − t, v ↦ −v):

    z   = x − γ_t ∇F(x),                 γ_t = η · t^α   (paper: η (1 − t)^α)             (Alg. 1, l. 3)
    z̃   = α(t) z + σ(t) ε,               ε ~ N(0, I)     (paper: t z + (1 − t) ε)           (Alg. 1, l. 4)
    x   = D_t(z̃) = E[x₀ | x_t = z̃]                       (paper: z̃ + (1 − t) v(z̃, t))       (Alg. 1, l. 5)

On the linear path the paper's D_t(z̃) = z̃ + (1 − t)v is exactly x̂₀ = x_t − t·v here, so any prior
(flow, diffusion, analytic) serves through its one denoiser call. The authors' code averages D_t
over S noise draws ε (``num_samples``) and scales the step by σ_y² for F = ‖Ax − y‖²/(2σ_y²), so
``z = x − η t^α Aᵀ(Ax − y)``, independent of σ_y (the form used here; it also covers σ_y = 0).
The times are the paper's grid t_k = k/N, k = 0..N−1 (data at 1), i.e. τ_k = 1 − k/N here.

NFE = ``steps · num_samples`` forward passes, no backward pass through the prior (the data step uses
Aᵀ, or autograd through a nonlinear operator only).

=============  ===========================  ================  ============================
code           paper                        code              paper
=============  ===========================  ================  ============================
``x``          x_n (iterate)                ``lr``            η (``lr_pnp``)
``z``          z_n (after the data step)    ``alpha``         α (γ_n = η(1 − t_n)^α)
``z_tilde``    z̃_n (interpolation)          ``num_samples``   averaged draws of ε
``t``          1 − t_n                      ``steps``         N
=============  ===========================  ================  ============================

Defaults (the authors' ``pnp_flow.yaml``): N = 100, η = 1, α = 1, 5 draws. Their tuned runs
(``scripts/script_test.sh``, CelebA) use α = 0.8 (denoising), 0.01 (Gaussian deblurring, random
inpainting), 0.3 (super-resolution), 0.5 (box inpainting) — experiment configs.

Deviations:

* The start x is 0 in model space (the code starts from ``H_adj(1)``, Aᵀ applied to an image of
  ones); at the first time t_0 = 1 the interpolation erases either (at t_max = 1 − 10⁻³ up to a
  weight 10⁻³). Times above the prior's largest time t(σ_max) are clipped to it
  (1 − 10⁻³ for priors with σ_max = ∞), so a prior that cannot be called at pure noise still works.
* The data step is on the model-space residual (the paper's [−1, 1] images).
* Any interpolant path: z̃ = α(t) z + σ(t) ε and x̂₀ on that path (the paper's is ``"linear"``).

Class (:mod:`invdiff.solvers.classes`): Point estimator (estimates plug-and-play forward–backward
splitting with the flow's denoiser).
"""

from __future__ import annotations

from torch import Tensor

from ._common import Callback, setup
from ._flow import flow_path, flow_t_max, flow_x0


def pnp_flow(y: Tensor, operator, prior, *, sigma_y=0.0, steps: int = 100, generator=None,
             callback: Callback = None, path=None, lr: float = 1.0, alpha: float = 1.0,
             num_samples: int = 5) -> Tensor:
    """One PnP-Flow reconstruction per item of ``y``.

    :param y: ``[B, *operator.meas_size]`` measurements, measurement units.
    :param operator: a linear operator with an adjoint, or any operator with a differentiable forward.
    :param prior: any :class:`invdiff.priors.Prior` of shape ``operator.img_size`` (no gradients
        through it are taken).
    :param sigma_y: noise std (float or ``[B]``); the step η t^α Aᵀ(Ax − y) does not depend on it
        (the authors' code multiplies η by σ_y² for F = ‖Ax − y‖²/2σ_y²).
    :param steps: N, the number of times; NFE = steps · num_samples.
    :param path: interpolant path (default: the prior's own, else linear).
    :param lr: η, the data step's scale (model units, in units of 1/‖A‖²).
    :param alpha: α ≥ 0 in γ_t = η t^α.
    :param num_samples: S ≥ 1 noise draws averaged in each denoising step.
    :returns: ``[B, *prior.shape]`` physical units, y's dtype.
    """
    if not (lr >= 0 and alpha >= 0) or isinstance(num_samples, bool) or not isinstance(num_samples, int) \
            or num_samples < 1:
        raise ValueError(f"pnp_flow: need lr >= 0, alpha >= 0 and num_samples a whole number >= 1, got "
                         f"{lr}, {alpha}, {num_samples!r}")
    grad_need = [("adjoint", "differentiable")] if "linear" in getattr(operator, "capabilities", ()) \
        else ["differentiable"]
    pb = setup("pnp_flow", y, operator, prior, sigma_y=sigma_y, steps=steps, generator=generator,
               callback=callback, needs=grad_need)
    path = flow_path(prior, path)
    t_max = flow_t_max(prior, path)
    ts = [min(1.0 - k / steps, t_max) for k in range(steps)]  # the paper's t_k = k/N, data at 1
    x = pb.y.new_zeros(pb.shape)
    for i, t in enumerate(ts):
        a, s = float(path.alpha(t)), float(path.sigma(t))
        # 1. Gradient step on the data term, γ_t = η t^α (Alg. 1, l. 3).
        z = x - (lr * t**alpha) * pb.data_grad(x, 1.0)
        pb.check(i, z, f"lr = {lr} too large for this operator (the data step overshoots when η‖A‖² > 2)")
        # 2. Interpolation onto the path at t and 3. the flow denoiser, averaged over S draws (l. 4–5).
        x_new = 0.0
        for _ in range(num_samples):
            z_tilde = a * z + s * pb.randn()
            x_new = x_new + flow_x0(pb, z_tilde, t, path, i)
        x = x_new / num_samples
        pb.callback(i, z_tilde, x)
    return pb.finish(x)
