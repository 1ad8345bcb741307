"""Classical baselines with the solvers' call shape (no diffusion prior)."""

from __future__ import annotations

from torch import Tensor

from operators import require


def pinv(y: Tensor, operator, prior=None, *, sigma_y=0.0, steps: int = 1, generator=None, callback=None) -> Tensor:
    """The operator's pseudo-inverse ``A⁺y`` (truncated SVD, closed form, or CG): the zero-filled
    MRI image, the pseudo-inverse of a blur or a downsampling. ``prior``, ``sigma_y``, ``steps``
    and ``generator`` are accepted for the common call shape and ignored. NFE = 0."""
    require(operator, "pinv", ["pinv"])
    return operator.A_dagger(y)
