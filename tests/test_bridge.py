"""Bridges (issue 28) against the closed form: for x₀ ~ N(μ, Σ) and x₁ = M x₀ + e the optimal bridge
E[x₀ | x_t] is a Gaussian conditional (:class:`invdiff.priors.bridge.GaussianBridge`). The objective's
exact minimiser over linear networks equals it; the sampler run on it returns E[x₀ | x₁] in one step
and transports p(x₁) onto p(x₀) with many; the bridge solvers refuse what they were not trained for."""

from __future__ import annotations

import math

import pytest
import torch

import operators as O
from invdiff.priors.bridge import BridgePrior, BrownianBridge, GaussianBridge, bridge_sample
from invdiff.priors.flow import LinearPath
from invdiff.solvers import bridge as bs
from invdiff.training.bridge import bridge_loss, check_operator, degrade, family_spec

DT = torch.float64


def gaussian_problem(b: float, d: int = 3, seed: int = 0) -> GaussianBridge:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=DT)
    S = A @ A.T / d + 0.3 * torch.eye(d, dtype=DT)
    mu = torch.randn(d, generator=g, dtype=DT)
    M = torch.diag(torch.tensor([1.0, 0.5, 0.0], dtype=DT)[:d])        # a partial, lossy degradation
    R = 0.05 * torch.eye(d, dtype=DT)
    return GaussianBridge(mu, S, M, R, BrownianBridge(b))


def test_without_bridge_noise_and_with_noise_at_x1_the_path_is_rectified_flows():
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, 1, 4, 4, generator=g, dtype=DT), torch.randn(5, 1, 4, 4, generator=g, dtype=DT)
    t = torch.rand(5, generator=g, dtype=DT)
    lp, tt = LinearPath(), t.reshape(-1, 1, 1, 1)
    assert torch.allclose(BrownianBridge(0.0).sample(x0, eps, t), lp.alpha(tt) * x0 + lp.sigma(tt) * eps, atol=1e-12)
    # the InDI step (Delbracio & Milanfar eq. 6) is the linear path's Euler step
    x_t, x0h = torch.randn(5, 1, 4, 4, generator=g, dtype=DT), torch.randn(5, 1, 4, 4, generator=g, dtype=DT)
    s = 0.4 * t
    indi = (1 - (tt - s.reshape(-1, 1, 1, 1)) / tt) * x_t + (tt - s.reshape(-1, 1, 1, 1)) / tt * x0h
    assert torch.allclose(BrownianBridge(0.0).step(x_t, x0h, t, s), indi, atol=1e-12)


def test_the_bridge_marginal_has_the_brownian_bridge_variance():
    g = torch.Generator().manual_seed(2)
    path = BrownianBridge(0.3)
    x0, x1 = torch.zeros(200_000, 1, dtype=DT), torch.ones(200_000, 1, dtype=DT)
    z = torch.randn(200_000, 1, generator=g, dtype=DT)
    xt = path.sample(x0, x1, 0.25, z)
    assert abs(xt.mean().item() - 0.25) < 3e-3
    assert abs(xt.var().item() / (0.3 * 0.25 * 0.75) - 1) < 0.02


class Recorder(torch.nn.Module):
    """A network whose output is a free tensor h (to differentiate the loss in its output)."""

    def __init__(self, shape):
        super().__init__()
        self.h = torch.nn.Parameter(torch.zeros(shape, dtype=DT))

    def forward(self, x, sigma):
        self.x = x.detach()
        return self.h


