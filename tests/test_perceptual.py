"""Perceptual metrics: LPIPS and Inception-v3 loaded from state-dict files written here from
randomly initialised torchvision networks (nothing is downloaded), and the set-level statistics
(FID, Inception score, precision / recall) against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from invdiff.perceptual import (LPIPS, InceptionFeatures, _trace_sqrt_lowrank, fid_from_features, frechet_distance,
                                inception_score, load_perceptual, perceptual_metrics, precision_recall)

ALEX_CHANNELS = (64, 192, 384, 256, 256)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), d / "alexnet.pth")
    g = torch.Generator().manual_seed(1)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(ALEX_CHANNELS)}
    torch.save(lin, d / "alex_lin.pth")
    torch.manual_seed(2)
    net = torchvision.models.inception_v3(aux_logits=True, init_weights=False, weights=None)
    with torch.no_grad():  # He-like gain, so that activations neither vanish nor explode through 94 layers
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(6**0.5)
    torch.save(net.state_dict(), d / "inception.pth")
    return {"alex": d / "alexnet.pth", "lin": d / "alex_lin.pth", "inception": d / "inception.pth", "dir": d}


@pytest.fixture(scope="module")
def nets(files):
    return load_perceptual(lpips_backbone=files["alex"], lpips_linear=files["lin"], inception=files["inception"])


@pytest.fixture(scope="module")
def lpips_alex(nets):
    assert isinstance(nets["lpips"], LPIPS) and nets["lpips"].net == "alex"
    return nets["lpips"]


def images(n=2, c=3, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g)


def noisy(x, level, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (x + level * torch.randn(x.shape, generator=g)).clamp(0, 1)


# -- LPIPS -------------------------------------------------------------------------------------------


def test_lpips_zero_on_identical_and_symmetric(lpips_alex):
    x = images()
    y = noisy(x, 0.1)
    assert torch.equal(lpips_alex(x, x), torch.zeros(2))
    d = lpips_alex(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.equal(d, lpips_alex(y, x))


def test_lpips_grows_with_noise(files, lpips_alex):
    x = images()
    baseline = LPIPS.from_files(files["alex"])  # uniform weights
    for metric in (lpips_alex, baseline):
        d = torch.stack([metric(x, noisy(x, s)) for s in (0.02, 0.1, 0.3)])
        assert (d[1:] > d[:-1]).all(), d


def test_lpips_matches_reference_formula(files, lpips_alex):
    """Restates LPIPS v0.1 with lpips' own AlexNet slicing (features[0:2], [2:5], [5:8], [8:10], [10:12])."""
    with torch.device("meta"):
        net = torchvision.models.alexnet()
    net.load_state_dict(torch.load(files["alex"], weights_only=True), assign=True)
    lin = torch.load(files["lin"], weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    x, y = images(seed=3), images(seed=4)

    def feats(z):
        z, out = ((2 * z - 1) - shift) / scale, []
        for a, b in ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)):
            z = net.features[a:b](z)
            out.append(z / (z.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    with torch.no_grad():
        want = sum((lin[f"lin{i}.model.1.weight"] * (a - b) ** 2).sum(1).mean((1, 2))
                   for i, (a, b) in enumerate(zip(feats(x), feats(y))))
        got = lpips_alex(x, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_lpips_linear_file_formats_and_negative_weights(files, tmp_path):
    from safetensors.torch import save_file

    lin = torch.load(files["lin"], weights_only=True)
    short = {k.replace(".model.1.", "."): v for k, v in lin.items()}
    save_file(short, str(tmp_path / "lin.safetensors"))
    features_only = {k: v for k, v in torch.load(files["alex"], weights_only=True).items() if k.startswith("features.")}
    save_file(features_only, str(tmp_path / "alex.safetensors"))
    a = LPIPS.from_files(files["alex"], files["lin"])
    b = LPIPS.from_files(tmp_path / "alex.safetensors", tmp_path / "lin.safetensors")
    x = images()
    y = noisy(x, 0.1)
    assert torch.equal(a(x, y), b(x, y))
    assert not torch.allclose(a(x, y), LPIPS.from_files(files["alex"])(x, y))  # the weights matter

    short["lin2.weight"] = -short["lin2.weight"]
    torch.save(short, tmp_path / "negative.pth")
    with pytest.raises(ValueError, match="negative"):
        LPIPS.from_files(files["alex"], tmp_path / "negative.pth")
    del short["lin2.weight"]
    short["lin7.weight"] = torch.ones(1, 3, 1, 1)
    torch.save(short, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"missing keys \['lin2.weight'\].*unexpected keys \['lin7.weight'\]"):
        LPIPS.from_files(files["alex"], tmp_path / "wrong.pth")


def test_lpips_grayscale_is_repeated(lpips_alex):
    x = images(c=1)
    y = noisy(x, 0.1)
    torch.testing.assert_close(lpips_alex(x, y), lpips_alex(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))


def test_lpips_vgg_taps(tmp_path):
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # vgg16().features
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16.pth")
    metric = LPIPS.from_files(tmp_path / "vgg16.pth", net="vgg")
    x = images(n=1, size=32)
    assert metric(x, x).item() == 0 and metric(x, noisy(x, 0.1)).item() > 0


def test_missing_and_wrong_files(files, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"(?s)alexnet-owt-7be5be79\.pth.*never downloads"):
        LPIPS.from_files(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"weights/v0\.1/alex\.pth"):
        LPIPS.from_files(files["alex"], tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match=r"inception_v3_google-0cc3c7bd\.pth"):
        InceptionFeatures.from_file(tmp_path / "nope.pth")

    def no_work(*args, **kwargs):
        raise AssertionError("a network was built before every file was checked")

    monkeypatch.setattr(LPIPS, "from_files", no_work)
    with pytest.raises(FileNotFoundError, match="Inception-v3 weights not found"):
        load_perceptual(lpips_backbone=files["alex"], lpips_linear=files["lin"], inception=tmp_path / "nope.pth")
    monkeypatch.undo()

    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11), "head.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"(?s)missing keys: features\.0\.bias.*unexpected keys: head\.weight"):
        LPIPS.from_files(tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="missing keys"):  # an AlexNet file is not a VGG-16
        LPIPS.from_files(files["alex"], net="vgg")
    with pytest.raises(ValueError, match="missing keys"):
        InceptionFeatures.from_file(files["alex"])


# -- Fréchet distance / FID ------------------------------------------------------------------------


def spd(d, seed):
    a = np.random.default_rng(seed).standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu, cov = rng.standard_normal(6), spd(6, 1)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-9
    shift = rng.standard_normal(6)
    assert frechet_distance(mu, cov, mu + shift, cov) == pytest.approx(shift @ shift, rel=1e-9, abs=1e-9)
    s1, s2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    want = ((s1 - s2) ** 2).sum() + shift @ shift
    got = frechet_distance(torch.tensor(mu), torch.diag(torch.tensor(s1**2)), mu + shift, np.diag(s2**2))
    assert got == pytest.approx(want, rel=1e-9)


def test_fid_from_features():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((2000, 8)) @ rng.standard_normal((8, 8))
    shift = rng.standard_normal(8)
    assert abs(fid_from_features(f, f)) < 1e-6
    assert fid_from_features(f, f + shift) == pytest.approx(shift @ shift, rel=1e-6)
    g1, g2 = rng.standard_normal((20000, 4)), rng.standard_normal((20000, 4)) + shift[:4]
    assert fid_from_features(torch.tensor(g1), g2) == pytest.approx(shift[:4] @ shift[:4], abs=0.1)  # ~5 std. errors


def test_fid_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(1)
    a1, a2 = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))  # full rank: the Gram trick = sqrtm
    a1, a2 = a1 - a1.mean(0), a2 - a2.mean(0)
    full = frechet_distance(0 * a1[0], np.cov(a1, rowvar=False), 0 * a2[0], np.cov(a2, rowvar=False))
    tr = np.trace(np.cov(a1, rowvar=False)) + np.trace(np.cov(a2, rowvar=False))
    assert tr - 2 * _trace_sqrt_lowrank(a1, a2) == pytest.approx(full, rel=1e-9)
    f = rng.standard_normal((5, 50))
    shift = rng.standard_normal(50)
    assert abs(fid_from_features(f, f)) < 1e-9
    assert fid_from_features(f, f + shift) == pytest.approx(shift @ shift, rel=1e-9)
    assert fid_from_features(f, rng.standard_normal((7, 50))) > 0


