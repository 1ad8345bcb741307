"""DiffusionMBIR (invdiff/solvers/diffusionmbir.py): its ADMM-TV-z step, the slice-wise baseline at
λ = 0, the z coupling on a z-smooth volume, the call contract, the config, the 3-D phantoms and the
benchmark's quick path."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import operators as O
from invdiff.phantoms import phantom, phantom_volume
from invdiff.priors import CountingPrior, GaussianPrior
from invdiff.priors.analytic import smooth_gaussian
from invdiff.priors.schedules import geometric_sigma_grid
from invdiff.solvers.diffusionmbir import admm_tv_z, diffusionmbir, soft_threshold, z_diff, z_diff_adjoint

ROOT = Path(__file__).resolve().parents[1]
PRIOR = smooth_gaussian((1, 8, 8))  # exact denoiser; model space [-1, 1], data [0, 1]
D = 6


def mri(D=D, seed=0, accel=2.0):
    return O.VolumeSingleCoilMRI(O.RandomLinesMask(accel, 0.25), (1, D, 8, 8), seed=seed)


def z_smooth_volumes(n: int, seed: int = 0, D: int = D) -> torch.Tensor:
    """``[n, 1, D, 8, 8]``: each volume interpolates slowly between two prior draws along z."""
    g = torch.Generator().manual_seed(seed)
    a, b = PRIOR.sample(n, g), PRIOR.sample(n, g)
    t = 0.3 * torch.linspace(0, 1, D, dtype=torch.float64).reshape(1, 1, D, 1, 1)
    return (1 - t) * a[:, :, None] + t * b[:, :, None]


def z_err(x_hat, x):
    return float((z_diff(x_hat) - z_diff(x)).norm() / z_diff(x).norm())


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# ---------------------------------------------------------------------------------------------
# the ADMM-TV-z step
# ---------------------------------------------------------------------------------------------
def test_z_difference_and_its_adjoint():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 5, 3, 4, generator=g, dtype=torch.float64)
    v = torch.randn(2, 1, 4, 3, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(z_diff(x)[:, :, 1], x[:, :, 2] - x[:, :, 1])
    assert abs(float((z_diff(x) * v).sum() - (x * z_diff_adjoint(v)).sum())) < 1e-12
    assert torch.equal(soft_threshold(torch.tensor([-2.0, -0.5, 0.5, 3.0]), 1.0), torch.tensor([-1.0, 0.0, 0.0, 2.0]))


def _objective(op, x, y, lam):
    return float(0.5 * (op.A(x) - y).square().sum() + lam * z_diff(x).abs().sum())


def _pdhg_reference(op, y, lam, iters=3000):
    """Chambolle–Pock on min ½‖Ax − y‖² + λ‖D_z x‖₁ (prox of the data term: the operator's exact prox_l2)."""
    tau = sigma = 0.45  # τσ‖D_z‖² < 1 (‖D_z‖² ≤ 4)
    x = torch.zeros(1, *op.img_size, dtype=torch.float64)
    p = torch.zeros_like(z_diff(x))
    x_bar = x
    for _ in range(iters):
        p = (p + sigma * z_diff(x_bar)).clamp(-lam, lam)
        x_new = op.prox_l2(x - tau * z_diff_adjoint(p), y, tau)
        x_bar, x = 2 * x_new - x, x_new
    return x


def test_admm_tv_z_solves_its_convex_problem():
    """Run long, the warm-started ADMM meets the optimality conditions of ½‖Ax − y‖² + λ‖D_z x‖₁
    (a dual certificate ν = ρw: Aᵀ(Ax − y) + D_zᵀν = 0, |ν| ≤ λ, ν = λ sign(D_z x) where D_z x ≠ 0)
    and reaches the objective of an independent Chambolle–Pock reference."""
    op = O.SliceStack(O.SingleCoilMRI(O.RandomLinesMask(2, 0.25), (1, 8, 8), seed=3), depth=5)
    g = torch.Generator().manual_seed(1)
    x_true = torch.rand(1, *op.img_size, generator=g, dtype=torch.float64)
    y = op.A(x_true) + 0.05 * torch.randn(1, *op.meas_size, generator=g, dtype=torch.float64)
    lam, rho = 0.3, 1.0
    x, state = torch.zeros_like(x_true), None
    for _ in range(10):  # repeated calls continue one run (z, w carried over)
        x, state = admm_tv_z(x, y, op, lam, rho, state, admm_iters=300, cg_iters=3)
    z, w = state
    nu, dz = rho * w, z_diff(x)
    scale = float(op.A_adjoint(y).norm())
    assert float((op.A_adjoint(op.A(x) - y) + z_diff_adjoint(nu)).norm()) < 1e-9 * scale  # stationarity
    assert float((dz - z).norm()) < 1e-9 * scale  # the split holds
    assert float(nu.abs().max()) <= lam * (1 + 1e-12)
    on = dz.abs() > 1e-7
    assert on.any() and (~on).any()  # both kinds of differences occur (TV is active)
    assert torch.allclose(nu[on], lam * dz[on].sign(), atol=1e-9)
    ref = _pdhg_reference(op, y, lam)
    assert abs(_objective(op, x, y, lam) - _objective(op, ref, y, lam)) < 1e-6 * _objective(op, ref, y, lam)
    assert _objective(op, x, y, lam) <= _objective(op, ref, y, lam) + 1e-9


def test_admm_calls_continue_one_run_and_lam0_is_per_slice_cg():
    op = mri(D=4, seed=2)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(2, *op.img_size, generator=g, dtype=torch.float64)
    y = op.A(torch.rand(2, *op.img_size, generator=g, dtype=torch.float64))
    one, s1 = admm_tv_z(x0, y, op, 0.1, 0.5, admm_iters=3, cg_iters=2)
    x, s = x0, None
    for _ in range(3):
        x, s = admm_tv_z(x, y, op, 0.1, 0.5, s, cg_iters=2)
    assert torch.allclose(x, one, atol=1e-12) and all(torch.allclose(a, b, atol=1e-12) for a, b in zip(s, s1))
    # λ = 0: one exact line-search gradient step on each slice's own normal equations
    x_lam0, state = admm_tv_z(x0, y, op, 0.0, 0.5)
    assert state is None
    for d, sl in enumerate(op.slices):
        for b in range(2):
            xd = x0[b : b + 1, :, d]
            r = sl.A_adjoint(y[b : b + 1, d]) - sl.A_adjoint(sl.A(xd))
            alpha = float(r.square().sum() / (r * sl.A_adjoint(sl.A(r))).sum())
            assert torch.allclose(x_lam0[b : b + 1, :, d], xd + alpha * r, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the slice-wise baseline (λ = 0)
# ---------------------------------------------------------------------------------------------
def _slicewise_reference(y, op, prior, steps, seed, snr=0.16, sigma_min=0.01, sigma_max=378.0):
    """λ = 0 written slice by slice: each slice its own 2-D operator and denoiser call, per-slice
    predictor–corrector, one line-search gradient step per data-consistency step (one CG iteration),
    with the noise the solver draws (one [B, C, D, H, W] tensor per draw, same order)."""
    B, (C, Dn, H, W) = y.shape[0], op.img_size
    gen = torch.Generator().manual_seed(seed)
    lo, hi = max(sigma_min, prior.sigma_min) if prior.sigma_min > 0 else sigma_min, min(sigma_max, prior.sigma_max)
    sigmas = geometric_sigma_grid(steps, lo, hi).tolist() + [0.0]
    draw = lambda: torch.randn(B, C, Dn, H, W, generator=gen, dtype=torch.float64)  # noqa: E731
    x = sigmas[0] * draw()

    def dc(xd, d):
        sl, xp = op.slices[d], prior.to_physical(xd)
        out = []
        for b in range(B):
            r = sl.A_adjoint(y[b : b + 1, d]) - sl.A_adjoint(sl.A(xp[b : b + 1]))
            den = float((r * sl.A_adjoint(sl.A(r))).sum())
            out.append(xp[b : b + 1] + (float(r.square().sum()) / den if den > 0 else 0.0) * r)
        return prior.to_model(torch.cat(out))

    for i in range(steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        n = draw() if s_next > 0 else None
        for d in range(Dn):
            xd = x[:, :, d]
            xd = xd + (s**2 - s_next**2) * (prior.denoiser(xd, s) - xd) / s**2
            if n is not None:
                xd = xd + math.sqrt(s**2 - s_next**2) * n[:, :, d]
            x[:, :, d] = dc(xd, d)
        if s_next > 0:
            n = draw()
            for d in range(Dn):
                xd = x[:, :, d]
                score = (prior.denoiser(xd, s_next) - xd) / s_next**2
                nd = n[:, :, d]
                eps = 2 * (snr * nd.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1)) ** 2
                eps = eps.reshape(-1, 1, 1, 1)
                x[:, :, d] = dc(xd + eps * score + (2 * eps).sqrt() * nd, d)
    return prior.to_physical(x)


def test_lam0_equals_running_the_slices_independently_with_the_same_noise():
    op = mri(D=4, seed=1)
    x = z_smooth_volumes(2, seed=3, D=4)
    y = op.A(x)
    out = diffusionmbir(y, op, PRIOR, steps=8, lam=0.0, rho=0.05, generator=torch.Generator().manual_seed(7))
    ref = _slicewise_reference(y, op, PRIOR, steps=8, seed=7)
    assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9)


def test_lam0_slices_do_not_interact_and_lam_positive_couples_them():
    op = mri(D=4, seed=1)
    x = z_smooth_volumes(1, seed=4, D=4)
    y = op.A(x)
    y2 = y.clone()
    y2[:, 2] *= 0.5  # slice 2's data only
    run = lambda yy, lam: diffusionmbir(yy, op, PRIOR, steps=10, lam=lam, rho=0.05,  # noqa: E731
                                        generator=torch.Generator().manual_seed(3))
    a, b = run(y, 0.0), run(y2, 0.0)
    others = [0, 1, 3]
    assert torch.allclose(a[:, :, others], b[:, :, others], rtol=0, atol=1e-12)
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])
    a, b = run(y, 0.01), run(y2, 0.01)
    assert not torch.allclose(a[:, :, [1, 3]], b[:, :, [1, 3]], atol=1e-6)  # the z-TV couples the neighbours