@pytest.mark.parametrize("b,t", [(0.15, 0.3), (0.15, 0.8), (0.0, 0.6), (0.15, 1.0)])
def test_the_bridge_objectives_minimiser_is_the_gaussian_conditional(b, t):
    """The exact minimiser of ``bridge_loss`` at time t over affine networks h = W x_t + c (from the
    loss's own gradients: it is quadratic in the output) equals E[x₀ | x_t] = μ + C₀ₜ Cₜₜ⁻¹ (x_t − m_t)."""
    gb = gaussian_problem(b)
    n, d = 40_000, gb.d
    x0, x1 = gb.pairs(n, torch.Generator().manual_seed(3))
    rec = Recorder((n, d))

    def grad(h):
        rec.h.data.copy_(h)
        rec.zero_grad()
        bridge_loss(rec, x0, x1, gb.path, torch.Generator().manual_seed(4), sigma_1=0.5, t=t).backward()
        return rec.h.grad.detach().clone()

    g0 = grad(torch.zeros(n, d, dtype=DT))
    k = (grad(torch.ones(n, d, dtype=DT)) - g0)[0, 0].item()          # the gradient is k·(h − x₀)·…
    assert k > 0
    # normal equations of Σ k‖W x̃ − x₀‖²: least squares of x₀ on [x_t, 1], with x₀ = h − g/k at h = 0
    target = -g0 / k
    assert torch.allclose(target, x0, atol=1e-9)                       # the loss's target is x₀ itself
    xt1 = torch.cat([rec.x, torch.ones(n, 1, dtype=DT)], 1)
    W = torch.linalg.lstsq(xt1, target).solution.T                     # [d, d + 1]
    m, C0t, Ctt = gb._moments(t)
    G = torch.linalg.solve(Ctt, C0t.T).T
    exact = torch.cat([G, (gb.mu - G @ m)[:, None]], 1)
    err = (W - exact).norm() / exact.norm()
    assert err < 0.03, (err.item(), W, exact)


def test_a_mutated_path_fails_the_minimiser_check():
    """The check can fail: a loss drawn on a path without the bridge noise (b = 0 in place of 0.3)
    has another minimiser at t = 0.5."""
    gb = gaussian_problem(0.3)
    wrong = GaussianBridge(gb.mu, gb.S, gb.M, gb.R, BrownianBridge(0.0))
    xs = torch.randn(7, gb.d, generator=torch.Generator().manual_seed(5), dtype=DT)
    assert (gb.x0_hat(xs, 0.5) - wrong.x0_hat(xs, 0.5)).norm() / gb.x0_hat(xs, 0.5).norm() > 0.05


@pytest.mark.parametrize("b", [0.0, 0.2])
def test_one_step_of_the_exact_bridge_is_the_mmse_estimate(b):
    gb = gaussian_problem(b)
    _, x1 = gb.pairs(50, torch.Generator().manual_seed(6))
    out = bridge_sample(gb.x0_hat, x1, gb.path, 1, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out, gb.mmse(x1), atol=1e-10)


@pytest.mark.parametrize("b,stochastic", [(0.0, False), (0.2, True)])
def test_the_exact_bridge_transports_p_x1_onto_p_x0(b, stochastic):
    """With E[x₀ | x_t] exact the chain's marginals are the path's (Markovian projection): over
    x₁ ~ p(x₁) the outputs have x₀'s mean and covariance as the steps grow (100 steps: 0.009 relative,
    within MC error and O(1/steps)); one step gives E[x₀ | x₁], whose covariance is visibly smaller."""
    gb = gaussian_problem(b)
    n = 20_000
    _, x1 = gb.pairs(n, torch.Generator().manual_seed(8))
    out = bridge_sample(gb.x0_hat, x1, gb.path, 100, generator=torch.Generator().manual_seed(9), stochastic=stochastic)
    cov = torch.cov(out.T)
    assert (out.mean(0) - gb.mu).norm() < 0.05
    assert (cov - gb.S).norm() / gb.S.norm() < 0.03, (cov, gb.S)
    one = torch.cov(bridge_sample(gb.x0_hat, x1, gb.path, 1).T)
    assert (one - gb.S).norm() / gb.S.norm() > 0.1   # measured 0.149 (100 steps: 0.009)


def _tiny_bridge(spec):
    from invdiff.priors.unet import build_unet

    torch.manual_seed(0)
    return BridgePrior(build_unet(width=8, mults=(1,), emb=16), BrownianBridge(0.15), sigma_1=0.3, spec=spec,
                       shape=(1, 16, 16))


