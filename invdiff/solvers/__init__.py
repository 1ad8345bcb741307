"""Posterior samplers: ``solver(y, operator, prior, *, sigma_y, steps, generator=None,
callback=None, **paper_params) -> x`` (one posterior sample per batch item, physical units)."""

from ._common import SolverDivergedError
from .ddnm import ddnm
from .ddrm import ddrm
from .diffpir import diffpir
from .pigdm import pigdm
from .score_sde import score_sde

SOLVERS = {f.__name__: f for f in (ddrm, ddnm, pigdm, diffpir, score_sde)}

__all__ = ["SOLVERS", "SolverDivergedError", *SOLVERS]