def test_a_z_smooth_volume_has_a_lower_z_error_than_slicewise():
    """Measured (4 volumes, 40 levels, 2× masks; three draws of volumes): z-gradient error 1.01–1.05
    with z-TV (λ 0.01, ρ 0.05) against 2.85–2.87 slice-wise (independent slices under a per-slice
    Gaussian prior: their z-differences are those of independent posterior draws); the relative
    volume error drops from 0.025 to 0.011."""
    op = mri()
    x = z_smooth_volumes(4, seed=0)
    y = op.A(x)
    g = lambda: gens(11, 12, 13, 14)  # noqa: E731
    slicewise = diffusionmbir(y, op, PRIOR, steps=40, lam=0.0, rho=0.05, generator=g())
    mbir = diffusionmbir(y, op, PRIOR, steps=40, lam=0.01, rho=0.05, generator=g())
    z_sw, z_mb = z_err(slicewise, x), z_err(mbir, x)
    assert z_mb < 0.5 * z_sw, (z_mb, z_sw)
    assert (mbir - x).norm() < (slicewise - x).norm()
    # both fit the data (noiseless y; one CG iteration per data-consistency step)
    assert (op.A(mbir) - y).norm() < 0.05 * y.norm() and (op.A(slicewise) - y).norm() < 0.01 * y.norm()


