"""Consistency models against exact answers: the boundary condition of the parameterisation, the
closed-form consistency function of a Gaussian (boundary, fine Heun integration of the PF-ODE, a
consistency prior built on it), multistep consistency sampling's NFE and exact Gaussian samples,
the native file round trip, consistency distillation moving towards f*, and CD/CT training runs
that resume bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from invdiff.priors import ConsistencyPrior, CountingPrior, GaussianPrior, load, save
from invdiff.priors.analytic import ExactConsistencyNetwork, exact_consistency_function
from invdiff.priors.consistency import (ConsistencyPreconditioned, consistency_sampling, consistency_scalings,
                                        default_sigmas, heun_step)
from invdiff.priors.samplers import edm_heun
from invdiff.priors.unet import build_cm_unet

F64 = torch.float64
EPS, T = 0.002, 80.0


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spd(d: int, seed: int, lo: float = 0.3, hi: float = 2.0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=F64))
    return q @ torch.diag(torch.linspace(lo, hi, d, dtype=F64)) @ q.T


GAUSS = GaussianPrior(torch.tensor([0.8, -0.5, 0.3], dtype=F64), spd(3, 5, 0.05, 0.6))
DIAG = GaussianPrior(torch.tensor([0.2, -0.1], dtype=F64), torch.tensor([0.3, 0.04], dtype=F64))


ExactF = ExactConsistencyNetwork  # the raw F for which c_skip x + c_out F(c_in x, c_noise) = f*


def exact_cm(prior: GaussianPrior) -> ConsistencyPrior:
    return ConsistencyPrior(ExactF(prior), shape=prior.shape, sigma_range=(EPS, T), data_range=(0.0, 1.0),
                            model_range=(0.0, 1.0))


# -- the parameterisation ------------------------------------------------------------------------------


def test_the_boundary_condition_holds_exactly_for_any_network():
    torch.manual_seed(0)
    net = build_cm_unet(channels=1, width=8, mults=(1, 2), emb=16)
    for p in net.parameters():  # a network far from its zero-initialised output
        torch.nn.init.normal_(p, std=0.3)
    prior = ConsistencyPrior(net, shape=(1, 8, 8))
    x = torch.randn(3, 1, 8, 8, generator=gen(1), dtype=F64) * 3
    assert torch.equal(prior.denoiser(x, EPS), x)  # f(x, σ_min) = x, bit for bit in float64
    assert not torch.allclose(prior.denoiser(x, 0.5), x, atol=1e-3)
    c_skip, c_out, _, _ = consistency_scalings(torch.tensor([EPS, 1.0, T], dtype=F64))
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0
    # far from σ_min the scalings approach EDM's (Song et al. 2023, App. C)
    sd = 0.5
    torch.testing.assert_close(c_skip[2], torch.tensor(sd**2 / (T**2 + sd**2), dtype=F64), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="boundary"):
        ConsistencyPrior(ConsistencyPreconditioned(torch.nn.Identity(), 0.5, 0.01), shape=(1, 8, 8))


# -- the exact consistency function of a Gaussian ------------------------------------------------------


def heun_to_sigma_min(prior, x, sigma, n):
    """The PF-ODE dx/dσ = (x − D(x, σ))/σ from σ (``[B]``) down to σ_min: ``n`` Heun steps on ρ-grids."""
    grids = [torch.tensor(default_sigmas(_Range(EPS, float(s)), n) + [EPS], dtype=F64) for s in sigma]
    for k in range(n):
        x = heun_step(prior, x, torch.stack([g[k] for g in grids]), torch.stack([g[k + 1] for g in grids]))
    return x


@pytest.mark.parametrize("prior", [GAUSS, DIAG], ids=["full", "diagonal"])
def test_the_exact_consistency_function_is_the_end_point_of_the_pf_ode(prior):
    x = torch.randn(4, prior.d, generator=gen(2), dtype=F64) * 2
    torch.testing.assert_close(exact_consistency_function(prior, x, EPS, EPS), x, rtol=1e-13, atol=1e-13)
    sigma = torch.tensor([0.05, 0.7, 3.0, 20.0], dtype=F64)
    f = exact_consistency_function(prior, x, sigma, EPS)
    # Heun converges to f* at second order: error 4× smaller per doubling of the steps
    err = [float((heun_to_sigma_min(prior, x, sigma, n) - f).abs().max()) for n in (200, 400)]
    assert err[1] < 2e-5 and 3.5 < err[0] / err[1] < 4.5, err
    # the consistency property: f* is constant along a trajectory
    g = torch.tensor(default_sigmas(_Range(EPS, 3.0), 400) + [EPS], dtype=F64)
    y, f3 = x.clone(), exact_consistency_function(prior, x, 3.0, EPS)
    for k in range(400):
        y = heun_step(prior, y, g[k].expand(4), g[k + 1].expand(4))
        if k in (50, 200):
            torch.testing.assert_close(exact_consistency_function(prior, y, g[k + 1].expand(4), EPS), f3,
                                       rtol=2e-5, atol=2e-5)


class _Range:
    def __init__(self, lo, hi):
        self.sigma_min, self.sigma_max = lo, hi


def test_heun_step_is_edm_heuns_step():
    seen = []
    edm_heun(GAUSS, (5, 3), steps=2, sigma_min=0.3, sigma_max=4.0, generator=gen(3),
             callback=lambda i, x, x0: seen.append(x.clone()))
    x = 4.0 * torch.randn(5, 3, generator=gen(3), dtype=F64)
    torch.testing.assert_close(heun_step(GAUSS, x, 4.0, 0.3), seen[0], rtol=1e-14, atol=1e-14)


def test_a_consistency_prior_on_the_exact_network_reproduces_the_oracle():
    cm = exact_cm(GAUSS)
    x = torch.randn(6, 3, generator=gen(4), dtype=F64) * 3
    sigma = torch.tensor([EPS, 0.01, 0.3, 1.0, 10.0, 80.0], dtype=F64)
    torch.testing.assert_close(cm.denoiser(x, sigma), exact_consistency_function(GAUSS, x, sigma, EPS),
                               rtol=1e-10, atol=1e-10)
    assert torch.equal(cm.denoiser(x, EPS), x)


# -- multistep consistency sampling ---------------------------------------------------------------------


def test_multistep_sampling_with_the_exact_function_gives_the_gaussian():
    cm = exact_cm(GAUSS)
    counting = CountingPrior(cm)
    state = torch.get_rng_state()
    n = 40000
    x = consistency_sampling(counting, (n, 3), steps=3, generator=gen(5))
    assert counting.calls == 3  # NFE = the number of σ points
    assert torch.equal(torch.get_rng_state(), state)
    mean, cov = x.mean(0), torch.cov(x.T)
    se = (torch.diagonal(GAUSS.covariance()) / n).sqrt()
    assert bool(((mean - GAUSS.mean()).abs() < 4 * se).all()), (mean, GAUSS.mean())
    torch.testing.assert_close(cov, GAUSS.covariance() + EPS**2 * torch.eye(3, dtype=F64), rtol=0, atol=0.02)
    # one step from N(0, T² I) is exact in closed form: f* is affine, x_T has mean 0, not μ
    one = consistency_sampling(cm, (n, 3), steps=1, generator=gen(6))
    r = exact_consistency_function(GAUSS, torch.zeros(1, 3, dtype=F64), T, EPS)  # = μ − r (μ − 0)
    assert bool(((one.mean(0) - r[0]).abs() < 4 * se).all())
    # explicit σ points, per-item generators give batch-independent samples
    a = consistency_sampling(cm, (3, 3), sigmas=[80.0, 2.0], generator=[gen(10), gen(11), gen(12)])
    b = consistency_sampling(cm, (1, 3), sigmas=[80.0, 2.0], generator=[gen(11)])
    torch.testing.assert_close(a[1:2], b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="strictly decreasing"):
        consistency_sampling(cm, (2, 3), sigmas=[2.0, 80.0])
    with pytest.raises(ValueError, match="strictly decreasing"):
        consistency_sampling(cm, (2, 3), sigmas=[EPS])


def test_default_time_points():
    assert default_sigmas(_Range(EPS, T), 1) == [T]
    s = default_sigmas(_Range(EPS, T), 4)
    assert len(s) == 4 and s[0] == T and all(a > b > EPS for a, b in zip(s, s[1:]))


# -- the native file ------------------------------------------------------------------------------------


def test_native_round_trip(tmp_path):
    torch.manual_seed(1)
    kw = dict(channels=1, width=8, mults=[1, 2], blocks=1, emb=16, patch=1, sigma_data=0.5, sigma_min=EPS)
    net = build_cm_unet(**kw)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    prior = ConsistencyPrior(net, shape=(1, 8, 8), sigma_range=(EPS, T))
    path = save(tmp_path / "cm.safetensors", prior, "invdiff.cm_unet", kw)
    back = load(path)
    assert isinstance(back, ConsistencyPrior) and back.checkpoint["format"] == "invdiff"
    assert (back.sigma_min, back.sigma_max, back.shape) == (EPS, T, (1, 8, 8))
    x = torch.randn(2, 1, 8, 8, generator=gen(7), dtype=F64)
    torch.testing.assert_close(back.denoiser(x, 0.7), prior.denoiser(x, 0.7), rtol=0, atol=0)
    a = consistency_sampling(back, (2, 1, 8, 8), steps=2, generator=gen(8))
    torch.testing.assert_close(a, consistency_sampling(prior, (2, 1, 8, 8), steps=2, generator=gen(8)))


# -- training ---------------------------------------------------------------------------------------------


class MLP(torch.nn.Module):
    """A tiny raw network F(x_in, c_noise) for vectors, zero output at initialisation."""

    def __init__(self, d: int = 2, h: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d + 1, h), torch.nn.SiLU(), torch.nn.Linear(h, h),
                                       torch.nn.SiLU(), torch.nn.Linear(h, d))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, x_in, c_noise):
        return self.net(torch.cat([x_in, c_noise[:, None]], 1))


def test_distillation_from_a_gaussian_teacher_moves_f_towards_the_exact_consistency_function():
    from invdiff.training import TrainSettings, cd_loss, karras_levels

    prior = GaussianPrior(torch.tensor([0.4, -0.3], dtype=F64), torch.tensor([0.25, 0.04], dtype=F64))
    torch.manual_seed(0)
    f = ConsistencyPreconditioned(MLP())
    target = ConsistencyPreconditioned(MLP())
    target.load_state_dict(f.state_dict())
    target.requires_grad_(False)
    s = TrainSettings(objective="cd", teacher="gaussian", cm_levels=18)
    levels = karras_levels(18)

    def error():  # E‖f(x, σ) − f*(x, σ)‖² over the levels σ > σ_min and x ~ N(μ, Σ + σ²I)
        g = gen(99)
        sig = levels[1:].float()
        idx = torch.randint(0, len(sig), (2000,), generator=g)
        x = prior.sample(2000, g).float() + sig[idx, None] * torch.randn(2000, 2, generator=g)
        with torch.no_grad():
            exact = exact_consistency_function(prior, x.double(), sig[idx].double(), EPS).float()
            return float((f(x, sig[idx]) - exact).square().sum(1).mean())

    def fixed_loss(net):
        g = gen(7)
        with torch.no_grad():
            return float(cd_loss(net, net, prior, prior.sample(4000, g).float(), g, s, levels))

    e0, l0 = error(), fixed_loss(f)
    opt = torch.optim.Adam(f.parameters(), lr=2e-3)
    g, losses = gen(1), []
    for _ in range(1500):
        loss = cd_loss(f, target, prior, prior.sample(256, g).float(), g, s, levels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pt, p in zip(target.parameters(), f.parameters()):
                pt.lerp_(p, 1 - s.cm_target_ema)
        losses.append(float(loss.detach()))
    e1, l1 = error(), fixed_loss(f)
    first, last = sum(losses[:250]) / 250, sum(losses[-250:]) / 250
    assert last < 0.6 * first, (first, last)
    assert l1 < 0.75 * l0, (l0, l1)
    assert e1 < 0.2 * e0, (e0, e1)  # measured: 0.29 → 0.027
    # the exact f* is (up to the teacher's Heun error) the minimiser: its loss is far below the learned one's
    exact = ConsistencyPreconditioned(ExactF(prior))
    assert fixed_loss(exact) < 0.1 * l1


def tiny_settings(**kw):
    from invdiff.training import TrainSettings

    base = dict(batch=2, log_every=5, ckpt_every=8, warmup=2, seed=0, steps=20, objective="ct",
                arch=dict(width=8, mults=[1, 2], blocks=1, emb=16, patch=2))
    return TrainSettings(**{**base, **kw})


@pytest.mark.parametrize("objective", ["cd", "ct"])
def test_consistency_training_resumes_bit_for_bit_and_refuses_other_settings(tmp_path, objective):
    from invdiff.data.training_data import PhantomData
    from invdiff.priors.checkpoints import CheckpointError
    from invdiff.training import Trainer

    data = PhantomData(16)
    kw = {}
    if objective == "cd":
        teacher = Trainer(data, tmp_path / "edm", tiny_settings(objective="edm", steps=1), progress=False).export()
        kw = dict(teacher=str(teacher))
    straight = Trainer(data, tmp_path / "a", tiny_settings(objective=objective, **kw), progress=False)
    if objective == "cd":  # the student starts from the teacher's weights
        assert straight.from_teacher
        t = load(teacher)
        for k, v in t.net.state_dict().items():
            assert torch.equal(v, straight.net.state_dict()[k]), k
    straight.train()
    first = Trainer(data, tmp_path / "b", tiny_settings(objective=objective, **kw), progress=False)
    first.train(until=15)  # "killed" after the checkpoint written at step 15 (a logging step too)
    resumed = Trainer(data, tmp_path / "b", tiny_settings(objective=objective, **kw), progress=False)
    assert resumed.step == 15
    resumed.train()
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    if objective == "cd":
        for k, v in straight.target.state_dict().items():
            assert torch.equal(v, resumed.target.state_dict()[k]), k
    assert straight.losses == resumed.losses and all(math.isfinite(v) for _, v in straight.losses)
    # the exported prior is a consistency prior, read back as one
    back = load(straight.export())
    assert isinstance(back, ConsistencyPrior) and back.shape == (1, 16, 16)
    x = torch.randn(2, 1, 16, 16, generator=gen(3), dtype=F64)
    torch.testing.assert_close(back.denoiser(x, 0.7), straight.prior().denoiser(x, 0.7))
    assert torch.equal(back.denoiser(x, EPS), x)
    # another objective, distance or curriculum is refused
    other = "ct" if objective == "cd" else "cd"
    changes = [(dict(objective=other, **kw), "objective"), (dict(cm_distance="l2", objective=objective, **kw),
                                                             "cm_distance")]
    changes.append((dict(objective="cd", cm_levels=40, **kw), "cm_levels") if objective == "cd"
                   else (dict(objective="ct", steps=40), "steps"))
    for change, key in changes:
        if change["objective"] == "cd" and "teacher" not in change:
            continue  # cd needs a teacher file; the objective key is checked first
        with pytest.raises(CheckpointError, match=key):
            Trainer(data, tmp_path / "a", tiny_settings(**change), progress=False)


def test_consistency_settings_are_checked():
    with pytest.raises(ValueError, match="needs settings.teacher"):
        tiny_settings(objective="cd")
    # DESIGN.md's names are the stored ones; cd / ct are accepted short names
    assert tiny_settings(objective="ct").objective == "consistency_training"
    assert tiny_settings(objective="cd", teacher="x").objective == "consistency_distillation"
    with pytest.raises(ValueError, match="short names cd, ct"):
        tiny_settings(objective="consistency")
    with pytest.raises(ValueError, match="cm_distance"):
        tiny_settings(cm_distance="lpips")
    from invdiff.training import ct_level_probs, ct_levels, karras_levels

    s = tiny_settings(steps=800)  # K' = ⌊800 / (log₂ 128 + 1)⌋ = 100
    assert [ct_levels(k, s) for k in (0, 99, 100, 250, 799)] == [11, 11, 21, 41, 1281]
    p = ct_level_probs(karras_levels(1281), s)
    assert abs(float(p.sum()) - 1) < 1e-12 and int(p.argmax()) > 0



def test_the_train_app_runs_consistency_training_from_its_config(tmp_path):
    from hydra import compose, initialize_config_module

    from invdiff.apps.train_app import run

    with initialize_config_module("invdiff.configs.train", version_base=None):
        cfg = compose("config", overrides=[f"out={tmp_path}", "settings.steps=2", "settings.batch=2", "data.size=16",
                                           "sample_grid=4", "settings.log_every=1", "settings.objective=ct",
                                           "settings.arch={width: 8, mults: [1, 2], blocks: 1, emb: 16, patch: 2}"])
    t = run(cfg)
    assert t.step == 2 and t.architecture == "invdiff.cm_unet"
    assert (tmp_path / "samples.png").is_file() and isinstance(load(tmp_path / "prior.safetensors"), ConsistencyPrior)
