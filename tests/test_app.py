"""The `invdiff` app: configs composed in-process, every operator × solver pair the capability
contract allows, the promised error messages, result files, resume after a kill, bit-exact re-runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

import operators as O
import invdiff
from invdiff.api import reconstruct, sample_seed
from invdiff.apps.app import rerun, run
from invdiff.apps.common import AppError, choices
from invdiff.apps.cli import explain_overrides, main
from crash import kill_and_resume
from invdiff.data.processes import host_tag
from invdiff.data.results import is_complete, read_sample
from invdiff.priors.analytic import smooth_gaussian

ROOT = Path(__file__).resolve().parents[1]
TINY = ["prior=gaussian", "figures=false", "progress=false", "num_samples=1", "data=sample_image"]


def cfg_of(*overrides):
    with initialize_config_module("invdiff.configs", version_base=None):
        return compose("config", overrides=list(overrides))


def test_default_config_is_the_documented_run():
    cfg = cfg_of()
    choice = {k: cfg[k]._target_ for k in ("operator", "prior", "solver", "data")}
    assert choice == {"operator": "operators.SingleCoilMRI", "prior": "invdiff.priors.shipped.load_shipped",
                      "solver": "invdiff.solvers.pigdm", "data": "invdiff.data.sources.Phantoms"}
    assert cfg.prior.name == "phantom64" and list(cfg.operator.mask.accelerations) == [4]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default run, shortened: 2 held-out phantoms, 2 draws, 12 ΠGDM steps."""
    out = tmp_path_factory.mktemp("default")
    cfg = cfg_of("data.n=2", "num_samples=2", "solver.steps=12", "batch_size=2", "progress=false")
    return out, run(cfg, out)


def test_default_run_writes_samples_figures_and_metrics(default_run):
    out, result = default_run
    files = sorted(p.name for p in (out / "samples").iterdir())
    assert files == ["phantom_2147483648.h5", "shepp_logan.h5"]  # and no temporaries
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["phantom_2147483648.png", "shepp_logan.png"]
    rec = read_sample(out / "samples" / "shepp_logan.h5")
    assert rec["samples"].shape == (2, 1, 64, 64) and rec["std"].shape == (1, 64, 64)
    assert np.allclose(rec["x_hat"], rec["samples"].mean(0))
    assert rec["operator"]["type"] == "operators.SingleCoilMRI" and rec["operator"]["params"]["mask"].shape[-1] == 64
    assert rec["prior"]["sha256"] and rec["prior"]["name"] == "phantom64"
    assert rec["solver"] == "pigdm" and rec["solver_settings"]["steps"] == 12
    assert rec["noise_seed"] == sample_seed(0, "shepp_logan", "noise") and rec["sigma_y"] == 0.01
    assert "measurement units" in rec["noise_convention"] and len(rec["config_hash"]) == 16
    m = rec["metrics"]
    # even 12 steps of ΠGDM with phantom64 beat zero-filling by a wide margin (psnr: the average over
    # the draws of single-draw scores; psnr_mean: the posterior mean's; both and the baseline clipped
    # to the prior's range. Measured: mean 24.2 dB, zero-filled 19.5 dB clipped / 19.2 dB unclipped)
    assert m["psnr_mean"] > m["psnr_baseline"] + 4 and m["psnr"] > m["psnr_baseline"] + 3
    assert m["nfe"] == 12 and 0 < m["nmse"] < m["nmse_baseline"]
    assert 0.3 < m["residual_chi"] < 3  # the reconstruction explains y to about the noise level
    summ = json.loads((out / "metrics.json").read_text())
    assert summ["summary"]["psnr"]["n"] == 2 and result["summary"]["psnr"]["mean"] == summ["summary"]["psnr"]["mean"]
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("run,id,seed,solver")


def test_a_stored_sample_reruns_bit_for_bit(default_run):
    out, _ = default_run
    path = out / "samples" / "phantom_2147483648.h5"
    again = rerun(path)  # on the device the sample was computed on
    assert torch.equal(again.samples[0].float().cpu(), torch.from_numpy(read_sample(path)["samples"]).float())


