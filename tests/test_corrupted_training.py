"""The corrupted-data objectives (invdiff.training.corrupted) against closed forms.

On a Gaussian x ~ N(μ, Σ) with a network that is linear per corruption pattern, h(z) = W_p z + b_p,
each loss is quadratic in (W, b): its exact empirical minimiser is found from the loss's own
gradients (d + 1 of them, :func:`_exact_minimiser`) and compared with the
analytic E[x | P_p(x + σn)] = μ + Σ P_p (P_p(Σ + σ²I)P_p)⁺ (z − P_p μ). The noisy and ambient
objectives see only measurements (noisy, masked, undersampled), never x.
"""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch
from operators.mri import fft2c

from invdiff.training import TrainSettings, Trainer, corrupted_loss
from invdiff.training.corrupted import FourierDomain, PixelDomain

DT = torch.float64


def _gaussian(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=DT) / math.sqrt(d)
    return 0.2 * torch.randn(d, generator=g, dtype=DT), 0.15 * A @ A.T + 0.05 * torch.eye(d, dtype=DT)


class Recorder(torch.nn.Module):
    """A "network" whose output is a free tensor ``h`` (one row per sample); it records its inputs."""

    def __init__(self, shape):
        super().__init__()
        self.h = torch.nn.Parameter(torch.zeros(shape, dtype=DT))

    def forward(self, z, sigma, mask=None):
        self.z, self.mask = z.detach(), None if mask is None else mask.detach()
        return self.h


def _exact_minimiser(loss_fn, n: int, shape, patterns: torch.Tensor | None = None) -> torch.Tensor:
    """The exact minimiser over linear-per-pattern networks h = W_p z + b_p of a loss whose value is
    quadratic in the network's output: ``[P, d, d + 1]`` (min-norm where the loss is flat).

    The loss's gradient in the output is affine, G(h) = K h + g, with a ``d × d`` block K_i per sample
    (samples are independent): d + 1 gradients of the loss itself give every K_i and g_i. For
    h_i = Θ z̃_i (z̃ = [z, 1]) the normal equations are Σ_i K_i Θ z̃_i z̃_iᵀ = −Σ_i g_i z̃_iᵀ."""
    d = math.prod(shape)
    rec = Recorder((n, *shape))

    def grad(h):
        rec.h.data.copy_(h)
        rec.zero_grad()
        loss_fn(rec).backward()
        return rec.h.grad.detach().reshape(n, d).clone()

    zero = torch.zeros(n, *shape, dtype=DT)
    g = grad(zero)
    K = torch.empty(n, d, d, dtype=DT)
    for j in range(d):
        e = zero.clone().reshape(n, d)
        e[:, j] = 1.0
        K[:, :, j] = grad(e.reshape(n, *shape)) - g
    zt = torch.cat([rec.z.reshape(n, d), torch.ones(n, 1, dtype=DT)], 1)
    if patterns is None:
        idx = torch.zeros(n, dtype=torch.int64)
        patterns = torch.ones(1, d, dtype=DT)
    else:
        m = rec.mask.flatten(1)
        hit = (m[:, None, :] == patterns.flatten(1)[None]).all(-1)
        assert bool(hit.any(1).all()), "a mask outside the listed patterns"
        idx = hit.to(torch.int64).argmax(1)
    out = []
    for p in range(len(patterns)):
        sel = idx == p
        assert int(sel.sum()) > 20 * d, f"pattern {p} has only {int(sel.sum())} samples"
        zz = (zt[sel, :, None] * zt[sel, None, :]).reshape(-1, (d + 1) ** 2)
        M = (zz.T @ K[sel].reshape(-1, d * d)).reshape(d + 1, d + 1, d, d)   # [a, b, j, k]
        M = M.permute(2, 0, 3, 1).reshape(d * (d + 1), d * (d + 1))            # [(j, a), (k, b)]
        rhs = -(g[sel].T @ zt[sel]).reshape(-1)                                # [(j, a)]
        out.append((torch.linalg.pinv(M, rtol=1e-9) @ rhs).reshape(d, d + 1))
    return torch.stack(out)


