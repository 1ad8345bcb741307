"""invdiff-train's augmentation (rot90, zoom, gain) and validation score (val.csv, prior_best):
exact where the transform is exact, analytic where it is not, bit-for-bit resumable, refused where
it would be wrong."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_module

from invdiff.apps.train_app import run, settings_of
from invdiff.data.training_data import ArrayData, PhantomData
from invdiff.priors import load
from invdiff.training import Trainer
from invdiff.training.augment import augment, is_on
from invdiff.training.settings import TrainSettings
from invdiff.training.trainer import VAL_SIGMAS

TINY = ["settings.batch=2", "settings.log_every=2", "settings.ckpt_every=2", "sample_grid=0", "data.size=16",
        "settings.warmup=2", "settings.arch={width: 8, mults: [1, 2], blocks: 1, emb: 32, patch: 2}"]


def cfg(tmp_path, *overrides):
    with initialize_config_module("invdiff.configs.train", version_base=None):
        return compose("config", overrides=[f"out={tmp_path}", *TINY, *overrides])


def S(**kw):
    base = dict(augment_rot90=False, augment_scale=None, augment_gain=0.0, augment_padding="zeros")
    return SimpleNamespace(**{**base, **kw})


def test_defaults_are_off_so_the_recipes_are_unchanged():
    assert not is_on(TrainSettings())
    s = settings_of(cfg("/tmp/unused"))
    assert not is_on(s) and s.val_every == 0 and not s.keep_best


def test_rot90_is_an_exact_rotation_of_each_image():
    x = torch.rand(64, 2, 8, 8)
    y = augment(x, torch.Generator().manual_seed(0), S(augment_rot90=True))
    ks = []
    for a, b in zip(x, y):
        hits = [k for k in range(4) if torch.equal(torch.rot90(a, k, dims=(-2, -1)), b)]
        assert len(hits) == 1
        ks.append(hits[0])
    assert set(ks) == {0, 1, 2, 3}


def test_zoom_is_exact_on_a_linear_ramp_and_the_identity_at_scale_one():
    n = 32
    u = (torch.arange(n) + 0.5) / n * 2 - 1  # pixel centres in grid_sample's normalised coordinates
    ramp = (0.5 + 0.25 * u)[None, :].expand(n, n)[None, None].repeat(16, 1, 1, 1)  # varies along x (width)
    same = augment(ramp, torch.Generator().manual_seed(0), S(augment_scale=[1.0, 1.0]))
    torch.testing.assert_close(same, ramp, atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(1)
    out = augment(ramp, g, S(augment_scale=[1.25, 2.0]))
    s = 1.25 + 0.75 * torch.rand(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # the same draw
    expect = 0.5 + 0.25 * u[None, :] / s[:, None]  # output pixel p shows the input at p / s
    # bilinear interpolation is exact for a linear function away from the border pixels
    torch.testing.assert_close(out[:, 0, n // 2, 2:-2].double(), expect[:, 2:-2], atol=2e-6, rtol=0)


def test_zoom_out_pads_with_zeros_or_reflection():
    x = torch.full((4, 1, 16, 16), 0.7)
    z = augment(x, torch.Generator().manual_seed(0), S(augment_scale=[0.5, 0.6]))
    assert float(z[:, :, 0, 0].abs().max()) < 1e-6 and abs(float(z[:, :, 8, 8].min()) - 0.7) < 1e-6
    r = augment(x, torch.Generator().manual_seed(0), S(augment_scale=[0.5, 0.6], augment_padding="reflection"))
    torch.testing.assert_close(r, x, atol=1e-6, rtol=0)


def test_gain_scales_each_image_down_within_range():
    x = 0.2 + 0.8 * torch.rand(32, 1, 8, 8)
    y = augment(x, torch.Generator().manual_seed(0), S(augment_gain=0.3))
    ratio = (y / x).flatten(1)
    assert float((ratio.max(1).values - ratio.min(1).values).max()) < 1e-6  # one gain per image
    assert float(ratio.min()) >= 0.7 - 1e-6 and float(ratio.max()) <= 1 + 1e-6 and float(ratio.std()) > 0.02
    assert float(y.max()) <= 1.0 and float(y.min()) >= 0.0


@pytest.mark.parametrize("overrides, pattern", [
    (["settings.augment_scale=[1.2,0.8]"], r"0 < lo <= hi"),
    (["settings.augment_gain=1.0"], r"augment_gain must be in \[0, 1\)"),
    (["settings.augment_padding=border"], r"augment_padding must be one of"),
    (["settings.keep_best=true"], r"set settings.val_every"),
    (["settings.val_every=2", "settings.objective=flow"], r"objective=flow has another network output"),
    (["settings.augment_rot90=true", "settings.objective=ambient"], r"a rotated or zoomed measurement"),
])
def test_settings_that_cannot_work_are_refused(overrides, pattern, tmp_path):
    with pytest.raises(ValueError, match=pattern):
        settings_of(cfg(tmp_path, *overrides))


def test_validation_needs_held_out_images(tmp_path):
    s = settings_of(cfg(tmp_path, "settings.val_every=2"))
    with pytest.raises(ValueError, match="has none: data=brain and data=phantoms have a validation split"):
        Trainer(ArrayData(torch.rand(4, 1, 16, 16)), tmp_path, s, progress=False)


def test_validation_score_is_the_ema_denoisers_mse_over_sigma2(tmp_path):
    s = settings_of(cfg(tmp_path, "settings.val_every=2", "settings.steps=2"))
    t = Trainer(PhantomData(16), tmp_path, s, progress=False)
    t.train()
    row = (tmp_path / "val.csv").read_text().splitlines()
    assert row[0].startswith("step,mse_over_sigma2_at_0.05") and row[1].startswith("2,")
    prior = t.prior()  # the same EMA network, through the prior's physical/model conversion
    x = prior.to_model(PhantomData(16).validation().double())
    g = torch.Generator().manual_seed(0)
    ratios = []
    for sigma in VAL_SIGMAS:
        noisy = x + sigma * torch.randn(x.shape, generator=g).double()
        with torch.no_grad():
            ratios.append(float((prior.denoiser(noisy, sigma) - x).square().mean()) / sigma**2)
    logged = [float(v) for v in row[1].split(",")[1:]]
    assert logged[:-1] == pytest.approx(ratios, rel=1e-4) and logged[-1] == pytest.approx(sum(ratios) / len(ratios), rel=1e-4)


def test_augmented_validated_training_resumes_bit_for_bit_and_keeps_the_best(tmp_path):
    over = ["settings.steps=6", "settings.augment_rot90=true", "settings.augment_scale=[0.9,1.1]",
            "settings.augment_gain=0.2", "settings.val_every=2", "settings.keep_best=true"]
    a = run(cfg(tmp_path / "a", *over))
    c = cfg(tmp_path / "b", *over)
    t = Trainer(PhantomData(16), tmp_path / "b", settings_of(c), progress=False)
    t.train(until=4)
    del t
    with open(tmp_path / "b" / "val.csv", "a") as f:  # a row the stopped run wrote past its checkpoint
        f.write("5,9,9,9,9,9,9,9\n")
    b = run(c)
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), k
    assert (tmp_path / "a" / "val.csv").read_text() == (tmp_path / "b" / "val.csv").read_text()
    rows = [r.split(",") for r in (tmp_path / "a" / "val.csv").read_text().splitlines()[1:]]
    best = min(rows, key=lambda r: float(r[-1]))
    assert a.best == b.best and a.best[1] == int(best[0]) and math.isclose(a.best[0], float(best[-1]), rel_tol=1e-5)
    assert load(tmp_path / "b" / "prior_best.safetensors").shape == (1, 16, 16)
    # with the augmentation off the same seed trains another network (the transforms were applied)
    plain = run(cfg(tmp_path / "p", "settings.steps=6"))
    assert any(not torch.equal(v, plain.net.state_dict()[k]) for k, v in a.net.state_dict().items())


def test_the_patches_data_validates_on_images_it_never_trains_on():
    from invdiff.data.training_data import HELD_OUT_IMAGES, PATCH_IMAGES, patch_validation_images

    v = patch_validation_images(64)
    assert v.shape == (11, 1, 64, 64) and float(v.min()) >= 0 and float(v.max()) <= 1
    assert torch.equal(v, patch_validation_images(64))  # fixed, not drawn
    assert all(float(x.std()) > 0.05 for x in v)  # (no blank view)
    # its sources (pydicom's CT_small/MR_small, the MNI152 validation slab) are neither trained on nor evaluated
    assert not {"ct_small", "mr_small", "brain"} & {n.lower() for n in (*PATCH_IMAGES, *HELD_OUT_IMAGES)}


def test_patch_frechet_distance_is_exact_on_shifted_and_scaled_white_noise():
    from invdiff.evaluation import patch_frechet_distance

    g = torch.Generator().manual_seed(0)
    a = torch.rand(6, 1, 32, 32, generator=g, dtype=torch.float64)
    assert patch_frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # a constant shift moves every one of the 64 patch means by 0.1 and leaves the covariance: 64·0.01
    assert patch_frechet_distance(a, a + 0.1) == pytest.approx(64 * 0.01, rel=1e-6)
    # scaling by 2 about the mean: Σ → 4Σ, so tr(Σ + 4Σ − 2·2Σ) = tr Σ, and the means move by the mean
    mean = a.mean()
    fd = patch_frechet_distance(a, mean + 2 * (a - mean))
    p = torch.nn.functional.unfold(a, 8, stride=4).transpose(1, 2).reshape(-1, 64)
    assert fd == pytest.approx(float(torch.cov(p.T).trace() + (p.mean(0) - mean).square().sum()), rel=1e-5)
    with pytest.raises(ValueError, match="patches of dimension 64"):
        patch_frechet_distance(a[:1, :, :8, :8], a)


def test_validation_can_score_ema_samples_against_the_validation_images(tmp_path):
    over = ["settings.val_every=2", "settings.steps=4", "settings.val_samples=8"]
    t = Trainer(PhantomData(16), tmp_path, settings_of(cfg(tmp_path, *over)), progress=False)
    t.train()
    rows = (tmp_path / "val_samples.csv").read_text().splitlines()
    assert rows[0] == "step,patch_frechet_distance" and [r.split(",")[0] for r in rows[1:]] == ["2", "4"]
    assert all(float(r.split(",")[1]) > 0 for r in rows[1:])
    with pytest.raises(ValueError, match="val_every > 0 as well"):
        settings_of(cfg(tmp_path, "settings.val_samples=8"))