def test_resume_skips_finished_samples_and_clears_temporaries(default_run, tmp_path):
    out, _ = default_run
    for name in ("samples", "figures"):
        (tmp_path / name).mkdir()
    src = out / "samples" / "shepp_logan.h5"
    (tmp_path / "samples" / "shepp_logan.h5").write_bytes(src.read_bytes())
    dead = subprocess.Popen(["true"])
    dead.wait()  # a killed run's temporary: its writer's pid is gone
    (tmp_path / "samples" / ".invdiff-tmp").mkdir()
    (tmp_path / "samples" / ".invdiff-tmp" / f"{dead.pid}@{host_tag()}@abc@phantom_2147483648.h5.tmp").write_bytes(b"half")
    before = (tmp_path / "samples" / "shepp_logan.h5").stat().st_mtime_ns
    run(cfg_of("data.n=2", "num_samples=2", "solver.steps=12", "batch_size=2", "progress=false"), tmp_path)
    assert (tmp_path / "samples" / "shepp_logan.h5").stat().st_mtime_ns == before  # not recomputed
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["phantom_2147483648.h5", "shepp_logan.h5"]
    # the resumed sample is the one an uninterrupted run computes
    a = read_sample(tmp_path / "samples" / "phantom_2147483648.h5")["samples"]
    assert np.array_equal(a, read_sample(out / "samples" / "phantom_2147483648.h5")["samples"])


@pytest.mark.parametrize("name", choices("experiment"))
def test_every_experiment_runs_two_steps(name, tmp_path):
    cfg = cfg_of(f"experiment={name}", *TINY, "shape=[1,16,16]", "solver.steps=2")
    result = run(cfg, tmp_path)
    assert result["summary"]["psnr"]["n"] == 1 and is_complete(tmp_path / "samples" / "camera.h5")


# ---------------------------------------------------------------------------------------------
# every operator × solver pair the capability contract allows
# ---------------------------------------------------------------------------------------------
def operator_shape(name):
    return (1, 16, 16) if name.startswith("mri") else (1, 8, 8) if name.startswith("ct") else (3, 8, 8)


def fill_user_files(name, cfg, shape, tmp_path):
    if name == "kernel_file_blur":
        np.save(tmp_path / "psf.npy", O.GaussianKernel(5, 1.0)().numpy())
        cfg.operator.kernel.path = str(tmp_path / "psf.npy")
    if name == "nonlinear_blur":
        O.save_blur_net(O.BlurNet(channels=shape[0], features=4, latent_dim=4), tmp_path / "blur.safetensors")
        cfg.operator.checkpoint = str(tmp_path / "blur.safetensors")
    if name == "mask_file_inpainting":
        np.save(tmp_path / "mask.npy", np.arange(shape[1] * shape[2]).reshape(shape[1:]) % 2)
        cfg.operator.mask.path = str(tmp_path / "mask.npy")
    if name == "mri_mask_file":
        np.save(tmp_path / "cols.npy", np.arange(shape[2]) % 3 == 0)
        cfg.operator.mask.path = str(tmp_path / "cols.npy")
    return cfg


# 2 steps for all; the inner loops of the sampling-based solvers shortened; DAPS with the Bayes τ and a
# small lr (its paper lr diverges on transmission CT), DPS with a smaller ζ, FlowDPS with a ζ far
# below 1/‖A‖² of transmission CT's photon counts (~1e4), D-Flow with a 2-step ODE (wiring, not quality)
FAST = {"daps": {"langevin_steps": 3, "ode_steps": 1, "tau": None, "lr": 1e-6}, "pnpdm": {"prior_steps": 4},
        "pnp_cm": {"dc_optimizer": "adam", "dc_lr": 0.01},  # (SGD's default rate overshoots transmission-CT counts)
        "mcgdiff": {"particles": 4}, "dps": {"zeta": 0.3}, "flowdps": {"zeta": 1e-9}, "dflow": {"ode_steps": 2}}