def _analytic(mu, cov, Pp, sigma):
    """(W, b) of E[x | z], z = P_p(x + σn), P_p an orthogonal projection."""
    d = len(mu)
    W = cov @ Pp @ torch.linalg.pinv(Pp @ (cov + sigma**2 * torch.eye(d, dtype=DT)) @ Pp, rtol=1e-9, hermitian=True)
    return W, mu - W @ mu


def _settings(sigma: float, delta: float = 0.3) -> TrainSettings:
    return TrainSettings(p_mean=math.log(sigma), p_std=0.0, sigma_data=0.5, ambient_delta=delta)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_noisy_objective_minimiser_is_the_clean_denoiser():
    """Tweedie's noisy-data loss (Daras et al. 2024) from images with noise τ = 0.4 has the clean
    denoiser at σ = 0.6 as its minimiser; the naive regression onto the noisy target does not."""
    shape, n, tau, sigma = (1, 3, 3), 60000, 0.4, 0.6
    d = 9
    mu, cov = _gaussian(d, 0)
    g = torch.Generator().manual_seed(1)
    x = mu + torch.randn(n, d, generator=g, dtype=DT) @ torch.linalg.cholesky(cov).T
    y = (x + tau * torch.randn(n, d, generator=g, dtype=DT)).reshape(n, *shape)
    del x  # the loss sees y only
    batch = (y, torch.ones(n, 3, 3, dtype=DT), torch.full((n,), tau, dtype=DT))
    dom = PixelDomain(shape)
    loss = lambda m: corrupted_loss(m, batch, dom, torch.Generator().manual_seed(2), _settings(sigma), ambient=False,  # noqa: E731
                                    sigma_floor=0.0, data_range=(-1.0, 1.0))
    th = _exact_minimiser(loss, n, shape)[0]
    W, b = _analytic(mu, cov, torch.eye(d, dtype=DT), sigma)
    assert _rel(th[:, :-1], W) < 0.04
    assert float((th[:, -1] - b).abs().max()) < 0.02
    naive = (cov + tau**2 * torch.eye(d, dtype=DT)) @ torch.linalg.inv(cov + sigma**2 * torch.eye(d, dtype=DT))
    assert _rel(naive, W) > 0.5  # the tolerance tells Tweedie's target from the noisy one


def test_ambient_objective_minimiser_pixel_masks():
    """Ambient diffusion on random pixel masks (each pixel observed with probability ½, noise 0.1,
    a further δ = 0.3 dropped): for every further-corrupted pattern p the minimiser is
    E[x | P_p(x + σn)] — including the weights on pixels the pattern hides, learned only from
    samples where they were observed and dropped."""
    shape, n, tau, sigma = (1, 1, 3), 120000, 0.1, 0.5
    d = 3
    mu, cov = _gaussian(d, 3)
    g = torch.Generator().manual_seed(4)
    x = mu + torch.randn(n, d, generator=g, dtype=DT) @ torch.linalg.cholesky(cov).T
    mask = (torch.rand(n, 1, 3, generator=g) < 0.5).to(DT)
    mask[mask.flatten(1).sum(1) == 0] = 1.0
    y = (x.reshape(n, *shape) + tau * torch.randn(n, *shape, generator=g, dtype=DT)) * mask[:, None]
    del x
    patterns = torch.tensor([[(p >> i) & 1 for i in range(3)] for p in range(1, 8)], dtype=DT)
    batch = (y, mask, torch.full((n,), tau, dtype=DT))
    loss = lambda m: corrupted_loss(m, batch, PixelDomain(shape), torch.Generator().manual_seed(5), _settings(sigma),  # noqa: E731
                                    ambient=True, sigma_floor=0.0, data_range=(-1.0, 1.0))
    th = _exact_minimiser(loss, n, shape, patterns)
    for p, pat in enumerate(patterns):
        W, b = _analytic(mu, cov, torch.diag(pat), sigma)
        assert _rel(th[p, :, :-1], W) < 0.06, (pat, th[p], W)
        assert float((th[p, :, -1] - b).abs().max()) < 0.02


