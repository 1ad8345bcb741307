"""Results are never silently wrong (issue 31, A and B).

A. Resume reuses a sample file only when everything that determines it is equal; a run directory
   holding results computed otherwise is refused before any work, with one paragraph naming what
   differs (``invdiff.apps.runs``), for ``invdiff`` and ``invdiff-bench``.
B. Measured data are solved only with an operator whose random parameters (mask, kernel, coil maps)
   come from the user's files or the data file, never from a seed; a result whose data consistency
   is far above what σ_y predicts is flagged.
"""

from __future__ import annotations

import logging
import re

import h5py
import numpy as np
import pytest
import torch

import operators as O
from invdiff.apps import bench
from invdiff.apps.app import config, run, setup
from invdiff.apps.common import AppError
from invdiff.data.results import read_sample
from invdiff.priors.analytic import smooth_gaussian

TINY = ["prior=gaussian", "shape=[1,16,16]", "solver.steps=2", "num_samples=1", "progress=false", "figures=false",
        "data=sample_image"]


def snapshot(out):
    """{file name: (mtime, solver)} of the finished samples."""
    return {f.name: (f.stat().st_mtime_ns, read_sample(f)["solver"]) for f in sorted((out / "samples").glob("*.h5"))}


def refused(cfg, out, pattern, runner=run):
    before = snapshot(out)
    with pytest.raises(AppError) as err:
        runner(cfg, out)
    msg = str(err.value)
    assert re.search(pattern, msg), msg
    assert "\n" not in msg
    assert snapshot(out) == before  # nothing recomputed, nothing added
    return msg


@pytest.fixture(scope="module")
def pigdm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("r5b")
    run(config(*TINY, "data.names=[camera,moon]"), out)
    return out


# ---------------------------------------------------------------------------------------------
# A. resume
# ---------------------------------------------------------------------------------------------
def test_another_solver_into_the_run_directory_is_refused(pigdm_run):
    msg = refused(config(*TINY, "data.names=[camera,moon]", "solver=ddnm"), pigdm_run,
                  r'holds results of another configuration.*samples/camera\.h5 \(and 1 more file.*'
                  r'solver\._target_ is "invdiff\.solvers\.pigdm" there but "invdiff\.solvers\.ddnm" in this run')
    assert "hydra.run.dir=" in msg and "resume=false" in msg


@pytest.mark.parametrize("change, named", [
    (["seed=1"], r"seed is 0 there but 1"),
    (["num_samples=2"], r"num_samples is 1 there but 2"),
    (["sigma_y=0.02"], r"sigma_y is .auto. there but 0.02"),
    (["solver.steps=3"], r"solver.steps is 2 there but 3"),
    (["operator_seed=3"], r"operator_seed is 0 there but 3.*the operator's parameters"),
    (["noise.sigma=0.02"], r"noise.sigma is 0.01 there but 0.02.*σ_y for the sample is 0.01 there but 0.02"),
    (["prior.mean=0.4"], r"prior.mean is 0.5 there but 0.4"),
])
def test_any_setting_that_determines_a_sample_is_named(pigdm_run, change, named):
    refused(config(*TINY, "data.names=[camera,moon]", *change), pigdm_run, named)


def test_same_computation_resumes_whatever_the_runtime_settings(pigdm_run):
    before = snapshot(pigdm_run)
    run(config(*TINY, "data.names=[camera,moon,coins]", "batch_size=auto", "figures=false"), pigdm_run)
    after = snapshot(pigdm_run)
    assert {k: after[k] for k in before} == before and "coins.h5" in after  # more samples: only the new one runs
    (pigdm_run / "samples" / "coins.h5").unlink()


