"""The flow view, checked against exact answers: path conversions and derivatives, the Gaussian
mixture's closed-form velocity against its denoiser, flow priors of the exact velocity, the
probability-flow map of a Gaussian (Heun 2nd order, Euler 1st), the interpolant SDE's marginals,
NFE and randomness, the flow checkpoint loaders, and flow-matching training."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch

from invdiff.priors import (CheckpointError, CountingPrior, FlowPrior, GaussianMixturePrior, GaussianPrior, Prior,
                            load, save)
from invdiff.priors.flow import PATHS, make_path
from invdiff.priors.flow_formats import load_flow_state_dict
from invdiff.priors.flow_samplers import FLOW_SAMPLERS, flow_euler, flow_heun, flow_sde
from invdiff.priors.unet import build_flow_unet

F64 = torch.float64
ALL_PATHS = sorted(PATHS)  # linear, trig, ve, vp


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spd(d: int, seed: int, lo: float = 0.3, hi: float = 2.0) -> torch.Tensor:
    """A d×d covariance with eigenvalues spread over [lo, hi] and random eigenvectors."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=F64))
    return q @ torch.diag(torch.linspace(lo, hi, d, dtype=F64)) @ q.T


GMM = GaussianMixturePrior(torch.randn(3, 4, generator=gen(1), dtype=F64) * 2,
                           [0.5, 0.3, 0.2], torch.stack([spd(4, s) for s in (2, 3, 4)]))
GAUSS = GaussianPrior(torch.tensor([1.0, -2.0, 0.5], dtype=F64), spd(3, 5))
PRIORS = {"gmm": GMM, "gauss": GAUSS}