@pytest.mark.parametrize("op_name", choices("operator"))
def test_every_allowed_operator_solver_pair_runs(op_name, tmp_path):
    """Each solver config either runs 2 steps and writes a finite result, or is refused up front
    with the capability message and the list of solvers that accept the operator (nothing written).

    The problem is composed once per operator (Hydra's compose API); the solver group is then
    swapped the way Hydra composes a group choice (its file as the ``solver`` node), to keep 312
    pairs within seconds."""
    from hydra.utils import instantiate
    from importlib import resources

    from invdiff.solvers import check_call
    from omegaconf import OmegaConf

    shape = operator_shape(op_name)
    sigma = 100.0 if op_name == "ct_transmission" else 0.05  # photon counts with I0 = 1e4: σ ≈ √I0
    base = cfg_of(f"operator={op_name}", *TINY, f"shape=[{','.join(map(str, shape))}]", f"sigma_y={sigma}",
                  f"noise.sigma={sigma}", "baseline=none")
    base = fill_user_files(op_name, base, shape, tmp_path)
    op, prior = instantiate(base.operator), smooth_gaussian(shape)
    probe = torch.zeros(1, *op.meas_size, dtype=torch.float64)
    ran = []
    from invdiff.solvers import BRIDGE_SOLVERS

    for solver in choices("solver"):
        if solver in BRIDGE_SOLVERS:  # they run a trained bridge, not a Gaussian prior (tests/test_bridge.py)
            continue
        cfg = base.copy()
        node = OmegaConf.load(resources.files("invdiff.configs") / "solver" / f"{solver}.yaml")
        if solver != "pinv":
            node.steps = 2
        for k, v in FAST.get(solver, {}).items():
            node[k] = v
        cfg.solver = node
        try:
            check_call(instantiate(node), probe, op, prior, sigma_y=sigma)
            allowed = True
        except O.CapabilityError:
            allowed = False
        out = tmp_path / solver
        if allowed:
            run(cfg, out)
            x = read_sample(out / "samples" / "camera.h5")["x_hat"]
            assert x.shape == shape and np.isfinite(x).all(), (op_name, solver)
            ran.append(solver)
        else:
            with pytest.raises(AppError, match="needs .* Solvers that accept this operator: .*daps"):
                run(cfg, out)
            assert not out.exists()
    assert {"daps", "pnpdm"} <= set(ran)  # the sampling-based solvers take every operator here
    if "linear" in op.capabilities:
        assert {"dps", "reddiff", "tmpd"} <= set(ran)


# ---------------------------------------------------------------------------------------------
# errors: one paragraph, what was wrong, the valid choices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, expected", [
    (["operator=gausian_blur"], r"unknown operator 'gausian_blur'\. Choose one of: .*mri_4x.*Did you mean 'gaussian_blur'\?"),
    (["solver=dps,dsp"], r"unknown solver 'dsp'\. Choose one of: .*pigdm.*Did you mean 'dps'\?"),
    (["solver.stepz=3"], r"unknown setting 'solver.stepz'\. Valid keys at 'solver': eta, guidance, prior_variance, steps\..*Did you mean 'steps'\?"),
    (["solver.autocast=true"], r"not a setting of the solver: .*the runtime node's .*Use runtime\.autocast=true\."),
    (["+solver.compile=reduce-overhead"], r"Use runtime\.compile=reduce-overhead\."),
    (["solver.schedule=vp"], r"parameter of the solver that its config does not list: add it with \+solver.schedule=vp"),
    (["sead=1"], r"unknown setting 'sead'\. Valid keys at the top level: .*seed.*Did you mean 'seed'\?"),
    (["solver=dps,ddrm", "solver.zeta=0.5"], r"^with solver=ddrm: unknown setting 'solver.zeta'"),
    (["data=fastmr"], r"unknown data 'fastmr'.*Did you mean 'fastmri'\?"),
    (["shape=[1,64"], r"could not read the command line"),
])
def test_bad_overrides_are_explained_in_one_paragraph(overrides, expected):
    import re

    msg = explain_overrides(overrides)
    assert msg is not None and "\n" not in msg and re.search(expected, msg), msg


def test_good_overrides_pass_the_check():
    assert explain_overrides(["solver=dps,ddrm", "seed=0,1", "runtime.autocast=true", "experiment=toy_dps"]) is None