def test_resume_false_recomputes_this_runs_samples_but_not_foreign_ones(pigdm_run, tmp_path):
    out = tmp_path / "run"
    run(config(*TINY, "data.names=[camera]"), out)
    run(config(*TINY, "data.names=[camera]", "solver=ddnm", "resume=false"), out)
    assert read_sample(out / "samples" / "camera.h5")["solver"] == "ddnm"
    # a sample this run does not compute, of another configuration, would be summarised with its results
    msg = refused(config(*TINY, "data.names=[moon]", "solver=pigdm", "resume=false"), out,
                  r"samples/camera\.h5 was computed with solver._target_ is \"invdiff.solvers.ddnm\"")
    assert "delete the files of samples this run does not compute" in msg and "resume=false" not in msg


def test_same_id_with_other_content_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    for d in ("one", "two"):
        (tmp_path / d).mkdir()
        np.save(tmp_path / d / "img.npy", rng.uniform(0.3, 0.7, (16, 16)))
    common = [*TINY[:-1], "data=files"]
    run(config(*common, f"data.path={tmp_path / 'one' / 'img.npy'}"), tmp_path / "out")
    refused(config(*common, f"data.path={tmp_path / 'two' / 'img.npy'}"), tmp_path / "out",
            r"img_0\.h5 was computed with the ground truth \(sha256\) is \"[0-9a-f]{20,}…")


def test_files_without_a_resume_key_are_compared_by_their_stored_config(tmp_path):
    out = tmp_path / "old"
    run(config(*TINY, "data.names=[camera]"), out)
    with h5py.File(out / "samples" / "camera.h5", "a") as f:  # as written before resume keys existed
        del f.attrs["resume_key"]
    refused(config(*TINY, "data.names=[camera]", "solver=ddnm"), out, r"solver\._target_ is")
    before = snapshot(out)
    run(config(*TINY, "data.names=[camera]", "progress=false"), out)
    assert snapshot(out) == before


def test_bench_refuses_a_directory_of_an_app_run_and_checks_every_file(tmp_path):
    out = tmp_path / "bench"
    fast = ["benchmark=smoke", "progress=false", "figures=false", "data.n=2", "solver.steps=2"]
    bench.run(bench.config(*fast), out)
    with h5py.File(out / "samples" / "shepp_logan.h5", "a") as f:  # the second file (sorted) is another run's
        f.attrs["resume_key"] = f.attrs["resume_key"].replace('"solver.steps": "2"', '"solver.steps": "9"')
    refused(bench.config(*fast), out, r"shepp_logan\.h5 was computed with solver.steps is 9 there but 2.*"
                                      r"results_dir=", runner=bench.run)
    app_out = tmp_path / "app"
    run(config("data.n=1", "solver.steps=2", "num_samples=1", "progress=false", "figures=false"), app_out)
    refused(bench.config(*fast[:-2], "data.n=1"), app_out, r"shepp_logan\.h5 was computed with", runner=bench.run)


# ---------------------------------------------------------------------------------------------
# B. measured data
# ---------------------------------------------------------------------------------------------
SHAPE = (1, 16, 16)
MEASURED = ["shape=[1,16,16]", "prior=gaussian", "data=measurement", "sigma_y=0.01", "progress=false",
            "figures=false", "num_samples=1"]


@pytest.fixture(scope="module")
def kspace(tmp_path_factory):
    """A complex k-space measured with a 4× mask, that mask, and the ground truth."""
    d = tmp_path_factory.mktemp("scan")
    op = O.SingleCoilMRI(O.FastMRIMask("random", [0.08], [4]), SHAPE, seed=7)
    x = smooth_gaussian(SHAPE).sample(1, torch.Generator().manual_seed(0))  # a draw of the prior the app uses
    y = op.measure(x, O.GaussianNoise(0.01), generator=torch.Generator().manual_seed(1))[0]
    np.save(d / "k.npy", (y[0] + 1j * y[1]).numpy())
    np.save(d / "mask.npy", op.mask.numpy().reshape(-1, 16)[0])
    return d