def test_ambient_objective_minimiser_kspace():
    """Ambient diffusion on 4×4 single-coil k-space of a real image, random column masks (the centre
    column always, others with probability ½), complex noise σ_y = 0.05, δ = 0.4: the minimiser for
    each further-undersampled pattern is E[x | P_p(x + σn)], P_p the projection onto the real image's
    observed Fourier coefficients (k and −k)."""
    H = W = 4
    shape, n, sy, sigma = (1, H, W), 40000, 0.05, 0.4
    d = H * W
    mu, cov = _gaussian(d, 6)
    g = torch.Generator().manual_seed(7)
    x = (mu + torch.randn(n, d, generator=g, dtype=DT) @ torch.linalg.cholesky(cov).T).reshape(n, *shape)
    cols = torch.rand(n, W, generator=g) < 0.5
    cols[:, W // 2] = True
    mask = cols[:, None, :].expand(n, H, W).to(DT)
    k = fft2c(x.to(torch.complex128)) * mask[:, None]
    y = torch.cat([k.real, k.imag], 1) + sy * torch.randn(n, 2, H, W, generator=g, dtype=DT) * mask[:, None]
    del x, k
    dom = FourierDomain(shape, keep=mask.amin(0))  # the centre column, in every sample
    # the patterns the network can see: supports of the further-undersampled masks
    col_sets = torch.tensor([[(p >> i) & 1 for i in range(W)] for p in range(16)], dtype=DT)
    col_sets = col_sets[col_sets[:, W // 2] == 1]
    patterns = dom.support(col_sets[:, None, :].expand(-1, H, W)).reshape(len(col_sets), -1).unique(dim=0)
    batch = (y, mask, torch.full((n,), sy, dtype=DT))
    loss = lambda m: corrupted_loss(m, batch, dom, torch.Generator().manual_seed(8), _settings(sigma, 0.4),  # noqa: E731
                                    ambient=True, sigma_floor=0.0, data_range=(-1.0, 1.0))
    th = _exact_minimiser(loss, n, shape, patterns)
    eye = torch.eye(d, dtype=DT).reshape(d, 1, H, W)
    for p, pat in enumerate(patterns):
        Pp = dom.to_image(pat.reshape(1, 1, H, W) * dom.fft(eye.to(torch.complex128))).reshape(d, d).T
        Wp, bp = _analytic(mu, cov, Pp, sigma)
        assert _rel(th[p, :, :-1], Wp) < 0.08, pat
        assert float((th[p, :, -1] - bp).abs().max()) < 0.03


def test_fourier_observed_coefficients_and_noise_floor():
    """The observed coefficients of a real image from k-space (k and −k combined) carry noise of
    τ² = σ_y² (both sampled) or 2σ_y² (one sampled): the empirical variances match."""
    H = W = 6
    n, sy = 40000, 0.1
    dom = FourierDomain((1, H, W))
    g = torch.Generator().manual_seed(9)
    x = torch.randn(n, 1, H, W, generator=g, dtype=DT)
    cols = torch.rand(n, W, generator=g) < 0.5
    cols[:, W // 2] = True
    mask = cols[:, None, :].expand(n, H, W).to(DT)
    k = dom.fft(x.to(torch.complex128)) * mask[:, None]
    y = torch.cat([k.real, k.imag], 1) + sy * torch.randn(n, 2, H, W, generator=g, dtype=DT) * mask[:, None]
    c, S, tau2 = dom.observed(y, mask, torch.full((n,), sy, dtype=DT))
    e = S * (c - dom.fft(x.to(torch.complex128)))
    assert float(dom.ifft(e).imag.abs().max()) < 1e-12  # Hermitian: the error is a real image
    seen = S.mean(0)[0] > 0
    ratio = (e.abs() ** 2).mean(0)[0][seen] / tau2.mean(0)[0][seen]
    assert float((ratio - 1).abs().max()) < 0.05
    assert set(torch.unique(tau2[S > 0] / sy**2).round(decimals=6).tolist()) == {1.0, 2.0}


# -- the data mode and the trainer ---------------------------------------------------------------

TINY = ["settings.batch=2", "settings.log_every=2", "settings.ckpt_every=2", "sample_grid=4", "settings.warmup=2",
        "settings.arch={width: 8, mults: [1, 2], blocks: 1, emb: 32, patch: 2}"]


def _cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module("invdiff.configs.train", version_base=None):
        return compose("config", overrides=[f"out={tmp_path}", *TINY, *overrides])


@pytest.fixture
def measurement_files(tmp_path_factory):
    from invdiff.data.measurements import save_measurements, simulate_measurements

    d = tmp_path_factory.mktemp("meas")
    mri = save_measurements(d / "mri.h5", simulate_measurements("phantoms", "mri", 12, sigma_y=0.01, size=16))
    noisy = save_measurements(d / "noisy.h5", simulate_measurements("phantoms", "denoising", 12, sigma_y=0.1, size=16))
    return mri, noisy


def _no_clean_images(monkeypatch):
    """Every way the package makes or reads clean training images raises."""
    import invdiff.phantoms
    from invdiff.data import training_data

    def refuse(*a, **k):
        raise AssertionError("a corrupted-data objective read a clean image")

    monkeypatch.setattr(invdiff.phantoms, "phantom", refuse)
    for name in ("PhantomData", "PatchData", "ArrayData"):
        monkeypatch.setattr(getattr(training_data, name), "sample", refuse)
    monkeypatch.setattr(training_data, "load_images", refuse)


def test_ambient_and_noisy_training_read_measurements_only_and_resume_bit_for_bit(tmp_path, measurement_files,
                                                                                   monkeypatch):
    from invdiff.apps.train_app import run, settings_of
    from invdiff.data.measurements import load_measurements
    from invdiff.priors import load

    mri, noisy = measurement_files
    _no_clean_images(monkeypatch)
    for obj, src in (("ambient", mri), ("noisy", noisy)):
        over = ["data=measurements", f"data.source={src}", f"settings.objective={obj}", "settings.steps=4"]
        a = run(_cfg(tmp_path / obj / "a", *over, "sample_grid=0"))
        c = _cfg(tmp_path / obj / "b", *over)
        t = Trainer(load_measurements(src), tmp_path / obj / "b", settings_of(c), progress=False)
        t.train(until=2)
        del t
        b = run(c)  # resumed
        for k, v in a.net.state_dict().items():
            assert torch.equal(v, b.net.state_dict()[k]), (obj, k)
        prior = load(tmp_path / obj / "b" / "prior.safetensors")
        # σ range starts at the data's noise floor in model units: √2·2·0.01 (one-sided k-space pairs), 2·0.1
        floor = 2 * math.sqrt(2) * 0.01 if obj == "ambient" else 2 * 0.1
        assert prior.sigma_min == pytest.approx(floor, rel=1e-5)
        x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
        torch.testing.assert_close(prior.denoiser(x, 0.5), b.prior().denoiser(x, 0.5))
        assert (tmp_path / obj / "b" / "samples.png").is_file()


def test_corrupted_objectives_refuse_the_wrong_data(tmp_path, measurement_files):
    from invdiff.data.measurements import load_measurements
    from invdiff.data.training_data import PhantomData

    mri, noisy = measurement_files
    small = dict(arch=dict(width=8, mults=[1, 2], blocks=1, emb=32, patch=2))
    with pytest.raises(ValueError, match="data=measurements"):
        Trainer(PhantomData(16), tmp_path / "a", TrainSettings(objective="ambient", **small), progress=False)
    with pytest.raises(ValueError, match="not clean images"):
        Trainer(load_measurements(mri), tmp_path / "b", TrainSettings(objective="edm", **small), progress=False)
    with pytest.raises(ValueError, match="objective=ambient for masks"):
        Trainer(load_measurements(mri), tmp_path / "c", TrainSettings(objective="noisy", **small), progress=False)
    with pytest.raises(ValueError, match="objective=noisy"):
        Trainer(load_measurements(noisy), tmp_path / "d", TrainSettings(objective="ambient", **small), progress=False)
    with pytest.raises(TypeError, match="not images"):
        load_measurements(mri).sample(2, torch.Generator())


def test_measurement_files_round_trip_and_bad_files_are_refused(tmp_path, measurement_files):
    import h5py

    from invdiff.data.measurements import MeasurementSet, load_measurements

    mri, _ = measurement_files
    ms = load_measurements(mri)
    assert ms.kind == "mri" and ms.y.shape == (12, 2, 16, 16) and ms.mask.shape == (12, 16, 16)
    assert ms.provenance["images"] == "phantoms" and "clean" not in " ".join(ms.__dict__)
    # the operator of a sample reproduces its measurement up to the noise
    op = ms.operator(3)
    assert torch.equal(op.mask.float(), ms.mask[3])
    with pytest.raises(FileNotFoundError, match="no such measurement file"):
        load_measurements(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(ValueError, match="not an invdiff measurement file"):
        load_measurements(tmp_path / "other.h5")
    with pytest.raises(ValueError, match="mask values must be 0 or 1"):
        MeasurementSet("inpainting", torch.zeros(2, 1, 8, 8), torch.full((2, 8, 8), 0.5), 0.1, (1, 8, 8))
    with pytest.raises(ValueError, match="observe nothing"):
        MeasurementSet("inpainting", torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 8), 0.1, (1, 8, 8))
    with pytest.raises(ValueError, match="needs \\[N, 2, 8, 8\\]"):
        MeasurementSet("mri", torch.zeros(2, 1, 8, 8), torch.ones(2, 8, 8), 0.1, (1, 8, 8))


# -- expectation–maximisation ---------------------------------------------------------------------

def test_em_with_exact_posterior_sampling_recovers_the_gaussian_mean_and_covariance():
    """Stochastic EM (Rozet et al. 2024, Alg. 1) on a 2×2 Gaussian seen through random pixel masks
    (each pixel observed with probability 0.6, σ_y = 0.05): the E-step samples the exact posterior,
    the M-step fits mean and covariance; from N(0.5, I) it converges to the true N(μ, Σ)."""
    from invdiff.data.measurements import MeasurementSet
    from invdiff.training import expectation_maximisation, fit_gaussian, gaussian_posterior_samples

    n, d, sy = 6000, 4, 0.05
    mu, cov = _gaussian(d, 11)
    mu = mu + 0.5
    g = torch.Generator().manual_seed(12)
    x = mu + torch.randn(n, d, generator=g, dtype=DT) @ torch.linalg.cholesky(cov).T
    mask = (torch.rand(n, 2, 2, generator=g) < 0.6).float()
    mask[mask.flatten(1).sum(1) == 0] = 1.0
    y = (x.reshape(n, 1, 2, 2) + sy * torch.randn(n, 1, 2, 2, generator=g, dtype=DT)) * mask[:, None]
    ms = MeasurementSet("inpainting", y.float(), mask, sy, (1, 2, 2))
    del x
    history = []
    prior0 = (torch.full((d,), 0.5, dtype=DT), torch.eye(d, dtype=DT))
    est = expectation_maximisation(
        prior0, lambda p, k: gaussian_posterior_samples(*p, ms, torch.Generator().manual_seed(100 + k)),
        lambda x, p, k: fit_gaussian(x), rounds=40, on_round=lambda k, x, p: history.append(p))
    m_avg = torch.stack([h[0] for h in history[-10:]]).mean(0)
    c_avg = torch.stack([h[1] for h in history[-10:]]).mean(0)
    assert float((m_avg - mu).abs().max()) < 0.01
    assert _rel(c_avg, cov) < 0.06
    assert _rel(history[0][1], cov) > 3 * _rel(c_avg, cov)  # the rounds did the work
    assert _rel(est[1], cov) < 0.1


def test_closed_form_gaussian_em_recovers_a_stationary_gaussian_from_undersampled_kspace():
    """:func:`gaussian_em` (θ₀ of the network EM) on 8×8 single-coil k-space, random columns (~½),
    σ_y = 0.02: the mean image and the power spectrum of a stationary Gaussian are recovered."""
    import operators

    from invdiff.data.measurements import MeasurementSet
    from invdiff.training import gaussian_em, gaussian_em_posterior_samples

    H = 8
    n, sy = 6000, 0.02
    dom = FourierDomain((1, H, H))
    g = torch.Generator().manual_seed(13)
    mu_img = 0.5 + 0.2 * torch.randn(1, 1, H, H, generator=g, dtype=DT)
    f = torch.fft.fftshift(torch.fft.fftfreq(H)).abs()
    v = (0.02 / (0.05 + f[:, None] ** 2 + f[None, :] ** 2))[None, None].to(DT)  # symmetric spectrum
    x = mu_img + dom.to_image(v.sqrt() * dom.forward(torch.randn(n, 1, H, H, generator=g, dtype=DT)))
    cols = torch.rand(n, H, generator=g) < 0.45
    cols[:, H // 2] = True
    mask = cols[:, None, :].expand(n, H, H).float()
    ys = torch.stack([operators.SingleCoilMRI(mask[i].double(), (1, H, H))(x[i:i + 1])[0] for i in range(n)])
    ys = ys + sy * torch.randn(ys.shape, generator=g, dtype=DT) * mask[:, None]
    ms = MeasurementSet("mri", ys.float(), mask, sy, (1, H, H))
    del x
    est = gaussian_em(ms, iters=60)
    mean_img = dom.to_image(est["mean"][None])
    assert float((mean_img - mu_img).abs().max()) < 0.02
    ratio = est["var"] / v[0]
    assert float((ratio - 1).abs().median()) < 0.05 and float((ratio - 1).abs().max()) < 0.25
    s = gaussian_em_posterior_samples(est, ms, torch.Generator().manual_seed(0))
    assert s.shape == (n, 1, H, H) and bool(torch.isfinite(s).all())


def test_em_run_resumes_per_round_and_reads_measurements_only(tmp_path, measurement_files, monkeypatch):
    """invdiff-train settings.objective=em: two rounds (closed-form Gaussian θ₀, then DDNM E-steps),
    each round's samples and prior kept; a rerun recomputes nothing."""
    from invdiff.apps.train_app import run
    from invdiff.priors import load

    mri, _ = measurement_files
    _no_clean_images(monkeypatch)
    over = ["data=measurements", f"data.source={mri}", "data.limit=4", "settings.objective=em", "settings.em_rounds=2",
            "settings.em_m_steps=2", "settings.em_solver_steps=3", "settings.em_gaussian_iters=3"]
    run(_cfg(tmp_path, *over))
    for k in (1, 2):
        assert (tmp_path / f"round_{k}" / "samples.safetensors").is_file()
        assert (tmp_path / f"round_{k}" / "prior.safetensors").is_file()
    prior = load(tmp_path / "prior.safetensors")
    assert prior.shape == (1, 16, 16)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")}
    run(_cfg(tmp_path, *over))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")} == stamps
