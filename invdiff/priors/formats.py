"""The foreign checkpoint formats behind :func:`invdiff.priors.load`, and the network architectures
the project's own format may name.

Each format registers a ``detect`` and a ``load`` function in :mod:`invdiff.priors.registry`, in the
order they are tried: guided-diffusion state dicts, score_sde dicts (refused with the reason), EDM /
InverseBench dicts, diffusers folders. A torch file is read once, whichever formats look at it
(:class:`~invdiff.priors.registry.Checkpoint`). The architectures (``deepinv.DiffUNet``,
``deepinv.NCSNpp``, ``deepinv.ADMUNet``, ``edm.precond``) register with
:func:`~invdiff.priors.registry.register_architecture`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .adapters import NetworkPrior
from .checkpoints import CheckpointError, strict_load
from .diffusers_unet import load_unet2d, read_unet_config, unet_weights_file
from .flow_formats import is_diffusers_flow_folder, load_diffusers_flow
from .registry import Checkpoint, register_architecture, register_format
from .schedules import EDMSchedule, VPSchedule, vp_sde_sigma, vp_sde_time

# -- architectures the project's own format can name ---------------------------------------------


class _NoInit:
    """Skip the random initialisation of convolutions, linear layers and norms while a network
    whose every parameter is about to be loaded from a file is built (a 94 M-parameter ADM UNet:
    3 s of kaiming draws thrown away). Parameters hold uninitialised memory until loaded."""

    CLASSES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear, torch.nn.GroupNorm,
               torch.nn.LayerNorm)

    def __enter__(self):
        self.saved = {cls: cls.reset_parameters for cls in self.CLASSES}
        for cls in self.CLASSES:
            cls.reset_parameters = lambda self: None
        return self

    def __exit__(self, *exc):
        for cls, fn in self.saved.items():
            cls.reset_parameters = fn
        return False


@register_architecture("deepinv.DiffUNet")
def build_diffunet(in_channels: int = 3, out_channels: int = 3, large_model: bool = False,
                   init: bool = True) -> torch.nn.Module:
    """guided-diffusion's ADM UNet for 256×256 images (deepinv's copy; key-for-key compatible).
    ``init=False``: parameters left uninitialised, for a network loaded strictly from a file."""
    from deepinv.models import DiffUNet

    if not init:
        with _NoInit():
            return build_diffunet(in_channels, out_channels, large_model)

    class GuidedDiffusionUNet(DiffUNet):
        """``net(x_vp, t)`` -> the raw ADM output (ε̂ and the learned-variance channels), with
        *fractional* timesteps passed straight to the sinusoidal embedding (no snapping)."""

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.forward_diffusion(x, t)

        def forward_unet(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            """The ε̂ channels only (how InverseBench's VPPrecond calls its ADM network)."""
            return self.forward_diffusion(x, c_noise)[:, : x.shape[1]]

    net = GuidedDiffusionUNet(in_channels=in_channels, out_channels=out_channels, large_model=large_model,
                              pretrained=None)
    # deepinv registers two schedule buffers that guided-diffusion files do not hold; they are fixed
    # by the constructor, so they are kept out of the state dict (strict loading then matches).
    net._non_persistent_buffers_set.update(
        name for name in ("sqrt_1m_alphas_cumprod", "sqrt_alphas_cumprod") if name in net._buffers)
    return net


# -- guided-diffusion / ADM ------------------------------------------------------------------------


def _diffunet_for(state: dict, source: str) -> tuple[torch.nn.Module, int, int]:
    """(unbuilt-weights DiffUNet, input channels, output channels) for a guided-diffusion state dict."""
    w_in, w_out = state["input_blocks.0.0.weight"], state.get("out.2.weight")
    if w_out is None:
        raise CheckpointError(f"{source}: guided-diffusion state dict without 'out.2.weight'")
    channels, c_in, c_out = w_in.shape[0], w_in.shape[1], w_out.shape[0]
    if channels not in (128, 256):
        raise CheckpointError(
            f"{source}: guided-diffusion model with {channels} base channels is not supported yet: only the "
            "256×256 configurations of DPS ffhq_10m.pt (128 channels) and OpenAI 256x256_diffusion_uncond.pt "
            "(256 channels), which deepinv's DiffUNet reproduces, are")
    net = build_diffunet(in_channels=c_in, out_channels=3 if c_out == 6 else c_out, large_model=channels == 256,
                         init=False)  # every parameter comes from the state dict (strict)
    return net, c_in, c_out


@register_format("guided-diffusion", lambda c: c.has("input_blocks.0.0.weight"), "guided-diffusion state dicts")
def _load_guided_diffusion(checkpoint: Checkpoint, overrides: dict) -> NetworkPrior:
    state, source = checkpoint.contents, checkpoint.source
    net, c_in, c_out = _diffunet_for(state, source)
    strict_load(net, state, source)
    kwargs = dict(shape=(c_in, 256, 256), data_range=(0.0, 1.0), model_range=(-1.0, 1.0),
                  learned_sigma=c_out == 2 * c_in)
    kwargs.update(overrides)
    return NetworkPrior(net.eval(), "eps", VPSchedule("linear", 1000), **kwargs)


# -- score_sde ----------------------------------------------------------------------------------------


@register_format("score_sde", lambda c: c.has("model", "step"), "score_sde dicts {model, ema, step}")
def _load_score_sde(checkpoint: Checkpoint, overrides: dict) -> NetworkPrior:
    """score_sde's NCSN++ / DDPM++ (Song et al., ICLR 2021; score-MRI, …): converted key by key into
    deepinv's NCSNpp (EDM's SongUNet) and loaded strictly (:mod:`invdiff.priors.score_sde`). The file
    holds no config, so one is required: ``preset=`` (:data:`invdiff.priors.score_sde.PRESETS`) or
    ``score_sde_config=`` (score_sde's config fields, flat or nested). The EMA weights are used when
    the file has them (``use_ema=False``: the raw ``model`` weights)."""
    from .score_sde import PRESETS, ScoreSDEDenoiser, as_config, convert_score_sde_state, preset_config

    source = checkpoint.source
    preset, config = overrides.pop("preset", None), overrides.pop("score_sde_config", None)
    use_ema = overrides.pop("use_ema", None)
    usable = sorted(k for k, v in PRESETS.items() if v["architecture"] == "score_sde.ncsnpp")
    if (preset is None) == (config is None):
        raise CheckpointError(
            f"{source} is a score_sde checkpoint ({{model, ema, step}}); such files do not store the config "
            "the network was built from, so name it: preset=<name> (one of " + ", ".join(usable) + "; "
            "in the app prior=score_mri prior.path=… sets it) or score_sde_config={...} with score_sde's "
            "config fields (image_size, num_channels, nf, ch_mult, num_res_blocks, attn_resolutions, sde, "
            "sigma_min/sigma_max or beta_min/beta_max, centered, …)" + ("; not both" if preset is not None else "") + ".")
    try:
        cfg = preset_config(preset) if preset is not None else as_config(config)
        kwargs, state = convert_score_sde_state(checkpoint.contents, cfg, use_ema=use_ema)
        net = ScoreSDEDenoiser(build_ncsnpp(**kwargs), cfg)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: {err}") from None
    strict_load(net, {"model." + k: v for k, v in state.items()}, source)
    lo, hi = net.sigma_range()
    prior_kwargs = dict(shape=(cfg.num_channels, cfg.image_size, cfg.image_size), data_range=(0.0, 1.0),
                        model_range=(-1.0, 1.0) if cfg.centered else (0.0, 1.0), conditioning="sigma",
                        learned_sigma=False)
    prior_kwargs.update(overrides)
    return NetworkPrior(net.eval(), "x0", EDMSchedule(lo, hi), **prior_kwargs)


@register_architecture("score_sde.denoiser")
def build_score_sde_denoiser(unet_kwargs: dict, config: dict) -> torch.nn.Module:
    """A converted score_sde network (``deepinv.NCSNpp`` built from ``unet_kwargs``) with score_sde's
    VE/VP conventions (:class:`invdiff.priors.score_sde.ScoreSDEDenoiser`; ``config``: score_sde's
    fields) — what :func:`invdiff.priors.save` records for a loaded score_sde prior."""
    from .score_sde import ScoreSDEDenoiser

    return ScoreSDEDenoiser(build_ncsnpp(**unet_kwargs), config)


# -- EDM / InverseBench ------------------------------------------------------------------------------


class EDMPreconditioned(torch.nn.Module):
    """EDM's preconditioners (Karras et al. 2022, Table 1) around a raw EDM UNet ``F`` held as
    ``self.model`` (so the state dict has EDM's ``model.`` prefix): ``forward(x, σ) = D(x; σ)``.

    * ``edm``: c_skip = σ_d²/(σ²+σ_d²), c_out = σσ_d/√(σ²+σ_d²), c_in = 1/√(σ²+σ_d²), c_noise = ¼ ln σ
    * ``vp``: c_skip = 1, c_out = −σ, c_in = 1/√(σ²+1), c_noise = (M−1)·t(σ),
      t(σ) = (√(β_min² + 2β_d ln(σ²+1)) − β_min)/β_d
    * ``ve``: c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(σ/2)
    """

    def __init__(self, unet: torch.nn.Module, precond: str = "edm", sigma_data: float = 0.5,
                 M: int = 1000, beta_d: float = 19.9, beta_min: float = 0.1):
        super().__init__()
        if precond not in ("edm", "vp", "ve"):
            raise ValueError(f"unknown EDM preconditioning {precond!r}; choose 'edm', 'vp' or 've'")
        self.model, self.precond, self.sigma_data = unet, precond, float(sigma_data)
        self.M, self.beta_d, self.beta_min = M, beta_d, beta_min

    def sigma_range(self) -> tuple[float, float]:
        if self.precond == "vp":  # EDM's VPPrecond: t ∈ [1e-5, 1]
            return vp_sde_sigma(1e-5, self.beta_min, self.beta_d), vp_sde_sigma(1.0, self.beta_min, self.beta_d)
        return (0.002, 80.0) if self.precond == "edm" else (0.02, 100.0)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        if self.precond == "edm":
            sd = self.sigma_data
            c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
            c_in, c_noise = 1 / (sd**2 + s**2).sqrt(), sigma.log() / 4
        elif self.precond == "vp":
            c_skip, c_out, c_in = torch.ones_like(s), -s, 1 / (s**2 + 1).sqrt()
            c_noise = (self.M - 1) * vp_sde_time(sigma, self.beta_min, self.beta_d)
        else:
            c_skip, c_out, c_in, c_noise = torch.ones_like(s), s, torch.ones_like(s), (0.5 * sigma).log()
        return c_skip * x + c_out * self.model.forward_unet(c_in * x, c_noise.flatten())


def edm_unet_config(state: dict, source: str) -> tuple[str, dict]:
    """(class name, constructor kwargs) of the EDM UNet that ``state`` (unprefixed) belongs to."""
    res = sorted({int(m.group(1)) for k in state if (m := re.match(r"enc\.(\d+)x\1_conv\.weight$", k))})
    if not res or "map_layer0.weight" not in state:
        raise CheckpointError(f"{source}: not an EDM SongUNet/DhariwalUNet state dict (no enc.RxR_conv / map_layer0)")
    R = res[-1]
    adm = "out_norm.weight" in state
    kind = "ADMUNet" if adm else "NCSNpp"
    ncsn = "map_noise.freqs" in state
    mc = state["map_layer0.weight"].shape[1] // (2 if (ncsn and not adm) else 1)
    if mc < 128:
        raise CheckpointError(
            f"{source}: EDM networks with fewer than 128 base channels ({mc}) are not supported yet: deepinv's "
            "re-implementation uses 32 GroupNorm groups everywhere where EDM uses min(32, C/4), so such a "
            "checkpoint would load but compute something else")
    blocks = {int(m.group(1)) for k in state if (m := re.match(rf"enc\.{R}x{R}_block(\d+)\.", k))}
    mult, level = [], 0
    while f"enc.{R >> level}x{R >> level}_block0.conv0.weight" in state:
        mult.append(state[f"enc.{R >> level}x{R >> level}_block0.conv0.weight"].shape[0] // mc)
        level += 1
    attn = sorted({int(m.group(1)) for k in state if (m := re.match(r"enc\.(\d+)x\1_block\d+\.qkv\.weight$", k))})
    if "map_label.weight" in state:
        raise CheckpointError(f"{source}: class-conditional EDM networks (map_label: "
                              f"{state['map_label.weight'].shape[1]} classes) are not supported yet; "
                              "invdiff's priors are unconditional")
    out_key = "out_conv.weight" if adm else f"dec.{R}x{R}_aux_conv.weight"
    kwargs = dict(
        img_resolution=R, in_channels=state[f"enc.{R}x{R}_conv.weight"].shape[1],
        out_channels=state[out_key].shape[0], model_channels=mc,
        channel_mult=mult, channel_mult_emb=state["map_layer1.weight"].shape[0] // mc,
        num_blocks=len(blocks), attn_resolutions=attn,
        label_dim=0,
        augment_dim=state["map_augment.weight"].shape[1] if "map_augment.weight" in state else 0,
    )
    if not adm:
        kwargs["model_type"] = "ncsn" if ncsn else "ddpm"
    return kind, kwargs


@register_architecture("deepinv.NCSNpp")
def build_ncsnpp(**kwargs) -> torch.nn.Module:
    from deepinv.models import NCSNpp

    return NCSNpp(pretrained=None, **kwargs)


@register_architecture("deepinv.ADMUNet")
def build_admunet(**kwargs) -> torch.nn.Module:
    from deepinv.models import ADMUNet

    return ADMUNet(pretrained=None, **kwargs)


@register_format("edm", lambda c: c.has("ema") or c.has("net"), "EDM/InverseBench dicts with 'ema' or 'net'")
def _load_edm_dict(checkpoint: Checkpoint, overrides: dict) -> NetworkPrior:
    obj, source = checkpoint.contents, checkpoint.source
    key = "ema" if "ema" in obj else "net"
    state = obj[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: '{key}' holds a {type(state).__name__}, not a state dict")
    if all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    precond = overrides.pop("precond", None)
    sigma_data = overrides.pop("sigma_data", 0.5)
    if "input_blocks.0.0.weight" in state:
        # InverseBench's FFHQ prior: the DPS guided-diffusion UNet inside EDM's VPPrecond.
        unet, c_in, _ = _diffunet_for(state, source)
        shape = (c_in, 256, 256)
        precond = precond or "vp"
    else:
        kind, kwargs = edm_unet_config(state, source)
        unet = (build_admunet if kind == "ADMUNet" else build_ncsnpp)(**kwargs)
        shape = (kwargs["in_channels"], kwargs["img_resolution"], kwargs["img_resolution"])
        precond = precond or "edm"
    net = EDMPreconditioned(unet, precond, sigma_data=sigma_data)
    strict_load(net, {"model." + k: v for k, v in state.items()}, f"{source}['{key}']")
    lo, hi = net.sigma_range()
    prior_kwargs = dict(shape=shape, data_range=(0.0, 1.0), model_range=(-1.0, 1.0), conditioning="sigma",
                        learned_sigma=False)
    prior_kwargs.update(overrides)
    return NetworkPrior(net.eval(), "x0", EDMSchedule(lo, hi), **prior_kwargs)


@register_architecture("edm.precond")
def build_edm_precond(unet: str, unet_kwargs: dict, precond: str = "edm", sigma_data: float = 0.5, M: int = 1000,
                      beta_d: float = 19.9, beta_min: float = 0.1) -> torch.nn.Module:
    """An EDM UNet (``deepinv.NCSNpp`` or ``deepinv.ADMUNet``) inside EDM's preconditioning
    (``M``, ``beta_d``, ``beta_min``: VPPrecond's constants; EDM's defaults)."""
    builders = {"deepinv.NCSNpp": build_ncsnpp, "deepinv.ADMUNet": build_admunet}
    if unet not in builders:
        raise CheckpointError(f"edm.precond: unknown unet {unet!r}; known: {sorted(builders)}")
    return EDMPreconditioned(builders[unet](**unet_kwargs), precond, sigma_data, M=M, beta_d=beta_d, beta_min=beta_min)


# -- diffusers ----------------------------------------------------------------------------------------


def weights_file(folder: Path) -> Path:
    """The weights file of a model folder (what the SHA-256 is taken of)."""
    return unet_weights_file(folder)


@register_format("diffusers", lambda c: c.kind == "folder", "diffusers folders", weights=weights_file)
def _load_diffusers(checkpoint: Checkpoint, overrides: dict) -> NetworkPrior:
    """A diffusers ``UNet2DModel`` folder (``config.json`` + weights), or a pipeline folder with
    ``unet/`` and ``scheduler/``; one with a flow-matching scheduler is a
    :class:`~invdiff.priors.flow.FlowPrior` (:mod:`invdiff.priors.flow_formats`)."""
    folder = checkpoint.path
    if is_diffusers_flow_folder(folder):  # a flow-matching scheduler: the network is a velocity
        return load_diffusers_flow(checkpoint, overrides)
    _, config = read_unet_config(folder)
    net = load_unet2d(folder, config)
    sched_path = next((p for p in (folder / "scheduler" / "scheduler_config.json",
                                   folder / "scheduler_config.json") if p.is_file()), None)
    sched_cfg: dict[str, Any] = json.loads(sched_path.read_text()) if sched_path else {}
    schedule = _diffusers_schedule(sched_cfg, str(sched_path or folder))
    prediction = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}.get(sched_cfg.get("prediction_type", "epsilon"))
    if prediction is None:
        raise CheckpointError(f"{sched_path}: prediction_type {sched_cfg.get('prediction_type')!r} is not supported")
    size = config.get("sample_size", 64)
    size = (size, size) if isinstance(size, int) else tuple(size)
    kwargs = dict(shape=(config.get("in_channels", 3), *size), data_range=(0.0, 1.0), model_range=(-1.0, 1.0),
                  learned_sigma=False)
    kwargs.update(overrides)
    return NetworkPrior(net, prediction, schedule, **kwargs)


def _diffusers_schedule(cfg: dict, source: str) -> VPSchedule:
    kind = {"linear": "linear", "squaredcos_cap_v2": "cosine", "scaled_linear": "scaled_linear"}.get(
        cfg.get("beta_schedule", "linear"))
    if kind is None or cfg.get("trained_betas") is not None:
        raise CheckpointError(f"{source}: beta_schedule {cfg.get('beta_schedule')!r} / trained_betas is not supported yet")
    return VPSchedule(kind, int(cfg.get("num_train_timesteps", 1000)), float(cfg.get("beta_start", 1e-4)),
                      float(cfg.get("beta_end", 0.02)))
