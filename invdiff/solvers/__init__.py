"""Posterior samplers: ``solver(y, operator, prior, *, sigma_y, steps, generator=None,
callback=None, **paper_params) -> x`` (one posterior sample per batch item, physical units).

SVD / pseudo-inverse / prox family: ``ddrm``, ``ddnm``, ``pigdm``, ``diffpir``, ``score_sde``.
Gradient-guided family: ``dps``, ``mcg``, ``reddiff``, ``tmpd``. Sampling-based family: ``daps``
(annealed Langevin), ``pnpdm`` (split Gibbs), ``mcgdiff`` (sequential Monte Carlo). Baseline:
``baselines.pinv``.
"""

from ._common import COMPILE_MODES, SolverDivergedError, check_call, runtime
from .daps import daps
from .ddnm import ddnm
from .ddrm import ddrm
from .diffpir import diffpir
from .dps import dps
from .mcg import mcg
from .mcgdiff import mcgdiff
from .pigdm import pigdm
from .pnpdm import pnpdm
from .reddiff import reddiff
from .score_sde import score_sde
from .tmpd import tmpd

SOLVERS = {f.__name__: f for f in (ddrm, ddnm, pigdm, diffpir, score_sde, dps, mcg, reddiff, tmpd, daps, pnpdm, mcgdiff)}

__all__ = ["SOLVERS", "COMPILE_MODES", "SolverDivergedError", "check_call", "runtime", *SOLVERS]
