"""score_sde (Song et al., ICLR 2021) NCSN++ / DDPM++ state dicts → deepinv's NCSNpp (EDM's SongUNet).

score_sde saves ``{model, ema, step}`` (plus ``optimizer`` when training); ``model`` is the state dict
of ``DataParallel(NCSNpp(config))``: ``module.sigmas`` and ``module.all_modules.<i>.<param>``, where
``all_modules`` is one flat ``ModuleList`` whose order is fixed by the config. ``ema`` is
``{decay, num_updates, shadow_params}``, ``shadow_params`` being a *list* (no names) of the trainable
parameters in ``model.parameters()`` order: everything but ``sigmas`` (a buffer) and the Fourier
embedding's ``W`` (``requires_grad=False``).

This module

* derives the exact score_sde key set (and shapes, in state-dict order) from a config:
  :func:`score_sde_keys`;
* converts, key by key, a score_sde state dict into deepinv's ``NCSNpp`` layout:
  :func:`convert_score_sde_state` (strict: a key missing, left over or of the wrong shape is refused);
* keeps the configurations of the checkpoints the project cares about as plain data: :data:`PRESETS`.

The module order and the correspondence are written down in ``score_sde_layout.md`` next to this file.
Only the two configurations deepinv's NCSNpp can express convert: NCSN++ as in score_sde's VE configs
(``model_type='ncsn'``) and DDPM++ as in its VP configs (``model_type='ddpm'``); the rest is refused
with the reason (:func:`unsupported_reasons`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from .schedules import vp_sde_sigma, vp_sde_time

__all__ = [
    "ScoreSDEConfig", "as_config", "score_sde_keys", "score_sde_layout", "ema_parameter_keys",
    "unsupported_reasons", "convert_score_sde_state", "network_semantics", "PRESETS", "preset_config",
]


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreSDEConfig:
    """The fields of a score_sde ``ml_collections`` config that fix NCSNpp's modules and their use.

    Names follow score_sde (``config.data.*``, ``config.model.*``, ``config.training.*``); defaults are
    those of ``configs/ve/cifar10_ncsnpp_continuous.py`` (NCSN++, VE SDE) except ``image_size`` and
    ``num_channels``, which have none.
    """

    image_size: int                       # config.data.image_size
    num_channels: int                     # config.data.num_channels
    centered: bool = False                # config.data.centered: data in [-1, 1] (else [0, 1], mapped inside)
    name: str = "ncsnpp"                  # config.model.name
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"         # 'biggan' | 'ddpm'
    progressive: str = "none"             # 'none' | 'output_skip' | 'residual'
    progressive_input: str = "residual"   # 'none' | 'input_skip' | 'residual'
    progressive_combine: str = "sum"      # 'sum' | 'cat' (used by input_skip only)
    embedding_type: str = "fourier"       # 'fourier' | 'positional'
    fourier_scale: float = 16.0           # initialisation only (W is stored)
    init_scale: float = 0.0               # initialisation only
    scale_by_sigma: bool = True
    nonlinearity: str = "swish"
    normalization: str = "GroupNorm"
    attention_type: str = "ddpm"
    # SDE (config.training.sde, config.model.*): not part of the network's weights except ``sigmas``.
    sde: str = "vesde"                    # 'vesde' | 'vpsde' | 'subvpsde'
    continuous: bool = True               # config.training.continuous
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        object.__setattr__(self, "fir_kernel", tuple(int(k) for k in self.fir_kernel))
        for name in ("name", "resblock_type", "progressive", "progressive_input", "progressive_combine",
                     "embedding_type", "sde"):
            object.__setattr__(self, name, str(getattr(self, name)).lower())
        problems = []
        if self.resblock_type not in ("biggan", "ddpm"):
            problems.append(f"resblock_type {self.resblock_type!r} (score_sde knows 'biggan', 'ddpm')")
        if self.progressive not in ("none", "output_skip", "residual"):
            problems.append(f"progressive {self.progressive!r}")
        if self.progressive_input not in ("none", "input_skip", "residual"):
            problems.append(f"progressive_input {self.progressive_input!r}")
        if self.progressive_combine not in ("sum", "cat"):
            problems.append(f"progressive_combine {self.progressive_combine!r}")
        if self.embedding_type not in ("fourier", "positional"):
            problems.append(f"embedding_type {self.embedding_type!r}")
        if not self.ch_mult or self.nf <= 0 or self.num_res_blocks < 0:
            problems.append(f"nf={self.nf}, ch_mult={self.ch_mult}, num_res_blocks={self.num_res_blocks}")
        if self.image_size % (2 ** (len(self.ch_mult) - 1)):
            problems.append(f"image_size {self.image_size} not divisible by 2**{len(self.ch_mult) - 1}")
        if problems:
            raise ValueError("ScoreSDEConfig: invalid " + "; ".join(problems) + ".")

    @property
    def resolutions(self) -> list[int]:
        return [self.image_size // (2 ** i) for i in range(len(self.ch_mult))]


_DATA_FIELDS = {"image_size", "num_channels", "centered"}
_TRAINING_FIELDS = {"sde", "continuous"}


def as_config(config: Any) -> ScoreSDEConfig:
    """A :class:`ScoreSDEConfig` from one, from a flat mapping of its fields, or from a score_sde-style
    nested config (a mapping or ``ml_collections.ConfigDict`` with ``data``/``model``/``training``)."""
    if isinstance(config, ScoreSDEConfig):
        return config
    names = {f.name for f in dataclasses.fields(ScoreSDEConfig)}

    def get(obj, key):
        if isinstance(obj, Mapping):
            return obj.get(key, _MISSING)
        return getattr(obj, key, _MISSING)

    sections = {s: get(config, s) for s in ("data", "model", "training")}
    if sections["model"] is _MISSING and sections["data"] is _MISSING:  # flat mapping
        if not isinstance(config, Mapping):
            raise TypeError(f"as_config: expected a ScoreSDEConfig, a mapping or a score_sde config, got "
                            f"{type(config).__name__}")
        unknown = set(config) - names
        if unknown:
            raise ValueError(f"as_config: unknown field(s) {sorted(unknown)}; known: {sorted(names)}")
        return ScoreSDEConfig(**config)
    values = {}
    for name in names:
        section = "data" if name in _DATA_FIELDS else "training" if name in _TRAINING_FIELDS else "model"
        src = sections[section]
        if src is _MISSING:
            continue
        v = get(src, name)
        if v is not _MISSING:
            values[name] = v
    return ScoreSDEConfig(**values)


class _Missing:
    pass


_MISSING = _Missing()


# -- score_sde's module order -----------------------------------------------------------------------


@dataclass
class _Module:
    """One entry of score_sde's ``all_modules``: its kind, its parameters (state-dict order) and the
    SongUNet module it corresponds to (None for modules SongUNet lacks; only meaningful for the
    configurations :func:`unsupported_reasons` accepts)."""

    kind: str
    params: "OrderedDict[str, tuple[int, ...]]"
    target: str | None = None             # SongUNet module (e.g. 'enc.16x16_block0')
    info: dict = field(default_factory=dict)


def _gn(c: int) -> "OrderedDict[str, tuple[int, ...]]":
    return OrderedDict([("weight", (c,)), ("bias", (c,))])


def _conv(cin: int, cout: int, k: int, prefix: str = "", bias: bool = True) -> "OrderedDict":
    p = OrderedDict([(prefix + "weight", (cout, cin, k, k))])
    if bias:
        p[prefix + "bias"] = (cout,)
    return p


def _resblock(cfg: ScoreSDEConfig, in_ch: int, out_ch: int | None = None, up: bool = False,
              down: bool = False) -> _Module:
    """ResnetBlockBigGANpp / ResnetBlockDDPMpp parameters, in their registration order."""
    out_ch = out_ch or in_ch
    temb = 4 * cfg.nf  # score_sde passes temb_dim=nf*4 whether or not the model is conditional
    p: OrderedDict = OrderedDict()
    for k, s in _gn(in_ch).items():
        p[f"GroupNorm_0.{k}"] = s
    p.update(_conv(in_ch, out_ch, 3, "Conv_0."))
    p["Dense_0.weight"], p["Dense_0.bias"] = (out_ch, temb), (out_ch,)
    for k, s in _gn(out_ch).items():
        p[f"GroupNorm_1.{k}"] = s
    p.update(_conv(out_ch, out_ch, 3, "Conv_1."))
    if cfg.resblock_type == "biggan":
        if in_ch != out_ch or up or down:
            p.update(_conv(in_ch, out_ch, 1, "Conv_2."))
        kind = "resblock_biggan"
    else:  # ResnetBlockDDPMpp, conv_shortcut=False in NCSNpp: a NIN shortcut
        if in_ch != out_ch:
            p["NIN_0.W"], p["NIN_0.b"] = (in_ch, out_ch), (out_ch,)
        kind = "resblock_ddpm"
    return _Module(kind, p, info=dict(in_ch=in_ch, out_ch=out_ch, up=up, down=down))


def _attn(c: int) -> _Module:
    p: OrderedDict = OrderedDict()
    for k, s in _gn(c).items():
        p[f"GroupNorm_0.{k}"] = s
    for i in range(4):
        p[f"NIN_{i}.W"], p[f"NIN_{i}.b"] = (c, c), (c,)
    return _Module("attn", p, info=dict(channels=c))


def _resample(cfg: ScoreSDEConfig, kind: str, in_ch: int, out_ch: int | None, with_conv: bool) -> _Module:
    """layerspp.Upsample / Downsample: 'Conv2d_0' (FIR, up_or_down_sampling.Conv2d) or 'Conv_0'."""
    out_ch = out_ch or in_ch
    p: OrderedDict = OrderedDict()
    if with_conv:
        p.update(_conv(in_ch, out_ch, 3, "Conv2d_0." if cfg.fir else "Conv_0."))
    return _Module(kind, p, info=dict(in_ch=in_ch, out_ch=out_ch, with_conv=with_conv))


def score_sde_layout(config: Any) -> list[_Module]:
    """score_sde's ``all_modules``, in order, for ``config`` (see ``score_sde_layout.md``).

    Follows the construction loop of score_sde's ``models/ncsnpp.py`` (``NCSNpp.__init__``) for every
    option it accepts (also those the converter refuses, so that :func:`score_sde_keys` describes any
    score_sde NCSNpp checkpoint); ``target`` names the SongUNet module where there is one.
    """
    cfg = as_config(config)
    nf, L, res = cfg.nf, len(cfg.ch_mult), cfg.resolutions
    C = cfg.num_channels
    mods: list[_Module] = []
    if cfg.embedding_type == "fourier":
        mods.append(_Module("fourier", OrderedDict([("W", (nf,))]), "map_noise"))
        embed_dim = 2 * nf
    else:
        embed_dim = nf
    if cfg.conditional:
        mods.append(_Module("dense", OrderedDict([("weight", (4 * nf, embed_dim)), ("bias", (4 * nf,))]),
                            "map_layer0"))
        mods.append(_Module("dense", OrderedDict([("weight", (4 * nf, 4 * nf)), ("bias", (4 * nf,))]),
                            "map_layer1"))

    R = cfg.image_size
    mods.append(_Module("conv_in", _conv(C, nf, 3), f"enc.{R}x{R}_conv"))
    hs_c = [nf]
    in_ch = nf
    pyramid_in = C
    # Encoder.
    for i in range(L):
        r = res[i]
        for b in range(cfg.num_res_blocks):
            out_ch = nf * cfg.ch_mult[i]
            m = _resblock(cfg, in_ch, out_ch)
            m.target = f"enc.{r}x{r}_block{b}"
            mods.append(m)
            in_ch = out_ch
            if r in cfg.attn_resolutions:
                a = _attn(in_ch)
                a.target = m.target
                mods.append(a)
            hs_c.append(in_ch)
        if i != L - 1:
            r2 = res[i + 1]
            if cfg.resblock_type == "ddpm":
                mods.append(_resample(cfg, "downsample", in_ch, None, cfg.resamp_with_conv))
            else:
                m = _resblock(cfg, in_ch, down=True)
                m.target = f"enc.{r2}x{r2}_down"
                mods.append(m)
            if cfg.progressive_input == "input_skip":
                mods.append(_Module("combine", _conv(pyramid_in, in_ch, 1, "Conv_0.")))
                if cfg.progressive_combine == "cat":
                    in_ch *= 2
            elif cfg.progressive_input == "residual":
                m = _resample(cfg, "pyramid_downsample", pyramid_in, in_ch, True)
                m.target = f"enc.{r2}x{r2}_aux_residual"
                mods.append(m)
                pyramid_in = in_ch
            hs_c.append(in_ch)

    # Middle.
    in_ch = hs_c[-1]
    rL = res[-1]
    for kind, target in (("res", "in0"), ("attn", "in0"), ("res", "in1")):
        m = _resblock(cfg, in_ch) if kind == "res" else _attn(in_ch)
        m.target = f"dec.{rL}x{rL}_{target}"
        mods.append(m)

    # Decoder.
    pyramid_ch = 0
    for i in reversed(range(L)):
        r = res[i]
        for b in range(cfg.num_res_blocks + 1):
            out_ch = nf * cfg.ch_mult[i]
            m = _resblock(cfg, in_ch + hs_c.pop(), out_ch)
            m.target = f"dec.{r}x{r}_block{b}"
            mods.append(m)
            in_ch = out_ch
        if r in cfg.attn_resolutions:
            a = _attn(in_ch)
            a.target = f"dec.{r}x{r}_block{cfg.num_res_blocks}"
            mods.append(a)
        if cfg.progressive != "none":
            if i == L - 1 or cfg.progressive == "output_skip":
                mods.append(_Module("pyramid_norm", _gn(in_ch)))
                if cfg.progressive == "output_skip":
                    mods.append(_Module("pyramid_conv", _conv(in_ch, C, 3)))
                    pyramid_ch = C
                else:
                    mods.append(_Module("pyramid_conv", _conv(in_ch, in_ch, 3)))
                    pyramid_ch = in_ch
            else:  # 'residual' below the lowest resolution: a pyramid upsample with a conv
                mods.append(_resample(cfg, "pyramid_upsample", pyramid_ch, in_ch, True))
                pyramid_ch = in_ch
        if i != 0:
            r2 = res[i - 1]
            if cfg.resblock_type == "ddpm":
                mods.append(_resample(cfg, "upsample", in_ch, None, cfg.resamp_with_conv))
            else:
                m = _resblock(cfg, in_ch, up=True)
                m.target = f"dec.{r2}x{r2}_up"
                mods.append(m)
    assert not hs_c
    if cfg.progressive != "output_skip":
        mods.append(_Module("out_norm", _gn(in_ch), f"dec.{R}x{R}_aux_norm"))
        mods.append(_Module("out_conv", _conv(in_ch, C, 3), f"dec.{R}x{R}_aux_conv"))
    return mods


def score_sde_keys(config: Any, prefix: str = "module.") -> "OrderedDict[str, tuple[int, ...]]":
    """Every key of a score_sde NCSNpp state dict for ``config`` and its shape, in state-dict order.

    ``prefix`` is ``'module.'`` for the files score_sde writes (its model is wrapped in
    ``DataParallel``); pass ``''`` for an unwrapped model. ``sigmas`` has shape ``(num_scales,)``.
    """
    cfg = as_config(config)
    keys: OrderedDict = OrderedDict([(prefix + "sigmas", (cfg.num_scales,))])
    for i, m in enumerate(score_sde_layout(cfg)):
        for name, shape in m.params.items():
            keys[f"{prefix}all_modules.{i}.{name}"] = tuple(shape)
    return keys


def ema_parameter_keys(config: Any, prefix: str = "module.") -> list[str]:
    """The keys, in order, that score_sde's ``ema['shadow_params']`` list holds: the parameters with
    ``requires_grad`` (all but the buffer ``sigmas`` and the Fourier embedding's fixed ``W``)."""
    cfg = as_config(config)
    skip = {prefix + "sigmas"}
    if cfg.embedding_type == "fourier":
        skip.add(prefix + "all_modules.0.W")
    return [k for k in score_sde_keys(cfg, prefix) if k not in skip]


# -- what deepinv's NCSNpp can represent -------------------------------------------------------------

_NCSN = dict(embedding_type="fourier", fir=True, fir_kernel=(1, 3, 3, 1), progressive_input="residual")
_DDPM = dict(embedding_type="positional", fir=False, progressive_input="none")


def unsupported_reasons(config: Any, allow_groupnorm_mismatch: bool = False) -> list[str]:
    """Why deepinv's NCSNpp cannot reproduce score_sde's network for ``config`` ([] when it can)."""
    cfg = as_config(config)
    why = []
    if cfg.name != "ncsnpp":
        why.append(f"model.name is {cfg.name!r}: only score_sde's 'ncsnpp' network (NCSN++ / DDPM++) is "
                   "handled, not its original 'ddpm' or 'ncsn'/'ncsnv2' networks")
    if cfg.resblock_type != "biggan":
        why.append("resblock_type 'ddpm' (ResnetBlockDDPMpp with separate Downsample/Upsample modules and NIN "
                   "shortcuts) has no SongUNet counterpart: SongUNet resamples inside its residual blocks "
                   "(BigGAN style)")
    if cfg.progressive != "none":
        why.append(f"progressive={cfg.progressive!r}: deepinv's NCSNpp always uses the plain decoder "
                   "(EDM's SongUNet has decoder_type='skip' for 'output_skip' but deepinv does not expose it, "
                   "and 'residual' exists in neither)")
    if not cfg.conditional:
        why.append("conditional=False (no noise conditioning): SongUNet always adds its embedding")
    if not cfg.skip_rescale:
        why.append("skip_rescale=False: SongUNet scales every residual sum by sqrt(1/2)")
    if cfg.nonlinearity.lower() not in ("swish", "silu"):
        why.append(f"nonlinearity {cfg.nonlinearity!r}: SongUNet uses SiLU (score_sde's 'swish')")
    if cfg.normalization.lower() != "groupnorm":
        why.append(f"normalization {cfg.normalization!r}: SongUNet uses GroupNorm")
    if cfg.attention_type.lower() != "ddpm":
        why.append(f"attention_type {cfg.attention_type!r}: only score_sde's 'ddpm' attention maps")
    if cfg.resblock_type == "biggan" and cfg.progressive == "none":
        combo = dict(embedding_type=cfg.embedding_type, fir=cfg.fir,
                     progressive_input=cfg.progressive_input)
        if cfg.fir:
            combo["fir_kernel"] = cfg.fir_kernel
        if combo != _NCSN and combo != _DDPM:
            why.append(
                f"embedding_type={cfg.embedding_type!r}, fir={cfg.fir}"
                + (f" (kernel {list(cfg.fir_kernel)})" if cfg.fir else "")
                + f", progressive_input={cfg.progressive_input!r}: deepinv's NCSNpp ties these together and "
                "offers only model_type='ncsn' (fourier, FIR [1,3,3,1], progressive_input 'residual') and "
                "model_type='ddpm' (positional, no FIR, progressive_input 'none')")
    chans = sorted({cfg.nf * m for m in cfg.ch_mult})
    if any(c % 32 for c in chans):
        why.append(f"channel counts {chans} are not all multiples of 32: deepinv's NCSNpp uses 32 GroupNorm "
                   "groups everywhere")
    elif chans[0] < 128 and not allow_groupnorm_mismatch:
        why.append(f"the narrowest level has {chans[0]} channels (< 128): score_sde uses min(C/4, 32) GroupNorm "
                   "groups and deepinv's NCSNpp always 32, so the weights would load but compute something else")
    return why


def songunet_kwargs(config: Any) -> dict:
    """Constructor kwargs of deepinv's ``NCSNpp`` (without ``pretrained``) for a supported ``config``."""
    cfg = as_config(config)
    return dict(
        model_type="ncsn" if cfg.embedding_type == "fourier" else "ddpm",
        img_resolution=cfg.image_size,
        in_channels=cfg.num_channels,
        out_channels=cfg.num_channels,
        label_dim=0,
        augment_dim=0,
        model_channels=cfg.nf,
        channel_mult=list(cfg.ch_mult),
        channel_mult_emb=4,
        num_blocks=cfg.num_res_blocks,
        attn_resolutions=list(cfg.attn_resolutions),
        dropout=float(cfg.dropout),
    )


def network_semantics(config: Any) -> dict:
    """How score_sde calls the network and reads its output, in terms of the converted NCSNpp's
    ``forward_unet(x_in, noise_label)`` (which returns score_sde's ``h`` before ``scale_by_sigma``).

    * ``x_in = 2 x - 1`` when ``centered`` is False (score_sde does it inside its network), else ``x``;
    * noise label: ``log σ`` (Fourier embedding, continuous VE), ``999 t`` (continuous VP / sub-VP,
      positional), the discrete step index otherwise;
    * VE with ``scale_by_sigma``: score = h / σ, i.e. h = −ε (EDM's F with D = x + σ_[-1,1] F);
      VP / sub-VP: score = −h / std, i.e. h = ε.
    """
    cfg = as_config(config)
    if cfg.embedding_type == "fourier":
        label = "log_sigma"
    elif cfg.sde in ("vpsde", "subvpsde") and cfg.continuous:
        label = "999*t"
    else:
        label = "timestep_index"
    out = {"vesde": "minus_eps" if cfg.scale_by_sigma else "sigma_times_score",
           "vpsde": "eps", "subvpsde": "eps"}.get(cfg.sde, "unknown")
    return dict(input_shift=not cfg.centered, noise_label=label, output=out, sde=cfg.sde)


# -- the converter -----------------------------------------------------------------------------------


def _resample_filter(cfg: ScoreSDEConfig) -> torch.Tensor:
    f = torch.as_tensor(cfg.fir_kernel if cfg.fir else (1, 1), dtype=torch.float32)
    return (f.outer(f) / f.sum().square()).reshape(1, 1, len(f), len(f))


def _refuse(what: str, items: list[str], hint: str) -> ValueError:
    shown = ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")
    return ValueError(f"score_sde checkpoint refused: {what}: {shown}. {hint}")


_CONFIG_HINT = ("The checkpoint does not have the layout score_sde's NCSNpp builds for this config "
                "(check nf, ch_mult, num_res_blocks, attn_resolutions, image_size, num_channels, "
                "embedding_type, progressive/progressive_input and resblock_type against the config the "
                "checkpoint was trained with); nothing is loaded loosely.")


def _split_checkpoint(state: Mapping, use_ema: bool | None) -> tuple[dict, list | None]:
    if "model" in state and isinstance(state["model"], Mapping):
        model = dict(state["model"])
        if use_ema is None:
            use_ema = "ema" in state
        if use_ema:
            ema = state.get("ema")
            if not isinstance(ema, Mapping) or "shadow_params" not in ema:
                raise ValueError("score_sde checkpoint refused: use_ema=True but it has no "
                                 "ema['shadow_params'] list.")
            return model, list(ema["shadow_params"])
        return model, None
    if use_ema:
        raise ValueError("score_sde checkpoint refused: use_ema=True needs the whole {model, ema, step} "
                         "dict, not a bare state dict.")
    return dict(state), None


def convert_score_sde_state(state: Mapping, config: Any, *, use_ema: bool | None = None,
                            allow_groupnorm_mismatch: bool = False,
                            sigma_rtol: float = 1e-3) -> tuple[dict, "OrderedDict[str, torch.Tensor]"]:
    """``(songunet_kwargs, new_state)``: ``new_state`` loads strictly into
    ``deepinv.models.NCSNpp(pretrained=None, **songunet_kwargs)``.

    ``state`` is either score_sde's model state dict (keys ``module.…`` or unprefixed) or a whole
    checkpoint ``{model, ema, step, …}``; with the latter the EMA weights are used when present
    (``use_ema=None``) — they are what score_sde and score-MRI sample with — and the two entries that
    the EMA list does not hold (``sigmas``, the Fourier ``W``) come from ``model``.

    Refused (``ValueError``): a config deepinv's NCSNpp cannot represent, a key missing or left over, a
    shape that differs, an EMA list of the wrong length, and a ``sigmas`` buffer whose end points are
    not the config's ``sigma_max``/``sigma_min`` (relative tolerance ``sigma_rtol``). The *length* of
    ``sigmas`` is not checked: the converted network never reads it (score-MRI drops it on load too).
    ``allow_groupnorm_mismatch`` lets configurations narrower than 128 channels through (tests only:
    GroupNorm group counts then differ, see :func:`unsupported_reasons`).
    """
    cfg = as_config(config)
    why = unsupported_reasons(cfg, allow_groupnorm_mismatch)
    if why:
        raise ValueError("score_sde checkpoint refused: deepinv's NCSNpp (EDM's SongUNet) cannot reproduce "
                         "this score_sde configuration: " + "; ".join(why) + ".")
    model, shadow = _split_checkpoint(state, use_ema)

    prefixed = [k.startswith("module.") for k in model]
    if prefixed and all(prefixed):
        model = {k[len("module."):]: v for k, v in model.items()}
    elif any(prefixed):
        raise ValueError("score_sde checkpoint refused: some keys carry the DataParallel prefix 'module.' and "
                         "others do not, so it is not one score_sde model's state dict.")

    expected = score_sde_keys(cfg, prefix="")
    missing = [k for k in expected if k not in model]
    extra = [k for k in model if k not in expected]
    if missing:
        raise _refuse(f"{len(missing)} key(s) missing", missing, _CONFIG_HINT)
    if extra:
        raise _refuse(f"{len(extra)} key(s) left over", extra, _CONFIG_HINT)
    for k, shape in expected.items():
        v = model[k]
        if not isinstance(v, torch.Tensor):
            raise _refuse("a value that is not a tensor", [k], _CONFIG_HINT)
        if k == "sigmas":
            if v.ndim != 1:
                raise _refuse(f"'sigmas' has shape {tuple(v.shape)}, expected one dimension", [k], _CONFIG_HINT)
            continue
        if tuple(v.shape) != shape:
            raise _refuse("shape mismatch", [f"{k} {tuple(v.shape)} (expected {shape})"], _CONFIG_HINT)
    sig = model["sigmas"].detach().double()
    if sig.numel() >= 2:
        hi, lo = float(sig.max()), float(sig.min())
        if not (math.isclose(hi, cfg.sigma_max, rel_tol=sigma_rtol)
                and math.isclose(lo, cfg.sigma_min, rel_tol=sigma_rtol)):
            raise ValueError(
                f"score_sde checkpoint refused: its 'sigmas' buffer spans [{lo:.6g}, {hi:.6g}] but the config "
                f"says sigma_min={cfg.sigma_min}, sigma_max={cfg.sigma_max}; score_sde computes that buffer "
                "from the config it trained with, so this is another configuration (wrong preset?).")

    if shadow is not None:
        names = ema_parameter_keys(cfg, prefix="")
        if len(shadow) != len(names):
            raise ValueError(f"score_sde checkpoint refused: ema['shadow_params'] holds {len(shadow)} tensors "
                             f"but this config's network has {len(names)} trainable parameters; "
                             + _CONFIG_HINT)
        for name, t in zip(names, shadow):
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != expected[name]:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise _refuse("EMA shape mismatch", [f"{name} {got} (expected {expected[name]})"], _CONFIG_HINT)
            model[name] = t

    out: OrderedDict = OrderedDict()
    filt = _resample_filter(cfg)

    def put(key: str, value: torch.Tensor):
        if key in out:  # pragma: no cover - the layout walk would be wrong
            raise AssertionError(f"duplicate SongUNet key {key}")
        out[key] = value.detach().clone().contiguous()

    for i, m in enumerate(score_sde_layout(cfg)):
        src = lambda name: model[f"all_modules.{i}.{name}"]  # noqa: E731
        t = m.target
        if t is None:  # pragma: no cover - excluded by unsupported_reasons
            raise AssertionError(f"all_modules.{i} ({m.kind}) has no SongUNet counterpart")
        if m.kind == "fourier":
            put(f"{t}.freqs", src("W"))
        elif m.kind in ("dense", "conv_in", "out_norm", "out_conv"):
            put(f"{t}.weight", src("weight"))
            put(f"{t}.bias", src("bias"))
        elif m.kind == "resblock_biggan":
            for a, b in (("GroupNorm_0", "norm0"), ("Conv_0", "conv0"), ("Dense_0", "affine"),
                         ("GroupNorm_1", "norm1"), ("Conv_1", "conv1"), ("Conv_2", "skip")):
                if f"{a}.weight" not in m.params:
                    continue
                put(f"{t}.{b}.weight", src(f"{a}.weight"))
                put(f"{t}.{b}.bias", src(f"{a}.bias"))
            if m.info["up"] or m.info["down"]:
                put(f"{t}.conv0.resample_filter", filt)
                put(f"{t}.skip.resample_filter", filt)
        elif m.kind == "attn":
            # score_sde's NIN computes y[c_out] = sum_in x[c_in] W[c_in, c_out] + b: a 1x1 conv with
            # weight W.T. SongUNet's qkv conv interleaves its outputs per channel: row 3c + j is channel
            # c of q (j=0), k (j=1), v (j=2) (it reshapes to [N, C, 3, HW] and unbinds dim 2).
            c = m.info["channels"]
            put(f"{t}.norm2.weight", src("GroupNorm_0.weight"))
            put(f"{t}.norm2.bias", src("GroupNorm_0.bias"))
            w = torch.stack([src(f"NIN_{j}.W").t() for j in range(3)], dim=1)  # [C_out, 3, C_in]
            b = torch.stack([src(f"NIN_{j}.b") for j in range(3)], dim=1)      # [C_out, 3]
            put(f"{t}.qkv.weight", w.reshape(3 * c, c, 1, 1))
            put(f"{t}.qkv.bias", b.reshape(3 * c))
            put(f"{t}.proj.weight", src("NIN_3.W").t().reshape(c, c, 1, 1))
            put(f"{t}.proj.bias", src("NIN_3.b"))
        elif m.kind == "pyramid_downsample":
            put(f"{t}.weight", src("Conv2d_0.weight"))
            put(f"{t}.bias", src("Conv2d_0.bias"))
            put(f"{t}.resample_filter", filt)
        else:  # pragma: no cover - excluded by unsupported_reasons
            raise AssertionError(f"no conversion for {m.kind}")
    return songunet_kwargs(cfg), out


# -- presets -----------------------------------------------------------------------------------------
# Plain data. Each value cites the file it comes from (repository @ commit, path). Where a value is not
# written in the source it says so.

_SCORE_MRI = "HJ-harry/score-MRI@8359aae"
_DDS = "HJ-harry/DDS@509b140"
_DIFFUSIONMBIR = "HJ-harry/DiffusionMBIR@592ea29"

# The NCSN++ / VE fields that score-MRI's configs/ve/fastmri_knee_320_ncsnpp_continuous.py and
# DiffusionMBIR's configs/ve/AAPM_256_ncsnpp_continuous.py set identically (each on top of its own
# configs/default_lsun_configs.py); only data.image_size differs between the two.
_VE_NCSNPP_1CH = dict(
    num_channels=1,            # default_lsun_configs.py: data.num_channels = 1 (is_complex=False: magnitude)
    centered=False,            # default_lsun_configs.py: data.centered = False (data in [0, 1])
    name="ncsnpp",             # *_ncsnpp_continuous.py: model.name
    nf=128,                    # ... model.nf = 128
    ch_mult=(1, 2, 2, 2),      # ... model.ch_mult
    num_res_blocks=4,          # ... model.num_res_blocks = 4
    attn_resolutions=(16,),    # ... model.attn_resolutions = (16,)
    dropout=0.0,               # default_lsun_configs.py: model.dropout = 0.
    resamp_with_conv=True,     # *_ncsnpp_continuous.py: model.resamp_with_conv
    conditional=True,          # ... model.conditional
    fir=True,                  # ... model.fir
    fir_kernel=(1, 3, 3, 1),   # ... model.fir_kernel
    skip_rescale=True,         # ... model.skip_rescale
    resblock_type="biggan",    # ... model.resblock_type
    progressive="none",        # ... model.progressive
    progressive_input="residual",  # ... model.progressive_input
    progressive_combine="sum",  # ... model.progressive_combine
    embedding_type="fourier",  # default_lsun_configs.py: model.embedding_type = 'fourier'
    fourier_scale=16,          # *_ncsnpp_continuous.py: model.fourier_scale
    init_scale=0.0,            # ... model.init_scale
    scale_by_sigma=True,       # ... model.scale_by_sigma
    nonlinearity="swish",      # ... model.nonlinearity
    normalization="GroupNorm",  # ... model.normalization
    attention_type="ddpm",     # ... model.attention_type
    sde="vesde",               # ... training.sde = 'vesde'
    continuous=True,           # ... training.continuous = True
    sigma_min=0.01,            # default_lsun_configs.py: model.sigma_min = 0.01
    sigma_max=378.0,           # default_lsun_configs.py: model.sigma_max = 378
    num_scales=2000,           # default_lsun_configs.py: model.num_scales = 2000
)

# The ADM fields both DDS configs (configs/vp/fastmri_knee_320_complex.yml, configs/vp/AAPM256.yml) set
# identically, and their diffusion settings.
_DDS_ADM = dict(
    num_channels=256,          # *.yml: model.num_channels: 256
    num_res_blocks=1,          # ... model.num_res_blocks: 1
    channel_mult=(1, 1, 2, 2, 4, 4),  # script_util.py create_model: default for image_size 256 or 320
    attention_resolutions="16",  # ... model.attention_resolutions: "16"
    num_heads=4,               # ... model.num_heads: 4
    num_head_channels=64,      # ... model.num_head_channels: 64 (takes precedence over num_heads)
    learn_sigma=True,          # ... model.learn_sigma: True (ε and variance channels)
    use_scale_shift_norm=True,  # ... model.use_scale_shift_norm: true
    resblock_updown=True,      # ... model.resblock_updown: true
    dropout=0.0,               # ... model.dropout: 0.0
    class_cond=False,          # ... model.class_cond: false
    use_new_attention_order=False,  # ... model.use_new_attention_order: false
)
_DDS_SDE = dict(type="vp", beta_schedule="linear", beta_start=0.0001, beta_end=0.02,  # *.yml: diffusion.*
                num_diffusion_timesteps=1000,  # ... diffusion.num_diffusion_timesteps: 1000
                beta_min=0.1, beta_max=20.0)   # continuous equivalent: 1000 * beta_start, 1000 * beta_end

PRESETS: dict[str, dict] = {
    # score-MRI (Chung & Ye, MedIA 2022): NCSN++ trained on fastMRI knee magnitude images, VE SDE.
    # Weights: weights/checkpoint_95.pth (install.sh). Its inference scripts restore the EMA. Complex
    # data: real and imaginary parts are denoised separately (inference_single-coil.py), not as 2 channels.
    "score_mri_fastmri_knee_320": dict(
        source=f"{_SCORE_MRI} configs/ve/fastmri_knee_320_ncsnpp_continuous.py (+ configs/default_lsun_configs.py)",
        architecture="score_sde.ncsnpp",
        config=dict(_VE_NCSNPP_1CH, image_size=320),  # fastmri_knee_320_ncsnpp_continuous.py: data.image_size
    ),
    # DiffusionMBIR (Chung, Kim, Kim & Ye, CVPR 2023): NCSN++ trained on AAPM 256×256 CT slices, VE SDE;
    # weights exp/ve/AAPM_256_ncsnpp_continuous/checkpoint_185.pth (its README).
    "diffusionmbir_aapm_ct_256": dict(
        source=f"{_DIFFUSIONMBIR} configs/ve/AAPM_256_ncsnpp_continuous.py (+ configs/default_lsun_configs.py)",
        architecture="score_sde.ncsnpp",
        config=dict(_VE_NCSNPP_1CH, image_size=256),  # AAPM_256_ncsnpp_continuous.py: data.image_size
    ),
    # DDS (Chung, Lee & Ye, ICLR 2024). NOT score_sde: its configs say model.type 'openai', i.e.
    # guided-diffusion's ADM UNet (guided_diffusion/script_util.py create_model). Kept here as data so
    # that the mismatch is explicit; preset_config() refuses them for this converter.
    "dds_fastmri": dict(
        source=f"{_DDS} configs/vp/fastmri_knee_320_complex.yml (+ guided_diffusion/script_util.py)",
        architecture="guided-diffusion.adm",   # fastmri_knee_320_complex.yml: model.type "openai"
        # image_size 320 (model.image_size); 2 channels: real, imaginary (data.channels, utils.py
        # nchw_comp_to_real); out 4: ε and variance, 2 each. attention "16": ds = 320 // 16 = 20, a rate
        # no level has, so only the middle block attends (derived, unverified).
        adm=dict(_DDS_ADM, image_size=320, in_channels=2, out_channels=4),
        sde=_DDS_SDE,
        centered=None,                 # not stated: solver_2d.py feeds the .npy slices without rescaling
    ),
    "dds_aapm_ct": dict(
        source=f"{_DDS} configs/vp/AAPM256.yml (+ guided_diffusion/script_util.py)",
        architecture="guided-diffusion.adm",   # AAPM256.yml: model.type "openai"
        # image_size 256, 1 channel in, 2 out (learn_sigma); attention "16": ds = 256 // 16 = 16, the 16x16 level.
        adm=dict(_DDS_ADM, image_size=256, in_channels=1, out_channels=2),
        sde=_DDS_SDE,
        centered=None,                 # not stated (solver_2d.py uses the AAPM .npy slices as stored)
    ),
}


def preset_config(name: str) -> ScoreSDEConfig:
    """The :class:`ScoreSDEConfig` of a score_sde preset; refuses presets of other architectures."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown score_sde preset {name!r}; known: {sorted(PRESETS)}") from None
    if preset["architecture"] != "score_sde.ncsnpp":
        raise ValueError(
            f"preset {name!r} is not a score_sde network: {preset['source']} builds a "
            f"{preset['architecture']} UNet (guided-diffusion's ADM, keys 'input_blocks.…'), so its checkpoint "
            "has to go through the guided-diffusion route, not this converter.")
    return as_config(preset["config"])


# -- the denoiser ------------------------------------------------------------------------------------


class ScoreSDEDenoiser(torch.nn.Module):
    """``D(x, σ)`` of a converted score_sde network (held as ``self.model``, a deepinv ``NCSNpp``), in
    score_sde's data space (``[0, 1]`` when ``centered`` is False, ``[-1, 1]`` when True) with the
    state in EDM form ``x = x₀ + σ n`` — what :class:`~invdiff.priors.adapters.NetworkPrior` calls
    with parameterisation ``x0`` and σ conditioning.

    * VE SDE (continuous, Fourier embedding of log σ): the network input is ``x`` (``2x − 1`` when
      not centered: score_sde shifts inside its network), the label ``log σ``, and its output h is
      σ·score with ``scale_by_sigma`` (score = h/σ) or the score itself without, so
      ``D = x + σ h`` or ``D = x + σ² h`` (Tweedie: D = x + σ² ∇log p_σ).
    * VP SDE (continuous, β(t) = β_min + t(β_max − β_min)): the network sees the VP state
      ``x / √(1 + σ²)`` (shifted likewise), the label ``999 t`` with
      ``t = (√(β_min² + 2 β_d ln(1 + σ²)) − β_min)/β_d``, β_d = β_max − β_min (the inverse of
      ``σ(t)² = exp(½β_d t² + β_min t) − 1``), and predicts ε, so ``D = x − σ h``.

    Sub-VP SDEs and discrete (non-continuous) training are refused: their label and σ conventions
    are not these.
    """

    def __init__(self, unet: torch.nn.Module, config: Any):
        super().__init__()
        cfg = as_config(config)
        if cfg.sde not in ("vesde", "vpsde"):
            raise ValueError(f"score_sde: only VE and VP SDEs are supported, got sde={cfg.sde!r} (sub-VP's "
                             "marginal σ(t) differs and is not implemented)")
        if not cfg.continuous:
            raise ValueError("score_sde: only continuously trained models (training.continuous = True) are "
                             "supported: a discrete model is conditioned on a step index of its own grid")
        if cfg.sde == "vesde" and cfg.embedding_type != "fourier":
            raise ValueError("score_sde: a VE model is expected to embed log σ with Fourier features "
                             f"(embedding_type='fourier'), got {cfg.embedding_type!r}")
        if cfg.sde == "vpsde" and cfg.embedding_type != "positional":
            raise ValueError("score_sde: a VP model is expected to embed 999·t positionally "
                             f"(embedding_type='positional'), got {cfg.embedding_type!r}")
        self.model = unet
        self.ve, self.centered, self.scale_by_sigma = cfg.sde == "vesde", bool(cfg.centered), bool(cfg.scale_by_sigma)
        self.sigma_min, self.sigma_max = float(cfg.sigma_min), float(cfg.sigma_max)
        self.beta_min, self.beta_max = float(cfg.beta_min), float(cfg.beta_max)

    def sigma_range(self) -> tuple[float, float]:
        """VE: the config's [σ_min, σ_max]; VP: σ(t) over score_sde's sampling range t ∈ [1e-3, 1]."""
        if self.ve:
            return self.sigma_min, self.sigma_max
        beta_d = self.beta_max - self.beta_min
        return vp_sde_sigma(1e-3, self.beta_min, beta_d), vp_sde_sigma(1.0, self.beta_min, beta_d)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        if self.ve:
            x_in, label = x, sigma.log()
        else:
            t = vp_sde_time(sigma, self.beta_min, self.beta_max - self.beta_min)
            x_in, label = x / (1 + s**2).sqrt(), 999 * t
        if not self.centered:
            x_in = 2 * x_in - 1
        h = self.model.forward_unet(x_in, label.flatten())
        if self.ve:
            return x + (s if self.scale_by_sigma else s**2) * h
        return x - s * h
