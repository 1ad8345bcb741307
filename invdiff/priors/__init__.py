"""Priors: one denoiser interface (EDM form), noise schedules, network adapters, analytic priors
and unconditional samplers. Solvers only ever see :class:`Prior`.

==================  ==================================================================================
module              what it holds
==================  ==================================================================================
``base``            :class:`Prior` (the interface), :class:`CountingPrior`
``channelwise``     :class:`ChannelwisePrior`: a one-channel prior on every channel (score-MRI's complex images)
``adapters``        :class:`NetworkPrior`: any ε/x₀/v/score network, VP, VE or EDM, as a denoiser
``analytic``        Gaussian and Gaussian-mixture priors with exact denoisers and posteriors
``schedules``       VP/VE/EDM noise schedules and σ grids
``samplers``        unconditional samplers (DDPM, DDIM, Langevin, reverse SDE, PF-ODE, EDM Heun)
``registry``        the extension points: network architectures, prior file formats, named priors
``loaders``         :func:`load`: find a file or name, refuse pickles, dispatch to the registered formats
``native``          the project's own ``.safetensors`` format (:func:`save`)
``formats``         the foreign formats (guided-diffusion, EDM/InverseBench, score_sde, diffusers)
                    and the architectures of deepinv and EDM
``consistency``     :class:`ConsistencyPrior` (f(x, σ) with f(x, σ_min) = x as the denoiser) and multistep
                    consistency sampling
``flow``            interpolant paths (linear, trig, VP, VE) and :class:`FlowPrior` (a velocity network)
``flow_samplers``   unconditional samplers in flow time (Euler, Heun, the interpolant SDE)
``flow_formats``    foreign flow checkpoints: diffusers flow-matching folders, plain state dicts
``diffusers_unet``  diffusers ``UNet2DModel`` folders read strictly (shared by both diffusers loaders)
``unet``            the project's small UNet (architectures ``invdiff.unet``, ``invdiff.flow_unet``,
                    ``invdiff.cm_unet``)
``shipped``         the priors shipped in the package, loadable by name (``"phantom64"``, ``"phantom64_flow"``)
``checkpoints``     safe, strict reading of checkpoint files
``convert``         EDM pickle → invdiff file, running nothing from the pickle
``deepinv_interop`` an invdiff prior as a ``deepinv`` denoiser and a deepinv denoiser as an invdiff prior
==================  ==================================================================================

A new file format registers a ``detect`` and a ``load`` function with
:func:`~invdiff.priors.registry.register_format`; a new network the own format may name registers
with :func:`register_architecture`; a new prior loadable by name with
:func:`~invdiff.priors.registry.register_named_prior`. :mod:`~invdiff.priors.registry` imports none
of the modules that register, and :func:`load` knows no format: this ``__init__`` imports the
registering modules (``native``, ``formats``, ``unet``, ``shipped``), so importing
``invdiff.priors`` registers everything.
"""

from .adapters import NetworkPrior
from .analytic import GaussianMixturePrior, GaussianPrior
from .base import CountingPrior, Prior
from .channelwise import ChannelwisePrior
from .checkpoints import CheckpointError
from .consistency import CONSISTENCY_SAMPLERS, ConsistencyPrior, consistency_sampling
from .flow import PATHS, FlowPrior, Interpolant, LinearPath, TrigPath, VEPath, VPPath, make_path
from .flow_formats import load_flow_state_dict
from .flow_samplers import FLOW_SAMPLERS, flow_euler, flow_heun, flow_sde
from .loaders import load, load_checkpoint
from .native import save
from .registry import ARCHITECTURES, register_architecture
from . import formats, shipped, unet  # noqa: E402,F401  (they register their formats, architectures and names)
from .samplers import SAMPLERS, annealed_langevin, ddim, ddpm, edm_heun, pf_ode, reverse_sde
from .schedules import EDMSchedule, VESchedule, VPSchedule, edm_sigma_grid, geometric_sigma_grid

__all__ = [
    "Prior", "CountingPrior", "ChannelwisePrior", "NetworkPrior", "load", "load_checkpoint", "save", "CheckpointError", "ARCHITECTURES",
    "register_architecture", "GaussianPrior", "GaussianMixturePrior",
    "SAMPLERS", "ddpm", "ddim", "annealed_langevin", "reverse_sde", "pf_ode", "edm_heun",
    "VPSchedule", "VESchedule", "EDMSchedule", "edm_sigma_grid", "geometric_sigma_grid", "convert_edm_pickle",
    "FlowPrior", "Interpolant", "LinearPath", "TrigPath", "VPPath", "VEPath", "PATHS", "make_path",
    "FLOW_SAMPLERS", "flow_euler", "flow_heun", "flow_sde", "load_flow_state_dict",
    "ConsistencyPrior", "consistency_sampling", "CONSISTENCY_SAMPLERS",
]


def __getattr__(name: str):
    # imported on first use, so that `python -m invdiff.priors.convert` finds its module unimported
    if name == "convert_edm_pickle":
        from .convert import convert_edm_pickle

        return convert_edm_pickle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
