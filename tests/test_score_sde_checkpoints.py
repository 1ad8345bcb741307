"""score_sde NCSN++ / DDPM++ state dicts → deepinv's NCSNpp (invdiff.priors.score_sde), without real weights.

* random tensors with exactly the keys/shapes of ``score_sde_keys`` for tiny NCSN++ (VE, Fourier, FIR,
  residual input pyramid) and DDPM++ (VP, positional) configurations convert and load STRICTLY into
  ``deepinv.models.NCSNpp``; a forward pass runs;
* a key missing / left over / of the wrong shape, a wrong ``sigmas`` range, an unsupported config and
  the DDS presets (ADM networks) are refused;
* value level: the attention weights are the transposed NIN weights, interleaved per channel; the EMA
  list lands on the right keys; and, at 128 channels (where GroupNorm group counts agree), the converted
  network computes exactly what an independent re-implementation of score_sde's NCSNpp.forward
  (written here from the reference's semantics: FIR up/down by zero insertion + padding, fused
  pad-blur-strided-conv pyramid, einsum attention) computes on the score_sde state dict.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from invdiff.priors.score_sde import (
    PRESETS, ScoreSDEConfig, convert_score_sde_state, ema_parameter_keys, preset_config, score_sde_keys,
    score_sde_layout, unsupported_reasons,
)

NCSN_TINY = dict(image_size=16, num_channels=2, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                 embedding_type="fourier", fir=True, progressive_input="residual", scale_by_sigma=True,
                 centered=False, sde="vesde", sigma_min=0.01, sigma_max=50.0, num_scales=10)
DDPM_TINY = dict(image_size=16, num_channels=2, nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                 embedding_type="positional", fir=False, progressive_input="none", scale_by_sigma=False,
                 centered=True, sde="vpsde", sigma_min=0.01, sigma_max=50.0, num_scales=10)


def _random_state(cfg, seed=0, dtype=torch.float32, scale=0.1, prefix="module."):
    """Random tensors with exactly score_sde's keys and shapes (GroupNorm scales near 1)."""
    g = torch.Generator().manual_seed(seed)
    norms = {f"{prefix}all_modules.{i}.weight" for i, m in enumerate(score_sde_layout(cfg)) if m.kind == "out_norm"}
    state = {}
    for k, shape in score_sde_keys(cfg, prefix).items():
        if k.endswith("sigmas"):
            v = torch.tensor(np.geomspace(cfg.sigma_max, cfg.sigma_min, cfg.num_scales))
        elif k in norms or k.endswith(("GroupNorm_0.weight", "GroupNorm_1.weight")):
            v = 1 + scale * torch.randn(shape, generator=g, dtype=torch.float64)
        elif k.endswith(".W") and len(shape) == 1:  # Fourier W (N(0, 16²) in score_sde; moderate here)
            v = 2 * torch.randn(shape, generator=g, dtype=torch.float64)
        elif len(shape) > 1:
            v = torch.randn(shape, generator=g, dtype=torch.float64) / math.sqrt(int(np.prod(shape[1:])))
        else:
            v = scale * torch.randn(shape, generator=g, dtype=torch.float64)
        state[k] = v.to(dtype)
    return state


def _ncsnpp(kwargs, dtype=torch.float32):
    from deepinv.models import NCSNpp

    return NCSNpp(pretrained=None, **kwargs).to(dtype).eval()


