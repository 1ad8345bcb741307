"""Bridge solvers: I²SB, InDI and CDDB on a trained :class:`~invdiff.priors.bridge.BridgePrior`.

Same call shape as every solver, ``solver(y, operator, bridge, sigma_y=…, steps=…, generator=…)``;
the start is x₁ = A⁺y (the degraded image the bridge was trained from), NFE = ``steps``.

* ``i2sb`` — Image-to-Image Schrödinger Bridge (Liu et al., ICML 2023, Alg. 2): from t = 1 to 0 in
  ``steps`` equal steps, x̂₀ = F(x_t, t), then x_s ~ q(x_s | x̂₀, x_t) (their eq. 4; :mod:`invdiff.priors.bridge`).
  ``stochastic=False`` is their "OT-ODE" mean path.
* ``indi`` — Inversion by Direct Iteration (Delbracio & Milanfar, TMLR 2023, eq. 6):
  x_{t−δ} = (δ/t) F(x_t, t) + (1 − δ/t) x_t — the mean path (no noise) of the same bridge.
* ``cddb`` — Consistent Direct Diffusion Bridge (Chung, Kim & Ye, NeurIPS 2023, Alg. 1, "CDDB"): I²SB's
  step with x̂₀ replaced by x̂₀ + α Aᵀ(y − A x̂₀) (one gradient step of ½‖y − A x‖² at x̂₀, no
  back-propagation through the network; units of the measurement, ``step_size`` = α). Deviation: the
  authors' code steps on ‖y − A x‖² with step 1 (α = 2 here); α = 1 is the projection onto
  {A x = y} when AAᵀ = I (inpainting masks, complex-image MRI), so it is the default; for a real image
  under Cartesian MRI, AᵀA has eigenvalues 1, ½ and 0 (a coefficient whose conjugate partner is not
  sampled counts half), and those move halfway per step.

Every bridge refuses an operator or noise level outside the family it was trained for
(:func:`invdiff.training.bridge.check_operator`), unless ``allow_shift=True``.

Class (:mod:`invdiff.solvers.classes`): ``i2sb``: approximate sampler (approximation: a learned
conditional bridge p(x₀ | x₁) (exact for a perfectly trained bridge of this operator and noise)).
``indi``: point estimator (estimates the learned InDI path (a deterministic restoration; MMSE-like
at one step)). ``cddb``: approximate sampler (approximation: the learned bridge with a DDS-style
data-consistency step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._random import check_generator
from ..checks import check_measurement, whole_number
from ..priors.bridge import BridgePrior, bridge_sample
from .network import checks_done


def _setup(name: str, y: Tensor, operator, bridge, sigma_y, steps, generator, allow_shift: bool, needs=("pinv",)):
    from operators import require

    from ..training.bridge import check_operator

    if not isinstance(bridge, BridgePrior):
        raise TypeError(f"solver '{name}' runs a trained bridge (invdiff.priors.bridge.BridgePrior, "
                        f"invdiff-train settings.objective=bridge), got {type(bridge).__name__}; for a "
                        "diffusion or flow prior use a posterior sampler (pigdm, ddnm, dps, …)")
    require(operator, name, needs)
    check_measurement(name, y, operator)
    if tuple(getattr(operator, "img_size", bridge.shape)) != bridge.shape:
        raise ValueError(f"solver '{name}': the operator acts on images {list(operator.img_size)} but the "
                         f"bridge restores {list(bridge.shape)}")
    if not whole_number(steps):
        raise ValueError(f"solver '{name}': steps must be a positive integer, got {steps!r}")
    check_generator(generator, y.shape[0])
    check_operator(bridge.spec, operator, sigma_y, allow_shift=allow_shift, name=name)
    checks_done()  # under check_call (the apps' dry run), stop here
    x1 = bridge.to_model(operator.A_dagger(y.to(torch.float64)))
    return x1


def _run(bridge, x1, y, operator, steps, generator, stochastic, step_size=None, callback=None):
    def x0_hat(x, t):
        x0 = bridge.x0_hat(x, t)
        if step_size:
            phys = bridge.to_physical(x0)
            x0 = x0 + bridge.scale * step_size * operator.A_adjoint(y.to(phys.dtype) - operator.A(phys))
        return x0

    with torch.no_grad():
        return bridge_sample(x0_hat, x1, bridge.path, steps, generator=generator, stochastic=stochastic,
                             callback=callback)


def i2sb(y: Tensor, operator, bridge, *, sigma_y=0.0, steps: int = 10, generator=None, stochastic: bool = True,
         allow_shift: bool = False, callback=None) -> Tensor:
    """I²SB's sampler (module docstring); returns images in measurement/physical units."""
    x1 = _setup("i2sb", y, operator, bridge, sigma_y, steps, generator, allow_shift)
    return bridge.to_physical(_run(bridge, x1, y, operator, steps, generator, stochastic, callback=callback)).to(y.dtype)


def indi(y: Tensor, operator, bridge, *, sigma_y=0.0, steps: int = 10, generator=None,
         allow_shift: bool = False, callback=None) -> Tensor:
    """InDI's iteration (module docstring): deterministic; ``generator`` is accepted for the call shape."""
    x1 = _setup("indi", y, operator, bridge, sigma_y, steps, generator, allow_shift)
    return bridge.to_physical(_run(bridge, x1, y, operator, steps, generator, False, callback=callback)).to(y.dtype)


def cddb(y: Tensor, operator, bridge, *, sigma_y=0.0, steps: int = 10, generator=None, step_size: float = 1.0,
         stochastic: bool = True, allow_shift: bool = False, callback=None) -> Tensor:
    """CDDB (module docstring): I²SB with a data-consistency step on every x̂₀."""
    x1 = _setup("cddb", y, operator, bridge, sigma_y, steps, generator, allow_shift, needs=("pinv", "adjoint"))
    return bridge.to_physical(_run(bridge, x1, y, operator, steps, generator, stochastic, step_size,
                                   callback)).to(y.dtype)
