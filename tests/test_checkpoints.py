"""Checkpoint loaders: every format saved as its original project lays it out, reloaded through
``invdiff.priors.load`` and compared with the original network; unsafe and broken files refused."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from invdiff.priors import CheckpointError, EDMSchedule, NetworkPrior, load, load_checkpoint, save
from invdiff.priors.checkpoints import sha256_file
from invdiff.priors.formats import EDMPreconditioned, build_diffunet, build_ncsnpp, build_admunet


def noisy(shape, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) * 2 - 1 + sigma * torch.randn(*shape, generator=g)).double()


# -- the project's own format ---------------------------------------------------------------------


def tiny_edm_prior(precond="edm"):
    torch.manual_seed(0)
    unet_kwargs = dict(model_type="ncsn", img_resolution=8, in_channels=1, out_channels=1, model_channels=32,
                       channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], augment_dim=0, dropout=0.0)
    arch = dict(unet="deepinv.NCSNpp", unet_kwargs=unet_kwargs, precond=precond, sigma_data=0.5)
    from invdiff.priors.formats import build_edm_precond

    net = build_edm_precond(**arch).eval()
    prior = NetworkPrior(net, "x0", EDMSchedule(0.002, 80.0), shape=(1, 8, 8), conditioning="sigma")
    return prior, arch


def test_own_format_roundtrip_is_exact(tmp_path):
    prior, arch = tiny_edm_prior()
    path = save(tmp_path / "prior.safetensors", prior, "edm.precond", arch)
    assert [p.name for p in tmp_path.iterdir()] == ["prior.safetensors"]
    loaded = load(path)
    x, sigma = noisy((3, 1, 8, 8), 0.5), torch.tensor([0.1, 0.5, 3.0], dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded.denoiser(x, sigma), prior.denoiser(x, sigma))
    assert loaded.checkpoint == {"path": str(path.resolve()), "sha256": sha256_file(path), "format": "invdiff"}
    assert loaded.schedule.sigma_max == 80.0 and loaded.shape == (1, 8, 8)
    assert load(path, data_range=(0.0, 255.0)).data_range == (0.0, 255.0)  # overrides


def test_own_format_refuses_wrong_metadata(tmp_path):
    from safetensors.torch import load_file, save_file

    prior, arch = tiny_edm_prior()
    path = save(tmp_path / "p.safetensors", prior, "edm.precond", arch)
    tensors = load_file(path)
    save_file(tensors, tmp_path / "nometa.safetensors")
    with pytest.raises(CheckpointError, match="no valid 'invdiff' metadata"):
        load(tmp_path / "nometa.safetensors")
    arch_bad = json.loads(json.dumps(arch))
    arch_bad["unet_kwargs"]["model_channels"] = 64
    meta = {"format_version": 1, "architecture": "edm.precond", "arch_kwargs": arch_bad, "parameterization": "x0",
            "schedule": {"type": "edm", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}, "conditioning": "sigma",
            "learned_sigma": False, "shape": [1, 8, 8], "data_range": [0, 1], "model_range": [-1, 1]}
    save_file(tensors, tmp_path / "mismatch.safetensors", metadata={"invdiff": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"shape mismatches: .*\(file \(64,\), model \(128,\)\).*in all\)"):
        load(tmp_path / "mismatch.safetensors")


def test_truncated_files_are_named(tmp_path):
    prior, arch = tiny_edm_prior()
    path = save(tmp_path / "p.safetensors", prior, "edm.precond", arch)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors.*truncated or corrupted"):
        load(tmp_path / "cut.safetensors")
    torch.save({"ema": prior.net.state_dict()}, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt.*truncated or corrupted"):
        load(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load(tmp_path / "missing.pt")


# -- unsafe files -------------------------------------------------------------------------------------


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"ema": Payload(marker)}, f)
    torch.save({"ema": Payload(marker)}, tmp_path / "evil_zip.pt")
    for name in ("evil.pt", "evil_zip.pt"):
        with pytest.raises(CheckpointError, match="refusing to load"):
            load(tmp_path / name)
    with open(tmp_path / "network-snapshot.pkl", "wb") as f:
        pickle.dump({"ema": Payload(marker)}, f)
    with pytest.raises(CheckpointError, match=r"refusing to load .*network-snapshot\.pkl: it contains pickled Python "
                                              r"objects beyond tensors \(posix\.system\)"):
        load(tmp_path / "network-snapshot.pkl")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="trust=True is not accepted"):  # no flag unpickles (tests/test_edm_pickle.py)
        load(tmp_path / "network-snapshot.pkl", trust=True)
    assert not marker.exists()


# -- guided-diffusion / ADM (DPS ffhq_10m.pt layout) ------------------------------------------------


@pytest.fixture(scope="module")
def dps_unet():
    """The DPS ffhq_10m.pt architecture (93.6 M parameters) with random weights, built once."""
    torch.manual_seed(0)
    return build_diffunet(3, 3, large_model=False).eval()


def test_guided_diffusion_state_dict(tmp_path, dps_unet):
    original = dps_unet
    state = original.state_dict()
    assert "input_blocks.0.0.weight" in state and "out.2.weight" in state and len(state) == 362
    torch.save(state, tmp_path / "ffhq_10m.pt")  # a flat state dict, as DPS ships it
    prior = load(tmp_path / "ffhq_10m.pt", shape=(3, 64, 64))  # the UNet is convolutional: test at 64×64
    assert prior.checkpoint["format"] == "guided-diffusion" and prior.learned_sigma is not False
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    x = noisy((2, 3, 64, 64), 1.0)
    sched = prior.schedule
    s = (1 / (1 + sigma**2).sqrt()).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        eps = original(s.float() * x.float(), sched.t(sigma).float())[:, :3].double()
        assert torch.allclose(prior.denoiser(x, sigma), x - sigma.reshape(-1, 1, 1, 1) * eps, atol=1e-5)
    del state["out.2.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="(?s)missing keys: out.2.bias.*unexpected keys: extra.weight"):
        load(tmp_path / "broken.pt")


def test_inversebench_ffhq_vp_preconditioned_adm(tmp_path, dps_unet):
    state = {"model." + k: v for k, v in dps_unet.state_dict().items()}
    torch.save({"ema": state, "net": state}, tmp_path / "ffhq256.pt")
    prior = load(tmp_path / "ffhq256.pt", shape=(3, 32, 32))
    assert prior.net.precond == "vp" and prior.checkpoint["format"] == "edm"
    x, sigma = noisy((2, 3, 32, 32), 0.7), torch.tensor([0.1, 3.0], dtype=torch.float64)
    s = sigma.reshape(-1, 1, 1, 1)
    t = ((0.1**2 + 2 * 19.9 * torch.log1p(sigma**2)).sqrt() - 0.1) / 19.9
    with torch.no_grad():
        eps = dps_unet((x / (s**2 + 1).sqrt()).float(), (999 * t).float())[:, :3].double()
        assert torch.allclose(prior.denoiser(x, sigma), x - s * eps, atol=1e-5)


# -- EDM / InverseBench dicts ---------------------------------------------------------------------------


def edm_unet(kind):
    torch.manual_seed(1)
    common = dict(img_resolution=16, in_channels=2, out_channels=2, model_channels=128, channel_mult=[1, 1],
                  num_blocks=1, attn_resolutions=[8], augment_dim=0, dropout=0.0)
    if kind == "ncsn":
        return build_ncsnpp(model_type="ncsn", **common).eval()
    if kind == "ddpm":
        return build_ncsnpp(model_type="ddpm", **common).eval()
    return build_admunet(**common).eval()


@pytest.mark.parametrize("kind", ["ncsn", "ddpm", "adm"])
def test_edm_inversebench_dict(tmp_path, kind):
    unet = edm_unet(kind)
    precond_state = {"model." + k: v for k, v in unet.state_dict().items()}  # EDMPrecond.state_dict()
    torch.save({"net": precond_state, "ema": precond_state, "optimizer": {"state": {}, "param_groups": []},
                "step": 10}, tmp_path / "ckpt.pt")
    prior = load(tmp_path / "ckpt.pt")
    assert prior.checkpoint["format"] == "edm" and prior.shape == (2, 16, 16)
    x = noisy((2, 2, 16, 16), 0.8)
    sigma = torch.tensor([0.2, 4.0], dtype=torch.float64)
    with torch.no_grad():
        # deepinv's own EDM preconditioning with EDM's σ_data = 0.5 is the reference
        unet.pixel_std = 0.5
        ref = unet(x.float(), sigma.float(), input_in_minus_one_one=True).double()
        assert torch.allclose(prior.denoiser(x, sigma), ref, atol=1e-4)
    vp = load(tmp_path / "ckpt.pt", precond="vp")
    with torch.no_grad():
        s = sigma.reshape(-1, 1, 1, 1)
        t = ((0.1**2 + 2 * 19.9 * torch.log1p(sigma**2)).sqrt() - 0.1) / 19.9
        F_out = unet.forward_unet((x / (s**2 + 1).sqrt()).float(), (999 * t).float()).double()
        assert torch.allclose(vp.denoiser(x, sigma), x - s * F_out, atol=1e-4)


def test_edm_small_networks_and_score_sde_are_refused_with_reasons(tmp_path):
    small = build_ncsnpp(model_type="ncsn", img_resolution=8, in_channels=1, out_channels=1, model_channels=32,
                         channel_mult=[1], num_blocks=1, attn_resolutions=[], augment_dim=0)
    torch.save({"ema": {"model." + k: v for k, v in small.state_dict().items()}}, tmp_path / "small.pt")
    with pytest.raises(CheckpointError, match="fewer than 128 base channels.*GroupNorm"):
        load(tmp_path / "small.pt")
    conditional = build_ncsnpp(model_type="ncsn", img_resolution=8, in_channels=1, out_channels=1, model_channels=128,
                               channel_mult=[1], num_blocks=1, attn_resolutions=[], augment_dim=0, label_dim=10)
    torch.save({"ema": conditional.state_dict()}, tmp_path / "cond.pt")
    with pytest.raises(CheckpointError, match="class-conditional"):
        load(tmp_path / "cond.pt")
    score_sde = {"model": {"module.sigmas": torch.ones(3), "module.all_modules.0.W": torch.ones(4)},
                 "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": [torch.ones(4)]},
                 "optimizer": {}, "step": 100}
    torch.save(score_sde, tmp_path / "checkpoint_95.pth")
    with pytest.raises(CheckpointError, match="score_sde checkpoint .* do not store the config.*preset="):
        load(tmp_path / "checkpoint_95.pth")  # a config is needed (tests/test_score_sde_checkpoints.py)
    with pytest.raises(CheckpointError, match="key\\(s\\) missing"):  # and a fragment is never loaded loosely
        load(tmp_path / "checkpoint_95.pth", preset="score_mri_fastmri_knee_320")
    torch.save({"weights": torch.ones(2)}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout \\(top-level keys: weights\\)"):
        load(tmp_path / "odd.pt")


# -- diffusers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_diffusers_folder(tmp_path, prediction):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(2)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    unet.save_pretrained(tmp_path / "model" / "unet")
    diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction).save_pretrained(
        tmp_path / "model" / "scheduler")
    prior = load(tmp_path / "model")
    assert prior.checkpoint["format"] == "diffusers" and prior.schedule.kind == "cosine"
    assert prior.parameterization == {"epsilon": "eps", "v_prediction": "v"}[prediction]
    x, sigma = noisy((2, 1, 16, 16), 0.5), torch.tensor([0.05, 1.5], dtype=torch.float64)
    s = (1 / (1 + sigma**2).sqrt()).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        out = unet((s * x).float(), prior.schedule.t(sigma).float()).sample.double()
        sig = sigma.reshape(-1, 1, 1, 1)
        ref = x - sig * out if prediction == "epsilon" else s**2 * x - s * sig * out
        assert torch.allclose(prior.denoiser(x, sigma), ref, atol=1e-5)


# -- configs ------------------------------------------------------------------------------------------------


def test_load_checkpoint_names_the_override_and_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv("INVDIFF_TEST_CKPT", raising=False)
    with pytest.raises(FileNotFoundError, match="prior.path=.*INVDIFF_TEST_CKPT"):
        load_checkpoint(None, env="INVDIFF_TEST_CKPT", name="dps_ffhq256")
    prior, arch = tiny_edm_prior()
    path = save(tmp_path / "p.safetensors", prior, "edm.precond", arch)
    monkeypatch.setenv("INVDIFF_TEST_CKPT", str(path))
    assert load_checkpoint(None, env="INVDIFF_TEST_CKPT").checkpoint["sha256"] == sha256_file(path)


PRIOR_CONFIGS = ["dps_ffhq256", "adm_imagenet256", "edm_checkpoint", "diffusers_unet", "invdiff_file", "score_mri",
                 "diffusionmbir_ct"]


@pytest.mark.parametrize("name", PRIOR_CONFIGS)
def test_prior_configs_need_a_path_and_say_how(name, monkeypatch):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from test_configs_and_app import CONFIGS

    cfg = OmegaConf.load(CONFIGS / "prior" / f"{name}.yaml")
    assert (CONFIGS / "prior" / f"{name}.yaml").read_text().startswith("#")
    monkeypatch.delenv(cfg.env, raising=False)
    with pytest.raises(Exception) as err:
        instantiate(cfg)
    assert "prior.path=" in str(err.value) and cfg.env in str(err.value)


def test_invdiff_file_config_loads_from_the_environment(monkeypatch, tmp_path):
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    prior, arch = tiny_edm_prior()
    path = save(tmp_path / "p.safetensors", prior, "edm.precond", arch)
    monkeypatch.setenv("INVDIFF_PRIOR_FILE", str(path))
    with initialize_config_module("invdiff.configs", version_base=None):
        cfg = compose("config", overrides=["prior=invdiff_file"])
    assert instantiate(cfg.prior).checkpoint["format"] == "invdiff"
