"""Flow checkpoints from other projects, loaded strictly as :class:`~invdiff.priors.flow.FlowPrior`.

===============================================  ======================================================
source                                           how it loads
===============================================  ======================================================
diffusers folder whose scheduler is              :func:`invdiff.priors.load` (the ``diffusers`` format
``FlowMatchEulerDiscreteScheduler`` (or          hands such a folder to :func:`load_diffusers_flow`):
``FlowMatchHeunDiscreteScheduler``) and whose    ``UNet2DModel`` predicting ``v = ε − x₀`` on the linear
network is an unconditional ``UNet2DModel``      path, noise at t = 1, called with timestep
                                                 ``t · num_train_timesteps``
a plain state dict (``.pt`` or                   :func:`load_flow_state_dict` with every flow setting
``.safetensors``) of a registered architecture   stated: architecture, its arguments, path, time
(e.g. PnP-Flow's OT-flow ``model_final.pt``)     convention, time scale, shape, data and model range
===============================================  ======================================================

**diffusers' flow matching** (``diffusers/schedulers/scheduling_flow_match_euler_discrete.py``,
read in diffusers 0.42): ``scale_noise`` makes ``x_σ = σ·noise + (1 − σ)·x₀``, ``step`` moves
``x ← x + (σ_next − σ)·model_output`` and ``timesteps = σ·num_train_timesteps``: the network is a
velocity ``v = noise − x₀`` on the linear path at t = σ, fed ``t·num_train_timesteps``. The config's
``shift`` (σ' = shift·σ/(1 + (shift − 1)σ)), ``use_dynamic_shifting``, ``shift_terminal`` and the
Karras/exponential/beta grids only choose *which* σ the sampler visits (the timestep passed is
always the shifted σ times ``num_train_timesteps``): they do not change what the network means, so
they are not read (pass ``grid="shift", shift=...`` to a flow sampler to reproduce a shifted grid).
``invert_sigmas`` (Mochi: the network's time is 1 − σ) is refused, as are scheduler classes whose
meaning has not been checked, text- or class-conditional networks and transformer pipelines.

**PnP-Flow** (Martin, Gagneux, Hagemann & Steidl 2025, arXiv:2410.02423; ``annegnx/PnP-Flow``,
``pnpflow/train_flow_matching.py``): ``x_t = t·x₁ + (1 − t)·x₀`` with x₁ the data and x₀ ~ N(0, I),
the network regresses ``x₁ − x₀`` and is called with t ∈ [0, 1] directly; images in [−1, 1]
(``Normalize(0.5, 0.5)``). Their network (``pnpflow/models.py``'s ``UNet``, sdeflow-light's copy
of the DDPM UNet) is not one of the architectures registered here (neither deepinv's nor EDM's), and
its code is not shipped, so the stated path is: register it, then load its state dict with the
flow settings spelled out::

    from invdiff.priors import register_architecture
    from invdiff.priors.flow_formats import load_flow_state_dict
    from pnpflow.models import UNet                      # their package, installed by you

    register_architecture("pnpflow.UNet")(UNet)
    prior = load_flow_state_dict(
        "model/celeba/gaussian/ot/model_final.pt", architecture="pnpflow.UNet",
        arch_kwargs=dict(input_channels=3, input_height=128, ch=32, ch_mult=[1, 2, 4, 8], num_res_blocks=6,
                         attn_resolutions=[16, 8], resamp_with_conv=True),
        path="linear", time_convention="data_at_1", time_scale=1.0, shape=[3, 128, 128],
        data_range=[0.0, 1.0], model_range=[-1.0, 1.0])

(AFHQ-Cat: ``input_height=256``, ``shape=[3, 256, 256]``.) Every setting is required: a wrong time
convention or range would load without complaint and compute something else. Files are read
safely (no pickle runs, :mod:`invdiff.priors.checkpoints`) and strictly (every key and shape).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .diffusers_unet import load_unet2d, read_unet_config
from .checkpoints import (CheckpointError, checkpoint_kind, safe_safetensors_load, safe_torch_load, sha256_file,
                          strict_load)
from .flow import TIME_CONVENTIONS, FlowPrior, make_path
from .registry import ARCHITECTURES, Checkpoint

__all__ = ["FLOW_SCHEDULERS", "scheduler_config_path", "is_diffusers_flow_folder", "load_diffusers_flow",
           "load_flow_state_dict"]

#: diffusers scheduler classes whose network is a linear-path velocity called at ``σ·num_train_timesteps``
#: (both read in diffusers 0.42: the same ``scale_noise`` and timesteps).
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


def scheduler_config_path(folder: Path) -> Path | None:
    """A diffusers folder's ``scheduler/scheduler_config.json`` or ``scheduler_config.json`` (None without)."""
    folder = Path(folder)
    return next((p for p in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json")
                 if p.is_file()), None)


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def is_diffusers_flow_folder(folder: Path) -> bool:
    """Whether ``folder`` is a diffusers folder with a flow-matching scheduler (its
    ``_class_name`` starts with ``FlowMatch``; classes outside :data:`FLOW_SCHEDULERS` are then
    refused by :func:`load_diffusers_flow`, not loaded as a noise-prediction model)."""
    path = scheduler_config_path(folder)
    if path is None:
        return False
    name = _read_json(path).get("_class_name")
    return isinstance(name, str) and name.startswith("FlowMatch")