@pytest.mark.parametrize("operator, named", [
    (["operator=mri_4x"], r"SingleCoilMRI.* draws its mask from a seed \(seed 0\)"),
    (["operator=mri_multicoil_4x"], r"draws its mask from a seed \(seed 0\) and uses 8 synthetic coil maps"),
])
def test_measured_kspace_with_a_drawn_mask_is_refused(kspace, operator, named, tmp_path):
    y = "k.npy" if "mri_4x" in operator[0] else "kmc.npy"
    if y == "kmc.npy":
        np.save(kspace / y, np.ones((8, 16, 16), np.complex128))
    cfg = config(*MEASURED, f"data.y={kspace / y}", *operator)
    with pytest.raises(AppError) as err:
        setup(cfg)
    msg = str(err.value)
    assert re.search(named, msg) and "\n" not in msg, msg
    for fix in ("operator=mri_mask_file operator.mask.path=mask.npy", "operator=mask_file_inpainting",
                "operator=kernel_file_blur", "data=fastmri"):
        assert fix in msg
    with pytest.raises(AppError):
        run(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("operator, refuse", [
    ("random_inpainting", "mask"), ("motion_blur", "kernel"), ("box_inpainting", None), ("gaussian_blur", None),
    ("sr_bicubic", None), ("half_inpainting", None),
])
def test_only_operators_drawn_from_a_seed_are_refused(operator, refuse, tmp_path):
    meas = (1, 4, 4) if operator == "sr_bicubic" else SHAPE
    np.save(tmp_path / "y.npy", np.full(meas, 0.5))
    cfg = config(*MEASURED, f"data.y={tmp_path / 'y.npy'}", f"operator={operator}")
    if refuse is None:
        setup(cfg)
    else:
        with pytest.raises(AppError, match=rf"draws its {refuse} from a seed"):
            setup(cfg)


def test_multicoil_with_measured_mask_and_coil_maps_is_accepted(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "mask.npy", np.arange(16) % 3 == 0)
    np.save(tmp_path / "maps.npy", rng.normal(size=(4, 16, 16)) + 1j * rng.normal(size=(4, 16, 16)))
    np.save(tmp_path / "k.npy", rng.normal(size=(4, 16, 16)) + 1j * rng.normal(size=(4, 16, 16)))
    common = [*MEASURED, f"data.y={tmp_path / 'k.npy'}", "operator=mri_mask_file", "operator._target_=operators.MultiCoilMRI",
              f"operator.mask.path={tmp_path / 'mask.npy'}"]
    setup(config(*common, f"+operator.coil_maps={tmp_path / 'maps.npy'}"))
    with pytest.raises(AppError, match=r"uses 4 synthetic coil maps \(operator.coil_maps=4\)"):
        setup(config(*common, "+operator.coil_maps=4"))


def test_a_wrong_mask_file_is_flagged_by_data_consistency(kspace, tmp_path, caplog):
    np.save(tmp_path / "wrong.npy", np.arange(16) % 2 == 1)  # misses the centre column, which y has
    common = [*MEASURED, f"data.y={kspace / 'k.npy'}", "operator=mri_mask_file", "solver.steps=20"]
    with caplog.at_level(logging.WARNING, logger="invdiff"):
        right = run(config(*common, f"operator.mask.path={kspace / 'mask.npy'}"), tmp_path / "right")
    assert right["summary"]["residual_chi"]["mean"] < 3 and right["summary"]["residual_chi_high"]["mean"] == 0
    assert "far above" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="invdiff"):
        wrong = run(config(*common, f"operator.mask.path={tmp_path / 'wrong.npy'}"), tmp_path / "wrong")
    assert wrong["summary"]["residual_chi"]["mean"] > 3 and wrong["summary"]["residual_chi_high"]["mean"] == 1
    assert re.search(r"k: the data consistency .* far above the ≈1 that σ_y = 0.01 predicts: the operator", caplog.text)
    assert read_sample(tmp_path / "wrong" / "samples" / "k.h5")["metrics"]["residual_chi_high"] == 1