# ---------------------------------------------------------------------------------------------
# the contract: determinism, batch independence, NFE, callback, loud errors
# ---------------------------------------------------------------------------------------------
def test_deterministic_batch_independent_and_counted():
    op = mri()
    x = z_smooth_volumes(3, seed=2)
    y = op.A(x)
    counting = CountingPrior(PRIOR)
    seen = []
    kw = dict(steps=6, lam=0.01, rho=0.05, corrector_steps=2)
    batch = diffusionmbir(y, op, counting, generator=gens(1, 2, 3), callback=lambda i, xt, x0: seen.append(xt.shape), **kw)
    assert counting.calls == 6 + 2 * 5  # steps + corrector_steps·(steps − 1)
    assert seen == [torch.Size([3, 1, D, 8, 8])] * 6 and batch.shape == x.shape and batch.dtype == y.dtype
    again = diffusionmbir(y, op, PRIOR, generator=gens(1, 2, 3), **kw)
    assert torch.equal(batch, again)
    alone = diffusionmbir(y[1:2], op, PRIOR, generator=gens(2), **kw)
    assert torch.allclose(batch[1:2], alone, rtol=1e-9, atol=1e-9)
    chunked = diffusionmbir(y, op, PRIOR, generator=gens(1, 2, 3), slice_batch=4, **kw)
    assert torch.allclose(chunked, batch, rtol=1e-9, atol=1e-9)
    assert diffusionmbir(y.float(), op, PRIOR, generator=gens(1, 2, 3), **kw).dtype == torch.float32


