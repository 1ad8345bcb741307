"""Posterior samplers: ``solver(y, operator, prior, *, sigma_y, steps, generator=None,
callback=None, **paper_params) -> x`` (one posterior sample per batch item, physical units)."""

from ._common import SolverDivergedError
from .ddrm import ddrm
from .diffpir import diffpir

SOLVERS = {f.__name__: f for f in (ddrm, diffpir)}

__all__ = ["SOLVERS", "SolverDivergedError", *SOLVERS]
