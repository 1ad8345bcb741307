"""Tiled solving of images larger than the prior: layout, blend weights, exactness of the tile
problems against the exact Gaussian posterior of the whole image, and a network prior at 4× the
prior's size per side."""

from __future__ import annotations

import pytest
import torch

import operators as O
from invdiff import priors, tiling
from invdiff.apps import app, common
from invdiff.priors.analytic import GaussianPrior, smooth_cov


# --------------------------------------------------------------------------------------------
# layout and blending
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,tile,overlap,step", [(64, 16, 4, 1), (256, 64, 16, 1), (100, 32, 7, 1),
                                                     (256, 64, 16, 4), (64, 64, 8, 1), (90, 20, 0, 2)])
def test_starts_cover_the_axis_with_enough_overlap(length, tile, overlap, step):
    s = tiling.starts(length, tile, overlap, step)
    assert s[0] == 0 and s[-1] == length - tile and all(v % step == 0 for v in s)
    assert all(0 < b - a <= tile - overlap for a, b in zip(s, s[1:]))


def test_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="larger than the image"):
        tiling.starts(32, 64, 8)
    with pytest.raises(ValueError, match="overlap"):
        tiling.starts(128, 64, 64)
    with pytest.raises(ValueError, match="cannot be covered"):
        tiling.starts(130, 64, 8, 4)
    with pytest.raises(ValueError, match="need overlap <= 48"):  # a 16-px grid cannot give gaps of 14 px
        tiling.starts(256, 64, 50, 16)


def test_ramps_sum_to_one_where_tiles_overlap_exactly():
    """64 px in 16-px tiles at overlap 4: stride 12 exactly, so the unnormalised weights already sum
    to 1 everywhere (sin² + cos²); they are strictly positive and 1 at the image border."""
    tiles = tiling.layout(O.Inpainting(torch.ones(64, 64), (1, 64, 64)), (16, 16), 4)
    assert [t.top for t in tiles[::5]] == [0, 12, 24, 36, 48]
    total = torch.zeros(64, 64, dtype=torch.float64)
    for t, w in zip(tiles, tiling.weights(tiles, (64, 64), 4)):
        assert bool((w > 0).all())
        total[t.top:t.top + 16, t.left:t.left + 16] += w
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-12)
    w0 = tiling.weights(tiles, (64, 64), 4)[0]
    assert float(w0[0, 0]) == 1.0 and float(w0[-1, -1]) < 0.05  # border kept, inner edge ~0


@pytest.mark.parametrize("overlap", [0, 5, 16])
def test_blending_crops_of_an_image_gives_the_image_back(overlap):
    """Weights normalised by their sum are a partition of unity: a constant image stays constant and
    any image cut into tiles and blended is unchanged — nothing in the blend can make a seam."""
    op = O.Inpainting(torch.ones(100, 77), (3, 100, 77))
    tiles = tiling.layout(op, (32, 32), overlap)
    for x in (torch.full((2, 3, 100, 77), 0.37, dtype=torch.float64),
              torch.rand(2, 3, 100, 77, generator=torch.Generator().manual_seed(0), dtype=torch.float64)):
        parts = [x[..., t.top:t.top + 32, t.left:t.left + 32] for t in tiles]
        torch.testing.assert_close(tiling.blend(parts, tiles, x.shape, overlap), x, rtol=0, atol=1e-12)


def test_operators_that_couple_all_pixels_are_refused_before_any_work():
    mri = O.SingleCoilMRI(O.FastMRIMask(), (1, 64, 64), seed=0)
    prior = priors.load("phantom64")
    y = torch.zeros(1, *mri.meas_size, dtype=torch.float64)
    with pytest.raises(ValueError, match="SingleCoilMRI couples distant pixels"):
        tiling.reconstruct_tiled(y, mri, prior, "ddrm", sigma_y=0.01)
    with pytest.raises(ValueError, match="divisible by 3"):
        tiling.layout(O.Downsampling(3, (1, 128, 128), filter="average"), (64, 64), 8)