def test_ct_volume_runs_and_fits_the_data():
    op = O.VolumeParallelBeamCT((1, 3, 8, 8), angles=6)
    x = z_smooth_volumes(1, seed=5, D=3)
    y = op.A(x)
    out = diffusionmbir(y, op, PRIOR, steps=20, lam=0.2, rho=2.0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and (op.A(out) - y).norm() < 0.2 * y.norm()


def _refused(match, *args, exc=ValueError, **kw):
    counting = CountingPrior(args[2])
    with pytest.raises(exc, match=match):
        diffusionmbir(args[0], args[1], counting, **kw)
    assert counting.calls == 0  # refused before any network call


def test_loud_errors_before_any_work():
    op = mri()
    y = op.A(z_smooth_volumes(2))
    two_d = O.SingleCoilMRI(O.RandomLinesMask(2, 0.25), (1, 8, 8), seed=0)
    _refused(r"reconstructs volumes: it needs a volume operator.*acts on \[1, 8, 8\]", y[:, 0], two_d, PRIOR,
             exc=O.CapabilityError)
    volume_prior = GaussianPrior(torch.zeros(6 * 64), 0.1, shape=(1, 6, 8, 8))
    _refused(r"needs a prior of slices \[C, H, W\], but got a volume prior of shape \[1, 6, 8, 8\]", y, op, volume_prior)
    small = O.VolumeSingleCoilMRI(O.RandomLinesMask(2, 0.25), (1, D, 6, 6), seed=0)
    _refused(r"slices are \[1, 6, 6\].*prior models slices \[1, 8, 8\]", small.A(torch.zeros(1, *small.img_size)),
             small, PRIOR)
    complex_op = O.VolumeSingleCoilMRI(O.RandomLinesMask(2, 0.25), (2, D, 8, 8), seed=0)
    _refused(r"slices are \[2, 8, 8\]", complex_op.A(torch.zeros(1, *complex_op.img_size)), complex_op, PRIOR)
    _refused("y must have shape", y[:, :3], op, PRIOR)
    _refused("got 3 generators for a batch of 2", y, op, PRIOR, generator=gens(1, 2, 3))
    for bad in (dict(lam=-0.1), dict(rho=0.0), dict(snr=0.0), dict(sigma_min=1.0, sigma_max=0.5)):
        _refused("need lam >= 0, rho > 0", y, op, PRIOR, **bad)
    for bad, what in ((dict(steps=0), "steps"), (dict(cg_iters=0), "cg_iters"), (dict(admm_iters=1.0), "admm_iters"),
                      (dict(corrector_steps=-1), "corrector_steps"), (dict(slice_batch=0), "slice_batch")):
        _refused(what, y, op, PRIOR, **bad)
    _refused("sigma_y must be finite", y, op, PRIOR, sigma_y=-1.0)
    with pytest.raises(O.CapabilityError, match="'linear'"):
        diffusionmbir(y, O.PhaseRetrieval((1, 8, 8)), PRIOR)
    with pytest.raises(TypeError, match="must be an invdiff.priors.Prior"):
        diffusionmbir(y, op, object())


def test_check_call_stops_before_the_network():
    from invdiff.solvers import check_call

    op = mri()
    y = op.A(z_smooth_volumes(1))
    counting = CountingPrior(PRIOR)
    check_call(diffusionmbir, y, op, counting, steps=5)
    assert counting.calls == 0


def test_config_holds_the_function_defaults_and_runs_two_steps():
    import inspect

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path = ROOT / "configs" / "solver" / "diffusionmbir.yaml"
    assert path.read_text().startswith("#")
    cfg = OmegaConf.load(path)
    assert cfg._target_ == "invdiff.solvers.diffusionmbir" and cfg._partial_
    params = inspect.signature(diffusionmbir).parameters
    for k, v in cfg.items():
        if not k.startswith("_"):
            assert params[k].default == v, k
    cfg.steps = 2
    solve = instantiate(cfg)
    op = mri()
    out = solve(op.A(z_smooth_volumes(1)), op, PRIOR, lam=0.01, rho=0.05, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 1, D, 8, 8) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# 3-D phantoms and the benchmark's quick path
# ---------------------------------------------------------------------------------------------
def test_phantom_volume():
    v = phantom_volume(32, seed=3)
    assert v.shape == (32, 32, 32) and v.dtype == np.float32 and v.min() >= 0 and v.max() <= 1
    assert np.array_equal(v, phantom_volume(32, seed=3)) and not np.array_equal(v, phantom_volume(32, seed=4))
    assert np.array_equal(phantom_volume(32, seed=3, depth=6), v[13:19])  # the central slices, isotropic voxels
    # every axial slice holds a head like the 2-D phantoms': a bright rim, similar fill and mean
    flat = np.stack([phantom(s, 32) for s in range(16)])
    for sl in v[::4]:
        assert sl.max() > 0.6 and 0.3 < (sl > 0).mean() < 0.8
    assert abs(v.mean() - flat.mean()) < 0.1
    assert np.abs(np.diff(v, axis=0)).mean() < np.abs(np.diff(v, axis=1)).mean() * 1.5  # no slice-to-slice jumps
    with pytest.raises(ValueError, match="1 <= depth <= size"):
        phantom_volume(16, depth=17)


def test_benchmark_quick_path(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import volume3d
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "volume3d.md"
    rows = volume3d.main(["--quick", "--out", str(out)])
    text = out.read_text()
    assert "Command: `python benchmarks/volume3d.py --quick" in text and "commit" in text and "torch" in text
    assert len(rows) == 7 and {r[1] for r in rows} >= {"A⁺y", "slice-wise (λ = 0)"}
    assert all(r[2] == 4 + 3 for r in rows if r[1] != "A⁺y")  # NFE: 4 levels, 3 corrector steps
    assert all(math.isfinite(r[4]["psnr"]) and math.isfinite(r[4]["z_err"]) for r in rows)


def test_reconstruct_takes_the_volume_solver():
    """``invdiff.reconstruct`` runs it as a callable (several draws per volume, NFE counted)."""
    import invdiff

    op = mri()
    y = op.A(z_smooth_volumes(2))
    rec = invdiff.reconstruct(y, op, PRIOR, diffusionmbir, sigma_y=0.0, num_samples=2, seed=0, steps=5, lam=0.01,
                              rho=0.05)
    assert rec.samples.shape == (2, 2, 1, D, 8, 8) and rec.mean.shape == (2, 1, D, 8, 8) and rec.nfe == 5 + 4
