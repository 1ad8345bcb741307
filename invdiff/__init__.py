"""invdiff: imaging inverse problems with diffusion-model priors.

``invdiff.reconstruct(y, operator, prior, solver, sigma_y=...)`` draws posterior samples (see
:mod:`invdiff.api`); ``invdiff.priors``, ``invdiff.solvers`` and the ``operators`` package hold
the pieces; the commands ``invdiff``, ``invdiff-bench`` and ``invdiff-train`` (:mod:`invdiff.apps`) wire them from
Hydra configs.
"""

from .api import Reconstruction, reconstruct

__all__ = ["Reconstruction", "reconstruct"]
