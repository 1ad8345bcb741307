"""Classical baselines: the TV reconstruction (Chambolle–Pock) is consistent and regularises."""

from __future__ import annotations

import pytest
import torch

import operators as O
from invdiff import phantoms as P
from invdiff.solvers.baselines import _div, _grad, tv


def test_divergence_is_minus_the_adjoint_of_the_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    p = torch.randn(2, 2, 3, 5, 7, generator=g, dtype=torch.float64)
    assert abs(float((_grad(x) * p).sum() + (x * _div(p)).sum())) < 1e-12


def test_tv_without_regularisation_fits_the_data_and_with_it_beats_zero_filling():
    x = P.phantoms([1, 2], 64).double()
    op = O.SingleCoilMRI(O.FastMRIMask("random", [0.08], [4]), (1, 64, 64), seed=0)
    y = op.measure(x, O.GaussianNoise(0.01), generator=torch.Generator().manual_seed(0))
    free = tv(op.A(x), op, steps=50, lam=0.0)
    torch.testing.assert_close(op.A(free), op.A(x), rtol=0, atol=1e-8)  # λ = 0, noiseless: fits y exactly
    zf_err = (op.A_dagger(y) - x).square().mean()
    tv_err = (tv(y, op, steps=300, lam=torch.tensor([0.01, 0.01])) - x).square().mean()
    assert tv_err < 0.5 * zf_err, (float(tv_err), float(zf_err))


def test_tv_refuses_bad_settings():
    op = O.Inpainting(torch.ones(1, 4, 4), (1, 4, 4))
    y = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="lam"):
        tv(y, op, lam=-1.0)
    with pytest.raises(ValueError, match="steps"):
        tv(y, op, steps=0)


def test_tv_deblurs_a_noisy_blur_whose_pseudo_inverse_explodes():
    """A reflect-padded Gaussian blur has singular values down to ~1e-7: starting TV from A⁺y (the
    noise amplified ~10⁷ times) left it at 5 dB after 300 iterations. It now starts from the Tikhonov
    solution and beats the blurred measurement."""
    from invdiff.solvers.baselines import _start

    x = P.held_out(64, 2).double()
    op = O.Blur(O.GaussianKernel(9, 1.5), img_size=(1, 64, 64), padding="reflect")
    y = op.measure(x, O.GaussianNoise(0.025), generator=torch.Generator().manual_seed(0))
    psnr = lambda a: float(10 * torch.log10(1 / (a - x).square().mean()))  # noqa: E731
    assert psnr(op.A_dagger(y)) < 0  # the pseudo-inverse is no start
    assert torch.allclose(_start(op, y), op.prox_l2(torch.zeros_like(x), y, 1.0))
    assert psnr(tv(y, op, steps=300, lam=0.003)) > psnr(y) + 3  # measured: 21.6 against 17.8 dB
    mri = O.SingleCoilMRI(O.FastMRIMask("random", [0.08], [4]), (1, 64, 64), seed=0)
    ym = mri.measure(x, O.GaussianNoise(0.01), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_start(mri, ym), mri.A_dagger(ym))  # well-conditioned: A⁺y, as before


def test_dpir_is_deepinvs_dpir_with_the_priors_denoiser():
    """At deepinv's 8 iterations our DPIR baseline is deepinv.optim.DPIR with the same denoiser;
    more iterations stretch its schedule and fit better; nonlinear operators are refused."""
    from deepinv.optim import DPIR

    from invdiff.priors import CountingPrior
    from invdiff.priors.analytic import smooth_gaussian
    from invdiff.solvers.baselines import dpir

    shape = (1, 8, 8)
    prior = smooth_gaussian(shape)
    op = O.Inpainting(O.masks.RandomPixelMask(0.5), shape, seed=0)
    x = prior.sample(2, torch.Generator().manual_seed(0))
    y = op.measure(x, O.GaussianNoise(0.05), generator=torch.Generator().manual_seed(1))

    class Den(torch.nn.Module):
        def forward(self, v, sigma, *args, **kwargs):
            s = float(torch.as_tensor(sigma).reshape(-1)[0]) * prior.scale
            return prior.to_physical(prior.denoiser(prior.to_model(v.double()), s)).to(v.dtype)

    theirs = DPIR(sigma=0.05, denoiser=Den())(y, op)
    counted = CountingPrior(prior)
    ours = dpir(y, op, counted, sigma_y=0.05)
    assert counted.calls == 8 and torch.allclose(ours, theirs.to(ours.dtype), atol=1e-6)
    longer = dpir(y, op, prior, sigma_y=0.05, steps=30)
    assert ((longer - x) ** 2).mean() < ((ours - x) ** 2).mean() * 1.5  # a longer schedule is no worse
    with pytest.raises(ValueError, match="steps"):
        dpir(y, op, prior, sigma_y=0.05, steps=0)
    with pytest.raises(Exception, match="dpir"):
        dpir(y, O.HDR((1, 8, 8)), prior, sigma_y=0.05)
