"""Nonlinear blur: a learned blur network applied with a latent kernel code (the DPS/DAPS
"nonlinear deblur" task uses a pretrained bkse kernel-wizard network that users download; any
network of the same form, loaded from a local checkpoint, plugs in here).

``y = f_θ(x, z)`` with ``z`` a latent kernel code drawn from a seeded generator (DPS draws
``1.2 · N(0, I)``) and stored with the operator. Weights load safely (safetensors, or
``torch.load(weights_only=True)``) and strictly (any mismatch is listed); the checkpoint's
SHA-256 is kept in the operator's parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .checkpoints import (require_file, safe_safetensors_load, safe_torch_load, save_safetensors, sha256_file,
                          strict_load)
from .kernels import seeded
from .nonlinear import NonlinearOperator


class BlurNet(nn.Module):
    """A compact kernel-conditioned blur network: three 3×3 convolutions whose features are
    modulated (FiLM) by the latent kernel code, plus a residual path."""

    def __init__(self, channels: int = 1, features: int = 16, latent_dim: int = 8):
        super().__init__()
        self.channels, self.features, self.latent_dim = channels, features, latent_dim
        self.conv_in = nn.Conv2d(channels, features, 3, padding=1, padding_mode="reflect")
        self.conv_mid = nn.Conv2d(features, features, 3, padding=1, padding_mode="reflect")
        self.conv_out = nn.Conv2d(features, channels, 3, padding=1, padding_mode="reflect")
        self.film = nn.Linear(latent_dim, 4 * features)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        g1, b1, g2, b2 = self.film(z).chunk(4, dim=-1)
        h = torch.relu(self.conv_in(x) * (1 + g1[..., None, None]) + b1[..., None, None])
        h = torch.relu(self.conv_mid(h) * (1 + g2[..., None, None]) + b2[..., None, None])
        return x + self.conv_out(h)

    def arch_kwargs(self) -> dict:
        return dict(channels=self.channels, features=self.features, latent_dim=self.latent_dim)


def save_blur_net(net: BlurNet, path: str | Path) -> Path:
    """Write ``net`` as safetensors with its architecture in the metadata (atomically)."""
    return save_safetensors(path, net.state_dict(),
                            {"architecture": "operators.BlurNet", "kwargs": json.dumps(net.arch_kwargs())})


def load_blur_net(path: str | Path, **arch_kwargs) -> tuple[BlurNet, str]:
    """(network, SHA-256) from a ``.safetensors`` file written by :func:`save_blur_net`, or from a
    ``.pt`` state dict with the architecture given as ``arch_kwargs``."""
    p = require_file(path, "blur-network checkpoint")
    if p.suffix == ".safetensors":
        state, meta = safe_safetensors_load(p)
        kwargs = {**json.loads(meta.get("kwargs", "{}")), **arch_kwargs}
    else:
        state, kwargs = safe_torch_load(p), arch_kwargs
    net = BlurNet(**kwargs)
    strict_load(net, state, str(p))
    return net.eval().requires_grad_(False), sha256_file(p)  # a fixed forward model: gradients flow to x only


class NonlinearBlur(NonlinearOperator):
    """``y = f_θ(x, z)`` with a blur network loaded from ``checkpoint`` and a latent code ``z``.

    :param checkpoint: local path (``.safetensors`` from :func:`save_blur_net`, or a ``.pt``
        state dict plus ``arch_kwargs``). Nothing is downloaded.
    :param latent: the code ``[latent_dim]``, or None to draw ``latent_scale · N(0, I)`` from
        ``seed``/``generator``.
    """

    def __init__(self, checkpoint: str, img_size=(1, 64, 64), *, latent=None, latent_scale: float = 1.2,
                 seed: int | None = None, generator: torch.Generator | None = None, sha256: str | None = None,
                 arch_kwargs: dict | None = None):
        net, digest = load_blur_net(checkpoint, **(arch_kwargs or {}))
        if sha256 is not None and sha256 != digest:
            raise ValueError(f"{checkpoint}: SHA-256 {digest[:12]}… differs from the recorded {sha256[:12]}…")
        img_size = tuple(int(s) for s in img_size)
        if img_size[0] != net.channels:
            raise ValueError(f"NonlinearBlur: the network expects {net.channels} channels, img_size has {img_size[0]}")
        if latent is None:
            latent = latent_scale * torch.randn(net.latent_dim, generator=seeded(generator, seed), dtype=torch.float64)
        latent = torch.as_tensor(latent, dtype=torch.float64).reshape(-1)
        if latent.numel() != net.latent_dim:
            raise ValueError(f"NonlinearBlur: latent has {latent.numel()} entries, the network takes {net.latent_dim}")
        super().__init__(img_size, img_size)
        self.net, self.checkpoint, self.sha256 = net, str(checkpoint), digest
        self.arch_kwargs = dict(arch_kwargs or {})
        self.register_buffer("latent", latent)

    def _net_for(self, x: Tensor) -> nn.Module:
        """The network in the input's dtype (a float64 copy is made once, for exact tests)."""
        p = next(self.net.parameters())
        if p.dtype == x.dtype and p.device == x.device:
            return self.net
        cached = self.__dict__.get("_net_cast")
        if cached is None or next(cached.parameters()).dtype != x.dtype or next(cached.parameters()).device != x.device:
            import copy

            cached = copy.deepcopy(self.net).to(device=x.device, dtype=x.dtype)
            self.__dict__["_net_cast"] = cached
        return cached

    def forward_model(self, x: Tensor) -> Tensor:
        net = self._net_for(x)
        return net(x, self.latent.to(x).expand(x.shape[0], -1))

    def _describe_params(self) -> str:
        return f"network {Path(self.checkpoint).name} ({self.sha256[:12]}), img_size={list(self.img_size)}"

    def config(self) -> dict:
        return dict(checkpoint=self.checkpoint, img_size=self.img_size, latent=self.latent, sha256=self.sha256,
                    arch_kwargs=self.arch_kwargs)