# -- conversions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_PATHS)
def test_conversions_round_trip_and_derivatives_match_finite_differences(name):
    path = make_path(name)
    t = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=F64).reshape(4, 1)
    x0, x_t = torch.randn(4, 3, generator=gen(0), dtype=F64), torch.randn(4, 3, generator=gen(1), dtype=F64)
    v = path.velocity_from_x0(x_t, x0, t)
    torch.testing.assert_close(path.x0_from_velocity(x_t, v, t), x0, rtol=1e-10, atol=1e-10)
    eps = path.eps_from_x0(x_t, x0, t)
    torch.testing.assert_close(path.x0_from_eps(x_t, eps, t), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(path.velocity_target(x0, eps, t), v, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(path.alpha(t) * x0 + path.sigma(t) * eps, x_t, rtol=1e-12, atol=1e-12)
    score = path.score_from_x0(x_t, x0, t)
    torch.testing.assert_close(score, -eps / path.sigma(t), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(path.x0_from_score(x_t, score, t), x0, rtol=1e-10, atol=1e-10)
    tt = torch.linspace(0.02, 0.98, 25, dtype=F64)
    torch.testing.assert_close(path.t_of_sigma(path.edm_sigma(tt)), tt, rtol=1e-12, atol=1e-12)
    h = 1e-6
    for f, df in ((path.alpha, path.d_alpha), (path.sigma, path.d_sigma)):
        fd = (f(tt + h) - f(tt - h)) / (2 * h)
        torch.testing.assert_close(df(tt), fd, rtol=1e-6, atol=1e-7)
    assert bool((path.sigma(tt) * path.d_alpha(tt) - path.d_sigma(tt) * path.alpha(tt) < 0).all())


# -- the mixture's velocity, through the denoiser and in closed form ------------------------------------


@pytest.mark.parametrize("name", ALL_PATHS)
@pytest.mark.parametrize("prior_name", sorted(PRIORS))
def test_closed_form_velocity_equals_the_velocity_through_the_denoiser(name, prior_name):
    prior, path = PRIORS[prior_name], make_path(name)
    x = torch.randn(5, prior.d, generator=gen(2), dtype=F64) * 2
    for t in (0.1, 0.5, 0.9, torch.tensor([0.05, 0.2, 0.5, 0.8, 0.97], dtype=F64)):
        torch.testing.assert_close(prior.velocity(x, t, path), Prior.velocity(prior, x, t, path),
                                   rtol=1e-9, atol=1e-9)


def exact_velocity_net(prior, path, convention):
    if convention == "noise_at_1":
        return lambda x, t: prior.velocity(x, t, path)
    return lambda x, t: -prior.velocity(x, 1.0 - t, path)  # data at t = 1: time and sign flipped


@pytest.mark.parametrize("convention", ["noise_at_1", "data_at_1"])
@pytest.mark.parametrize("name", ALL_PATHS)
def test_a_flow_prior_of_the_exact_velocity_has_the_mixture_denoiser(name, convention):
    path = make_path(name)
    flow = FlowPrior(exact_velocity_net(GMM, path, convention), path, shape=GMM.shape, data_range=(0.0, 1.0),
                     model_range=(0.0, 1.0), time_convention=convention)
    x = torch.randn(4, 4, generator=gen(3), dtype=F64) * 2
    for sigma in (0.05, 0.5, 3.0, torch.tensor([0.1, 0.4, 1.0, 5.0], dtype=F64)):
        torch.testing.assert_close(flow.denoiser(x, sigma), GMM.denoiser(x, sigma), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(flow.velocity(x, 0.4), GMM.velocity(x, 0.4, path), rtol=1e-12, atol=1e-12)
    if name in ("linear", "trig"):  # α(1) = 0: the network answers at t = 1, the denoiser cannot
        torch.testing.assert_close(flow.velocity(x, 1.0), GMM.velocity(x, 1.0, path), rtol=1e-12, atol=1e-12)


# -- the probability-flow map of a Gaussian ------------------------------------------------------------


def gaussian_map_errors(sampler, name, steps_list, noise):
    """Max-norm errors of the sampler's noise → data map against the exact one: along each eigen-
    direction of Σ, (x_t − α μ)/√(α²λ + σ²) is constant, so with α(1) = 0, σ(1) = 1 the ODE maps x₁
    to μ + Σ^{1/2} x₁."""
    lam, Q = torch.linalg.eigh(GAUSS.cov_matrices()[0])
    exact = GAUSS.means[0] + noise @ (Q * lam.sqrt()) @ Q.T
    return [float((sampler(GAUSS, noise.shape, steps=n, path=name, noise=noise) - exact).abs().max())
            for n in steps_list]


@pytest.mark.parametrize("name", ["linear", "trig"])
def test_heun_converges_at_second_order_and_euler_at_first_to_the_exact_gaussian_map(name):
    noise = torch.randn(64, 3, generator=gen(4), dtype=F64)
    steps = [10, 20, 40, 80]
    for sampler, order in ((flow_heun, 2.0), (flow_euler, 1.0)):
        err = gaussian_map_errors(sampler, name, steps, noise)
        orders = [math.log2(a / b) for a, b in zip(err, err[1:])]
        assert all(abs(p - order) < 0.25 for p in orders[1:]), (sampler.__name__, err, orders)
        assert err[-1] < (1e-3 if order == 2 else 0.1), (sampler.__name__, err)  # measured <= 5.0e-4, 4.9e-2


# -- the interpolant SDE ----------------------------------------------------------------------------


def check_moments(prior, s, mean_tol, cov_tol):
    n, cov = s.shape[0], prior.covariance()
    se_mean = math.sqrt(float(torch.diagonal(cov).sum()) / n)
    assert float((s.mean(0) - prior.mean()).norm()) <= 4 * se_mean + mean_tol
    rel = float((torch.cov(s.T) - cov).norm() / cov.norm())
    assert rel <= 4 * math.sqrt(2.0 / n) + cov_tol, f"covariance error {rel:.3f}"


# (path, eps, eps_scale): the SDE keeps the probability flow's marginals for every ε >= 0
SDE_CASES = [("linear", "sigma", 1.0), ("linear", 1.0, 2.0), ("trig", "sigma", 1.0), ("vp", "sbdm", 1.0),
             ("vp", lambda t: 0.5 * t, 1.0)]


@pytest.mark.parametrize("case", range(len(SDE_CASES)))
def test_the_interpolant_sde_samples_the_gaussian(case):
    name, eps, scale = SDE_CASES[case]
    s = flow_sde(GAUSS, (20000, 3), steps=100, generator=gen(0), path=name, eps=eps, eps_scale=scale)
    assert s.shape == (20000, 3) and s.dtype == F64
    check_moments(GAUSS, s, 0.02, 0.03)  # measured at 100 steps: below 0.01 and 0.025


def test_the_interpolant_sde_samples_the_mixture_with_its_weights():
    prior = GaussianMixturePrior([[-4.0, 0.0], [4.0, 1.0]], [0.7, 0.3], 0.3)
    s = flow_sde(prior, (10000, 2), steps=100, generator=gen(1), eps="sigma")
    check_moments(prior, s, 0.05, 0.05)
    frac = float((s[:, 0] < 0).double().mean())
    assert abs(frac - 0.7) <= 4 * math.sqrt(0.21 / 10000) + 0.01


def test_a_zero_diffusion_sde_is_flow_euler_and_infinite_diffusion_is_refused():
    ref = flow_euler(GMM, (6, 4), steps=9, generator=gen(5))
    assert torch.equal(flow_sde(GMM, (6, 4), steps=9, generator=gen(5), eps=0.0), ref)
    assert torch.equal(flow_sde(GMM, (6, 4), steps=9, generator=gen(5), eps="sigma", eps_scale=0.0), ref)
    with pytest.raises(ValueError, match=r"diffusion coefficient ε\(t\) = inf at t = 1 on the linear path"):
        flow_sde(GMM, (2, 4), steps=4, eps="sbdm")
    with pytest.raises(ValueError, match="unknown diffusion schedule"):
        flow_sde(GMM, (2, 4), steps=4, eps="karras")
    with pytest.raises(ValueError, match="finite and >= 0"):
        flow_sde(GMM, (2, 4), steps=4, eps=-1.0)


# -- NFE and randomness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", sorted(FLOW_SAMPLERS))
def test_nfe_determinism_and_per_item_generators(sampler):
    fn = FLOW_SAMPLERS[sampler]
    counting = CountingPrior(GMM)
    state = torch.get_rng_state()
    a = fn(counting, (3, 4), steps=7, generator=gen(6))
    assert counting.calls == (13 if sampler == "flow_heun" else 7)
    assert torch.equal(torch.get_rng_state(), state)  # only the generator was used
    assert torch.equal(a, fn(GMM, (3, 4), steps=7, generator=gen(6)))
    batch = fn(GMM, (3, 4), steps=7, generator=[gen(10), gen(11), gen(12)])
    for i in range(3):
        torch.testing.assert_close(batch[i:i + 1], fn(GMM, (1, 4), steps=7, generator=[gen(10 + i)]),
                                   rtol=1e-12, atol=1e-12)


# -- checkpoints ------------------------------------------------------------------------------------


def tiny_flow_unet(seed: int = 0):
    net = build_flow_unet(channels=1, width=8, mults=(1, 2), blocks=1, emb=16)
    g = gen(seed)
    with torch.no_grad():  # random weights everywhere (the output layer starts at zero)
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_a_flow_prior_round_trips_through_the_native_format(tmp_path):
    arch = dict(channels=1, width=8, mults=[1, 2], blocks=1, emb=16)
    prior = FlowPrior(tiny_flow_unet(), "trig", shape=(1, 8, 8), time_convention="data_at_1", time_scale=2.0,
                      t_range=(0.01, 0.95))
    save(tmp_path / "flow.safetensors", prior, "invdiff.flow_unet", arch)
    back = load(tmp_path / "flow.safetensors")
    assert isinstance(back, FlowPrior) and back.checkpoint["format"] == "invdiff"
    assert (back.path, back.time_convention, back.time_scale, back.t_range, back.shape) == \
        (prior.path, "data_at_1", 2.0, (0.01, 0.95), (1, 8, 8))
    x = torch.randn(2, 1, 8, 8, generator=gen(7))
    with torch.no_grad():
        assert torch.equal(back.denoiser(x, 0.7), prior.denoiser(x, 0.7))
        assert torch.equal(back.velocity(x, 0.3), prior.velocity(x, 0.3))


def test_a_plain_state_dict_loads_with_its_stated_flow_settings(tmp_path):
    net = tiny_flow_unet(1)
    torch.save(net.state_dict(), tmp_path / "model_final.pt")
    spec = dict(architecture="invdiff.flow_unet", arch_kwargs=dict(channels=1, width=8, mults=[1, 2], blocks=1,
                emb=16), path="linear", time_convention="data_at_1", time_scale=1.0, shape=[1, 8, 8],
                data_range=[0.0, 1.0], model_range=[-1.0, 1.0])
    prior = load_flow_state_dict(tmp_path / "model_final.pt", **spec)
    assert prior.checkpoint["format"] == "flow-state-dict"
    x, t = torch.randn(3, 1, 8, 8, generator=gen(8)), torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    with torch.no_grad():  # PnP-Flow's convention: data at t = 1, the network's velocity points to the data
        ref = -net(x, (1.0 - t).float())
        torch.testing.assert_close(prior.velocity(x, t), ref)
        torch.testing.assert_close(prior.denoiser(x, 0.5), prior.path.x0_from_velocity(
            x.double() / 1.5, prior.velocity((x / 1.5).float(), 1 / 3).double(), 1 / 3).float(), rtol=1e-5, atol=1e-5)
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    again = load_flow_state_dict(tmp_path / "w.safetensors", **spec)
    with torch.no_grad():
        assert torch.equal(again.velocity(x, t), prior.velocity(x, t))
    torch.save({"model_state_dict": net.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match=r"not a plain state dict: entries epoch, model_state_dict .*pass key="):
        load_flow_state_dict(tmp_path / "ckpt.pt", **spec)
    load_flow_state_dict(tmp_path / "ckpt.pt", key="model_state_dict", **spec)
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, tmp_path / "ddp.pt")
    load_flow_state_dict(tmp_path / "ddp.pt", prefix="module.", **spec)


def test_a_state_dict_that_does_not_match_or_is_ambiguous_is_refused(tmp_path):
    state = tiny_flow_unet().state_dict()
    spec = dict(architecture="invdiff.flow_unet", arch_kwargs=dict(channels=1, width=8, mults=[1, 2], blocks=1,
                emb=16), path="linear", time_convention="data_at_1", time_scale=1.0, shape=[1, 8, 8],
                data_range=[0.0, 1.0], model_range=[-1.0, 1.0])
    bad = dict(state)
    bad.pop("unet.out.bias")
    bad["extra.weight"] = torch.zeros(2)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"(?s)missing keys: unet\.out\.bias.*unexpected keys: extra\.weight"):
        load_flow_state_dict(tmp_path / "bad.pt", **spec)
    torch.save(state, tmp_path / "ok.pt")
    with pytest.raises(CheckpointError, match="architecture 'pnpflow.UNet' is not registered"):
        load_flow_state_dict(tmp_path / "ok.pt", **{**spec, "architecture": "pnpflow.UNet"})
    with pytest.raises(ValueError, match="time_convention must be one of"):
        load_flow_state_dict(tmp_path / "ok.pt", **{**spec, "time_convention": "data_at_0"})
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'time_scale'"):
        load_flow_state_dict(tmp_path / "ok.pt", **{k: v for k, v in spec.items() if k != "time_scale"})
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump({"w": [1.0]}, f)
    with pytest.raises(CheckpointError, match="pickle"):
        load_flow_state_dict(tmp_path / "model.pkl", **spec)
    prior = FlowPrior(tiny_flow_unet(), "linear", shape=(1, 8, 8))
    save(tmp_path / "own.safetensors", prior, "invdiff.flow_unet", spec["arch_kwargs"])
    with pytest.raises(CheckpointError, match="invdiff prior file, which states its own settings: load it with invdiff.priors.load"):
        load_flow_state_dict(tmp_path / "own.safetensors", **spec)


def tiny_diffusers_unet(diffusers):
    torch.manual_seed(3)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4).eval()


def write_flow_folder(diffusers, folder, **sched):
    tiny_diffusers_unet(diffusers).save_pretrained(folder / "unet")
    diffusers.FlowMatchEulerDiscreteScheduler(**sched).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_a_diffusers_flow_matching_folder_samples_as_diffusers_does(tmp_path, shift):
    diffusers = pytest.importorskip("diffusers")
    write_flow_folder(diffusers, tmp_path / "m", shift=shift)
    prior = load(tmp_path / "m")
    assert isinstance(prior, FlowPrior) and prior.checkpoint["format"] == "diffusers"
    assert (prior.path.name, prior.time_convention, prior.time_scale, prior.shape) == \
        ("linear", "noise_at_1", 1000.0, (1, 8, 8))
    # diffusers' own loop: scale_noise / step with the scheduler, sigmas = our uniform grid (the
    # scheduler shifts it, exactly as grid="shift" does); the network's meaning does not change
    unet = tiny_diffusers_unet(diffusers)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    steps = 5
    sched.set_timesteps(sigmas=torch.linspace(1.0, 0.0, steps + 1)[:-1].tolist())
    noise = torch.randn(2, 1, 8, 8, generator=gen(9), dtype=F64)
    x = noise.float()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
        ours = flow_euler(prior, (2, 1, 8, 8), steps=steps, grid="shift", shift=shift, noise=noise)
    torch.testing.assert_close(prior.to_model(ours).float(), x, rtol=1e-4, atol=1e-4)


def test_a_diffusers_folder_of_another_scheduler_or_network_is_refused_or_not_a_flow(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    write_flow_folder(diffusers, tmp_path / "inv", invert_sigmas=True)
    with pytest.raises(CheckpointError, match="invert_sigmas"):
        load(tmp_path / "inv")
    write_flow_folder(diffusers, tmp_path / "lcm")
    (tmp_path / "lcm" / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchLCMScheduler", "num_train_timesteps": 1000}))
    with pytest.raises(CheckpointError, match="scheduler 'FlowMatchLCMScheduler' is not supported"):
        load(tmp_path / "lcm")
    sd3 = tmp_path / "sd3"
    diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(sd3 / "scheduler")
    (sd3 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline",
                                                      "transformer": ["diffusers", "SD3Transformer2DModel"]}))
    with pytest.raises(CheckpointError, match="transformer"):
        load(sd3)
    tiny_diffusers_unet(diffusers).save_pretrained(tmp_path / "ddpm" / "unet")
    diffusers.DDPMScheduler().save_pretrained(tmp_path / "ddpm" / "scheduler")
    assert not isinstance(load(tmp_path / "ddpm"), FlowPrior)  # the diffusion loader keeps its folders


# -- training ----------------------------------------------------------------------------------------------


def test_the_exact_velocity_minimises_the_flow_loss_to_its_irreducible_value():
    from invdiff.training import TrainSettings, flow_loss

    prior = GaussianPrior(torch.tensor([0.5, -1.0], dtype=F64), spd(2, 6), shape=(2, 1, 1))
    path, s = make_path("linear"), TrainSettings(objective="flow", path="linear", t_sampling="uniform")
    exact = lambda x, t: prior.velocity(x, t, path)  # noqa: E731
    g = gen(11)
    losses, gaps, c = [], [], 0.3
    for _ in range(8):
        x0 = prior.sample(4000, g)
        state = g.get_state()
        losses.append(float(flow_loss(exact, x0, g, s)))
        g.set_state(state)  # the same t and ε: the gap is c² − 2c·E[target − v] ≈ c²
        gaps.append(float(flow_loss(lambda x, t: exact(x, t) + c, x0, g, s)) - losses[-1])
    # irreducible loss: (1/d) ∫₀¹ Σ_i λ_i/((1 − t)² λ_i + t²) dt (Cov(ε − x₀ | x_t) in Σ's eigenbasis)
    lam = torch.linalg.eigvalsh(prior.cov_matrices()[0])
    t = torch.linspace(0.0, 1.0, 200001, dtype=F64)[:, None]
    f = (lam / ((1 - t) ** 2 * lam + t**2)).sum(1) / 2
    irreducible = float(((f[1:] + f[:-1]) / 2).mean())
    mean = sum(losses) / len(losses)
    se = math.sqrt(sum((v - mean) ** 2 for v in losses) / (len(losses) - 1) / len(losses))
    assert abs(mean - irreducible) <= 4 * se + 1e-3, (mean, irreducible, se)
    assert all(abs(gap - c * c) < 0.3 * c * c for gap in gaps), gaps


def tiny_settings(**kw):
    from invdiff.training import TrainSettings

    base = dict(batch=2, log_every=5, ckpt_every=8, warmup=2, seed=0, steps=30, objective="flow",
                arch=dict(width=8, mults=[1, 2], blocks=1, emb=16, patch=2))
    return TrainSettings(**{**base, **kw})


def test_flow_training_resumes_bit_for_bit_and_reflow_needs_a_flow_teacher(tmp_path):
    from invdiff.data.training_data import PhantomData
    from invdiff.training import Trainer

    data = PhantomData(16)
    straight = Trainer(data, tmp_path / "a", tiny_settings(), progress=False)
    straight.train()
    first = Trainer(data, tmp_path / "b", tiny_settings(), progress=False)
    first.train(until=15)  # "killed" after a checkpoint written at step 15 (a logging step too)
    resumed = Trainer(data, tmp_path / "b", tiny_settings(), progress=False)
    assert resumed.step == 15
    resumed.train()
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    assert [(float(a), b) for a, b in straight.losses] == [(float(a), b) for a, b in resumed.losses]
    teacher = straight.export()
    assert isinstance(load(teacher), FlowPrior)
    reflow = Trainer(data, tmp_path / "r", tiny_settings(objective="reflow", teacher=str(teacher), teacher_steps=2,
                                                         steps=2), progress=False)
    reflow.train()
    assert reflow.step == 2 and all(math.isfinite(v) for _, v in reflow.losses)
    edm = Trainer(data, tmp_path / "e", tiny_settings(objective="edm", steps=1), progress=False).export()
    with pytest.raises(ValueError, match="is a NetworkPrior, not a flow prior"):
        Trainer(data, tmp_path / "r2", tiny_settings(objective="reflow", teacher=str(edm)), progress=False)


def test_a_flow_run_is_not_resumed_under_another_path_time_distribution_or_objective(tmp_path):
    from invdiff.data.training_data import PhantomData
    from invdiff.training import Trainer

    data = PhantomData(16)
    Trainer(data, tmp_path / "a", tiny_settings(steps=8), progress=False).train()
    for change, key in [(dict(path="trig"), "path"), (dict(path="vp"), "path"),
                        (dict(t_sampling="logit_normal"), "t_sampling"), (dict(objective="edm"), "holds a network")]:
        with pytest.raises(CheckpointError, match=key):
            Trainer(data, tmp_path / "a", tiny_settings(steps=8, **change), progress=False)
    # what does not change the target resumes: more steps, another learning rate
    resumed = Trainer(data, tmp_path / "a", tiny_settings(steps=10, lr=5e-4), progress=False)
    assert resumed.step == 8
    # a logit-normal run refuses another location of its time distribution
    Trainer(data, tmp_path / "b", tiny_settings(steps=8, t_sampling="logit_normal"), progress=False).train()
    with pytest.raises(CheckpointError, match="t_mean"):
        Trainer(data, tmp_path / "b", tiny_settings(steps=8, t_sampling="logit_normal", t_mean=-0.5), progress=False)
