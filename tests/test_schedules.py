"""Noise schedules: conversions between DDPM timesteps, continuous t and σ, both directions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from invdiff.priors import EDMSchedule, VESchedule, VPSchedule, edm_sigma_grid, geometric_sigma_grid


def test_linear_vp_matches_ddpm_formulas():
    s = VPSchedule("linear", 1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), abar, rtol=1e-12)
    np.testing.assert_allclose(s.sigmas.numpy(), np.sqrt((1 - abar) / abar), rtol=1e-12)
    assert abs(s.sigma_min - math.sqrt(1e-4 / (1 - 1e-4))) < 1e-12
    assert 150 < s.sigma_max < 160  # ᾱ_T ≈ 4e-5 for DDPM's linear schedule


def test_cosine_vp_matches_improved_ddpm():
    s = VPSchedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):
        assert abs(float(s.alphas_cumprod[t]) - f(t + 1) / f(0)) < 1e-9
    assert float(s.betas.max()) <= 0.999


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_vp_timestep_sigma_roundtrip(kind):
    s = VPSchedule(kind, 1000)
    t_int = torch.arange(0, 1000, dtype=torch.float64)
    assert torch.allclose(s.sigma(t_int), s.sigmas)  # integer t hits the discrete table exactly
    assert torch.allclose(s.t(s.sigmas), t_int, atol=1e-9)
    t_frac = torch.linspace(0, 999, 3001, dtype=torch.float64)
    assert torch.allclose(s.t(s.sigma(t_frac)), t_frac, atol=1e-8)
    sig = torch.exp(torch.linspace(math.log(s.sigma_min), math.log(s.sigma_max), 777, dtype=torch.float64))
    assert torch.allclose(s.sigma(s.t(sig)), sig, rtol=1e-10)
    snapped = s.t(sig, snap=True)
    assert torch.equal(snapped, snapped.round())
    # the snapped step is the nearest in log σ
    nearest = (s.sigmas.log()[None] - sig.log()[:, None]).abs().argmin(1)
    assert torch.equal(snapped.long(), nearest)
    assert torch.allclose(s.alpha_bar(s.sigmas), s.alphas_cumprod)
    with pytest.raises(ValueError):
        s.sigma(1000.5)


def test_vp_timesteps_and_grids():
    s = VPSchedule()
    ts = s.timesteps(10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10 and bool((ts[:-1] > ts[1:]).all())
    assert torch.equal(s.timesteps(1000), torch.arange(999, -1, -1, dtype=torch.float64))
    assert torch.allclose(s.sigma_grid(10), s.sigmas[ts.long()])


def test_ve_schedule_roundtrip():
    s = VESchedule(0.01, 50.0)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(s.t(s.sigma(t)), t, atol=1e-12)
    assert abs(float(s.sigma(0.0)) - 0.01) < 1e-15 and abs(float(s.sigma(1.0)) - 50.0) < 1e-12
    g = s.sigma_grid(5)
    assert torch.allclose(g, torch.tensor([50.0, 50 * (0.01 / 50) ** 0.25, 50 * (0.01 / 50) ** 0.5,
                                           50 * (0.01 / 50) ** 0.75, 0.01], dtype=torch.float64))


def test_edm_grid_is_karras_eq5():
    g = edm_sigma_grid(18, 0.002, 80.0, 7.0)
    i = np.arange(18)
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(g.numpy(), ref, rtol=1e-12)
    assert torch.equal(EDMSchedule().sigma_grid(18), g)
    assert torch.equal(EDMSchedule().t(g), g)
    assert geometric_sigma_grid(1, 0.1, 5.0).tolist() == [5.0]
