"""MRI operators and masks against fastMRI's conventions (REFERENCE.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import operators as O


def crand(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                         torch.randn(*shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (6, 5)])
def test_centred_fft_matches_numpy_and_is_unitary(shape):
    z = crand((2, *shape))
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(z.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    np.testing.assert_allclose(O.fft2c(z).numpy(), ref, atol=1e-12)
    w = crand((2, *shape), 1)
    lhs = (O.fft2c(z) * w.conj()).sum()
    rhs = (z * O.ifft2c(w).conj()).sum()
    assert abs(lhs - rhs) < 1e-12 * z.abs().sum() * w.abs().sum() / z.numel()
    assert torch.allclose(O.ifft2c(O.fft2c(z)), z, atol=1e-12)


@pytest.mark.parametrize("H,W", [(9, 11), (8, 12)])
def test_real_image_normal_operator_and_singular_values(H, W):
    mask = O.RandomLinesMask(3, 0.1)((H, W), seed=0)
    op = O.SingleCoilMRI(mask, (1, H, W))
    x = torch.randn(2, 1, H, W, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # AᵀA = Fᴴ diag((M(k) + M(−k))/2) F for real images (REFERENCE.md)
    m_u = torch.fft.ifftshift(mask)
    m_neg = torch.fft.fftshift(torch.roll(m_u.flip(0, 1), (1, 1), (0, 1)))
    expected = O.ifft2c((mask + m_neg) / 2 * O.fft2c(x[:, 0].to(torch.complex128))).real
    assert torch.allclose(op.A_adjoint(op.A(x))[:, 0], expected, atol=1e-12)
    s = op.singular_values.unique()
    assert set(np.round(s.numpy(), 12)) <= {0.0, round(math.sqrt(0.5), 12), 1.0}
    # √½ itself is present (to float64 rounding: torch's sqrt may differ from math.sqrt by one ulp)
    assert torch.isclose(op.singular_values, torch.tensor(math.sqrt(0.5), dtype=torch.float64),
                         rtol=0, atol=1e-15).any()


def test_complex_single_coil_pinv_is_the_sampled_projection():
    op = O.SingleCoilMRI(O.FastMRIMask("random", [0.08], [4]), (2, 32, 24), seed=3)
    x = torch.randn(2, 2, 32, 24, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = O.ifft2c(op.mask * O.fft2c(torch.complex(x[:, 0], x[:, 1])))
    assert torch.allclose(op.A_dagger(op.A(x)), torch.stack([z.real, z.imag], 1), atol=1e-12)
    assert op.closed_form == {"pinv", "prox_l2"}


def test_multicoil_full_sampling_is_an_isometry_and_cg_pinv_converges():
    H, W = 24, 20
    maps = O.birdcage_maps(4, H, W)
    assert torch.allclose((maps.abs() ** 2).sum(0), torch.ones(H, W, dtype=torch.float64))
    full = O.MultiCoilMRI(torch.ones(W), maps, (2, H, W))
    x = torch.randn(2, 2, H, W, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(full.A_adjoint(full.A(x)), x, atol=1e-12)
    # smooth synthetic coils separate aliases poorly (a large g-factor): keep R = 1.5 with 8 coils so
    # that the normal equations are well conditioned and CG's convergence is what is tested
    maps = O.birdcage_maps(8, H, W)
    op = O.MultiCoilMRI(O.RandomLinesMask(1.5, 0.3), maps, (2, H, W), seed=0, cg_tol=1e-10, cg_max_iter=500)
    y = op.A(x)
    assert (op.A(op.A_dagger(y)) - y).norm() < 1e-6 * y.norm()
    assert "svd" not in op.capabilities and op.meas_size == (2, 8, H, W)
    sloppy = O.MultiCoilMRI(O.RandomLinesMask(1.5, 0.3), maps, (2, H, W), seed=0, cg_max_iter=3)
    assert (sloppy.A(sloppy.A_dagger(y)) - y).norm() > (op.A(op.A_dagger(y)) - y).norm()


def test_multicoil_reproduces_simulated_kspace_at_sampled_locations():
    H, W = 16, 16
    maps = O.birdcage_maps(3, H, W)
    img = crand((H, W), 5)
    kspace = O.fft2c(maps * img)  # what a scanner would record, fully sampled
    op = O.MultiCoilMRI(O.FastMRIMask("equispaced_fraction", [0.08], [4]), maps, (2, H, W), seed=1)
    y = op.A(torch.stack([img.real, img.imag])[None])
    yk = torch.complex(y[0, 0], y[0, 1])
    sampled = op.mask.bool().expand_as(yk)
    assert torch.allclose(yk[sampled], kspace[sampled], atol=1e-12)
    assert bool((yk[~sampled] == 0).all())


# -- masks ------------------------------------------------------------------------------------------


def test_fastmri_random_mask_centre_and_average_acceleration():
    W, H = 368, 4
    for cf, R in ((0.08, 4), (0.04, 8)):
        gen = O.FastMRIMask("random", [cf], [R])
        n_low = round(W * cf)
        pad = (W - n_low + 1) // 2
        fractions = []
        for seed in range(200):
            m = gen((H, W), seed=seed)
            assert bool((m[:, pad : pad + n_low] == 1).all())
            assert torch.equal(m[0], m[-1])
            fractions.append(float(m[0].mean()))
        # Bernoulli columns: R is hit on average only (standard error over 200 draws)
        p = 1 / R
        assert abs(np.mean(fractions) - p) < 4 * math.sqrt(p * (1 - p) / W / 200)
        assert np.std(fractions) > 0


def test_fastmri_masks_follow_their_source_draw_for_draw():
    """The same numpy calls, in the same order, as fastmri.data.subsample (seeded per call)."""
    W, name = 368, "file1000001.h5"
    seed = O.fastmri_seed(name)
    rng = np.random.RandomState(seed)
    rng.randint(1)  # choose_acceleration
    n_low = round(W * 0.08)
    ref = rng.uniform(size=W) < (W / 4 - n_low) / (W - n_low)
    ref[(W - n_low + 1) // 2 : (W - n_low + 1) // 2 + n_low] = True
    state = np.random.get_state()
    m = O.FastMRIMask("random", [0.08], [4])((1, W), seed=seed)
    assert np.array_equal(m[0].numpy().astype(bool), ref)
    assert np.random.get_state()[1].tolist() == state[1].tolist()
    eq = O.FastMRIMask("equispaced", [0.08], [4])((1, W), seed=seed)[0].numpy()
    rng = np.random.RandomState(seed)
    rng.randint(1)
    offset = rng.randint(0, high=4)
    ref_eq = np.zeros(W)
    ref_eq[offset::4] = 1
    ref_eq[(W - n_low + 1) // 2 : (W - n_low + 1) // 2 + n_low] = 1
    assert np.array_equal(eq, ref_eq)
    assert O.acceleration(torch.from_numpy(eq)) < 4  # the legacy mask over-samples


def test_exact_fraction_masks_hit_their_acceleration():
    W = 368
    frac = O.FastMRIMask("equispaced_fraction", [0.08], [4])((1, W), seed=0)
    assert abs(O.acceleration(frac) - 4) < 0.1
    for R, cf in ((4, 0.08), (8, 0.04)):
        m = O.RandomLinesMask(R, cf)((3, W), generator=torch.Generator().manual_seed(0))
        assert int(m[0].sum()) == round(W / R)
        n_low = round(W * cf)
        assert bool((m[0, (W - n_low + 1) // 2 : (W - n_low + 1) // 2 + n_low] == 1).all())


def test_score_mri_poisson_and_radial_masks():
    H = W = 64
    g1 = O.ScoreMRIMask("gaussian1d", 4, 0.08)((H, W), seed=0)
    n_c = int(W * 0.08)
    assert bool((g1[:, W // 2 - n_c // 2 : W // 2 - n_c // 2 + n_c] == 1).all()) and torch.equal(g1[0], g1[5])
    assert 4 <= O.acceleration(g1) < 8  # 1.2·N/R Gaussian draws collide near the centre
    u1 = O.ScoreMRIMask("uniform1d", 4, 0.08)((H, W), seed=0)
    assert O.acceleration(u1) >= 4
    g2 = O.ScoreMRIMask("gaussian2d", 4)((H, W), seed=0)
    assert g2[H // 2, W // 2] == 1 and O.acceleration(g2) > 4 and not torch.equal(g2[0], g2[H // 2])
    pd = O.PoissonDiscMask(6.0, calib=8)((32, 32), seed=0)
    assert abs(O.acceleration(pd) - 6.0) <= 0.3 and bool((pd[12:20, 12:20] == 1).all())
    rad = O.RadialMask(16)((H, W))
    assert rad[H // 2, W // 2] == 1 and 2 < O.acceleration(rad) < 10
    assert torch.equal(O.PoissonDiscMask(6.0)((32, 32), seed=1), O.PoissonDiscMask(6.0)((32, 32), seed=1))


def test_rician_noise_statistics():
    y = torch.full((1, 1, 128, 128), 2.0, dtype=torch.float64)
    n = O.RicianNoise(0.5)(y, generator=torch.Generator().manual_seed(0))
    assert bool((n >= 0).all())
    # Rician mean at ν = 2, σ = 0.5: σ √(π/2) L_{1/2}(−ν²/2σ²) ≈ 2.0618
    assert abs(float(n.mean()) - 2.0618) < 0.01


def test_centre_crop_is_fastmris_and_refuses_oversized_crops():
    row = torch.arange(12.0)[None].expand(3, 12)
    assert O.center_crop(row, (3, 7))[0, 0] == 2  # fastMRI: (12 − 7) // 2
    assert O.center_crop(torch.arange(11.0)[None], (1, 8))[0, 0] == 1
    x = torch.randn(2, 5, 7, dtype=torch.float64)
    y = torch.randn(2, 9, 12, dtype=torch.float64)
    assert torch.allclose((O.center_pad(x, (9, 12)) * y).sum(), (x * O.center_crop(y, (5, 7))).sum())
    with pytest.raises(ValueError, match="does not fit"):
        O.center_crop(torch.zeros(4, 10), (4, 16))


def test_operator_seed_is_fastmris_seed():
    gen = O.FastMRIMask("random", [0.08], [4])
    op = O.SingleCoilMRI(gen, (1, 16, 368), seed=0)
    assert torch.equal(op.mask, gen((16, 368), seed=0))
    name_seed = O.fastmri_seed("file1000001.h5")
    op2 = O.MultiCoilMRI(gen, 2, (1, 16, 368), seed=name_seed)
    assert torch.equal(op2.mask, gen((16, 368), seed=name_seed))
    with pytest.raises(ValueError, match="integer acceleration"):
        O.ScoreMRIMask("gaussian1d", 2.5)
