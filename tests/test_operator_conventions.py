"""Operators against the reference conventions of REFERENCE.md and against independent code."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import operators as O


def img(shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- blur --------------------------------------------------------------------------------------


def test_dps_gaussian_kernel_matches_scipy_delta_filter():
    # DPS builds its 61×61, σ = 3 kernel as scipy.ndimage.gaussian_filter of a centred delta.
    delta = np.zeros((61, 61))
    delta[30, 30] = 1.0
    expected = ndimage.gaussian_filter(delta, sigma=3.0)
    k = O.GaussianKernel(61, 3.0, truncate=4.0)()
    np.testing.assert_allclose(k.numpy(), expected, atol=1e-15)
    assert k.shape == (61, 61) and abs(float(k.sum()) - 1) < 1e-14
    full = O.GaussianKernel(61, 3.0)()  # untruncated: differs only in the far tails
    assert float((full - k).abs().max()) < 1e-5


def test_reflect_blur_matches_dps_reflection_pad_and_conv():
    k = O.GaussianKernel(61, 3.0)()
    op = O.Blur(k, (3, 64, 48), "reflect")
    x = img((2, 3, 64, 48))
    ref = F.conv2d(F.pad(x, (30, 30, 30, 30), mode="reflect"), k.flip(0, 1).expand(3, 1, 61, 61), groups=3)
    assert torch.allclose(op.A(x), ref, atol=1e-12)


@pytest.mark.parametrize("padding,dinv", [("reflect", "reflect"), ("circular", "circular"),
                                          ("replicate", "replicate"), ("valid", "valid"), ("zeros", "constant")])
@pytest.mark.parametrize("kernel", ["gauss", "motion9", "motion15"])
def test_blur_agrees_with_deepinv(padding, dinv, kernel):
    import deepinv

    if kernel == "gauss":
        k = O.GaussianKernel(7, 1.5)()
    else:
        k = O.MotionKernel(int(kernel[6:]), 0.5)(torch.Generator().manual_seed(0))
    op = O.Blur(k, (2, 21, 16), padding)
    assert kernel != "motion15" or padding == "circular" or op.engine.use_fft
    ref = deepinv.physics.Blur(filter=k[None, None], padding=dinv)
    x = img((2, 2, 21, 16))
    assert torch.allclose(op.A(x), ref.A(x), atol=1e-12)


def test_all_blur_methods_agree_in_the_interior():
    k = O.GaussianKernel(5, 1.0)()
    x = img((1, 1, 20, 15))
    outs = {p: O.Blur(k, (1, 20, 15), p).A(x) for p in ("reflect", "symmetric", "replicate", "circular", "zeros")}
    valid = O.Blur(k, (1, 20, 15), "valid").A(x)
    for y in outs.values():
        assert torch.allclose(y[..., 2:-2, 2:-2], valid, atol=1e-13)
    assert torch.allclose(O.Blur(k, (1, 20, 15), "reflect", method="conv").A(x), outs["reflect"], atol=1e-13)


def test_blur_engine_choice_and_capability_refusal():
    gauss = O.Blur(O.GaussianKernel(9, 2.0), (1, 32, 32), "reflect")
    motion = O.Blur(O.MotionKernel(9, 0.5), (1, 32, 32), "reflect", seed=0)
    motion_circ = O.Blur(O.MotionKernel(9, 0.5), (1, 32, 32), "circular", seed=0)
    assert "svd" in gauss.capabilities and "svd" in motion_circ.capabilities
    assert "svd" not in motion.capabilities and motion.closed_form == frozenset()
    assert torch.equal(motion.kernel, motion_circ.kernel)
    O.require(gauss, "ddrm", ["svd"])
    O.require(motion, "ddrm", [("svd", "pinv")])
    with pytest.raises(O.CapabilityError) as err:
        O.require(motion, "ddrm", ["svd", "adjoint"])
    msg = str(err.value)
    assert "ddrm" in msg and "Blur" in msg and "'svd'" in msg and "reflect" in msg
    with pytest.raises(O.CapabilityError, match="not an invdiff operator"):
        O.require(object(), "dps", ["linear"])
    with pytest.raises(ValueError, match="unknown capability"):
        O.require(gauss, "dps", ["magic"])


def test_blur_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown padding"):
        O.Blur(O.GaussianKernel(5, 1.0), (1, 8, 8), "mirror")
    with pytest.raises(ValueError, match="valid"):
        O.Blur(O.GaussianKernel(11, 1.0), (1, 8, 8), "valid")
    with pytest.raises(ValueError, match="NaN"):
        O.Blur(torch.full((3, 3), float("nan")), (1, 8, 8))
    with pytest.raises(ValueError, match="rank-one"):
        O.Blur(O.MotionKernel(9, 0.5), (1, 16, 16), seed=0, method="separable")
    with pytest.raises(ValueError, match="fixed"):
        O.Blur(torch.ones(3, 3) / 9, (1, 8, 8), seed=0)


def test_motion_kernels_are_seeded_and_global_rng_untouched():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    gen = O.MotionKernel(61, 0.5)
    k0 = gen(torch.Generator().manual_seed(0))
    assert torch.equal(k0, gen(torch.Generator().manual_seed(0)))
    k1 = gen(torch.Generator().manual_seed(1))
    assert not torch.equal(k0, k1)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()
    for k in (k0, k1):
        assert k.shape == (61, 61) and bool((k >= 0).all()) and abs(float(k.sum()) - 1) < 1e-12
        s = torch.linalg.svdvals(k)
        assert s[1] > 1e-3 * s[0]  # a real trajectory, not a separable blob
    op1 = O.Blur(gen, (1, 64, 64), seed=5)
    op2 = O.Blur(gen, (1, 64, 64), seed=5)
    assert torch.equal(op1.kernel, op2.kernel)


def test_kernel_file_roundtrip(tmp_path):
    k = O.MotionKernel(15, 0.5)(torch.Generator().manual_seed(2)).numpy()
    np.save(tmp_path / "psf.npy", k)
    op = O.Blur(O.KernelFile(str(tmp_path / "psf.npy")), (1, 32, 32))
    assert np.array_equal(op.kernel.numpy(), k)
    with pytest.raises(FileNotFoundError):
        O.KernelFile(str(tmp_path / "missing.npy"))()
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="2-D"):
        O.KernelFile(str(tmp_path / "bad.npy"))()


# -- inpainting -----------------------------------------------------------------------------------


def test_box_mask_128_on_256():
    op = O.Inpainting(O.BoxMask(128), (3, 256, 256))
    m = op.mask[0, 0]
    assert float(1 - m.mean()) == 0.25
    assert bool((m[64:192, 64:192] == 0).all()) and float(m.sum()) == 256 * 256 - 128 * 128
    rnd = O.BoxMask(128, "random", margin=16)(( 256, 256), n=50, generator=torch.Generator().manual_seed(0))
    for mm in rnd[:, 0]:
        rows = torch.nonzero((mm == 0).any(1)).flatten()
        cols = torch.nonzero((mm == 0).any(0)).flatten()
        assert len(rows) == 128 and len(cols) == 128
        assert 16 <= int(rows[0]) <= 256 - 128 - 16 and 16 <= int(cols[0]) <= 256 - 128 - 16
    assert len({tuple(torch.nonzero(mm == 0)[0].tolist()) for mm in rnd[:, 0]}) > 10


def test_random_masks_hit_their_fractions():
    exact = O.RandomPixelMask(0.7)((256, 256), n=3, generator=torch.Generator().manual_seed(0))
    for m in exact:
        assert int((m == 0).sum()) == round(0.7 * 256 * 256)
    assert not torch.equal(exact[0], exact[1])
    bern = O.RandomPixelMask(0.7, exact=False)((256, 256), n=4, generator=torch.Generator().manual_seed(0))
    frac = float((bern == 0).double().mean())
    assert abs(frac - 0.7) < 4 * np.sqrt(0.7 * 0.3 / bern.numel())
    same = O.RandomPixelMask(0.5)((64, 64), generator=torch.Generator().manual_seed(9))
    assert torch.equal(same, O.RandomPixelMask(0.5)((64, 64), generator=torch.Generator().manual_seed(9)))


def test_half_freeform_and_file_masks(tmp_path):
    half = O.HalfMask("right")((5, 7))
    assert half[0, 0, :, :4].eq(1).all() and half[0, 0, :, 4:].eq(0).all()
    ff = O.FreeFormMask()((64, 64), n=8, generator=torch.Generator().manual_seed(0))
    missing = (ff == 0).double().flatten(1).mean(1)
    assert bool((missing > 0).all()) and bool((missing < 0.9).all())
    m = (np.arange(35).reshape(5, 7) % 3 != 0)
    np.save(tmp_path / "m.npy", m)
    op = O.Inpainting(O.MaskFile(str(tmp_path / "m.npy")), (1, 5, 7))
    assert np.array_equal(op.mask[0, 0].numpy(), m.astype(float))
    from skimage.io import imsave

    imsave(tmp_path / "m.png", (m * 255).astype(np.uint8), check_contrast=False)
    assert torch.equal(O.Inpainting(O.MaskFile(str(tmp_path / "m.png")), (1, 5, 7)).mask, op.mask)
    with pytest.raises(ValueError, match="expected"):
        O.Inpainting(O.MaskFile(str(tmp_path / "m.npy")), (1, 6, 7))
    per_image = O.Inpainting(O.MaskFile(str(tmp_path / "m.npy")), (1, 5, 7), batch_size=3)
    assert per_image.mask.shape == (3, 1, 5, 7) and torch.equal(per_image.mask[2], op.mask[0])
    np.save(tmp_path / "two.npy", np.stack([m, ~m]))
    with pytest.raises(ValueError, match="holds 2 masks but 3"):
        O.Inpainting(O.MaskFile(str(tmp_path / "two.npy")), (1, 5, 7), batch_size=3)
    with pytest.raises(ValueError, match="0 \\(missing\\) or 1"):
        O.Inpainting(torch.full((5, 7), 0.5), (1, 5, 7))


def test_per_image_masks_and_noise_restricted_to_observed_pixels():
    op = O.Inpainting(O.RandomPixelMask(0.5), (1, 16, 16), batch_size=4, seed=0)
    assert op.mask.shape == (4, 1, 16, 16) and not torch.equal(op.mask[0], op.mask[1])
    x = img((4, 1, 16, 16))
    y = op.measure(x, O.GaussianNoise(0.1), generator=torch.Generator().manual_seed(0))
    assert bool((y[op.mask.expand_as(y) == 0] == 0).all())
    with pytest.raises(ValueError, match="per-image masks"):
        op.A(x[:2])


# -- downsampling ------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 4])
@pytest.mark.parametrize("size", [(32, 24), (33, 27)])
def test_bicubic_matches_matlab_imresize(factor, size):
    from deepinv.physics.functional import imresize_matlab

    x = img((2, 3, *size))
    op = O.Downsampling(factor, (3, *size), "bicubic")
    ref = imresize_matlab(x.clone(), scale=1 / factor, antialiasing=True, kernel="cubic", padding_type="reflect")
    assert ref.shape == op.A(x).shape
    assert torch.allclose(op.A(x), ref, atol=1e-12)
    assert torch.allclose(op.A(torch.ones_like(x)), torch.ones(2, *op.meas_size, dtype=torch.float64))


def test_average_downsampling_is_avg_pool_and_refuses_indivisible_sizes():
    x = img((2, 3, 24, 16))
    for f in (2, 4, 8):
        assert torch.allclose(O.Downsampling(f, (3, 24, 16), "average").A(x), F.avg_pool2d(x, f), atol=1e-14)
    with pytest.raises(ValueError, match="divisible by 4"):
        O.Downsampling(4, (3, 17, 16), "average")


def test_gaussian_downsampling_filters_then_decimates():
    x = img((1, 1, 20, 14))
    op = O.Downsampling(2, (1, 20, 14), "gaussian", sigma=1.0)
    k = O.GaussianKernel(7, 1.0)()
    blurred = O.Blur(k, (1, 20, 14), "reflect").A(x)
    assert torch.allclose(op.A(x), blurred[..., ::2, ::2], atol=1e-13)


# -- dense matrices and noise ----------------------------------------------------------------------


def test_matrix_operator_pinv_is_numpy_pinv():
    A = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op = O.MatrixOperator(A)
    y = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    np.testing.assert_allclose(op.A_dagger(y).numpy(), y.numpy() @ np.linalg.pinv(A.numpy()).T, atol=1e-12)
    with pytest.raises(ValueError, match="2-D"):
        O.MatrixOperator(torch.ones(3))


def test_noise_models_statistics_and_seeding():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    y = torch.full((4, 1, 64, 64), 0.5, dtype=torch.float64)
    n = O.GaussianNoise(0.1)(y, generator=g(0)) - y
    assert abs(float(n.std()) - 0.1) < 0.005 and abs(float(n.mean())) < 0.005
    per = O.GaussianNoise(torch.tensor([0.0, 0.1, 0.2, 0.4]))(y, generator=g(0)) - y
    assert float(per[0].abs().max()) == 0.0
    assert abs(float(per[3].std()) - 0.4) < 0.02
    p = O.PoissonNoise(gain=0.01)(y, generator=g(1))
    assert abs(float(p.mean()) - 0.5) < 0.005
    assert abs(float(p.var()) - 0.01 * 0.5) / (0.01 * 0.5) < 0.05
    assert torch.equal(p, O.PoissonNoise(gain=0.01)(y, generator=g(1)))
    pg = O.PoissonGaussianNoise(0.01, 0.05)
    assert abs(float((pg(y, generator=g(2)) - y).var()) - float(pg.variance(y).mean())) < 0.0005
    with pytest.raises(ValueError, match="negative"):
        O.PoissonNoise()(y - 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        O.GaussianNoise(-1.0)
    with pytest.raises(ValueError, match="NaN"):
        O.GaussianNoise(0.1)(torch.full((1, 2), float("nan")))


def test_operators_package_does_not_import_invdiff():
    import subprocess
    import sys

    code = "import sys, operators; assert not any(m == 'invdiff' or m.startswith('invdiff.') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- nonlinear and CT ------------------------------------------------------------------------------


def test_phase_retrieval_follows_dps():
    op = O.PhaseRetrieval((3, 256, 256), oversampling=2.0)
    assert op.pad == (64, 64) and op.meas_size == (3, 384, 384)  # REFERENCE.md: 256 → 384
    x = img((1, 3, 32, 24))
    small = O.PhaseRetrieval((3, 32, 24))
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (8, 8), (6, 6)))
    ref = np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(padded, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)))
    np.testing.assert_allclose(small.A(x).numpy(), ref, atol=1e-12)
    with pytest.raises(O.CapabilityError, match="'linear'"):
        O.require(small, "ddrm", ["linear", "svd"])
    O.require(small, "dps", ["differentiable"])


def test_hdr_is_daps_clip_on_minus_one_one():
    x = img((2, 1, 8, 8))
    x_m = 2 * x - 1
    assert torch.allclose(O.HDR((1, 8, 8)).A(x), (torch.clamp(2 * x_m, -1, 1) + 1) / 2)


def test_ct_geometry_and_transmission_counts():
    lim = O.ParallelBeamCT((1, 32, 32), angles=10, limited_angle=(0, 90))
    assert float(lim.angles.max()) < 90 and lim.meas_size[-1] == 10
    op = O.TransmissionCT((1, 32, 32), angles=12, I0=1000.0)
    mu = 0.02 * img((2, 1, 32, 32))
    counts = op.measure(mu, O.PoissonNoise(gain=1.0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(counts, counts.round()) and float(counts.max()) <= 1000 * 1.2
    expected = op.A(mu)
    assert bool((expected <= 1000.0).all()) and torch.allclose(expected, 1000 * torch.exp(-op.radon.A(mu)))
    mu.requires_grad_(True)
    op.A(mu).sum().backward()
    assert bool((mu.grad <= 0).all())  # more attenuation, fewer photons


# -- nonlinear blur network and remote sensing -------------------------------------------------------


def test_blur_network_checkpoint_roundtrip_and_refusals(tmp_path):
    torch.manual_seed(3)
    net = O.BlurNet(channels=2, features=8, latent_dim=4).eval()
    path = O.save_blur_net(net, tmp_path / "blur.safetensors")
    op = O.NonlinearBlur(str(path), (2, 16, 12), seed=5)
    x = img((3, 2, 16, 12)).float()
    with torch.no_grad():
        assert torch.allclose(op.A(x), net(x, op.latent.float().expand(3, -1)), atol=1e-6)
    assert torch.equal(op.latent, O.NonlinearBlur(str(path), (2, 16, 12), seed=5).latent)
    torch.save(net.state_dict(), tmp_path / "blur.pt")  # a plain state dict plus its architecture
    same = O.NonlinearBlur(str(tmp_path / "blur.pt"), (2, 16, 12), latent=op.latent, arch_kwargs=net.arch_kwargs())
    assert torch.allclose(same.A(x), op.A(x))
    with pytest.raises(ValueError, match="SHA-256"):
        O.NonlinearBlur(str(path), (2, 16, 12), seed=5, sha256="0" * 64)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        O.NonlinearBlur(str(tmp_path / "cut.safetensors"), (2, 16, 12), seed=0)
    with pytest.raises(ValueError, match="does not match BlurNet"):
        O.NonlinearBlur(str(tmp_path / "blur.pt"), (2, 16, 12), seed=0, arch_kwargs=dict(channels=2, features=4, latent_dim=4))
    with pytest.raises(FileNotFoundError):
        O.NonlinearBlur(str(tmp_path / "none.safetensors"), (2, 16, 12))


def test_pansharpening_measurements_and_cloud_masks():
    op = O.Pansharpening((4, 32, 24), factor=4, spectral_response=[0.1, 0.2, 0.3, 0.4])
    x = img((2, 4, 32, 24))
    ms, pan = op.split(op.A(x))
    assert ms.shape == (2, 4, 8, 6) and pan.shape == (2, 1, 32, 24)
    assert torch.allclose(pan[:, 0], (torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)[None, :, None, None] * x).sum(1))
    assert torch.allclose(ms[:, 2], O.Downsampling(4, (1, 32, 24), "gaussian", sigma=2.0).A(x[:, 2:3])[:, 0])
    y = op.measure(x, op.noise(0.01, 0.05), generator=torch.Generator().manual_seed(0))
    ms_n, pan_n = op.split(y - op.A(x))
    assert abs(float(ms_n.std()) - 0.01) < 0.002 and abs(float(pan_n.std()) - 0.05) < 0.005
    assert op.sigma_y(0.01, 0.05).shape == op.meas_size
    clouds = O.CloudMask(0.3, 5.0)((64, 64), n=3, generator=torch.Generator().manual_seed(1))
    assert clouds.shape == (3, 1, 64, 64)
    assert all(abs(float(1 - m.mean()) - 0.3) < 0.01 for m in clouds)
    cloudy = O.Inpainting(clouds[:1], (6, 64, 64))  # one mask over all six bands
    assert torch.equal(cloudy.A(torch.ones(1, 6, 64, 64))[0, 0], cloudy.A(torch.ones(1, 6, 64, 64))[0, 5])