@pytest.fixture
def clean_hydra():
    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def test_command_line_error_is_a_message_not_a_stack_trace(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["invdiff", "operator=gausian_blur"])
    with pytest.raises(SystemExit) as err:
        main()
    assert str(err.value).startswith("invdiff: unknown operator 'gausian_blur'")
    monkeypatch.setattr(sys, "argv", ["invdiff", "--help"])
    main()
    text = capsys.readouterr().out
    assert all(f"{g}: " in text for g in ("operator", "prior", "solver", "data", "experiment")) and "phantom64" in text


def write_npy(path, arr):
    np.save(path, arr)
    return str(path)


@pytest.mark.parametrize("case", ["incompatible", "prior_shape", "range", "nan_y", "shape_y", "missing_path",
                                  "no_sigma", "poisson_sigma", "steps0", "no_file", "checkpoint"])
def test_bad_input_is_refused_before_anything_is_written(case, tmp_path):
    expected = {
        "incompatible": (["operator=phase_retrieval", "solver=ddrm"], r"solver 'ddrm' needs .*PhaseRetrieval.*Solvers that accept this operator: daps, dps, enkg, flowdps, lgd, pnp_cm, pnp_flow, pnpdm, reddiff, sitcom"),
        "prior_shape": (["shape=[1,32,32]"], r"prior models images \[1, 64, 64\] but shape=\[1, 32, 32\]; add shape=\[1,64,64\]"),
        "range": (["data=files", f"data.path={write_npy(tmp_path / 'big.npy', np.full((8, 8), 200.0))}"], r"values in \[200, 200\].*data.normalize=max"),
        "nan_y": (["data=measurement", f"data.y={write_npy(tmp_path / 'y.npy', np.full((2, 64, 64), np.nan))}", "sigma_y=0.01"], r"contains NaN or Inf"),
        "shape_y": (["data=measurement", f"data.y={write_npy(tmp_path / 'w.npy', np.zeros((3, 5)))}", "sigma_y=0.01"], r"shape \[3, 5\].*measures \[2, 64, 64\]"),
        "missing_path": (["data=files"], r"needs data.path: give it on the command line"),
        "no_sigma": (["data=measurement", f"data.y={write_npy(tmp_path / 'k.npy', np.zeros((64, 64), np.complex64))}"], r"do not state their noise level; give sigma_y="),
        "poisson_sigma": (["noise=poisson"], r"give the solver's σ_y explicitly"),
        "steps0": (["solver.steps=0"], r"steps must be a positive integer, got 0"),
        "no_file": (["data=files", f"data.path={tmp_path / 'nope.png'}"], r"does not exist"),
        "checkpoint": (["prior=dps_ffhq256", "operator=gaussian_blur", "shape=[3,256,256]"], r"needs its checkpoint file: pass prior.path=.*Nothing is downloaded"),
    }
    overrides, pattern = expected[case]
    out = tmp_path / "out"
    with pytest.raises(AppError, match=pattern) as err:
        run(cfg_of(*overrides, "progress=false"), out)
    assert "\n" not in str(err.value)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# real-measurement mode
# ---------------------------------------------------------------------------------------------
def test_own_measurement_with_and_without_ground_truth(tmp_path):
    shape = (1, 16, 16)
    op = O.SingleCoilMRI(O.FastMRIMask("random", [0.08], [4]), shape, seed=0)
    prior = smooth_gaussian(shape)
    x = prior.sample(1, torch.Generator().manual_seed(0))
    y = op.measure(x, O.GaussianNoise(0.02), generator=torch.Generator().manual_seed(1))[0]
    k = (y[0] + 1j * y[1]).numpy()  # complex k-space, as a scanner would give it
    np.save(tmp_path / "k.npy", k)
    np.save(tmp_path / "x.npy", x[0, 0].numpy())
    np.save(tmp_path / "mask.npy", op.mask.numpy().reshape(-1, 16)[0])  # the scan's own mask, as a file
    base = ["operator=mri_mask_file", f"operator.mask.path={tmp_path / 'mask.npy'}", "shape=[1,16,16]", "prior=gaussian", "data=measurement", f"data.y={tmp_path / 'k.npy'}",
            "sigma_y=0.02", "solver.steps=20", "num_samples=1", "progress=false"]
    res = run(cfg_of(*base), tmp_path / "no_truth")
    assert "psnr" not in res["summary"] and 0.3 < res["summary"]["residual_chi"]["mean"] < 3
    rec = read_sample(tmp_path / "no_truth" / "samples" / "k.h5")
    assert rec["mode"] == "measured" and np.allclose(rec["y"], y.numpy()) and "x_true" not in rec
    res = run(cfg_of(*base, f"data.x={tmp_path / 'x.npy'}"), tmp_path / "truth")
    rec = read_sample(tmp_path / "truth" / "samples" / "k.h5")
    assert np.array_equal(rec["x_true"], x[0].numpy())  # the given ground truth, scored as given
    assert np.isfinite(res["summary"]["psnr"]["mean"]) and np.isfinite(res["summary"]["psnr_baseline"]["mean"])