def load_diffusers_flow(checkpoint: Checkpoint, overrides: dict) -> FlowPrior:
    """A diffusers folder with a flow-matching scheduler as a :class:`FlowPrior` (linear path,
    noise at 1, ``time_scale = num_train_timesteps``); ``overrides`` replace the
    :class:`FlowPrior` arguments read (``data_range``, ``t_range``, ...). Called by the
    ``diffusers`` format of :mod:`invdiff.priors.formats` for such folders."""
    folder = checkpoint.path
    sched_path = scheduler_config_path(folder)
    if sched_path is None:
        raise CheckpointError(f"{folder}: no scheduler_config.json (scheduler/ or next to config.json); a flow model "
                              "folder needs it to say what its network predicts")
    sched = _read_json(sched_path)
    cls = sched.get("_class_name")
    if cls not in FLOW_SCHEDULERS:
        raise CheckpointError(f"{sched_path}: scheduler {cls!r} is not supported: only {', '.join(FLOW_SCHEDULERS)} "
                              "are, whose network is a velocity v = noise − x₀ at timestep σ·num_train_timesteps "
                              "(checked in diffusers' source); another scheduler's network may mean something else")
    if sched.get("invert_sigmas"):
        raise CheckpointError(f"{sched_path}: invert_sigmas = true (Mochi's convention: the network's timestep is "
                              "(1 − σ)·num_train_timesteps) is not supported; its meaning is not the flow-matching "
                              "scheduler's usual one, so it is refused rather than guessed")
    T = sched.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not T > 0:
        raise CheckpointError(f"{sched_path}: num_train_timesteps must be a positive number, got {T!r}")
    index_path = folder / "model_index.json"
    if index_path.is_file():
        index = _read_json(index_path)
        if "unet" not in index and "transformer" in index:
            raise CheckpointError(
                f"{folder}: a {index.get('_class_name', 'diffusers')} pipeline whose network is a transformer "
                f"({index['transformer']}); only unconditional UNet2DModel flow models are supported (text-conditioned "
                "transformers such as SD3's need a prompt embedding that an inverse-problem prior does not have)")
    cfg_path, config = read_unet_config(folder)
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise CheckpointError(f"{cfg_path}: a class-conditional UNet2DModel (class_embed_type="
                              f"{config.get('class_embed_type')!r}, num_class_embeds={config.get('num_class_embeds')!r}) "
                              "is not supported; invdiff's priors are unconditional")
    net = load_unet2d(folder, config)
    size = config.get("sample_size", 64)
    size = (size, size) if isinstance(size, int) else tuple(size)
    kwargs: dict[str, Any] = dict(shape=(config.get("in_channels", 3), *size), data_range=(0.0, 1.0),
                                  model_range=(-1.0, 1.0), time_convention="noise_at_1", time_scale=float(T))
    kwargs.update(overrides)
    return FlowPrior(net, "linear", **kwargs)


