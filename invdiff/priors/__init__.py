"""Priors: one denoiser interface (EDM form), noise schedules, network adapters, analytic priors
and unconditional samplers. Solvers only ever see :class:`Prior`."""

from .adapters import NetworkPrior
from .analytic import GaussianMixturePrior, GaussianPrior
from .base import CountingPrior, Prior
from .checkpoints import CheckpointError
from .loaders import ARCHITECTURES, load, load_checkpoint, register_architecture, save
from . import formats, unet  # noqa: E402,F401  (register the architectures the own format can name)
from .samplers import SAMPLERS, annealed_langevin, ddim, ddpm, edm_heun, pf_ode, reverse_sde
from .schedules import EDMSchedule, VESchedule, VPSchedule, edm_sigma_grid, geometric_sigma_grid

__all__ = [
    "Prior", "CountingPrior", "NetworkPrior", "load", "load_checkpoint", "save", "CheckpointError", "ARCHITECTURES",
    "register_architecture", "GaussianPrior", "GaussianMixturePrior",
    "SAMPLERS", "ddpm", "ddim", "annealed_langevin", "reverse_sde", "pf_ode", "edm_heun",
    "VPSchedule", "VESchedule", "EDMSchedule", "edm_sigma_grid", "geometric_sigma_grid", "convert_edm_pickle",
]


def __getattr__(name: str):
    # imported on first use, so that `python -m invdiff.priors.convert` finds its module unimported
    if name == "convert_edm_pickle":
        from .convert import convert_edm_pickle

        return convert_edm_pickle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