def test_ground_truths_from_png_folder_npy_and_hdf5(tmp_path):
    from skimage.io import imsave

    rng = np.random.default_rng(0)
    (tmp_path / "pngs").mkdir()
    for name in ("a", "b"):  # 8-bit, another size: divided by 255 and resized
        imsave(tmp_path / "pngs" / f"{name}.png", (rng.uniform(0.3, 0.7, (20, 24)) * 255).astype(np.uint8),
               check_contrast=False)
    np.save(tmp_path / "stack.npy", rng.uniform(0.3, 0.7, (3, 16, 16)))
    with h5py_file(tmp_path / "gt.h5") as f:
        f["images"] = rng.uniform(0.3, 0.7, (2, 16, 16))
    common = ["prior=gaussian", "shape=[1,16,16]", "data=files", "solver=ddrm", "solver.steps=3", "num_samples=1",
              "figures=false", "progress=false"]
    for path, ids in ((tmp_path / "pngs", ["a", "b"]), (tmp_path / "stack.npy", ["stack_0", "stack_1", "stack_2"]),
                      (f"{tmp_path / 'gt.h5'}:images", ["gt_0", "gt_1"])):
        out = tmp_path / f"out_{len(ids)}_{ids[0]}"
        res = run(cfg_of(*common, f"data.path={path}"), out)
        assert sorted(r["id"] for r in res["samples"]) == ids
        x = read_sample(out / "samples" / f"{ids[0]}.h5")["x_true"]
        assert x.shape == (1, 16, 16) and 0.25 < x.min() and x.max() < 0.75


def h5py_file(path):
    import h5py

    return h5py.File(path, "w")


def test_fastmri_raw_file_with_its_own_mask(tmp_path):
    from test_fastmri_data import write_fastmri

    mask = np.zeros(24, bool)
    mask[::3] = True
    mask[9:15] = True
    write_fastmri(tmp_path / "file1.h5", slices=2, coils=1, H=24, W=24, h=16, w=16, mask=mask, multicoil=False)
    res = run(cfg_of("data=fastmri", f"data.path={tmp_path / 'file1.h5'}", "shape=[2,16,16]", "prior=gaussian",
                     "prior.mean=0.0", "solver.steps=10", "num_samples=1", "progress=false", "sigma_y=0.01"),
              tmp_path / "out")
    rec = read_sample(tmp_path / "out" / "samples" / "file1_s1.h5")
    stored = rec["operator"]["params"]["mask"] > 0
    assert np.array_equal(stored.reshape(-1, 24)[0], mask) and (stored == stored.reshape(-1, 24)[0]).all()  # the file's own
    assert rec["info"]["slice"] == 1 and rec["info"]["scale"] > 0 and np.isfinite(res["summary"]["psnr"]["mean"])


