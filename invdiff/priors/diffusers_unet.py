"""diffusers ``UNet2DModel`` folders, read strictly: what the ``diffusers`` format
(:mod:`invdiff.priors.formats`, noise/x₀/v-prediction schedulers) and the flow-matching folders
(:mod:`invdiff.priors.flow_formats`) share — the folder layout (``config.json`` next to the weights,
or a pipeline's ``unet/``), the weights file (what the SHA-256 is taken of), the class check and a
strict load of the state dict. diffusers itself is an optional dependency (``invdiff[diffusers]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .checkpoints import CheckpointError, safe_safetensors_load, safe_torch_load, strict_load

__all__ = ["unet_root", "unet_weights_file", "read_unet_config", "load_unet2d"]


def unet_root(folder: Path) -> Path:
    """The folder holding the UNet's ``config.json``: a pipeline's ``unet/``, else ``folder``."""
    return folder / "unet" if (folder / "unet" / "config.json").is_file() else folder


def unet_weights_file(folder: Path) -> Path:
    """The weights file of a model folder (what the SHA-256 is taken of)."""
    root = unet_root(folder)
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (root / name).is_file():
            return root / name
    raise CheckpointError(f"{folder}: no diffusion_pytorch_model.safetensors or .bin next to config.json")


def read_unet_config(folder: Path) -> tuple[Path, dict[str, Any]]:
    """``(config path, config)`` of the folder's ``UNet2DModel``; refuses other classes."""
    cfg_path = unet_root(folder) / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder}: a model folder needs unet/config.json or config.json (diffusers layout)")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or config.get("_class_name") != "UNet2DModel":
        name = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{cfg_path}: only diffusers UNet2DModel folders are supported, got {name!r}")
    return cfg_path, config


def load_unet2d(folder: Path, config: dict[str, Any]) -> torch.nn.Module:
    """The ``UNet2DModel`` of ``config`` with the folder's weights loaded strictly (every key, every
    shape), in eval mode."""
    try:
        from diffusers import UNet2DModel
    except ImportError as err:
        raise CheckpointError(f"{folder} is a diffusers model: install the optional extra "
                              "`pip install invdiff[diffusers]` to load it") from err
    weights = unet_weights_file(folder)
    state = safe_safetensors_load(weights)[0] if weights.suffix == ".safetensors" else safe_torch_load(weights)
    net = UNet2DModel.from_config(config)
    strict_load(net, state, str(weights))
    return net.eval()