# -- strict loading of tiny networks ---------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["ncsn", "ddpm"])
def test_tiny_checkpoint_converts_and_loads_strictly(flavour):
    cfg = ScoreSDEConfig(**(NCSN_TINY if flavour == "ncsn" else DDPM_TINY))
    model_state = _random_state(cfg)
    assert list(model_state) == list(score_sde_keys(cfg))
    names = ema_parameter_keys(cfg)
    shadow = [torch.randn(score_sde_keys(cfg)[k]) for k in names]
    ckpt = {"model": model_state, "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": shadow}, "step": 7}

    with pytest.raises(ValueError, match="128"):  # narrow networks: GroupNorm groups would differ
        convert_score_sde_state(ckpt, cfg)
    kwargs, new_state = convert_score_sde_state(ckpt, cfg, allow_groupnorm_mismatch=True)
    assert kwargs["model_type"] == flavour
    net = _ncsnpp(kwargs)
    net.load_state_dict(new_state, strict=True)

    # the EMA list is used for every trainable parameter; the Fourier W (not in the list) comes from 'model'
    ema = dict(zip(names, shadow))
    assert torch.equal(new_state["enc.16x16_conv.weight"], ema["module.all_modules.%d.weight" % (
        1 + 2 if flavour == "ncsn" else 2)])
    if flavour == "ncsn":
        assert "module.all_modules.0.W" not in ema and len(shadow) == len(model_state) - 2
        assert torch.equal(new_state["map_noise.freqs"], model_state["module.all_modules.0.W"])
    else:
        assert len(shadow) == len(model_state) - 1

    x = torch.randn(2, cfg.num_channels, cfg.image_size, cfg.image_size)
    noise = torch.tensor([0.3, 2.0]).log() if flavour == "ncsn" else torch.tensor([10.0, 900.0])
    with torch.no_grad():
        out = net.forward_unet(x, noise)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_attention_is_transposed_nin_interleaved_per_channel():
    cfg = ScoreSDEConfig(**NCSN_TINY)
    state = _random_state(cfg, seed=3, prefix="")  # an unwrapped model's keys (no 'module.') also convert
    _, new = convert_score_sde_state(state, cfg, allow_groupnorm_mismatch=True)
    layout = score_sde_layout(cfg)
    attn = [(i, m) for i, m in enumerate(layout) if m.kind == "attn"]
    # level 1 (8x8) encoder block, middle block, level-1 decoder block
    assert [m.target for _, m in attn] == ["enc.8x8_block0", "dec.8x8_in0", "dec.8x8_block1"]
    for i, m in attn:
        c = m.info["channels"]
        qkv, bias = new[f"{m.target}.qkv.weight"], new[f"{m.target}.qkv.bias"]
        for j in range(3):
            W, b = state[f"all_modules.{i}.NIN_{j}.W"], state[f"all_modules.{i}.NIN_{j}.b"]
            for ch in (0, c // 2, c - 1):
                assert torch.equal(qkv[3 * ch + j, :, 0, 0], W[:, ch])
                assert bias[3 * ch + j] == b[ch]
        assert torch.equal(new[f"{m.target}.proj.weight"][:, :, 0, 0], state[f"all_modules.{i}.NIN_3.W"].t())
        assert torch.equal(new[f"{m.target}.norm2.weight"], state[f"all_modules.{i}.GroupNorm_0.weight"])


# -- refusals ----------------------------------------------------------------------------------------


def test_missing_extra_and_misshapen_keys_are_refused():
    cfg = ScoreSDEConfig(**NCSN_TINY)
    good = _random_state(cfg)
    convert_score_sde_state(good, cfg, allow_groupnorm_mismatch=True)

    missing = dict(good)
    del missing["module.all_modules.5.Conv_1.weight"]
    with pytest.raises(ValueError, match=r"1 key\(s\) missing: all_modules\.5\.Conv_1\.weight"):
        convert_score_sde_state(missing, cfg, allow_groupnorm_mismatch=True)

    extra = dict(good, **{"module.all_modules.99.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"1 key\(s\) left over: all_modules\.99\.weight"):
        convert_score_sde_state(extra, cfg, allow_groupnorm_mismatch=True)

    bad = dict(good)
    bad["module.all_modules.3.weight"] = torch.zeros(32, 3, 3, 3)  # conv_in for 3 channels, config says 2
    with pytest.raises(ValueError, match="shape mismatch"):
        convert_score_sde_state(bad, cfg, allow_groupnorm_mismatch=True)

    mixed = {("module." + k if i % 2 else k): v
             for i, (k, v) in enumerate(_random_state(cfg, prefix="").items())}
    with pytest.raises(ValueError, match="prefix"):
        convert_score_sde_state(mixed, cfg, allow_groupnorm_mismatch=True)

    other_sigmas = dict(good)  # trained with sigma_max 378 (score-MRI) but converted with a 50 config
    other_sigmas["module.sigmas"] = torch.tensor(np.geomspace(378, 0.01, 7), dtype=torch.float32)
    with pytest.raises(ValueError, match="sigma_max=50"):
        convert_score_sde_state(other_sigmas, cfg, allow_groupnorm_mismatch=True)

    short_ema = {"model": good, "ema": {"shadow_params": [torch.zeros(1)]}, "step": 0}
    with pytest.raises(ValueError, match="shadow_params"):
        convert_score_sde_state(short_ema, cfg, allow_groupnorm_mismatch=True)


def test_unrepresentable_configs_and_dds_presets_are_refused():
    for change, word in ((dict(progressive="output_skip"), "progressive"),
                         (dict(resblock_type="ddpm"), "resblock_type"),
                         (dict(embedding_type="positional"), "ties these together"),
                         (dict(conditional=False), "conditional"),
                         (dict(fir_kernel=(1, 2, 1)), "ties these together")):
        cfg = ScoreSDEConfig(**{**NCSN_TINY, "nf": 128, **change})
        why = unsupported_reasons(cfg)
        assert why and any(word in w for w in why), (change, why)
        with pytest.raises(ValueError, match="cannot reproduce"):
            convert_score_sde_state(_random_state(cfg), cfg)
    for name in ("dds_fastmri", "dds_aapm_ct"):
        assert PRESETS[name]["architecture"] == "guided-diffusion.adm"
        with pytest.raises(ValueError, match="guided-diffusion"):
            preset_config(name)


def test_score_mri_preset_layout():
    cfg = preset_config("score_mri_fastmri_knee_320")
    assert unsupported_reasons(cfg) == []
    assert (cfg.image_size, cfg.num_channels, cfg.sigma_max, cfg.centered) == (320, 1, 378.0, False)
    layout = score_sde_layout(cfg)
    keys = score_sde_keys(cfg)
    # 320 → 40 over four levels: no level is 16x16, so only the middle block attends
    assert [m.target for m in layout if m.kind == "attn"] == ["dec.40x40_in0"]
    assert keys["module.sigmas"] == (2000,) and keys["module.all_modules.0.W"] == (128,)
    assert keys["module.all_modules.3.weight"] == (128, 1, 3, 3)
    assert len(ema_parameter_keys(cfg)) == len(keys) - 2


# -- value level: the whole network against score_sde's forward ----------------------------------------


def _gn(x, w, b):  # score_sde: nn.GroupNorm(min(C // 4, 32), C, eps=1e-6)
    return F.group_norm(x, min(x.shape[1] // 4, 32), w, b, eps=1e-6)


def _blur(k, channels, like):
    k = torch.tensor(k, dtype=like.dtype)
    k2 = torch.outer(k, k) / k.sum() ** 2
    return k2.expand(channels, 1, *k2.shape).contiguous()


def _fir_down(x, k):  # upfirdn2d(x, k, down=2, pad=((p+1)//2, p//2)), p = len(k) - 2
    p = len(k) - 2
    x = F.pad(x, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
    return F.conv2d(x, _blur(k, x.shape[1], x), stride=2, groups=x.shape[1])


def _fir_up(x, k):  # upfirdn2d(x, 4k, up=2, pad=((p+1)//2 + 1, p//2)): zero insertion, pad, blur
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, 2 * h, 2 * w)
    z[..., ::2, ::2] = x
    p = len(k) - 2
    z = F.pad(z, ((p + 1) // 2 + 1, p // 2, (p + 1) // 2 + 1, p // 2))
    return F.conv2d(z, 4 * _blur(k, c, z), groups=c)


def _conv_down(x, w, b, k):  # conv_downsample_2d: pad, blur (no stride), 3x3 conv with stride 2
    p = (len(k) - 2) + (w.shape[-1] - 1)
    x = F.pad(x, ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
    x = F.conv2d(x, _blur(k, x.shape[1], x), groups=x.shape[1])
    return F.conv2d(x, w, b, stride=2)


def _reference_forward(s, cfg, x, cond):
    """score_sde's NCSNpp.forward (biggan blocks, progressive 'none') on a state dict ``s`` (unprefixed),
    returning h before scale_by_sigma. Modules are consumed by index, as score_sde does."""
    act = F.silu
    k = list(cfg.fir_kernel)
    idx = [0]

    def p(name):
        return s[f"all_modules.{idx[0]}.{name}"]

    def nxt():
        idx[0] += 1

    def conv(h, pre="", pad=1):
        return F.conv2d(h, p(pre + "weight"), p(pre + "bias"), padding=pad)

    def res(h, temb, up=False, down=False):
        x0 = h
        h = act(_gn(h, p("GroupNorm_0.weight"), p("GroupNorm_0.bias")))
        if up:
            h, x0 = ((_fir_up(h, k), _fir_up(x0, k)) if cfg.fir else
                     (h.repeat_interleave(2, -1).repeat_interleave(2, -2),
                      x0.repeat_interleave(2, -1).repeat_interleave(2, -2)))
        elif down:
            h, x0 = ((_fir_down(h, k), _fir_down(x0, k)) if cfg.fir else
                     (F.avg_pool2d(h, 2), F.avg_pool2d(x0, 2)))
        h = conv(h, "Conv_0.")
        h = h + F.linear(act(temb), p("Dense_0.weight"), p("Dense_0.bias"))[:, :, None, None]
        h = act(_gn(h, p("GroupNorm_1.weight"), p("GroupNorm_1.bias")))
        h = conv(h, "Conv_1.")
        if f"all_modules.{idx[0]}.Conv_2.weight" in s:
            x0 = conv(x0, "Conv_2.", pad=0)
        nxt()
        return (x0 + h) / math.sqrt(2)

    def nin(h, j):
        return torch.einsum("bchw,cd->bdhw", h, p(f"NIN_{j}.W")) + p(f"NIN_{j}.b")[None, :, None, None]

    def attn(h):
        B, C, H, W = h.shape
        t = _gn(h, p("GroupNorm_0.weight"), p("GroupNorm_0.bias"))
        q, kk, v = nin(t, 0), nin(t, 1), nin(t, 2)
        w = torch.einsum("bchw,bcij->bhwij", q, kk) * C ** -0.5
        w = torch.softmax(w.reshape(B, H, W, H * W), -1).reshape(B, H, W, H, W)
        t = nin(torch.einsum("bhwij,bcij->bchw", w, v), 3)
        nxt()
        return (h + t) / math.sqrt(2)

    if cfg.embedding_type == "fourier":
        proj = cond.log()[:, None] * p("W")[None, :] * 2 * math.pi  # time_cond = σ, embedded as log σ
        temb = torch.cat([proj.sin(), proj.cos()], -1)
        nxt()
    else:
        half = cfg.nf // 2
        freqs = torch.exp(-math.log(10000) / (half - 1) * torch.arange(half, dtype=x.dtype))
        e = cond[:, None] * freqs[None]
        temb = torch.cat([e.sin(), e.cos()], 1)
    temb = F.linear(temb, p("weight"), p("bias"))
    nxt()
    temb = F.linear(act(temb), p("weight"), p("bias"))
    nxt()
    if not cfg.centered:
        x = 2 * x - 1
    pyramid = x
    hs = [conv(x)]
    nxt()
    L = len(cfg.ch_mult)
    for level in range(L):
        for _ in range(cfg.num_res_blocks):
            h = res(hs[-1], temb)
            if h.shape[-1] in cfg.attn_resolutions:
                h = attn(h)
            hs.append(h)
        if level != L - 1:
            h = res(hs[-1], temb, down=True)
            if cfg.progressive_input == "residual":
                pyramid = _conv_down(pyramid, p("Conv2d_0.weight"), p("Conv2d_0.bias"), k)
                nxt()
                pyramid = h = (pyramid + h) / math.sqrt(2)
            hs.append(h)
    h = res(hs[-1], temb)
    h = attn(h)
    h = res(h, temb)
    for level in reversed(range(L)):
        for _ in range(cfg.num_res_blocks + 1):
            h = res(torch.cat([h, hs.pop()], 1), temb)
        if h.shape[-1] in cfg.attn_resolutions:
            h = attn(h)
        if level != 0:
            h = res(h, temb, up=True)
    assert not hs
    h = act(_gn(h, p("weight"), p("bias")))
    nxt()
    h = conv(h)
    nxt()
    assert idx[0] == len(score_sde_layout(cfg))  # every module used, in order
    return h


@pytest.mark.parametrize("flavour", ["ncsn", "ddpm"])
def test_converted_network_matches_score_sde_forward(flavour):
    torch.manual_seed(0)
    base = NCSN_TINY if flavour == "ncsn" else DDPM_TINY
    # 128 channels everywhere, so score_sde's min(C/4, 32) GroupNorm groups equal deepinv's 32
    cfg = ScoreSDEConfig(**{**base, "image_size": 8, "nf": 128, "ch_mult": (1, 1), "attn_resolutions": (4,)})
    assert unsupported_reasons(cfg) == []
    state = _random_state(cfg, seed=1, dtype=torch.float64)
    kwargs, new = convert_score_sde_state(state, cfg)
    net = _ncsnpp(kwargs, torch.float64)
    net.load_state_dict(new, strict=True)

    x = torch.rand(2, cfg.num_channels, 8, 8, dtype=torch.float64)
    if flavour == "ncsn":
        sigma = torch.tensor([0.05, 3.0], dtype=torch.float64)
        cond, label = sigma, sigma.log()     # score_sde embeds log σ; deepinv's c_noise = log σ
    else:
        t = torch.tensor([12.0, 640.0], dtype=torch.float64)
        cond, label = t, t                   # continuous VP: 999 t, the same number on both sides
    plain = {k[len("module."):]: v for k, v in state.items()}
    with torch.no_grad():
        ref = _reference_forward(plain, cfg, x, cond)
        x_in = x if cfg.centered else 2 * x - 1
        out = net.forward_unet(x_in, label)
    assert ref.abs().max() > 0.1  # not a trivially small network
    # DDPM++: deepinv's PositionalEmbedding computes its frequencies in float32 (score_sde's
    # get_timestep_embedding runs in float32 too), so at t ~ 640 the embeddings agree to ~1e-5 only;
    # a mapping error would show up at O(0.1). NCSN++ is exact to float64 rounding.
    tol = 1e-9 if flavour == "ncsn" else 1e-4
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


# -- through invdiff.priors.load ---------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["ncsn", "ddpm"])
def test_priors_load_gives_the_score_sde_denoiser(flavour, tmp_path):
    """A {model, ema, step} file loads through ``priors.load`` with its config, and the prior's
    denoiser is Tweedie's D of score_sde's score: VE D = x + σ h(2x − 1, log σ) (scale_by_sigma, data
    in [0, 1]); VP D = x − σ h(x/√(1+σ²), 999 t(σ)) (ε-prediction, centred data in [-1, 1])."""
    from invdiff import priors

    base = NCSN_TINY if flavour == "ncsn" else DDPM_TINY
    cfg = ScoreSDEConfig(**{**base, "image_size": 8, "nf": 128, "ch_mult": (1, 1), "attn_resolutions": (4,)})
    state = _random_state(cfg, seed=2, dtype=torch.float32)
    path = tmp_path / "checkpoint_8.pth"
    torch.save({"model": state, "ema": {"decay": 0.999, "num_updates": 1,
                                        "shadow_params": [state[k] for k in ema_parameter_keys(cfg)]},
                "step": 8}, path)
    fields = {k: v for k, v in base.items()} | {"image_size": 8, "nf": 128, "ch_mult": (1, 1), "attn_resolutions": (4,)}
    prior = priors.load(path, score_sde_config=fields)
    assert prior.checkpoint["format"] == "score_sde" and prior.shape == (2, 8, 8)
    x_phys = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.05, 2.0], dtype=torch.float64)
    plain = {k[len("module."):]: v.double() for k, v in state.items()}
    with torch.no_grad():
        x = prior.to_model(x_phys)
        d = prior.denoiser(x, sigma)
        s = sigma.reshape(-1, 1, 1, 1)
        if flavour == "ncsn":
            assert prior.model_range == (0.0, 1.0) and (prior.sigma_min, prior.sigma_max) == (0.01, 50.0)
            expected = x + s * _reference_forward(plain, cfg, x, sigma)  # (it shifts to 2x − 1 itself)
        else:
            assert prior.model_range == (-1.0, 1.0)
            t = ((0.1**2 + 2 * 19.9 * torch.log1p(sigma**2)).sqrt() - 0.1) / 19.9
            expected = x - s * _reference_forward(plain, cfg, x / (1 + s**2).sqrt(), 999 * t)
    tol = 1e-4 if flavour == "ncsn" else 2e-3  # float32 network; DDPM++'s float32 embedding (see above)
    torch.testing.assert_close(d, expected, rtol=tol, atol=tol)


def test_priors_load_asks_for_the_config_and_names_the_presets(tmp_path):
    from invdiff import priors
    from invdiff.priors.checkpoints import CheckpointError

    cfg = ScoreSDEConfig(**NCSN_TINY)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": _random_state(cfg), "step": 1}, path)
    with pytest.raises(CheckpointError, match="score_mri_fastmri_knee_320"):
        priors.load(path)
    with pytest.raises(CheckpointError, match="GroupNorm|128"):  # the tiny net: refused, not loaded loosely
        priors.load(path, score_sde_config=NCSN_TINY)
    with pytest.raises(CheckpointError, match="not both"):
        priors.load(path, preset="score_mri_fastmri_knee_320", score_sde_config=NCSN_TINY)
    with pytest.raises(CheckpointError, match="missing"):  # the score-MRI layout is not this file's
        priors.load(path, preset="score_mri_fastmri_knee_320")


# -- the published configurations against the reference architecture's own key lists ----------------

REFERENCE_KEYS = {"diffusionmbir_aapm_ct_256": "score_sde_ncsnpp_256_keys.txt",
                  "score_mri_fastmri_knee_320": "score_sde_ncsnpp_320_keys.txt"}


def _reference_keys(name):
    from pathlib import Path

    out = {}
    for line in (Path(__file__).parent / "data" / REFERENCE_KEYS[name]).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split(" ", 1)
            out[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return out


@pytest.mark.parametrize("name", sorted(REFERENCE_KEYS))
def test_published_layout_is_the_reference_architectures(name):
    """tests/data/*_keys.txt were written by instantiating the reference NCSNpp (DiffusionMBIR's copy
    of score_sde's models/ncsnpp.py) with the published config: same keys, shapes and order."""
    ref = _reference_keys(name)
    ours = {k: tuple(v) for k, v in score_sde_keys(preset_config(name), prefix="module.").items()}
    assert list(ours.items()) == list(ref.items())


def test_published_configuration_loads_strictly_at_full_size(tmp_path):
    """A {model, ema, step} file with the reference key set of score-MRI's knee model (random values,
    65 M parameters) loads strictly through priors.load with the preset."""
    from invdiff import priors

    name = "score_mri_fastmri_knee_320"
    cfg = preset_config(name)
    g = torch.Generator().manual_seed(0)
    state = {}
    for k, shape in _reference_keys(name).items():
        state[k] = (torch.tensor(np.geomspace(378.0, 0.01, 2000), dtype=torch.float32) if k.endswith("sigmas")
                    else 0.01 * torch.randn(shape, generator=g))
    torch.save({"model": state, "ema": {"decay": 0.999, "num_updates": 1,
                                        "shadow_params": [state[k] for k in ema_parameter_keys(cfg)]}, "step": 95},
               tmp_path / "checkpoint_95.pth")
    prior = priors.load(tmp_path / "checkpoint_95.pth", preset=name)
    assert prior.shape == (1, 320, 320) and (prior.sigma_min, prior.sigma_max) == (0.01, 378.0)
    # every stored weight is in the network: its parameters, and the Fourier W (a buffer in NCSNpp)
    stored = sum(v.numel() for k, v in state.items() if k not in ("module.sigmas", "module.all_modules.0.W"))
    assert sum(p.numel() for p in prior.parameters()) == stored
    torch.testing.assert_close(prior.net.model.map_noise.freqs, state["module.all_modules.0.W"], rtol=0, atol=0)


def test_prior_config_passes_the_preset(tmp_path, monkeypatch):
    """configs/prior/score_mri.yaml loads a file through the preset (here: a file of another layout,
    so the strict converter names the missing keys — the preset reached the loader)."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from invdiff.priors.checkpoints import CheckpointError

    torch.save({"model": _random_state(ScoreSDEConfig(**NCSN_TINY)), "step": 1}, tmp_path / "c.pth")
    monkeypatch.setenv("INVDIFF_SCORE_MRI_CKPT", str(tmp_path / "c.pth"))
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=["prior=score_mri"])
    assert cfg.prior.preset == "score_mri_fastmri_knee_320"
    with pytest.raises(Exception, match="key\\(s\\) missing") as err:  # (hydra wraps the CheckpointError)
        instantiate(cfg.prior)
    assert "CheckpointError" in repr(err.value) or isinstance(err.value, CheckpointError)


def test_channelwise_prior_denoises_each_channel_with_the_inner_prior():
    from invdiff.priors import ChannelwisePrior, CountingPrior, GaussianPrior

    inner = GaussianPrior(torch.linspace(-0.2, 0.3, 16, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64),
                          shape=(1, 4, 4), data_range=(0.0, 1.0), model_range=(0.0, 1.0))
    counted = CountingPrior(inner)
    prior = ChannelwisePrior(counted, channels=2)
    assert prior.shape == (2, 4, 4) and prior.data_range == (-1.0, 1.0)
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)
    d = prior.denoiser(x, sigma)
    assert counted.calls == 1  # one batched call for both channels
    for c in range(2):
        torch.testing.assert_close(d[:, c:c + 1], inner.denoiser(x[:, c:c + 1], sigma))
    with pytest.raises(ValueError, match="model units"):
        ChannelwisePrior(GaussianPrior(torch.zeros(16, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64),
                                       shape=(1, 4, 4), model_range=(-1.0, 1.0)))  # [0, 1] → [-1, 1]: not for signed parts
    with pytest.raises(ValueError, match="one-channel"):
        ChannelwisePrior(prior)


# -- the benchmark presets, at a tiny size -----------------------------------------------------------

TINY_VE = {**NCSN_TINY, "num_channels": 1, "nf": 128, "ch_mult": (1, 1), "attn_resolutions": (8,),
           "sigma_max": 50.0}


def _tiny_checkpoint(path):
    cfg = ScoreSDEConfig(**TINY_VE)
    state = _random_state(cfg, seed=3)
    torch.save({"model": state, "step": 1}, path)
    return "{" + ",".join(f"{k}:{list(v) if isinstance(v, tuple) else v}" for k, v in TINY_VE.items()) + "}"


@pytest.mark.parametrize("preset", ["score_mri_knee_4x", "score_mri_knee_8x"])
def test_score_mri_presets_run_at_tiny_size(preset, tmp_path, monkeypatch):
    from test_fastmri_data import write_fastmri

    from invdiff.apps import bench
    from invdiff.apps.common import AppError

    fast = ["progress=false", "figures=false"]
    monkeypatch.delenv("INVDIFF_SCORE_MRI_CKPT", raising=False)
    with pytest.raises(AppError, match="INVDIFF_SCORE_MRI_CKPT"):
        bench.run(bench.config(f"benchmark={preset}", *fast), tmp_path / "none")
    fields = _tiny_checkpoint(tmp_path / "ckpt.pth")
    (tmp_path / "knee").mkdir()
    write_fastmri(tmp_path / "knee" / "file1.h5", slices=2, coils=4, H=24, W=40, h=16, w=16)
    cfg = bench.config(f"benchmark={preset}", f"prior.inner.path={tmp_path / 'ckpt.pth'}", "prior.inner.preset=null",
                       f"+prior.inner.score_sde_config={fields}",
                       f"data.path={tmp_path / 'knee'}", "shape=[2,16,16]", "data.mask.center_fractions=[0.25]",
                       "solver.steps=2", "sigma_y=0.01", *fast)
    s = bench.run(cfg, tmp_path / "run")
    assert s["images"] >= 1 and math.isfinite(s["metrics"]["psnr"]["mean"]) and s["metrics"]["nfe"]["mean"] == 4


def test_diffusionmbir_ct_preset_runs_at_tiny_size(tmp_path, monkeypatch):
    from invdiff.apps import bench

    fields = _tiny_checkpoint(tmp_path / "ckpt.pth")
    np.save(tmp_path / "slices.npy", np.random.default_rng(0).random((1, 16, 16)).astype(np.float32))
    monkeypatch.setenv("INVDIFF_AAPM_SLICES", str(tmp_path / "slices.npy"))
    cfg = bench.config("benchmark=diffusionmbir_ct_sparse8", f"prior.path={tmp_path / 'ckpt.pth'}", "prior.preset=null",
                       f"+prior.score_sde_config={fields}", "shape=[1,16,16]",
                       "solver.steps=2", "progress=false", "figures=false")
    s = bench.run(cfg, tmp_path / "run")
    assert s["images"] == 1 and math.isfinite(s["metrics"]["psnr"]["mean"])


def test_a_loaded_score_sde_prior_saves_in_the_native_format(tmp_path):
    import dataclasses

    from invdiff import priors

    cfg = ScoreSDEConfig(**TINY_VE)
    _tiny_checkpoint(tmp_path / "ckpt.pth")
    prior = priors.load(tmp_path / "ckpt.pth", score_sde_config=TINY_VE)
    kwargs, _ = convert_score_sde_state(torch.load(tmp_path / "ckpt.pth", weights_only=True), cfg)
    path = priors.save(tmp_path / "p.safetensors", prior, "score_sde.denoiser",
                       {"unet_kwargs": kwargs, "config": dataclasses.asdict(cfg)})
    again = priors.load(path)
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    sigma = torch.tensor([0.1, 5.0], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(again.denoiser(x, sigma), prior.denoiser(x, sigma))
    assert again.checkpoint["format"] == "invdiff" and (again.sigma_min, again.sigma_max) == (0.01, 50.0)
