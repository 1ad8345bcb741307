"""The bridge objective (``invdiff-train settings.objective=bridge``): pairs (x₀, x₁ = A⁺y) simulated
with the package's own operators and noise, and the x₀-prediction loss on the bridge
(:mod:`invdiff.priors.bridge`).

Loss (I²SB, Liu et al. 2023, eq. 12, and InDI, Delbracio & Milanfar 2023, eq. 4, in x₀ form): t ~ U(0, 1),
x_t = (1 − t)x₀ + t x₁ + √(b t(1 − t)) z, ``λ(σ_t) ‖F(x_t, σ_t) − x₀‖²`` with F the EDM-preconditioned
network conditioned on σ_t = :meth:`~invdiff.priors.bridge.BrownianBridge.noise_level` and EDM's weight
λ(σ) = (σ² + σ_d²)/(σ σ_d)². Its minimiser at each t is E[x₀ | x_t] (any positive weight per t);
I²SB regresses (x_t − x₀)/σ_t — the same minimiser, weight 1/σ_t² — and InDI weights every t equally.

Operator families (``settings.bridge_operator``), each a distribution of degradations the bridge
is trained for and refuses to leave (:func:`check_operator`):

* ``mri``: single-coil Cartesian MRI of a real image, a fresh fastMRI random mask per sample
  (``acceleration``, ``center_fraction``), complex noise σ_y; x₁ = A⁺y.
* ``sr``: :class:`operators.Downsampling` by ``factor`` (``filter``), noise σ_y; x₁ = A⁺y (the
  least-squares upsampling; I²SB's SR bridges start from a bicubic upsampling instead).
"""

from __future__ import annotations

import torch
from torch import Tensor

FAMILIES = ("mri", "sr")


def family_spec(family: str, *, sigma_y: float, acceleration: float = 4.0, center_fraction: float = 0.08,
                factor: int = 2, filter: str = "bicubic") -> dict:
    """The stored description of an operator family (what the bridge was trained for)."""
    if family == "mri":
        return {"family": "mri", "acceleration": float(acceleration), "center_fraction": float(center_fraction),
                "sigma_y": float(sigma_y)}
    if family == "sr":
        return {"family": "sr", "factor": int(factor), "filter": str(filter), "sigma_y": float(sigma_y)}
    raise ValueError(f"settings.bridge_operator must be one of {FAMILIES}, got {family!r}")


def spec_of(s) -> dict:
    """The family of a run's :class:`~invdiff.training.settings.TrainSettings`."""
    return family_spec(s.bridge_operator, sigma_y=s.bridge_sigma_y, acceleration=s.bridge_acceleration,
                       center_fraction=s.bridge_center_fraction, factor=s.bridge_factor, filter=s.bridge_filter)


def _operator(spec: dict, shape, generator: torch.Generator):
    import operators as O

    if spec["family"] == "mri":
        from ..data.measurements import mri_mask

        mask = mri_mask(shape[-1], shape[-2], spec["acceleration"], spec["center_fraction"], generator)
        return O.SingleCoilMRI(mask.to(torch.float64), tuple(shape))
    return O.Downsampling(spec["factor"], tuple(shape), filter=spec["filter"])


def degrade(x0: Tensor, spec: dict, generator: torch.Generator) -> Tensor:
    """x₁ = A⁺(A x₀ + σ_y n) for each image of ``x0`` ``[B, C, H, W]`` (physical units), a fresh
    operator of the family per image (MRI) or one for all (SR)."""
    import operators as O

    x = x0.to(torch.float64)
    noise = O.GaussianNoise(spec["sigma_y"])
    if spec["family"] == "sr":
        op = _operator(spec, x.shape[1:], generator)
        return op.A_dagger(op.measure(x, noise, generator=generator)).to(x0.dtype)
    out = []
    for i in range(x.shape[0]):
        op = _operator(spec, x.shape[1:], generator)
        out.append(op.A_dagger(op.measure(x[i:i + 1], noise, generator=generator)))
    return torch.cat(out).to(x0.dtype)


def check_operator(spec: dict, operator, sigma_y, *, allow_shift: bool = False, name: str = "bridge") -> None:
    """Refuse an operator or noise level outside the family the bridge was trained for (a bridge
    restores only the degradation it has seen; the posterior samplers adapt to any operator).
    ``allow_shift=True`` runs it anyway — for measuring the shift, never for a result."""
    if allow_shift:
        return
    import operators as O

    trained = ", ".join(f"{k}={v}" for k, v in spec.items())
    problem = None
    if type(operator).__name__ == "TileOperator":
        problem = (f"the operator is a tile of a larger image ({operator.describe()}): a tile's border measurements are "
                   "cut by the tiling, which the bridge never saw, so bridges are not run in tiles — solve images of the "
                   "bridge's size")
    elif spec["family"] == "mri":
        if type(operator) is not O.SingleCoilMRI:
            problem = f"the operator is {type(operator).__name__}, not SingleCoilMRI"
        elif abs(operator.acceleration / spec["acceleration"] - 1) > 0.25:
            problem = f"the operator's acceleration is {operator.acceleration:.2f}"
    else:
        if type(operator) is not O.Downsampling:
            problem = f"the operator is {type(operator).__name__}, not Downsampling"
        elif operator.factor != spec["factor"] or operator.filter != spec["filter"]:
            problem = f"the operator is ×{operator.factor} with filter '{operator.filter}'"
    if problem is None:
        s = torch.as_tensor(sigma_y, dtype=torch.float64)
        if bool((s - spec["sigma_y"]).abs().max() > 0.25 * spec["sigma_y"] + 1e-12):
            problem = f"σ_y is {s.tolist()}"
    if problem is not None:
        raise ValueError(f"solver '{name}': this bridge was trained for {trained}, but {problem}. A bridge "
                         "restores only the degradation it was trained on; use a posterior sampler (pigdm, "
                         "ddnm, dps, …) with a prior for this operator, train a bridge for it "
                         "(invdiff-train settings.objective=bridge settings.bridge_operator=…), or pass "
                         "allow_shift=True to measure the mismatch deliberately.")


def bridge_loss(net, x0: Tensor, x1: Tensor, path, generator: torch.Generator, *, sigma_1: float,
                sigma_data: float = 0.5, t: float | None = None) -> Tensor:
    """Mean bridge loss of a batch of pairs (model units); ``t`` fixed (tests) or t ~ U(0, 1)."""
    B = x0.shape[0]
    tt = torch.rand(B, generator=generator, dtype=torch.float64) if t is None else torch.full((B,), float(t), dtype=torch.float64)
    z = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0) if path.b > 0 else None
    x_t = path.sample(x0, x1, tt.to(x0), z)
    sig = path.noise_level(tt, sigma_1).to(x0)
    pred = net(x_t, sig)
    w = (sig**2 + sigma_data**2) / (sig * sigma_data) ** 2
    return (w.reshape(-1, *([1] * (x0.ndim - 1))) * (pred - x0).square()).mean()
