"""``invdiff-bench``: the runner (resume after a kill, refusing a mismatched run directory, preset
settings versus the command line, summaries with intervals), the metrics it adds (calibration on
known cases), every paper preset wired at tiny size with randomly initialised networks of the
papers' architectures, and the exact-posterior (GMM) preset."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from invdiff.apps import bench
from invdiff.apps.common import AppError, choices
from invdiff.data.results import read_sample
from invdiff.metrics import coverage, interval95, z_scores

FAST = ["progress=false", "figures=false"]


# ---------------------------------------------------------------------------------------------
# metrics on known cases
# ---------------------------------------------------------------------------------------------
def test_coverage_of_a_calibrated_gaussian_posterior_is_nominal():
    g = torch.Generator().manual_seed(0)
    n_pix, draws = 20000, 4
    mu, sd = torch.randn(n_pix, generator=g, dtype=torch.float64), 0.1 + torch.rand(n_pix, generator=g, dtype=torch.float64)
    truth = mu + sd * torch.randn(n_pix, generator=g, dtype=torch.float64)  # the truth is a posterior draw
    samples = mu + sd * torch.randn(draws, n_pix, generator=g, dtype=torch.float64)
    cov = coverage(samples, truth)
    for level, c in cov.items():  # 20 000 pixels: binomial std ≤ 0.0035
        assert abs(c - level) < 0.015, cov
    over = coverage(mu + 0.3 * sd * torch.randn(draws, n_pix, generator=g, dtype=torch.float64), truth)
    assert all(over[lv] < lv - 0.2 for lv in over)  # spread too small: over-confident
    under = coverage(mu + 3 * sd * torch.randn(draws, n_pix, generator=g, dtype=torch.float64), truth)
    assert all(under[lv] > lv for lv in under) and under[0.5] > 0.7  # (≈ 0.75 expected with 4 draws)
    with pytest.raises(ValueError, match="at least 2"):
        coverage(samples[:1], truth)


def test_z_scores_and_interval_on_known_values():
    draws = torch.tensor([[0.0, 1.0], [2.0, 1.0]], dtype=torch.float64)  # mean (1, 1), std (√2, 0)
    z = z_scores(draws, torch.tensor([1.0 + math.sqrt(3), 2.0], dtype=torch.float64))
    assert z[0].item() == pytest.approx(1.0) and math.isinf(z[1].item())  # s·√(1 + 1/2) = √3
    s = interval95([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["std"] == 1.0 and s["hi"] - 2.0 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(interval95([5.0])["lo"])


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    summary = bench.run(bench.config("benchmark=smoke", "progress=false"), out)
    return out, summary


def test_smoke_preset_summary_and_records(smoke):
    out, s = smoke
    assert s["benchmark"] == "smoke" and s["solver"] == "ddrm" and s["images"] == 4 and s["num_samples"] == 2
    m = s["metrics"]
    for key in ("psnr", "ssim", "nmse", "psnr_mean", "coverage_90", "z_median", "residual_chi", "nfe", "seconds",
                "peak_memory_mb", "psnr_baseline"):
        assert m[key]["n"] == 4 and math.isfinite(m[key]["mean"]), key
    assert m["psnr"]["lo"] < m["psnr"]["mean"] < m["psnr"]["hi"]
    assert m["psnr"]["mean"] > m["psnr_baseline"]["mean"] + 5  # DDRM with phantom64 beats zero-filled clearly
    assert m["nfe"]["mean"] == 20 and 0.6 < m["coverage_90"]["mean"] <= 1.0
    assert not any(k.startswith("psnr_best") for k in m)  # best-of-N is never the default
    rec = read_sample(out / "samples" / "shepp_logan.h5")
    assert rec["benchmark"] == "smoke" and "σ_y = 0.01" in rec["paper_noise_convention"]
    assert "sigma_y = 0.01" in rec["noise_convention"] and rec["operator"]["params"]["mask"].shape[-1] == 64
    assert rec["seed"] == 0 and json.loads(rec["preset_settings"]) == {"steps": 20}
    text = (out / "summary.md").read_text()
    assert "95 % interval" in text and "never best-of-N" in text and "commit" in text
    assert (out / "summary.csv").read_text().startswith("metric,mean,std,ci_lo,ci_hi,n,published")


def test_best_of_n_only_when_asked_and_labelled(tmp_path):
    s = bench.run(bench.config("benchmark=smoke", "benchmark.best_of=true", "data.n=1", "solver.steps=5", *FAST), tmp_path)
    assert s["best_of"] and s["metrics"]["psnr_best_of_2"]["mean"] >= s["metrics"]["psnr"]["mean"]
    assert "best-of-N against the ground truth is reported" in (tmp_path / "summary.md").read_text()


def test_preset_settings_cpu_caps_and_command_line_precedence(monkeypatch):
    cfg = bench.prepare(bench.config("benchmark=patches64_inpaint", "solver=dps"))
    assert cfg.solver.zeta == 0.5 and cfg.solver.steps == 100  # the task's ζ, the CPU cap
    # recorded apart, so the tables say which value came from the task and which from the CPU limits
    assert dict(cfg.bench_run.task_settings) == {"zeta": 0.5} and dict(cfg.bench_run.cpu_caps) == {"steps": 100}
    assert dict(cfg.bench_run.preset_settings) == {"zeta": 0.5, "steps": 100}
    with monkeypatch.context() as m:
        m.setattr(bench, "_on_cpu", lambda cfg: False)  # as on a GPU
        cfg = bench.prepare(bench.config("benchmark=patches64_inpaint", "solver=dps"))
    assert dict(cfg.bench_run.cpu_caps) == {} and cfg.solver.steps == 1000  # a GPU run lifts the caps
    cfg = bench.prepare(bench.config("benchmark=patches64_inpaint", "solver=dps", "solver.zeta=2.0", "solver.steps=7"))
    assert cfg.solver.zeta == 2.0 and cfg.solver.steps == 7  # the command line wins
    cfg = bench.prepare(bench.config("benchmark=patches64_inpaint", "solver=diffpir"))
    assert cfg.solver.steps == 20 and cfg.solver.zeta == 1.0 and cfg.solver.lam == 7.0


def test_a_run_directory_of_another_configuration_is_refused(smoke):
    out, _ = smoke
    before = sorted(p.name for p in (out / "samples").iterdir())
    with pytest.raises(AppError, match="holds results of another configuration"):
        bench.run(bench.config("benchmark=smoke", "solver.steps=7", "progress=false"), out)
    assert sorted(p.name for p in (out / "samples").iterdir()) == before


def test_sweep_writes_one_table_and_an_efficiency_plot(tmp_path, monkeypatch):
    GlobalHydra.instance().clear()
    monkeypatch.setattr(sys, "argv", ["invdiff-bench", "-m", "benchmark=smoke", "solver=ddrm,ddnm", "solver.steps=3,6",
                                      "data.n=1", *FAST, f"results_dir={tmp_path}"])
    bench.main()
    GlobalHydra.instance().clear()
    root = tmp_path / "smoke"
    table = (root / "table.md").read_text()
    for run, nfe in (("ddrm", 3), ("ddrm", 6), ("ddnm", 3), ("ddnm", 6)):
        assert f"| {run}/data.n=1,solver.steps={nfe} | – | – | {nfe} |" in table
    assert (root / "psnr_vs_nfe.png").stat().st_size > 1000
    text = bench.table(root, tmp_path / "t.md", tmp_path / "p.png", command="x")
    assert text == (tmp_path / "t.md").read_text() and "Command: `x`" in text
    assert "| task settings (preset) | CPU caps |" in text and "4 run(s) of 1 test image(s), 2 draw(s) each" in text


def test_image_cap_is_stated_in_summary_and_table(tmp_path):
    s = bench.run(bench.config("benchmark=smoke", "benchmark.cpu.max_images=2", "solver.steps=3", *FAST), tmp_path)
    assert s["images"] == 2 and s["images_in_preset"] == 4 and s["image_cap"] == 2
    assert s["task_settings"] == {} and s["cpu_caps"] == {}  # solver.steps from the command line
    assert "2 of 4 image(s) (CPU cap max_images 2)" in (tmp_path / "summary.md").read_text()
    text = bench.table(tmp_path)
    assert "1 run(s) of 2 test image(s) of the preset's 4 (CPU cap max_images 2)" in text


def test_command_line_errors(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["invdiff-bench", "benchmark=smokey"])
    with pytest.raises(SystemExit, match="unknown benchmark 'smokey'.*Did you mean 'smoke'"):
        bench.main()
    monkeypatch.setattr(sys, "argv", ["invdiff-bench", "table", "/nonexistent/dir"])
    with pytest.raises(SystemExit, match="no summary.json"):
        bench.main()


SELF_CONTAINED = ["phantom64_mri4x", "phantom64_mri8x", "phantom64_mc_mri4x", "phantom64_phase_retrieval",
                  "patches64_inpaint", "patches64_deblur", "patches64_sr2"]


@pytest.mark.parametrize("preset", SELF_CONTAINED)
def test_self_contained_presets_run_and_have_a_validation_split(preset, tmp_path):
    cfg = bench.config(f"benchmark={preset}", "benchmark.cpu.max_images=1", "solver.steps=2", "num_samples=1", *FAST)
    s = bench.run(cfg, tmp_path / "test")
    assert s["images"] == 1 and math.isfinite(s["metrics"]["psnr"]["mean"]) and s["benchmark"] == preset
    from invdiff.apps.app import setup

    val = {it.sample.id for it in setup(bench.prepare(bench.config(f"benchmark={preset}", "data.split=val"))).items}
    test = {it.sample.id for it in setup(bench.prepare(bench.config(f"benchmark={preset}"))).items}
    assert len(test) == 8 and len(val) >= 8 and not val & test  # tuning never sees a test image


@pytest.mark.parametrize("preset", ["brain64_mri4x", "brain64_mri8x"])
def test_brain_presets_hold_out_the_test_slab(preset, tmp_path):
    cfg = bench.config(f"benchmark={preset}", "benchmark.cpu.max_images=1", "solver.steps=2", "num_samples=1", *FAST)
    s = bench.run(cfg, tmp_path / "test")
    assert s["images"] == 1 and s["images_in_preset"] == 10 and math.isfinite(s["metrics"]["psnr"]["mean"])
    from invdiff.apps.app import setup
    from invdiff.data.brain import slab

    val = {it.sample.id for it in setup(bench.prepare(bench.config(f"benchmark={preset}", "data.split=val"))).items}
    test = {it.sample.id for it in setup(bench.prepare(bench.config(f"benchmark={preset}"))).items}
    assert len(test) == 10 and len(val) == 5 and not val & test
    train = set(slab("axial", "train"))
    assert min(abs(i - j) for i in slab("axial", "test") for j in train) >= 5  # (the prior's training slab)


# ---------------------------------------------------------------------------------------------
# paper presets: wired at tiny size with random networks of the papers' architectures
# ---------------------------------------------------------------------------------------------
FFHQ = [n for n in choices("benchmark") if "ffhq" in n]


def test_every_paper_preset_is_listed():
    assert set(FFHQ) == {"ffhq_sr4", "ffhq_box_inpaint", "ffhq_random_inpaint", "ffhq_gaussian_deblur",
                         "ffhq_motion_deblur", "ffhq_phase_retrieval", "ffhq_nonlinear_deblur", "ffhq_hdr",
                         "ddrm_ffhq_sr4", "ddrm_ffhq_deblur", "diffpir_ffhq_deblur", "diffpir_ffhq_sr4"}
    assert {"fastmri_knee_4x", "fastmri_knee_8x"} <= set(choices("benchmark"))


@pytest.fixture(scope="module")
def ffhq_files(tmp_path_factory):
    """DPS's ffhq_10m.pt architecture (guided-diffusion ADM, 128 channels) with random weights,
    one 32×32 RGB image, and a random bkse-style blur network."""
    from skimage.io import imsave

    import operators as O
    from invdiff.priors.formats import build_diffunet

    d = tmp_path_factory.mktemp("ffhq")
    torch.manual_seed(0)
    net = build_diffunet(3, 6)  # learned σ: 6 output channels, as in ffhq_10m.pt
    torch.save(net.state_dict(), d / "ffhq_10m.pt")
    (d / "images").mkdir()
    rng = np.random.default_rng(0)
    imsave(d / "images" / "00000.png", (rng.random((32, 32, 3)) * 255).astype(np.uint8), check_contrast=False)
    O.save_blur_net(O.BlurNet(channels=3, features=8, latent_dim=4), d / "blur.safetensors")
    return d


@pytest.mark.parametrize("preset", FFHQ)
def test_paper_preset_runs_at_tiny_size(preset, ffhq_files, tmp_path, monkeypatch):
    for env in ("INVDIFF_DPS_FFHQ", "INVDIFF_FFHQ_DIR", "INVDIFF_BLUR_NET"):
        monkeypatch.delenv(env, raising=False)
    with pytest.raises(AppError, match="needs .*INVDIFF_DPS_FFHQ.*Nothing is downloaded"):
        bench.run(bench.config(f"benchmark={preset}", *FAST), tmp_path / "none")
    assert not (tmp_path / "none").exists()
    monkeypatch.setenv("INVDIFF_FFHQ_DIR", str(ffhq_files / "images"))  # the environment route
    extra = [f"operator.checkpoint={ffhq_files / 'blur.safetensors'}"] if "nonlinear" in preset else []
    cfg = bench.config(f"benchmark={preset}", f"prior.path={ffhq_files / 'ffhq_10m.pt'}", "+prior.shape=[3,32,32]",
                       "shape=[3,32,32]", "solver.steps=2", *FAST, *extra)
    s = bench.run(cfg, tmp_path / "run")
    assert s["images"] == 1 and math.isfinite(s["metrics"]["psnr"]["mean"]) and s["metrics"]["nfe"]["mean"] == 2
    published = bench.config(f"benchmark={preset}").benchmark.published.get(s["solver"])
    if published:
        assert s["published"] == dict(published)
        assert "| psnr |" in (tmp_path / "run" / "summary.md").read_text()
        assert f"| {published['psnr']} |" in (tmp_path / "run" / "summary.md").read_text()


@pytest.mark.parametrize("preset", ["fastmri_knee_4x", "fastmri_knee_8x"])
def test_fastmri_knee_presets_run_at_tiny_size(preset, tmp_path):
    from test_checkpoints import edm_unet
    from test_fastmri_data import write_fastmri

    unet = edm_unet("ncsn")  # NCSN++ (EDM SongUNet), 128 channels, 2-channel complex images, 16×16
    state = {"model." + k: v for k, v in unet.state_dict().items()}
    torch.save({"ema": state, "net": state}, tmp_path / "mri.pt")
    (tmp_path / "knee").mkdir()
    write_fastmri(tmp_path / "knee" / "file1.h5", slices=2, coils=4, H=24, W=40, h=16, w=16)  # fully sampled
    cfg = bench.config(f"benchmark={preset}", f"prior.path={tmp_path / 'mri.pt'}", f"data.path={tmp_path / 'knee'}",
                       "shape=[2,16,16]", "data.mask.center_fractions=[0.25]", "solver.steps=2", "sigma_y=0.01", *FAST)
    s = bench.run(cfg, tmp_path / "run")
    rec = read_sample(next((tmp_path / "run" / "samples").glob("*.h5")))
    mask = rec["operator"]["params"]["mask"].reshape(-1, 40)[0]
    assert rec["info"]["retrospective_mask"] and 0 < mask.mean() < 1  # undersampled from a fully sampled file
    assert s["published"]["psnr"] in (26.13, 20.82) and math.isfinite(s["metrics"]["nmse"]["mean"])


# ---------------------------------------------------------------------------------------------
# the exact-posterior preset
# ---------------------------------------------------------------------------------------------
def test_gmm_preset_scores_solvers_between_floor_and_ceiling(tmp_path):
    common = ["benchmark=gmm_posterior", "benchmark.gmm.dims=[8]", "benchmark.gmm.dys=[2]", "benchmark.cpu.gmm.problems=2",
              "benchmark.cpu.gmm.n=400", *FAST]
    ddnm = bench.run(bench.config(*common, "solver=ddnm", "solver.steps=50"), tmp_path / "ddnm")
    g = ddnm["groups"]["d=8, dy=2"]
    assert g["sw"]["n"] == 2 and g["sw_floor"]["mean"] < g["sw"]["mean"] < g["sw_prior"]["mean"]
    assert ddnm["metrics"]["nfe"]["mean"] == 50
    files = sorted((tmp_path / "ddnm" / "samples").glob("*.h5"))
    assert [f.name for f in files] == ["d8_dy2_p00.h5", "d8_dy2_p01.h5"]
    text = bench.table(tmp_path)
    assert "floor (exact vs exact)" in text and "| ddnm | 50 |" in text
