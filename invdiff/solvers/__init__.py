"""Posterior samplers: ``solver(y, operator, prior, *, sigma_y, steps, generator=None,
callback=None, **paper_params) -> x`` (one posterior sample per batch item, physical units).

SVD / pseudo-inverse / prox family: ``ddrm``, ``ddnm``, ``pigdm``, ``diffpir``, ``score_sde``.
Gradient-guided family: ``dps``, ``mcg``, ``reddiff``, ``tmpd``. Sampling-based family: ``daps``
(annealed Langevin), ``pnpdm`` (split Gibbs), ``mcgdiff`` (sequential Monte Carlo). Flow family
(flow time on an interpolant path, :mod:`~invdiff.solvers._flow`; any prior, a flow prior's own
path by default): ``ot_ode`` (ΠGDM guidance in the flow ODE), ``pnp_flow`` (plug-and-play with the
flow's denoiser; a point estimator), ``ictm`` (trajectory matching; MAP), ``flowdps``, ``dflow``
(differentiates through the ODE; an optimiser). Consistency family (few-step solvers written for
consistency priors, run on every prior through its denoiser): ``cm4ir`` (back-projection guidance
with noise injection), ``pnp_cm`` (PnP-ADMM with the consistency function as the prior's
proximal step). Frontier solvers (issue 29): ``dds`` (Krylov/CG data step inside DDIM, for MRI
and CT), ``fps_smc`` (filtering posterior sampling with particles), ``lgd`` (loss guidance with
Monte-Carlo draws), ``sitcom`` (step-wise triple consistency, few NFE), ``enkg`` (ensemble-Kalman
guidance: derivative-free, accepts a :class:`operators.BlackBoxOperator`) and ``diffusionmbir`` (3-D
volumes ``[B, C, D, H, W]`` with a 2-D prior, z-TV coupling; volume operators only). Baselines
(:mod:`~invdiff.solvers.baselines`, same call shape, no posterior sampling): ``pinv``, ``tv``, ``dpir``.

:data:`SOLVERS` is the one registry of solvers by name: ``invdiff.reconstruct(..., "tv")`` looks
names up there, and every ``configs/solver/<name>.yaml`` targets the solver registered as
``<name>`` (``tests/test_solver_registry.py``). A new solver is added to :data:`SOLVERS`, gets
a config of the same name and a class in :data:`SOLVER_CLASSES` (:mod:`~invdiff.solvers.classes`:
asymptotically exact sampler, approximate sampler or point estimator).

Run-time settings of the network call (bf16 autocast, ``torch.compile``, gradient checkpointing,
channels-last) are not solver parameters: set them with :func:`runtime` (or the keyword
arguments of ``invdiff.reconstruct``). :func:`vp_sigmas` is the σ grid of the VP-paper solvers
(benchmarks compare other implementations on it).
"""

from ._common import SolverDivergedError, vp_sigmas
from .baselines import dpir, pinv, tv
from .bridge import cddb, i2sb, indi
from .classes import SOLVER_CLASSES, SolverClass, solver_class
from .cm4ir import cm4ir
from .daps import daps
from .ddnm import ddnm
from .ddrm import ddrm
from .dflow import dflow
from .diffpir import diffpir
from .dds import dds
from .diffusionmbir import diffusionmbir
from .dps import dps
from .enkg import enkg
from .fps import fps_smc
from .flowdps import flowdps
from .ictm import ictm
from .lgd import lgd
from .mcg import mcg
from .mcgdiff import mcgdiff
from .network import COMPILE_MODES, check_call, runtime
from .otode import ot_ode
from .pigdm import pigdm
from .pnpcm import pnp_cm
from .pnpdm import pnpdm
from .pnpflow import pnp_flow
from .reddiff import reddiff
from .score_sde import score_sde
from .sitcom import sitcom
from .tmpd import tmpd

#: Every solver by name (its function's ``__name__``): the posterior samplers, then the baselines.
SOLVERS = {f.__name__: f for f in (ddrm, ddnm, pigdm, diffpir, score_sde, dps, mcg, reddiff, tmpd, daps, pnpdm,
                                    mcgdiff, ot_ode, pnp_flow, ictm, flowdps, dflow, cm4ir, pnp_cm, dds, fps_smc, lgd, sitcom,
                                    enkg, diffusionmbir, pinv, tv, dpir)}
#: The names in :data:`SOLVERS` of the classical baselines (no posterior sampling: ``pinv`` and
#: ``tv`` use no prior, ``dpir`` plugs the prior's denoiser into half-quadratic splitting).
BASELINES = frozenset({"pinv", "tv", "dpir"})
#: The names in :data:`SOLVERS` that reconstruct volumes ``[B, C, D, H, W]`` with a 2-D prior of their slices:
#: they take volume operators (:class:`operators.SliceStack` and its CT/MRI classes) only and refuse 2-D ones.
VOLUME_SOLVERS = frozenset({"diffusionmbir"})
#: The bridge solvers (:mod:`invdiff.solvers.bridge`): the same call shape, run on a trained
#: :class:`~invdiff.priors.bridge.BridgePrior` (not on a diffusion/flow prior), for the operator family
#: the bridge was trained for. ``invdiff.reconstruct`` and the app look names up here too.
BRIDGE_SOLVERS = {f.__name__: f for f in (i2sb, indi, cddb)}

__all__ = ["SOLVERS", "BASELINES", "VOLUME_SOLVERS", "BRIDGE_SOLVERS", "SOLVER_CLASSES", "SolverClass", "solver_class", "COMPILE_MODES", "SolverDivergedError", "check_call", "runtime",
           "vp_sigmas", *SOLVERS, *BRIDGE_SOLVERS]