# ---------------------------------------------------------------------------------------------
# the Python API
# ---------------------------------------------------------------------------------------------
def test_reconstruct_seeds_follow_sample_ids_not_batches():
    shape = (1, 8, 8)
    prior = smooth_gaussian(shape)
    op = O.Inpainting(O.masks.RandomPixelMask(0.5), shape, seed=0)
    x = prior.sample(3, torch.Generator().manual_seed(0))
    y = op.measure(x, O.GaussianNoise(0.05), generator=torch.Generator().manual_seed(0))
    together = reconstruct(y, op, prior, "ddrm", sigma_y=0.05, num_samples=3, seed=4, ids=["a", "b", "c"], steps=10)
    alone = reconstruct(y[1:2], op, prior, "ddrm", sigma_y=0.05, num_samples=3, seed=4, ids=["b"], steps=10, batch_size=1)
    assert together.samples.shape == (3, 3, *shape) and together.std.shape == (3, *shape) and together.nfe == 10
    assert torch.allclose(together.samples[1], alone.samples[0], atol=1e-10)
    assert not torch.allclose(together.samples[0, 0], together.samples[0, 1])  # draws differ
    with pytest.raises(ValueError, match="unknown solver 'ddrn'"):
        reconstruct(y, op, prior, "ddrn", sigma_y=0.05)


def test_reconstruct_is_exported_and_mirrors_the_app(default_run):
    """A script builds the app's objects from a config and gets the app's draws."""
    from invdiff.apps.app import config, setup

    assert invdiff.reconstruct is reconstruct
    out, _ = default_run
    job = setup(config("data.n=2", "num_samples=2", "solver.steps=12", "batch_size=2"))
    rec = read_sample(out / "samples" / "shepp_logan.h5")
    y = torch.from_numpy(rec["y"])[None].to(job.device)  # the app ran on job.device (cuda with a GPU)
    res = reconstruct(y, job.items[0].op.to(job.device), job.prior, job.solver, sigma_y=0.01,
                      num_samples=2, ids=["shepp_logan"], batch_size=2)
    assert torch.equal(res.samples[0].float().cpu(), torch.from_numpy(rec["samples"]).float())


# ---------------------------------------------------------------------------------------------
# multirun and crash safety (subprocesses: a sweep and a SIGKILL are what is tested)
# ---------------------------------------------------------------------------------------------
def test_multirun_sweep_summarises_all_runs(tmp_path, monkeypatch, clean_hydra):
    monkeypatch.setattr(sys, "argv", ["invdiff", "-m", "solver=ddrm,ddnm", "seed=0,1", *TINY, "shape=[1,16,16]",
                                      "solver.steps=3", f"hydra.sweep.dir={tmp_path}"])
    main()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and {r.split(",")[3] for r in rows[1:]} == {"ddrm", "ddnm"}
    # one row per swept setting (and a table pooled over seeds), not one pooled mean
    table = (tmp_path / "sweep.md").read_text()
    assert "4 run(s) of 1 image(s) each" in table and "Fixed settings:" in table and "solver.steps=3" in table
    body = [line for line in table.splitlines() if line.startswith("| ddrm") or line.startswith("| ddnm")]
    assert sorted(line.split(" | ")[:2] for line in body[:4]) == [["| ddnm", "0"], ["| ddnm", "1"], ["| ddrm", "0"],
                                                                   ["| ddrm", "1"]]
    assert "Pooled over seeds" in table and len(body) == 6
    assert len((tmp_path / "sweep.csv").read_text().splitlines()) == 1 + 4
    # invdiff-bench table reads an app sweep too (rebuilt from the sample files, with the command)
    (tmp_path / "sweep.md").unlink()
    from invdiff.apps.bench_tables import table as bench_table

    text = bench_table(tmp_path, tmp_path / "t.md", command="invdiff -m solver=ddrm,ddnm seed=0,1")
    assert text == (tmp_path / "t.md").read_text() == (tmp_path / "sweep.md").read_text().replace(
        "\n\n", "\n\nCommand: `invdiff -m solver=ddrm,ddnm seed=0,1`\n\n", 1)
    assert "Pooled over seeds" in text and sum(line.startswith("| dd") for line in text.splitlines()) == 6


def test_a_killed_run_loses_nothing_and_resumes(tmp_path):
    cmd = [sys.executable, "-m", "invdiff.apps.cli", "data.n=5", "num_samples=1", "solver.steps=40", "progress=false",
           "figures=false", f"hydra.run.dir={tmp_path}"]
    kill_and_resume(cmd, tmp_path / "samples", total=5)
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 5
