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