# -- Inception score, precision / recall ----------------------------------------------------------


def test_inception_score():
    mean, std = inception_score(torch.zeros(50, 1000))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    k = 5
    logits = 50.0 * np.eye(k)[np.arange(100) % k]
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(k, rel=1e-9) and std < 1e-9
    with pytest.raises(ValueError):
        inception_score(logits[:3], splits=10)


def test_precision_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(500, 2, generator=g, dtype=torch.float64)
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 1000) == (0.0, 0.0)
    cluster = 0.05 * torch.randn(200, 2, generator=g, dtype=torch.float64)
    precision, recall = precision_recall(real, cluster, k=3)
    assert precision > 0.9 and recall < 0.1
    assert precision_recall(real, cluster, k=3, chunk=37) == (precision, recall)


# -- Inception network and the whole pipeline -----------------------------------------------------


def test_inception_features(nets):
    net = nets["inception"]
    assert isinstance(net, InceptionFeatures)
    x = images(n=2, c=1)
    pool, logits = net.features(x, batch_size=2)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1000)
    assert pool.dtype == logits.dtype == torch.float64 and torch.isfinite(pool).all() and torch.isfinite(logits).all()
    pool1, logits1 = net.features(x, batch_size=1)  # deterministic, independent of batching
    torch.testing.assert_close(pool1, pool, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits1, logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(pool[0], pool[1])


def test_perceptual_metrics_end_to_end(nets):
    x = images(n=3, c=3, size=48, seed=5)
    same = perceptual_metrics(x, x, **nets)
    assert same["lpips"] == [0.0, 0.0, 0.0]
    assert abs(same["fid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0
    out = perceptual_metrics(noisy(x, 0.2), x, lpips=nets["lpips"])
    assert set(out) == {"lpips"} and len(out["lpips"]) == 3 and all(v > 0 for v in out["lpips"])
    assert load_perceptual() == {"lpips": None, "inception": None}
    assert perceptual_metrics(x, x) == {}
    assert math.isfinite(same["inception_score"]) and set(same) == {
        "lpips", "fid", "kid", "kid_std", "inception_score", "inception_score_std", "precision", "recall"}
    assert abs(same["kid"]) < 1e-3  # identical sets: the unbiased MMD² is ≈ 0 (slightly negative: no diagonal terms)


def test_benchmark_runner_reports_perceptual_metrics_from_local_weights(files, tmp_path):
    """invdiff-bench with LPIPS and Inception weights given by path: per-image LPIPS, set-level
    FID / IS / precision–recall in the summary; a missing file stops the run before any work."""
    from invdiff.apps import bench
    from invdiff.apps.common import AppError

    common = ["benchmark=smoke", "data.n=2", "solver.steps=3", "progress=false", "figures=false"]
    with pytest.raises(AppError, match="benchmark.metrics: .*not found"):
        bench.run(bench.config(*common, f"benchmark.metrics.inception={files['dir'] / 'nope.pth'}"), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    s = bench.run(bench.config(*common, f"benchmark.metrics.lpips_backbone={files['alex']}",
                               f"benchmark.metrics.lpips_linear={files['lin']}",
                               f"benchmark.metrics.inception={files['inception']}"), tmp_path / "run")
    assert s["metrics"]["lpips"]["n"] == 2 and s["metrics"]["lpips"]["mean"] > 0
    assert {"fid", "inception_score", "precision", "recall"} <= set(s["set_metrics"])
    assert "| fid (set) |" in (tmp_path / "run" / "summary.md").read_text()