def test_bridge_solvers_refuse_what_the_bridge_was_not_trained_for():
    spec = family_spec("mri", sigma_y=0.01, acceleration=4)
    br = _tiny_bridge(spec)
    x = torch.rand(2, 1, 16, 16, dtype=DT)
    op4 = O.SingleCoilMRI(O.FastMRIMask("random", [0.125], [4]), (1, 16, 16), seed=0)
    op8 = O.SingleCoilMRI(O.FastMRIMask("random", [0.0625], [8]), (1, 16, 16), seed=0)
    y4 = op4.measure(x, O.GaussianNoise(0.01), generator=torch.Generator().manual_seed(0))
    y8 = op8.measure(x, O.GaussianNoise(0.01), generator=torch.Generator().manual_seed(0))
    for solver in (bs.i2sb, bs.indi, bs.cddb):
        out = solver(y4, op4, br, sigma_y=0.01, steps=3, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and bool(torch.isfinite(out).all())
        with pytest.raises(ValueError, match=r"trained for family=mri.*acceleration is .*allow_shift=True"):
            solver(y8, op8, br, sigma_y=0.01, steps=3)
        with pytest.raises(ValueError, match=r"σ_y is"):
            solver(y4, op4, br, sigma_y=0.05, steps=3)
        solver(y8, op8, br, sigma_y=0.01, steps=2, allow_shift=True)
    blur = O.Blur(O.GaussianKernel(1.0, 5), (1, 16, 16))
    with pytest.raises(ValueError, match="not SingleCoilMRI"):
        check_operator(spec, blur, 0.01)
    with pytest.raises(TypeError, match="runs a trained bridge"):
        bs.i2sb(y4, op4, object(), sigma_y=0.01)


def test_cddb_restores_data_consistency_where_the_step_is_a_projection():
    """With α = 1 and AAᵀ = I (an inpainting mask; run with allow_shift=True on an MRI-trained bridge
    to check the step's algebra), CDDB's last x̂₀ agrees with y on the observed pixels whatever the
    (here untrained) network predicts; I²SB's does not. On a real image under Cartesian MRI the
    coefficient pairs sampled on one side only move halfway per step (AᵀA has eigenvalues 1, ½, 0)."""
    spec = family_spec("mri", sigma_y=0.0, acceleration=4)
    br = _tiny_bridge(spec)
    x = torch.rand(2, 1, 16, 16, dtype=DT)
    op = O.Inpainting(O.masks.RandomPixelMask(0.5), (1, 16, 16), seed=0)
    y = op.A(x)
    kw = dict(sigma_y=0.0, steps=4, generator=torch.Generator().manual_seed(0), stochastic=False, allow_shift=True)
    out_c, out_i = bs.cddb(y, op, br, **kw), bs.i2sb(y, op, br, **kw)
    assert (op.A(out_c) - y).norm() / y.norm() < 1e-10
    assert (op.A(out_i) - y).norm() / y.norm() > 1e-2


def test_degrade_simulates_the_family_with_a_fresh_mask_per_image():
    x = torch.rand(3, 1, 16, 16, dtype=DT)
    x1 = degrade(x, family_spec("mri", sigma_y=0.0, acceleration=4, center_fraction=0.125), torch.Generator().manual_seed(0))
    assert x1.shape == x.shape
    k = torch.fft.fftshift(torch.fft.fft2(x1 - x), dim=(-2, -1)).abs().amax(dim=(1, 2))   # unsampled columns ≠ 0
    cols = [set(torch.nonzero(k[i] < 1e-9).flatten().tolist()) for i in range(3)]
    assert len({frozenset(c) for c in cols}) > 1
    sr = degrade(x, family_spec("sr", sigma_y=0.0, factor=2), torch.Generator().manual_seed(0))
    op = O.Downsampling(2, (1, 16, 16))
    assert torch.allclose(op.A(sr), op.A(x), atol=1e-10)
    assert math.isfinite(sr.sum().item())


def test_a_bridge_runs_through_reconstruct_and_diffusion_solvers_refuse_it(tmp_path):
    from invdiff import reconstruct, solvers
    from invdiff.priors import load
    from invdiff.priors.native import save

    spec = family_spec("mri", sigma_y=0.01, acceleration=4, center_fraction=0.125)
    br = _tiny_bridge(spec)
    path = save(tmp_path / "b.safetensors", br, "invdiff.unet", dict(width=8, mults=(1,), emb=16))
    again = load(path)
    assert isinstance(again, BridgePrior) and again.spec == spec and again.path == br.path
    x_t = torch.randn(2, 1, 16, 16, dtype=DT)
    assert torch.allclose(again.x0_hat(x_t, 0.4), br.x0_hat(x_t, 0.4), atol=1e-6)
    op = O.SingleCoilMRI(O.FastMRIMask("random", [0.125], [4]), (1, 16, 16), seed=0)
    y = op.measure(torch.rand(2, 1, 16, 16, dtype=DT), O.GaussianNoise(0.01), generator=torch.Generator().manual_seed(0))
    rec = reconstruct(y, op, again, "i2sb", sigma_y=0.01, steps=4, num_samples=2)
    assert rec.samples.shape == (2, 2, 1, 16, 16) and rec.nfe == 4 and bool(torch.isfinite(rec.samples).all())
    det = reconstruct(y, op, again, "indi", sigma_y=0.01, steps=4, num_samples=2)
    assert torch.equal(det.samples[:, 0], det.samples[:, 1])        # InDI is deterministic
    assert not torch.equal(rec.samples[:, 0], rec.samples[:, 1])    # I²SB draws
    with pytest.raises(TypeError, match="is a bridge from degraded to clean images: run it with a bridge solver"):
        solvers.ddnm(y, op, again, sigma_y=0.01, steps=2)


def test_bridge_training_starts_from_the_teacher_resumes_and_refuses_other_bridge_settings(tmp_path):
    from invdiff.data.training_data import PhantomData
    from invdiff.priors import load
    from invdiff.training import Trainer, TrainSettings
    from operators.checkpoints import CheckpointError

    arch = dict(width=8, mults=[1], blocks=1, emb=16)
    base = dict(batch=2, arch=arch, ckpt_every=2, log_every=2)
    teacher = Trainer(PhantomData(16), tmp_path / "t", TrainSettings(steps=2, **base), progress=False)
    teacher.train()
    tpath = teacher.export()
    s = TrainSettings(steps=4, objective="bridge", teacher=str(tpath), bridge_acceleration=4, bridge_center_fraction=0.125,
                      **base)
    t = Trainer(PhantomData(16), tmp_path / "b", s, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(t.net.state_dict().values(), load(tpath).net.state_dict().values()))
    t.train(until=2)
    t2 = Trainer(PhantomData(16), tmp_path / "b", s, progress=False)
    assert t2.step == 2
    t2.train()
    ref = Trainer(PhantomData(16), tmp_path / "c", s, progress=False)
    ref.train()
    assert all(torch.equal(a, b) for a, b in zip(t2.net.state_dict().values(), ref.net.state_dict().values()))
    br = load(t2.export())
    assert isinstance(br, BridgePrior) and br.spec["family"] == "mri" and br.path.b == 0.15
    loss_png, grid = t2.figures(4)
    assert grid.is_file()
    with pytest.raises(CheckpointError, match="settings.bridge_b=0.15, but this run has settings.bridge_b=0.0"):
        Trainer(PhantomData(16), tmp_path / "b", TrainSettings(**{**s.__dict__, "bridge_b": 0.0}), progress=False)
    with pytest.raises(ValueError, match="bridge_operator must be one of"):
        TrainSettings(objective="bridge", bridge_operator="blur")


def test_a_bridge_is_not_run_in_tiles():
    from invdiff import tiling

    spec = family_spec("sr", sigma_y=0.025, factor=2)
    op = O.Downsampling(2, (1, 64, 64))
    r = tiling.Restriction(op)
    first = r.layout((32, 32), 12)[0]
    tile = r.problem(first.top, first.left, first.height, first.width)[0]
    with pytest.raises(ValueError, match="bridges are not run in tiles"):
        check_operator(spec, tile, 0.025)
    check_operator(spec, O.Downsampling(2, (1, 16, 16)), 0.025)