def load_flow_state_dict(file: str | Path, *, architecture: str, arch_kwargs: dict, path, time_convention: str,
                         time_scale: float, shape, data_range, model_range, t_range=(1e-3, 1.0 - 1e-3),
                         key: str | None = None, prefix: str | None = None,
                         device: str | torch.device | None = None) -> FlowPrior:
    """A velocity network's plain state dict as a :class:`FlowPrior`, every flow setting stated.

    :param file: a ``.pt`` torch file (read with ``weights_only=True``; pickles are refused) or a
        ``.safetensors`` file holding the state dict.
    :param architecture: a name registered in :data:`invdiff.priors.registry.ARCHITECTURES`, built
        as ``ARCHITECTURES[architecture](**arch_kwargs)`` and loaded strictly (every missing,
        unexpected or mis-shaped key is listed).
    :param path: the interpolant path (:func:`invdiff.priors.flow.make_path`: ``"linear"``, ...).
    :param time_convention: ``"noise_at_1"`` or ``"data_at_1"`` (:data:`~invdiff.priors.flow.TIME_CONVENTIONS`).
    :param time_scale: the factor the network's time is multiplied by (1 for t ∈ [0, 1]).
    :param shape: event shape ``[C, H, W]``; ``data_range``, ``model_range``: the affine map to the
        network's units (``[0, 1]`` → ``[−1, 1]`` for most image models).
    :param key: the entry of a checkpoint dict holding the state dict (``"model_state_dict"``,
        ``"ema"``, ...), when the file is not the state dict itself.
    :param prefix: a prefix every key carries and the architecture's keys do not (``"module."``).

    The returned prior carries ``prior.checkpoint = {"path", "sha256", "format": "flow-state-dict"}``.
    """
    file = Path(file).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"flow state dict not found: {file}")
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"{file}: architecture {architecture!r} is not registered (registered: "
                              f"{sorted(ARCHITECTURES)}); register the network's builder first with "
                              "invdiff.priors.register_architecture(name)(builder)")
    if not isinstance(arch_kwargs, dict):
        raise TypeError(f"arch_kwargs must be a dict of the architecture's arguments, got {type(arch_kwargs).__name__}")
    if time_convention not in TIME_CONVENTIONS:
        raise ValueError(f"time_convention must be one of {TIME_CONVENTIONS}, got {time_convention!r}")
    if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not 0 < time_scale < float("inf"):
        raise ValueError(f"time_scale must be a positive number (1 for a network fed t in [0, 1]), got {time_scale!r}")
    interp = make_path(path)
    kind = checkpoint_kind(file)
    if kind == "safetensors":
        state, meta = safe_safetensors_load(file)
        if "invdiff" in meta:
            raise CheckpointError(f"{file} is an invdiff prior file, which states its own settings: load it with "
                                  "invdiff.priors.load")
    else:
        state = safe_torch_load(file)  # refuses pickles, HDF5 and corrupted files with the reason
    where = str(file)
    if key is not None:
        if not isinstance(state, dict) or key not in state:
            keys = sorted(map(str, state))[:10] if isinstance(state, dict) else []
            raise CheckpointError(f"{file}: no entry {key!r} (top-level keys: {', '.join(keys)})")
        state, where = state[key], f"{file}[{key!r}]"
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{where}: expected a state dict (names -> tensors), got "
                              f"{type(state).__name__ if state else 'an empty dict'}")
    nested = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if nested:
        raise CheckpointError(f"{where} is not a plain state dict: entries {', '.join(nested[:10])} are not tensors. "
                              "If the file is a checkpoint dict, pass key=<the entry that holds the weights>")
    if prefix:
        missing = sorted(k for k in state if not k.startswith(prefix))
        if missing:
            raise CheckpointError(f"{where}: prefix={prefix!r} given but keys {', '.join(missing[:5])} do not carry it")
        state = {k[len(prefix):]: v for k, v in state.items()}
    net = ARCHITECTURES[architecture](**arch_kwargs)
    strict_load(net, state, where)
    prior = FlowPrior(net.eval(), interp, shape=shape, data_range=data_range, model_range=model_range,
                      time_convention=time_convention, time_scale=time_scale, t_range=t_range)
    prior.checkpoint = {"path": str(file.resolve()), "sha256": sha256_file(file), "format": "flow-state-dict"}
    if device is not None:
        prior.to(device)
    return prior