# --------------------------------------------------------------------------------------------
# the tile problems against the exact posterior of the whole image
# --------------------------------------------------------------------------------------------
def _dense(op, shape) -> torch.Tensor:
    d = int(torch.tensor(shape).prod())
    return op.A(torch.eye(d, dtype=torch.float64).reshape(d, *shape)).reshape(d, -1).T  # [m, d]


def _posterior_mean(A, cov, y, sigma):
    """Exact posterior mean of N(0.5, cov) given y = A x + N(0, σ²)."""
    r = y.reshape(-1) - A @ torch.full((A.shape[1],), 0.5, dtype=torch.float64)
    K = A @ cov @ A.T + sigma**2 * torch.eye(A.shape[0], dtype=torch.float64)
    return 0.5 + cov @ A.T @ torch.linalg.solve(K, r)


def _one(op, i):
    if isinstance(op, O.Inpainting) and op.mask.shape[0] > 1:
        return O.Inpainting(op.mask[i:i + 1], op.img_size)
    return op


def _exact_solver(cov, shape):
    """A 'solver' returning the exact posterior mean of the stationary Gaussian prior on a tile:
    isolates what tiling does from what a diffusion solver does."""

    def solve(y, operator, prior, *, sigma_y, generator=None, callback=None):
        sig = torch.as_tensor(sigma_y, dtype=torch.float64).reshape(-1)
        return torch.stack([_posterior_mean(_dense(_one(operator, i), shape), cov, y[i], float(sig[min(i, sig.numel() - 1)]))
                            .reshape(shape) for i in range(y.shape[0])])

    return solve


