"""The project's compact score network: a small UNet with a noise-level embedding, inside EDM's
preconditioning (Karras et al. 2022, Table 1, σ_data = 0.5), so ``net(x, σ) = D(x; σ)``.

The same UNet inside consistency models' boundary-condition scalings (Song et al. 2023, App. C),
``net(x, σ) = f(x, σ)`` with f(x, σ_min) = x, is architecture ``"invdiff.cm_unet"``
(:func:`build_cm_unet`). The same UNet as a velocity network ``v(x_t, t)`` for flow matching is architecture
``"invdiff.flow_unet"`` (:func:`build_flow_unet`). Registered as architecture ``"invdiff.unet"`` of the project's checkpoint format
(:mod:`invdiff.priors.registry`, :mod:`invdiff.priors.native`); ``invdiff-train``
trains it and :func:`invdiff.priors.load` reads it back. Sized for CPU training of 64×64 priors:
``width=32, mults=(1, 2, 2), blocks=1`` is about 1 M parameters (4 MB in float32); ``patch=2``
runs it on 2×2 pixel blocks, four times cheaper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .consistency import SIGMA_MIN, ConsistencyPreconditioned
from .formats import EDMPreconditioned
from .registry import register_architecture


class _Embed(nn.Module):
    """Sinusoidal features of c_noise = ¼ ln σ, then a two-layer MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise):
        half = self.dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=c_noise.device, dtype=torch.float32) / half)
        arg = c_noise.float()[:, None] * 4.0 * freqs[None]  # ln σ spans about [-6, 4.4]
        return self.mlp(torch.cat([arg.cos(), arg.sin()], dim=1))


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int, groups: int = 8):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = nn.Linear(emb, 2 * c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class _Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, pre-normalised and residual
    (ADM, Dhariwal & Nichol 2021, §3; EDM's DDPM++ at 16×16): ``x + proj(attn(norm(x)))`` with
    ``channels // head_channels`` heads and a zero-initialised output projection."""

    def __init__(self, c: int, head_channels: int = 64, groups: int = 8):
        super().__init__()
        self.heads = max(1, c // int(head_channels))
        if c % self.heads:
            raise ValueError(f"attention over {c} channels cannot be split into {self.heads} heads of "
                             f"{head_channels} channels: pick settings.arch.head_channels dividing the width")
        self.norm = nn.GroupNorm(min(groups, c), c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, C/heads]
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class SmallUNet(nn.Module):
    """UNet on ``channels``-channel images: one resolution per entry of ``mults`` (×``width``
    channels), ``blocks`` residual blocks per resolution on the way down and up, skip connections
    by concatenation, FiLM conditioning on the noise level; ``patch = 2`` folds 2×2 pixels into
    channels first (pixel unshuffle, undone at the output), a 4× cheaper network for CPU training.
    ``attn``: the levels (indices into ``mults``, 0 = full resolution) whose residual blocks are each
    followed by self-attention (:class:`_Attention`, ``head_channels`` per head), as ADM's and EDM's
    networks have at 32/16/8 and 16 pixels; with any, the middle block has one too. Without
    attention the state-dict keys are those of the networks trained before it existed.
    ``forward_unet(x, c_noise)`` is EDM's raw network F."""

    def __init__(self, channels: int = 1, width: int = 32, mults=(1, 2, 2), blocks: int = 1, emb: int = 128,
                 patch: int = 1, in_channels: int | None = None, attn=(), head_channels: int = 64):
        super().__init__()
        attn = {int(a) for a in attn}
        if any(not 0 <= a < len(mults) for a in attn):
            raise ValueError(f"settings.arch.attn lists levels {sorted(attn)}, but mults {list(mults)} has levels "
                             f"0..{len(mults) - 1}")
        self.patch = int(patch)
        self.embed = _Embed(emb)
        self.inp = nn.Conv2d((in_channels or channels) * self.patch**2, width, 3, padding=1)
        chans = [width * m for m in mults]
        self.down = nn.ModuleList()
        c = width
        skips = [c]
        self.down_attn, self.up_attn = nn.ModuleDict(), nn.ModuleDict()  # index in down/up → attention after it
        for level, ch in enumerate(chans):
            for _ in range(blocks):
                self.down.append(_ResBlock(c, ch, emb))
                c = ch
                skips.append(c)
                if level in attn:
                    self.down_attn[str(len(self.down) - 1)] = _Attention(c, head_channels)
            if level < len(chans) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([_ResBlock(c, c, emb), _ResBlock(c, c, emb)])
        self.mid_attn = _Attention(c, head_channels) if attn else None
        self.up = nn.ModuleList()
        for level, ch in reversed(list(enumerate(chans))):
            for _ in range(blocks + 1):
                self.up.append(_ResBlock(c + skips.pop(), ch, emb))
                c = ch
                if level in attn:
                    self.up_attn[str(len(self.up) - 1)] = _Attention(c, head_channels)
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out_norm = nn.GroupNorm(min(8, c), c)
        self.out = nn.Conv2d(c, channels * self.patch**2, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward_unet(self, x, c_noise):
        e = self.embed(c_noise.expand(x.shape[0]) if c_noise.numel() == 1 else c_noise)
        if self.patch > 1:
            x = F.pixel_unshuffle(x, self.patch)
        h = self.inp(x)
        hs = [h]
        for i, m in enumerate(self.down):
            h = m(h, e) if isinstance(m, _ResBlock) else m(h)
            if str(i) in self.down_attn:
                h = self.down_attn[str(i)](h)
            hs.append(h)
        h = self.mid[0](h, e)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid[1](h, e)
        for i, m in enumerate(self.up):
            if isinstance(m, _ResBlock):
                h = m(torch.cat([h, hs.pop()], dim=1), e)
                if str(i) in self.up_attn:
                    h = self.up_attn[str(i)](h)
            else:
                h = m(h)
        out = self.out(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(out, self.patch) if self.patch > 1 else out


@register_architecture("invdiff.unet")
def build_unet(channels: int = 1, width: int = 32, mults=(1, 2, 2), blocks: int = 1, emb: int = 128,
               patch: int = 1, sigma_data: float = 0.5, attn=(), head_channels: int = 64) -> EDMPreconditioned:
    """:class:`SmallUNet` inside EDM's preconditioning (``forward(x, σ) = D(x; σ)``)."""
    return EDMPreconditioned(SmallUNet(channels, width, tuple(mults), blocks, emb, patch, attn=attn,
                                       head_channels=head_channels), "edm", sigma_data)


class FlowUNet(nn.Module):
    """:class:`SmallUNet` as a velocity network ``forward(x_t, t) = v(x_t, t)``, t ∈ [0, 1] (noise at
    1, :mod:`invdiff.priors.flow`). No input or output scaling: on the linear path x_t and the
    target ε − x₀ keep unit order for data in [−1, 1]. Time enters the embedding as c = 250·t,
    i.e. sinusoids of 1000·t (DDPM's timestep scale), zero-initialised output (v = 0 at start)."""

    def __init__(self, channels: int = 1, width: int = 32, mults=(1, 2, 2), blocks: int = 1, emb: int = 128,
                 patch: int = 1, attn=(), head_channels: int = 64):
        super().__init__()
        self.unet = SmallUNet(channels, width, tuple(mults), blocks, emb, patch, attn=attn, head_channels=head_channels)

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1)
        return self.unet.forward_unet(x, 250.0 * t)


@register_architecture("invdiff.flow_unet")
def build_flow_unet(channels: int = 1, width: int = 32, mults=(1, 2, 2), blocks: int = 1, emb: int = 128,
                    patch: int = 1, attn=(), head_channels: int = 64) -> FlowUNet:
    """:class:`FlowUNet` (velocity network of ``invdiff-train objective=flow``)."""
    return FlowUNet(channels, width, tuple(mults), blocks, emb, patch, attn, head_channels)


class AmbientPreconditioned(EDMPreconditioned):
    """An ambient-diffusion denoiser (Daras et al. 2023, §3; Aali et al. 2024): EDM's preconditioning
    around a :class:`SmallUNet` that also reads the corruption pattern as extra input channels —
    ``forward(x, σ, mask) = c_skip x + c_out F([c_in x, mask], c_noise)`` where ``x`` is the further
    corrupted noisy image and ``mask`` its observed set (pixels, or the centred k-space indicator).
    Without ``mask`` (every solver's call ``forward(x, σ)``) the input counts as fully observed (a
    mask of ones): the network then predicts E[x₀ | x] from a complete noisy image, the case it
    extrapolates to (it was trained on subsets of observed entries only). ``sigma_min``: the lowest
    level it was trained at (the data's noise floor, :mod:`invdiff.training.corrupted`)."""

    def __init__(self, unet: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002):
        super().__init__(unet, "edm", sigma_data)
        self.sigma_min = float(sigma_min)

    def sigma_range(self) -> tuple[float, float]:
        return self.sigma_min, 80.0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        sd = self.sigma_data
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        c_in, c_noise = 1 / (sd**2 + s**2).sqrt(), sigma.log() / 4
        mask = torch.ones_like(x) if mask is None else mask.to(x).expand_as(x)
        return c_skip * x + c_out * self.model.forward_unet(torch.cat([c_in * x, mask], 1), c_noise.flatten())


@register_architecture("invdiff.ambient_unet")
def build_ambient_unet(channels: int = 1, width: int = 32, mults=(1, 2, 2), blocks: int = 1, emb: int = 128,
                       patch: int = 1, sigma_data: float = 0.5, sigma_min: float = 0.002, attn=(),
                       head_channels: int = 64) -> AmbientPreconditioned:
    """:class:`AmbientPreconditioned` (``invdiff-train settings.objective=ambient``): a :class:`SmallUNet`
    with ``2·channels`` inputs (image and mask) and ``channels`` outputs."""
    return AmbientPreconditioned(SmallUNet(channels, width, tuple(mults), blocks, emb, patch, in_channels=2 * channels,
                                           attn=attn, head_channels=head_channels), sigma_data, sigma_min)


@register_architecture("invdiff.cm_unet")
def build_cm_unet(channels: int = 1, width: int = 32, mults=(1, 2, 2), blocks: int = 1, emb: int = 128,
                  patch: int = 1, sigma_data: float = 0.5, sigma_min: float = SIGMA_MIN, attn=(),
                  head_channels: int = 64) -> ConsistencyPreconditioned:
    """:class:`SmallUNet` inside the consistency scalings (``forward(x, σ) = f(x, σ)``,
    :class:`~invdiff.priors.consistency.ConsistencyPreconditioned`); its state dict has the keys of
    :func:`build_unet`'s, so consistency distillation starts from an ``invdiff.unet`` teacher's weights."""
    return ConsistencyPreconditioned(SmallUNet(channels, width, tuple(mults), blocks, emb, patch, attn=attn,
                                               head_channels=head_channels), sigma_data, sigma_min)
