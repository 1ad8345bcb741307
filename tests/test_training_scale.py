"""invdiff-train at other scales: the network-size configurations (stated parameter counts, attention),
mixed precision, torch.compile's plumbing and the wall-clock budget that splits a run into calls that
end where one uninterrupted run would."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from invdiff.apps.train_app import run, settings_of
from invdiff.data.training_data import PhantomData
from invdiff.priors import load, save
from invdiff.priors.unet import _Attention, build_unet
from invdiff.training import Trainer, TrainSettings

NET_DIR = Path(__file__).resolve().parents[1] / "configs" / "train" / "net"
ARCH = dict(width=8, mults=[1, 2], blocks=1, emb=32, patch=2)


def _settings(**kw) -> TrainSettings:
    return TrainSettings(**{**dict(steps=4, batch=2, warmup=2, arch=ARCH, ckpt_every=2, log_every=1), **kw})


def _weights_equal(a: Trainer, b: Trainer) -> None:
    for name in ("net", "ema"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), f"{name}.{k}"


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "large", "ddpmpp", "adm64"])
def test_every_network_size_has_its_stated_parameter_count(name):
    text = (NET_DIR / f"{name}.yaml").read_text()
    digits = re.search(r"([\d.]+) M parameters", text).group(1)
    stated, tol = float(digits) * 1e6, 0.5 * 10 ** -len(digits.partition(".")[2]) * 1e6  # (to the stated digit)
    with initialize_config_module("invdiff.configs.train", version_base=None):
        arch = dict(compose("config", overrides=[f"net={name}"]).settings.arch)
    with torch.device("meta"):  # (no memory: adm64 has 267 M parameters)
        net = build_unet(channels=1, **arch)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - stated) <= tol, (name, n, stated)
    assert (n * 4 / 1e6 < 50) == (name in ("tiny", "small", "medium"))  # the ≤ 50 MB shipped-prior budget


def test_the_default_network_is_the_shipped_priors_and_loads_them():
    with initialize_config_module("invdiff.configs.train", version_base=None):
        arch = dict(compose("config").settings.arch)
    from invdiff.priors.native import read_tagged
    from invdiff.priors.shipped import shipped_prior_path

    for name in ("phantom64", "patches64", "brain64"):
        shipped = read_tagged(shipped_prior_path(name), "invdiff", "a prior")[1]["arch_kwargs"]
        assert {k: shipped[k] for k in arch} == arch, name
        assert "attn" not in shipped  # older networks keep their state-dict keys


def test_attention_mixes_every_pixel_and_commutes_with_pixel_permutations():
    torch.manual_seed(0)
    a = _Attention(16, head_channels=8)
    torch.nn.init.normal_(a.proj.weight, std=0.2)  # (zero at initialisation: make it do something)
    x = torch.randn(2, 16, 4, 4)
    y = a(x)
    perm = torch.randperm(16)
    xp = x.flatten(2)[..., perm].reshape_as(x)
    # (GroupNorm and 1×1 convolutions are per pixel, attention is a set operation)
    torch.testing.assert_close(a(xp).flatten(2), y.flatten(2)[..., perm], atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[:, :, 3, 3] += 1.0  # one corner changes the opposite corner (a 3×3 convolution would not)
    assert (a(x2)[:, :, 0, 0] - y[:, :, 0, 0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="cannot be split"):
        _Attention(25, head_channels=8)  # (3 heads)


def test_a_network_with_attention_trains_exports_and_reloads(tmp_path):
    s = _settings(arch={**ARCH, "attn": [1], "head_channels": 8}, steps=2)
    t = Trainer(PhantomData(16), tmp_path, s, progress=False)
    t.train()
    assert any(k.startswith("model.mid_attn.") for k in t.net.state_dict())
    path = t.export()
    prior = load(path)
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(prior.denoiser(x, 0.3), t.prior().denoiser(x, 0.3))
    with pytest.raises(ValueError, match="levels"):
        build_unet(**{**ARCH, "attn": [2]})


def test_bf16_autocast_trains_the_same_float32_weights_close_to_fp32_and_resumes_bit_for_bit(tmp_path):
    ref = Trainer(PhantomData(16), tmp_path / "fp32", _settings(), progress=False)
    ref.train()
    a = Trainer(PhantomData(16), tmp_path / "a", _settings(precision="bf16"), progress=False)
    a.train()
    assert all(p.dtype == torch.float32 for p in a.net.parameters())
    # the steps see the same batches and noises (step 1's network outputs zero: its losses are equal);
    # later ones differ by bfloat16 rounding only
    for (_, lb), (_, lf) in zip(a.losses[1:], ref.losses[1:]):
        assert abs(lb - lf) < 0.03 * lf
    assert a.losses[1][1] != ref.losses[1][1]  # (autocast was on)
    b = Trainer(PhantomData(16), tmp_path / "b", _settings(precision="bf16"), progress=False)
    b.train(until=2)
    b = Trainer(PhantomData(16), tmp_path / "b", _settings(precision="bf16"), progress=False)
    b.train()
    _weights_equal(a, b)


def test_bad_precision_compile_and_budget_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        _settings(precision="fp8")
    with pytest.raises(ValueError, match="CUDA device"):
        Trainer(PhantomData(16), tmp_path, _settings(precision="fp16"), progress=False)
    with pytest.raises(ValueError, match="max_minutes must be a positive"):
        _settings(max_minutes=0)
    with pytest.raises(ValueError, match="compile must be true or false"):
        _settings(compile="yes")
    with pytest.raises(ValueError, match="leave settings.max_minutes=null"):
        TrainSettings(objective="em", max_minutes=5)


def test_a_run_cut_into_budgeted_calls_ends_where_one_uninterrupted_run_does(tmp_path):
    whole = Trainer(PhantomData(16), tmp_path / "whole", _settings(steps=5), progress=False)
    whole.train()
    calls = []
    while True:  # each call: the same settings, a budget so small that it stops after one step
        t = Trainer(PhantomData(16), tmp_path / "calls", _settings(steps=5, max_minutes=1e-9), progress=False)
        if t.step == 5:
            break
        t.train()
        calls.append((t.step, t.stopped_early))
        assert (tmp_path / "calls" / "checkpoint.safetensors").is_file()
    assert calls == [(1, True), (2, True), (3, True), (4, True), (5, False)]
    _weights_equal(whole, t)
    assert t.losses == whole.losses


def test_the_app_stops_at_its_budget_and_exports_what_it_has(tmp_path, caplog):
    with initialize_config_module("invdiff.configs.train", version_base=None):
        c = compose("config", overrides=[f"out={tmp_path}", "settings.batch=2", "settings.log_every=1",
                                         "settings.ckpt_every=50", "sample_grid=0", "data.size=16", "settings.warmup=2",
                                         "net=tiny", "settings.arch.width=8", "settings.steps=50",
                                         "settings.max_minutes=1e-9"])
    assert settings_of(c).max_minutes == 1e-9
    with caplog.at_level("INFO", logger="invdiff.train"):
        t = run(c)
    assert t.stopped_early and t.step == 1
    assert "run the same command again" in caplog.text
    assert (tmp_path / "prior.safetensors").is_file() and (tmp_path / "checkpoint.safetensors").is_file()


def test_compile_wraps_the_forward_pass_only(tmp_path, monkeypatch):
    """The plumbing of ``settings.compile`` (the inductor compiler takes minutes on a 2-core CPU; the
    real compiler runs in the CUDA test below): the compiled module computes the loss, the
    checkpoint and the export hold the plain network's keys, and the losses are eager's."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    eager = Trainer(PhantomData(16), tmp_path / "eager", _settings(steps=3), progress=False)
    eager.train()
    t = Trainer(PhantomData(16), tmp_path / "c", _settings(steps=3, compile=True), progress=False)
    assert t.model is not t.net
    t.train()
    for (_, a), (_, b) in zip(t.losses, eager.losses):
        assert abs(a - b) <= 1e-4 * abs(b)
    keys = set(load(t.export()).net.state_dict())
    assert keys == set(eager.prior().net.state_dict()) and not any("_orig_mod" in k for k in keys)
    resumed = Trainer(PhantomData(16), tmp_path / "c", _settings(steps=3, compile=True), progress=False)
    assert resumed.step == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_and_compile_train_and_resume(tmp_path, precision):
    s = dict(precision=precision, compile=True, steps=4)
    a = Trainer(PhantomData(16), tmp_path / "a", _settings(**s), device="cuda", progress=False)
    a.train()
    assert all(v[1] == v[1] and v[1] < 10 for v in a.losses)
    b = Trainer(PhantomData(16), tmp_path / "b", _settings(**s), device="cuda", progress=False)
    b.train(until=2)
    b = Trainer(PhantomData(16), tmp_path / "b", _settings(**s), device="cuda", progress=False)
    b.train()
    for k, v in a.net.state_dict().items():  # (cuDNN kernels may pick other algorithms: close, not equal)
        torch.testing.assert_close(v, b.net.state_dict()[k], atol=1e-3, rtol=1e-2)
    if precision == "fp16":
        assert b.scaler is not None and b.scaler.get_scale() > 0