@pytest.mark.parametrize("make,tol", [
    (lambda s: O.Inpainting(O.masks.RandomPixelMask(0.6), s, seed=1), (0.1, 1.0)),
    (lambda s: O.Blur(O.GaussianKernel(5, 1.0), s, padding="reflect"), (0.1, 1.0)),
    (lambda s: O.Blur(O.MotionKernel(7, 0.5), s, padding="symmetric", seed=0), (0.5, 2.0)),
    (lambda s: O.Blur(O.MotionKernel(5, 0.5), s, padding="circular", seed=1), (0.1, 1.0)),
    (lambda s: O.Downsampling(2, s, filter="bicubic"), (0.2, 1.0)),
], ids=["inpaint", "gaussian-blur-reflect", "motion-blur-symmetric", "motion-blur-circular", "sr2-bicubic"])
def test_tiles_agree_with_the_whole_image_posterior(make, tol):
    """A stationary Gaussian prior (squared-exponential covariance, length 1.5 px) on 20×20 tiles
    and on the whole 40×40 image: each tile's operator is the exact restriction of the full one,
    and the blended posterior mean is close to the exact posterior mean of the whole image: on
    average and at worst within ``tol`` posterior standard deviations. (A 7-px motion blur's
    posterior reaches further than a 20-px tile lets it: 0.35 on average, 1.9 at worst.)"""
    H, T, overlap = 40, 20, 13
    op = make((1, H, H))
    cov = smooth_cov(H, H, length=1.5, var=0.04, nugget=0.002)
    x = 0.5 + torch.linalg.cholesky(cov) @ torch.randn(H * H, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = x.reshape(1, 1, H, H)
    y = op.measure(x, O.GaussianNoise(0.02), generator=torch.Generator().manual_seed(4))
    tiles = tiling.layout(op, (T, T), overlap)
    clean = op.A(x)
    for t in tiles:  # the tile problems are exact: no tile measurement sees outside its tile
        xt = x[..., t.top:t.top + T, t.left:t.left + T]
        o = tiling.tile_operator(op, t)
        torch.testing.assert_close(o.A(xt), tiling.crop_y(clean, t), rtol=0, atol=1e-12)
        v = torch.randn(1, *o.meas_size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        assert float((o.A(xt) * v).sum()) == pytest.approx(float((xt * o.A_adjoint(v)).sum()), rel=1e-10)  # adjoint
    A = _dense(op, (1, H, H))
    exact = _posterior_mean(A, cov, y[0], 0.02).reshape(H, H)
    K = A @ cov @ A.T + 0.02**2 * torch.eye(A.shape[0], dtype=torch.float64)
    post_sd = float((cov.diagonal() - (cov @ A.T * torch.linalg.solve(K, A @ cov).T).sum(1)).clamp_min(0).sqrt().mean())
    tile_prior = GaussianPrior(torch.full((T * T,), 0.5), 0.04, shape=(1, T, T))  # only its shape is used
    solver = _exact_solver(smooth_cov(T, T, length=1.5, var=0.04, nugget=0.002), (1, T, T))
    rec = tiling.reconstruct_tiled(y, op, tile_prior, solver, sigma_y=0.02, overlap=overlap)
    err = (rec.mean[0, 0] - exact).abs()
    assert float(err.mean()) < tol[0] * post_sd, (float(err.mean()), post_sd)
    assert float(err.max()) < tol[1] * post_sd, (float(err.max()), post_sd)


def test_an_overlap_too_small_for_the_operator_is_refused():
    op = O.Blur(O.GaussianKernel(9, 2.0), (1, 64, 64))  # tiles lack some measurements of 8 px at inner edges
    with pytest.raises(ValueError, match="use overlap >= 9"):
        tiling.layout(op, (32, 32), 6)
    assert tiling.layout(op, (32, 32), 9)[0].margin == 4


# --------------------------------------------------------------------------------------------
# a network prior on an image 4× larger per side
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def camera256():
    import skimage

    img = skimage.transform.resize(skimage.data.camera().astype(float) / 255, (256, 256), anti_aliasing=True)
    return torch.from_numpy(img)[None, None]


def test_network_prior_restores_an_image_four_times_its_size(camera256):
    prior = priors.load("patches64")
    op = O.Inpainting(O.masks.RandomPixelMask(0.6), (1, 256, 256), seed=0)
    y = op.measure(camera256, O.GaussianNoise(0.02), generator=torch.Generator().manual_seed(0))
    rec = tiling.reconstruct_tiled(y, op, prior, "ddnm", sigma_y=0.02, overlap=16, num_samples=1, seed=0,
                                   steps=20, batch_size=25)
    x = rec.mean.clamp(0, 1)
    tiles = tiling.layout(op, (64, 64), 16)
    assert x.shape == (1, 1, 256, 256) and rec.nfe == 20 and len(tiles) == 25
    mse = float(((x - camera256) ** 2).mean())
    assert 10 * torch.log10(torch.tensor(1 / mse)) > 22  # the masked y alone: ~6 dB
    # no seams: the error along every inner tile edge (both ends of each overlap, rows and columns)
    # is no larger than elsewhere
    err = (x - camera256).abs()[0, 0]
    edges = sorted({t.left for t in tiles if t.left > 0} | {t.left + 64 for t in tiles if t.left + 64 < 256})
    near = torch.zeros(256, dtype=torch.bool)
    for e in edges:
        near[e - 2:e + 2] = True
    seam = near[None, :] | near[:, None]
    assert float(err[seam].mean()) < 1.3 * float(err[~seam].mean())


def test_app_solves_larger_images_in_tiles(tmp_path):
    cfg = app.config("operator=random_inpainting", "prior=patches64", "data=sample_image", "data.names=[camera]",
                     "shape=[1,128,128]", "tile_overlap=16", "solver=ddnm", "solver.steps=4", "num_samples=2",
                     "batch_size=16", "progress=false", "figures=false")
    result = app.run(cfg, tmp_path)
    assert result["summary"]["psnr"]["n"] == 1
    from invdiff.data.results import read_sample

    path = next((tmp_path / "samples").glob("*.h5"))
    rec = read_sample(path)
    assert rec["samples"].shape == (2, 1, 128, 128)
    again = app.rerun(path)
    torch.testing.assert_close(again.samples[0].cpu(), torch.from_numpy(rec["samples"]))  # (rerun: the record's device)
    with pytest.raises(common.AppError, match="tile_overlap=16"):
        app.setup(app.config("prior=patches64", "shape=[1,128,128]", "data=sample_image"))
    with pytest.raises(common.AppError, match="couples distant pixels"):
        app.setup(app.config("prior=phantom64", "shape=[1,128,128]", "tile_overlap=8"))


# --------------------------------------------------------------------------------------------
# batching of tiles
# --------------------------------------------------------------------------------------------
def _small_problem(mask_kind: str):
    prior = GaussianPrior(torch.full((16 * 16,), 0.5), smooth_cov(16, 16, length=1.5, var=0.04, nugget=0.002),
                          shape=(1, 16, 16))
    if mask_kind == "per-image":
        op = O.Inpainting(O.masks.RandomPixelMask(0.5), (1, 32, 32), batch_size=2, seed=0)
    else:
        op = O.Inpainting(O.masks.RandomPixelMask(0.5), (1, 32, 32), seed=0)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = op.measure(x, O.GaussianNoise(0.05), generator=torch.Generator().manual_seed(1))
    return prior, op, y


@pytest.mark.parametrize("mask_kind", ["shared", "per-image"])
def test_tiled_draws_do_not_depend_on_the_batch_size(mask_kind):
    """Tiles × draws in groups through one operator holding their masks, or one tile at a time
    with its draws chunked: the same seeds give the same draws (several draws, per-item σ_y)."""
    prior, op, y = _small_problem(mask_kind)
    runs = [tiling.reconstruct_tiled(y, op, prior, "ddrm", sigma_y=torch.tensor([0.05, 0.08]), overlap=4,
                                     num_samples=3, seed=2, batch_size=b, steps=3) for b in (None, 2, 7, "auto")]
    for r in runs[1:]:
        torch.testing.assert_close(r.samples, runs[0].samples, rtol=1e-9, atol=1e-9)


def test_tiled_batch_size_auto_halves_the_tile_groups_on_out_of_memory():
    from invdiff import solvers

    prior, op, y = _small_problem("shared")
    seen = []

    def solver(y, operator, prior, *, sigma_y, generator=None, callback=None, **kw):
        seen.append(y.shape[0])
        if y.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return solvers.ddrm(y, operator, prior, sigma_y=sigma_y, generator=generator, callback=callback, steps=3)

    auto = tiling.reconstruct_tiled(y[:1], op, prior, solver, sigma_y=0.05, overlap=4, num_samples=3, seed=2,
                                    batch_size="auto")
    ref = tiling.reconstruct_tiled(y[:1], op, prior, "ddrm", sigma_y=0.05, overlap=4, num_samples=3, seed=2,
                                   batch_size=1, steps=3)
    torch.testing.assert_close(auto.samples, ref.samples, rtol=1e-9, atol=1e-9)
    assert max(seen) == 24 and 4 >= min(seen)  # 8 tiles × 3 draws first, then smaller groups
    with pytest.raises(tiling.OutOfMemory, match="batch_size="):
        tiling.reconstruct_tiled(y[:1], op, prior, solver, sigma_y=0.05, overlap=4, num_samples=3, batch_size=30)


def test_denoising_tiles_share_one_operator_and_options_carry_over():
    op = O.Inpainting(torch.ones(1, 1, 64, 64), (1, 64, 64), pinv_rtol=1e-3, cg_max_iter=7)
    r = tiling.Restriction(op)
    tiles = r.layout((16, 16), 4)
    groups = r.groups(tiles)
    assert len(groups) == 1 and len(groups[0][1]) == len(tiles)  # one batched call for all tiles
    blur = O.Blur(O.MotionKernel(5, 0.5), (1, 64, 64), seed=0, pinv_rtol=1e-3, cg_max_iter=7)
    for o in (groups[0][0], tiling.tile_operator(blur, tiling.layout(blur, (16, 16), 9)[5])):
        assert (o.pinv_rtol, o.cg_max_iter) == (1e-3, 7)
    prior, op2, y = _small_problem("shared")
    with pytest.raises(ValueError, match="uniquely"):
        tiling.reconstruct_tiled(y, op2, prior, "ddrm", sigma_y=0.05, overlap=4, ids=["a", "a"], steps=2)
